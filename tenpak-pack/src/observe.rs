//! Watching long work from outside: progress, warnings and cancellation for `pack`, `eval` and
//! `unpack`, without the library printing anything. The CLI draws a bar from the updates; the
//! server stores them in the job record and answers `DELETE /jobs/{id}` through [`PackObserver::cancelled`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tenpak_error::Kind;

/// The stages of a job, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Checking the request, planning every layer.
    Plan,
    /// Measuring candidate configurations on calibration text for a measuring allocator.
    Measure,
    /// Running a block on calibration text while calibrators watch its linears.
    Calibrate,
    /// Encoding weights (every tensor on the calibration-free path; one block's on the pipeline).
    Encode,
    /// Running the quantized block so the next one sees quantized inputs.
    Propagate,
    /// Scoring perplexity.
    Evaluate,
    /// Decoding an artifact back to dense weights.
    Unpack,
    /// Converting an artifact's tensors to another runtime's format.
    Export,
}

impl Stage {
    /// Lower-case name (`calibrate`, …).
    pub fn name(self) -> &'static str {
        match self {
            Stage::Plan => "plan",
            Stage::Measure => "measure",
            Stage::Calibrate => "calibrate",
            Stage::Encode => "encode",
            Stage::Propagate => "propagate",
            Stage::Evaluate => "evaluate",
            Stage::Unpack => "unpack",
            Stage::Export => "export",
        }
    }
}

/// Where a job is: `done` of `total` steps of the whole job, in `stage`.
#[derive(Clone, Debug, PartialEq)]
pub struct Update {
    /// The stage the step belongs to.
    pub stage: Stage,
    /// The transformer block being worked on, as (index from 0, count), in the pipeline.
    pub block: Option<(usize, usize)>,
    /// Steps finished.
    pub done: u64,
    /// Steps in the whole job (fixed from the start, so `fraction` only grows).
    pub total: u64,
    /// What the step is (`block 3/30: encoded`, a tensor name, `window 12`).
    pub detail: String,
}

impl Update {
    /// `done / total`, in 0..=1.
    pub fn fraction(&self) -> f64 {
        if self.total == 0 { 0.0 } else { (self.done as f64 / self.total as f64).min(1.0) }
    }
}

/// Receives a job's progress and warnings, and may ask it to stop. Every method has a default
/// that does nothing, so an observer implements only what it shows.
pub trait PackObserver: Sync {
    /// A step started (`done` unchanged) or finished (`done` advanced).
    fn update(&self, update: &Update) {
        let _ = update;
    }
    /// Something the user should know that does not stop the job (the evaluation text is the
    /// calibration text, say). The same words go into the manifest where they concern a figure.
    fn warning(&self, message: &str) {
        let _ = message;
    }
    /// `true` asks the job to stop at its next step (between blocks, tensors or windows). It then
    /// fails with [`Kind::Cancelled`] and leaves no output behind. It is never wrong to return
    /// `false`.
    fn cancelled(&self) -> bool {
        false
    }
}

/// An observer that shows nothing and never cancels.
pub struct Silent;

impl PackObserver for Silent {}

/// An observer for code that only needs cancellation: a flag another thread sets.
#[derive(Default)]
pub struct CancelFlag(AtomicBool);

impl CancelFlag {
    /// Ask the job to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl PackObserver for CancelFlag {
    fn cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Counts a job's steps and reports them to an observer; checks for cancellation at each.
pub struct Tracker<'a> {
    observer: &'a dyn PackObserver,
    done: AtomicU64,
    total: u64,
}

impl<'a> Tracker<'a> {
    /// A job of `total` steps.
    pub fn new(observer: &'a dyn PackObserver, total: u64) -> Self {
        Self { observer, done: AtomicU64::new(0), total }
    }

    /// A step of `stage` starts: stop here if the job was cancelled, else report it.
    pub fn begin(&self, stage: Stage, block: Option<(usize, usize)>, detail: impl Into<String>) -> tenpak_error::Result<()> {
        self.check()?;
        self.report(stage, block, detail.into());
        Ok(())
    }

    /// An error of kind [`Kind::Cancelled`] if the observer asks the job to stop.
    pub fn check(&self) -> tenpak_error::Result<()> {
        if self.observer.cancelled() {
            return Err(Kind::Cancelled.error("cancelled"));
        }
        Ok(())
    }

    /// A step of `stage` is done.
    pub fn end(&self, stage: Stage, block: Option<(usize, usize)>, detail: impl Into<String>) {
        self.done.fetch_add(1, Ordering::SeqCst);
        self.report(stage, block, detail.into());
    }

    fn report(&self, stage: Stage, block: Option<(usize, usize)>, detail: String) {
        let done = self.done.load(Ordering::SeqCst).min(self.total);
        self.observer.update(&Update { stage, block, done, total: self.total, detail });
    }
}
