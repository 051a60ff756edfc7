//! TenPak host: everything that is not a plugin. Model I/O, the Llama runtime, the compression
//! pipeline, artifacts, presets, and the front ends (CLI, HTTP service) that all run one validated
//! plan.

pub mod model;
pub mod artifact;
pub mod builtins;
pub mod pack;
pub mod pipeline;
pub mod plugins;
pub mod preset;
pub mod progress;
pub mod roles;
pub mod report;
pub mod unpack;
pub mod runtime;
pub mod tokenize;
pub mod eval;
