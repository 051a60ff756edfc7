//! tenpak-pack's tests: presets, plans and their refusals, artifacts and their integrity, the
//! calibrated pipeline, measured allocation, other architectures, the sweep, and the fuzz
//! regressions.

mod allocation;
mod architectures;
mod artifact;
mod divergence;
mod fuzz_regressions;
mod pipeline;
mod sweep;
mod tasks;
