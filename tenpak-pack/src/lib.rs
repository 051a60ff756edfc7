//! TenPak's job library: everything a front end (the CLI, Studio, a custom host) runs.
//!
//! The job API: [`plan::PackPlan::build`] turns a [`plan::PackRequest`] into a validated plan,
//! [`pack::run`] runs it under an [`observe::PackObserver`] (progress, warnings, cancellation),
//! [`eval::run`] scores a model or artifact, [`unpack::unpack`] writes one back out dense,
//! [`sweep`] packs one model at several rates beside other tools' files and plots perplexity
//! against bits per weight, and [`report`] renders a manifest for people. Failures are
//! [`tenpak_error::Error`]s whose kind the front end maps to an exit code or an HTTP status. The
//! library prints nothing.
//!
//! The pack flow runs one way (no module imports one that imports it back; `scripts/module-cycles.py`
//! checks every crate in the test suite):
//!
//! ```text
//! text, preset -> plan (PackRequest -> PackPlan, its Allocation fixed or measured)
//!   -> allocate (a measuring allocator's choice, on the original model)
//!   -> pipeline (block by block: calibrate, encode, propagate) -> artifact -> eval -> report
//! ```
//!
//! [`calibrate`] is the one block calibration both the pipeline and [`allocate`] run; [`pack`]
//! drives the flow, [`sweep`] repeats it at several rates.

pub mod allocate;
pub mod artifact;
pub mod calibrate;
pub mod encode;
pub mod eval;
#[doc(hidden)]
pub mod fuzzing;
pub mod generate;
pub mod limits;
pub mod model;
pub mod observe;
pub mod pack;
pub mod pipeline;
pub mod plan;
pub mod preset;
pub mod report;
pub mod sweep;
pub mod tasks;
pub mod text;
pub mod unpack;
