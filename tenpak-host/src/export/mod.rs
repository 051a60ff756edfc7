//! `tenpak export`: an artifact in the formats other runtimes load.
//!
//! - [`gguf`]: a GGUF file for llama.cpp (and everything built on it).

pub mod gguf;
mod gguf_vocab;
pub mod gguf_writer;

pub use gguf::{GgufOptions, GgufReport, TensorExport, export_gguf};
