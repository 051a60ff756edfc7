//! TenPak host: everything that is not a plugin. Model I/O, the Llama runtime, the compression
//! pipeline, artifacts, presets, and the front ends (CLI, HTTP service) that all run one validated
//! plan.

//!
//! The job API every front end calls: [`plan::PackPlan::build`] turns a [`plan::PackRequest`]
//! into a validated plan, [`pack::run`] runs it under a [`observe::PackObserver`] (progress,
//! warnings, cancellation), [`eval::run`] scores a model or artifact, [`unpack::unpack`] writes one
//! back out dense, [`export`] writes it for another runtime (GGUF), [`sweep`] packs one model at several
//! rates beside other tools' files and plots perplexity against bits per weight; failures are [`error::Error`]s with a kind the front end maps to an exit
//! code or an HTTP status. The library prints nothing.

pub mod artifact;
pub mod builtins;
pub mod encode;

pub mod eval;
pub mod export;
#[doc(hidden)]
pub mod fuzzing;
pub mod measure;
pub mod model;
pub mod observe;
pub mod pack;
pub mod pipeline;
pub mod plan;
pub mod plugins;
pub mod preset;
pub mod report;
pub mod roles;
pub mod runtime;
#[cfg(feature = "studio")]
pub mod server;
pub mod sweep;
pub mod tokenize;
pub mod unpack;
