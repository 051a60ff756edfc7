//! TenPak's exporters: an artifact in the formats other runtimes load.
//!
//! - [`gguf`]: a GGUF file for llama.cpp (and everything built on it);
//! - [`compressed_tensors`]: a Hugging Face directory in the `compressed-tensors` int4 layout for
//!   vLLM and transformers;
//! - [`report`]: what an export wrote, for people.

pub mod compressed_tensors;
pub mod gguf;
mod gguf_vocab;
pub mod gguf_writer;
pub mod report;

pub use compressed_tensors::{CtOptions, CtReport, export_compressed_tensors};
pub use gguf::{GgufOptions, GgufReport, TensorExport, export_gguf};
