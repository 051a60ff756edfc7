//! TenPak's model side: reading a model and running it, with no knowledge of packing.
//!
//! - [`source`]: the [`ModelSource`] trait and [`open`]; readers for Hugging Face safetensors
//!   ([`safetensors_source`]) and GGUF ([`gguf`], with [`ggml`]'s type table and
//!   [`gguf_tokenizer`], which rebuilds a `tokenizer.json` from a GGUF vocabulary). Every source
//!   is read tensor by tensor from a memory map and speaks one convention: Hugging Face names
//!   and Llama's q/k row order.
//! - [`config`]: the hyper-parameters the runtime needs, from `config.json` or GGUF metadata.
//! - [`tokenize`]: the model's tokenizer through the `tokenizers` crate; [`chat`]: its chat
//!   template, rendered as transformers renders it.
//! - [`roles`]: what each weight does (q/k/v/o, gate/up/down, embedding, head) and its block.
//! - [`runtime`]: the Llama-family forward pass on candle-core, with a hook at every linear
//!   layer's input, block by block, and the gradients of the loss for the Fisher information.
//!
//! The job library (`tenpak-pack`) builds calibration, packing and evaluation on these.
//! Failures are [`tenpak_error::Error`]s; a missing file is tagged not found, an architecture
//! the runtime does not run unsupported.

pub mod chat;
pub mod config;
pub mod ggml;
pub mod gguf;
pub mod gguf_tokenizer;
pub mod roles;
pub mod runtime;
pub mod safetensors_source;
pub mod source;
pub mod tokenize;

pub use config::ModelConfig;
pub(crate) use source::release_pages;
pub use source::{ModelSource, SourceDType, TensorInfo, TokenizerSource, ggml_bits_per_weight, open, open_named};
