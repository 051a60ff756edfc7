//! The stable API every TenPak component is written against.
//!
//! TenPak is a host plus plugins. A *codec* turns one weight matrix into packed parts and back, a
//! *calibrator* watches the model run on calibration text and summarizes what each linear layer
//! sees, and an *allocator* decides which codec (with which parameters) each layer gets. This crate
//! defines the three traits, the plain data that crosses between them, the errors, and the
//! registry through which the host finds implementations by their stable string id.
//!
//! The main design choice is that **everything crossing this API is plain data**: weights are
//! row-major `f32` slices, encoded tensors are named byte buffers with a dtype and a shape, and
//! parameters are a small self-describing map of ints, floats, bools and strings. No tensor
//! library, TOML parser or async runtime appears here. That costs a little convenience inside a
//! codec, and buys three things: the same parameter values come from a TOML preset, an HTTP JSON
//! body or a C caller without translation; a plugin built against this crate alone (and later
//! loaded from a shared library) cannot depend on the host's internals; and the artifact format is
//! exactly the `Encoded` parts, so what a codec returns is what gets written to disk.
//!
//! Implementations register statically with [`register_codec!`], [`register_calibrator!`] and
//! [`register_allocator!`]; the host looks them up through [`registry`]. A crate built as a
//! `cdylib` also exports its codecs through a stable C ABI with [`export_plugin!`], so a host
//! built by another compiler can load it at run time (see [`abi`]).
#![deny(missing_docs)]

pub mod abi;
mod allocator;
mod calibrator;
mod codec;
mod error;
mod native;
mod params;
pub mod registry;
mod tensor;

pub use allocator::{Allocator, AllocatorConfig, CodecChoice, LayerPlan, Override, Plan, Probe, ProbeResult, glob_match};
pub use calibrator::{Calibrator, StatKind, StatsNeeds};
pub use codec::{Codec, ParamSpec, ParamType, param_in_range, param_one_of, validate_params, validate_recorded};
pub use error::{Error, ErrorKind, Result};
pub use native::{NativeForm, NativeTarget};
pub use params::{ParamValue, Params};
pub use tensor::{DType, Encoded, Gram, LayerInfo, LayerRole, LayerStats, Part, WeightView};

/// Version of this API. A registry entry built against another version is refused.
///
/// Bumped whenever a trait or a type in this crate changes in a way an implementation can observe.
pub const API_VERSION: u32 = 1;

#[doc(hidden)]
pub use inventory as __inventory;
