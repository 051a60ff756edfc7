//! Artifact format v1: what `tenpak pack` writes and everything else reads.
//!
//! ```text
//! artifact/
//!   manifest.json                  see [`Manifest`]
//!   weights/shard_0.safetensors    packed parts keyed "<tensor name>.<part>"; raw tensors by name
//!   config.json, tokenizer.json    copied (or derived, for a GGUF source)
//!   chat_template.jinja            the source's chat template, when it has one
//! ```
//!
//! Writing happens in a hidden temporary directory beside the destination, which is renamed into
//! place only after every file is written and synced: a crash leaves a `.<name>.tmp-*` directory,
//! never a directory that looks like a finished artifact. Reading verifies the manifest version
//! and the size and sha256 of every shard before any tensor is trusted.
//!
//! Modules: [`manifest`] (the types of `manifest.json`), [`writer`], [`reader`] (and the
//! artifact as a model source), [`safetensors_writer`] (the shard files).

pub mod manifest;
pub mod reader;
pub mod safetensors_writer;
pub mod writer;

pub use manifest::*;

/// The side file holding the source model's chat template (the name transformers reads).
pub const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";
pub use reader::{Artifact, ArtifactSource};
pub use writer::{ArtifactWriter, Staged, remove_stale_temporaries, temp_sibling};
