//! Progress for long work: a bar on a terminal, a plain line per step (rate-limited) otherwise.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// One unit of long work with a known number of steps.
pub struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    len: u64,
    done: u64,
    last_line: Option<Instant>,
    quiet: bool,
}

impl Progress {
    /// A progress display for `len` steps of `label`. On a terminal it draws a bar on stderr;
    /// otherwise it prints at most one line every two seconds, plus the last one.
    pub fn new(len: u64, label: &str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(len);
            bar.set_style(
                ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta} {wide_msg}")
                    .expect("static template is valid")
                    .progress_chars("=> "),
            );
            bar.set_prefix(label.to_owned());
            bar
        });
        Self { bar, label: label.to_owned(), len, done: 0, last_line: None, quiet: false }
    }

    /// A display that shows nothing (for tests and the server).
    pub fn hidden() -> Self {
        Self { bar: None, label: String::new(), len: 0, done: 0, last_line: None, quiet: true }
    }

    /// One step done; `message` says which.
    pub fn step(&mut self, message: &str) {
        self.done += 1;
        if self.quiet {
            return;
        }
        if let Some(bar) = &self.bar {
            bar.set_message(message.to_owned());
            bar.inc(1);
            return;
        }
        let due = self.last_line.is_none_or(|t| t.elapsed() >= Duration::from_secs(2));
        if due || self.done == self.len {
            eprintln!("{} {}/{} {message}", self.label, self.done, self.len);
            self.last_line = Some(Instant::now());
        }
    }

    /// Say what the current step is doing (`block 3/30: calibrating`), before it is done.
    pub fn message(&mut self, message: &str) {
        if self.quiet {
            return;
        }
        if let Some(bar) = &self.bar {
            bar.set_message(message.to_owned());
            return;
        }
        if self.last_line.is_none_or(|t| t.elapsed() >= Duration::from_secs(2)) {
            eprintln!("{} {}/{} {message}", self.label, self.done, self.len);
            self.last_line = Some(Instant::now());
        }
    }

    /// Done: clear the bar.
    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
