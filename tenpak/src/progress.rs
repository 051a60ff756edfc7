//! The `tenpak` binary's progress display: a bar on a terminal, a plain line (at most one every
//! two seconds, plus the last) otherwise. It draws the library's [`PackObserver`] updates, so the
//! library itself never prints. It also adds up the wall time of each stage (the time from one
//! update to the next counts for the stage of the first), for the `stages` line of `pack`.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tenpak_pack::observe::{PackObserver, Stage, Update};

/// Shows a job's updates on stderr under `label`; prints warnings.
pub struct Bar {
    label: String,
    shown: bool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    bar: Option<ProgressBar>,
    last_line: Option<Instant>,
    /// The stage of the last update and when it came.
    current: Option<(Stage, Instant)>,
    /// Wall time per stage, in the order the stages first ran.
    stage_times: Vec<(Stage, Duration)>,
}

impl State {
    /// Close the time since the last update into its stage; start timing `next` (if any).
    fn switch(&mut self, next: Option<Stage>) {
        let now = Instant::now();
        if let Some((stage, since)) = self.current.take() {
            let spent = now - since;
            match self.stage_times.iter_mut().find(|(s, _)| *s == stage) {
                Some((_, total)) => *total += spent,
                None => self.stage_times.push((stage, spent)),
            }
        }
        self.current = next.map(|stage| (stage, now));
    }
}

impl Bar {
    /// A display labelled `label`; with `shown` false only warnings are printed.
    pub fn new(label: &str, shown: bool) -> Self {
        Self { label: label.to_owned(), shown, state: Mutex::new(State::default()) }
    }

    /// Print `line` on stdout, with the bar (if any) lifted out of the way while it prints.
    pub fn println(&self, line: &str) {
        match &self.state.lock().unwrap_or_else(|e| e.into_inner()).bar {
            Some(bar) => bar.suspend(|| println!("{line}")),
            None => println!("{line}"),
        }
    }

    /// Clear the bar and stop the stage clock.
    pub fn finish(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.switch(None);
        if let Some(bar) = state.bar.take() {
            bar.finish_and_clear();
        }
    }

    /// Wall time per stage so far, as `calibrate 41.2 s, encode 63.0 s, …` (empty before the
    /// first update).
    pub fn stage_times(&self) -> String {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let parts: Vec<String> =
            state.stage_times.iter().map(|(stage, spent)| format!("{} {:.1} s", stage.name(), spent.as_secs_f64())).collect();
        parts.join(", ")
    }
}

impl PackObserver for Bar {
    fn update(&self, update: &Update) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.switch(Some(update.stage));
        if !self.shown {
            return;
        }
        if std::io::stderr().is_terminal() {
            let bar = state.bar.get_or_insert_with(|| {
                let bar = ProgressBar::new(update.total);
                bar.set_style(
                    ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta} {wide_msg}")
                        .expect("static template is valid")
                        .progress_chars("=> "),
                );
                bar.set_prefix(self.label.clone());
                bar
            });
            bar.set_length(update.total);
            bar.set_position(update.done);
            bar.set_message(update.detail.clone());
            return;
        }
        let due = state.last_line.is_none_or(|t| t.elapsed() >= Duration::from_secs(2));
        if due || update.done == update.total {
            eprintln!("{} {}/{} {}", self.label, update.done, update.total, update.detail);
            state.last_line = Some(Instant::now());
        }
    }

    fn warning(&self, message: &str) {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match &state.bar {
            Some(bar) => bar.suspend(|| eprintln!("WARNING: {message}")),
            None => eprintln!("WARNING: {message}"),
        }
    }
}
