//! Every component a TenPak build can run, in one registry.
//!
//! - [`builtins`]: the codec, calibrator and allocator crates compiled in (each named, so the
//!   linker keeps its `inventory` registration), and [`builtins::registry`], which collects them;
//! - [`dynamic`]: plugin libraries loaded at run time through `tenpak_api::abi`, from paths the
//!   operator names (`tenpak --plugin`, Studio's `plugins`), never from a request.
//!
//! This is the one crate that knows every implementation; the job library and the front ends
//! take the registry it builds.

pub mod builtins;
pub mod dynamic;
