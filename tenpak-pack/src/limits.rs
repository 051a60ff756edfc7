//! How much one request may ask for, whoever asks: bounds that keep *checking* a request cheap
//! and a job's memory within reason.
//!
//! Checking a preset matches every `[[overrides]]` pattern against every tensor name and lays
//! every `[[allocator.candidates]]` entry over every block linear, so an unbounded preset makes
//! the check itself the attack (200,000 overrides took 12.7 s of CPU to refuse). Window counts
//! and `ctx` size the token buffers and activations a job holds (`windows · ctx` tokens), and a
//! `group_size` far beyond any row only hides a typo (a group longer than a row is one group per
//! row). So [`PackPlan::build_within`](crate::plan::PackPlan::build_within) and
//! [`eval::run_within`](crate::eval::run_within) check these first
//! ([`crate::preset::Preset::check_limits`]), before any model is opened; a server applies
//! [`Limits::default`] or its own (`[limits]` in `studio.toml`). The local CLI's
//! [`PackPlan::build`](crate::plan::PackPlan::build) and [`eval::run`](crate::eval::run) apply
//! [`Limits::none`].

use serde::{Deserialize, Serialize};
use tenpak_error::{Kind, Result};

/// The bounds on one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest preset text, in bytes (the shipped presets are under 3 KiB).
    pub preset_bytes: usize,
    /// Most `[[overrides]]` in a preset.
    pub overrides: usize,
    /// Longest `pattern` of an override, in bytes.
    pub pattern_bytes: usize,
    /// Most `[[allocator.candidates]]` in a preset.
    pub candidates: usize,
    /// Largest `group_size` (and any other `*group_size` parameter) of any codec table.
    pub group_size: u64,
    /// Most windows: a preset's `[calibration]` and `[evaluation]` windows, an evaluation's
    /// `windows`.
    pub windows: usize,
    /// Longest window, in tokens (and never more than the model's `max_position_embeddings`).
    pub ctx: usize,
    /// Most multiple-choice items one request scores (all tasks together).
    pub task_items: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { preset_bytes: 64 << 10, overrides: 256, pattern_bytes: 256, candidates: 64, group_size: 1 << 16, windows: 4096, ctx: 32768, task_items: 2000 }
    }
}

impl Limits {
    /// No bounds: the local CLI's (its user owns the machine, and a per-layer preset of an
    /// 80-layer model has some 560 overrides). Only what no job can run with is refused (a
    /// window under 2 tokens, a ctx past the model's `max_position_embeddings`).
    pub fn none() -> Self {
        Limits {
            preset_bytes: usize::MAX,
            overrides: usize::MAX,
            pattern_bytes: usize::MAX,
            candidates: usize::MAX,
            group_size: u64::MAX,
            windows: usize::MAX,
            ctx: usize::MAX,
            task_items: usize::MAX,
        }
    }

    /// Refuse a preset text longer than [`Limits::preset_bytes`] before it is parsed; `origin`
    /// names it.
    pub fn check_preset_text(&self, text: &str, origin: &str) -> Result<()> {
        if text.len() > self.preset_bytes {
            return Err(Kind::BadRequest.error(format!(
                "preset {origin}: {} bytes of TOML; at most {} bytes are accepted (limit `preset_bytes`)",
                text.len(),
                self.preset_bytes
            )));
        }
        Ok(())
    }

    /// Refuse more than [`Limits::task_items`] multiple-choice items; `what` names them.
    pub fn check_task_items(&self, items: usize, what: &str) -> Result<()> {
        if items > self.task_items {
            return Err(Kind::BadRequest.error(format!(
                "{what}: {items} items; at most {} are scored per request (limit `task_items`; `task_limit` takes the first N of each task)",
                self.task_items
            )));
        }
        Ok(())
    }

    /// Refuse more than [`Limits::windows`] windows; `what` names the field.
    pub fn check_windows(&self, windows: usize, what: &str) -> Result<()> {
        if windows > self.windows {
            return Err(Kind::BadRequest.error(format!("{what} = {windows}; at most {} are accepted (limit `windows`)", self.windows)));
        }
        Ok(())
    }

    /// Refuse a window shorter than 2 tokens or longer than [`Limits::ctx`]; `what` names the
    /// field.
    pub fn check_ctx(&self, ctx: usize, what: &str) -> Result<()> {
        if ctx < 2 {
            return Err(Kind::BadRequest.error(format!("{what} = {ctx}; a window needs at least 2 tokens (it scores ctx − 1)")));
        }
        if ctx > self.ctx {
            return Err(Kind::BadRequest.error(format!("{what} = {ctx}; at most {} tokens are accepted (limit `ctx`)", self.ctx)));
        }
        Ok(())
    }
}
