//! The `tenpak` binary's progress display: a bar on a terminal, a plain line (at most one every
//! two seconds, plus the last) otherwise. It draws the library's [`PackObserver`] updates, so the
//! library itself never prints.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tenpak_host::observe::{PackObserver, Update};

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

    /// Clear the bar.
    pub fn finish(&self) {
        if let Some(bar) = self.state.lock().unwrap_or_else(|e| e.into_inner()).bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl PackObserver for Bar {
    fn update(&self, update: &Update) {
        if !self.shown {
            return;
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
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
