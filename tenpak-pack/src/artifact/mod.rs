//! Artifact format v1: what `tenpak pack` writes and everything else reads.
//!
//! ```text
//! artifact/
//!   manifest.json                  see [`Manifest`]
//!   weights/shard_0.safetensors    packed parts keyed "<tensor name>.<part>"; raw tensors by name
//!   config.json, tokenizer.json    copied (or derived, for a GGUF source)
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
pub use reader::{Artifact, ArtifactSource};
pub use writer::{ArtifactWriter, Staged, remove_stale_temporaries, temp_sibling};
