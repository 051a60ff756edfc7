//! What a model source is: the [`ModelSource`] trait every reader implements (safetensors in
//! [`crate::safetensors_source`], GGUF in [`crate::gguf`], an artifact in the job library), its
//! tensors' names, shapes and storage types, and [`open`], which picks the reader for a path.
//!
//! Every source is read tensor by tensor from a memory map, so peak memory is one tensor's f32
//! copy, not the model. GGUF tensors are renamed to Hugging Face names and the q/k projections
//! un-permuted (llama.cpp's converter interleaves their rows for its RoPE layout), so everything
//! downstream sees one convention: Hugging Face Llama.

use std::path::{Path, PathBuf};

use crate::chat::TemplateSource;
use crate::config::ModelConfig;
use crate::{gguf, safetensors_source};

/// Element type of a tensor in the source file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceDType {
    /// A plain float type: "f32", "f16", "bf16".
    Float(&'static str),
    /// A GGML quantized type, by its name ("q4_1", "q8_0", …).
    Ggml(String),
}

impl SourceDType {
    /// Bits per weight this type occupies in the source file (for size ratios).
    pub fn bits_per_weight(&self) -> f64 {
        match self {
            SourceDType::Float("f32") => 32.0,
            SourceDType::Float(_) => 16.0,
            SourceDType::Ggml(name) => ggml_bits_per_weight(name),
        }
    }
    /// Display name.
    pub fn name(&self) -> String {
        match self {
            SourceDType::Float(n) => (*n).to_owned(),
            SourceDType::Ggml(n) => n.clone(),
        }
    }
}

/// Bits per weight of the GGML block formats, from their block layouts.
pub fn ggml_bits_per_weight(name: &str) -> f64 {
    match name {
        "f32" => 32.0,
        "f16" | "bf16" => 16.0,
        "q4_0" => 18.0 * 8.0 / 32.0,
        "q4_1" => 20.0 * 8.0 / 32.0,
        "q5_0" => 22.0 * 8.0 / 32.0,
        "q5_1" => 24.0 * 8.0 / 32.0,
        "q8_0" => 34.0 * 8.0 / 32.0,
        "q8_1" => 36.0 * 8.0 / 32.0,
        "q2k" => 84.0 * 8.0 / 256.0,
        "q3k" => 110.0 * 8.0 / 256.0,
        "q4k" => 144.0 * 8.0 / 256.0,
        "q5k" => 176.0 * 8.0 / 256.0,
        "q6k" => 210.0 * 8.0 / 256.0,
        "q8k" => 292.0 * 8.0 / 256.0,
        _ => f64::NAN,
    }
}

/// One tensor of a model, as the source describes it (names in Hugging Face convention).
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// Hugging Face name (`model.layers.0.self_attn.q_proj.weight`).
    pub name: String,
    /// Shape, outermost first (a linear weight is `[out_features, in_features]`).
    pub shape: Vec<usize>,
    /// Storage type in the source.
    pub dtype: SourceDType,
}

impl TensorInfo {
    /// Number of elements (`usize::MAX` for a shape too large to exist, so it matches nothing).
    pub fn numel(&self) -> usize {
        self.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).unwrap_or(usize::MAX)
    }
}

/// Where the tokenizer comes from.
#[derive(Clone, Debug)]
pub enum TokenizerSource {
    /// A `tokenizer.json` file.
    File(PathBuf),
    /// A `tokenizer.json` built from a GGUF's embedded vocabulary (serialized JSON text).
    Json(String),
    /// None found.
    Missing,
}

/// A model opened for reading, tensor by tensor.
pub trait ModelSource: Send + Sync {
    /// Path the model was opened from, as messages show it (its name under a server's model
    /// root when opened by [`open_named`]); for reading, see [`ModelSource::files`].
    fn path(&self) -> &Path;
    /// Format name ("safetensors", "gguf").
    fn format(&self) -> &'static str;
    /// Hyper-parameters.
    fn config(&self) -> &ModelConfig;
    /// Every tensor, in a stable order (as stored).
    fn tensors(&self) -> &[TensorInfo];
    /// Load one tensor, dequantized/cast to f32, row-major. Errors name the file and tensor.
    fn load_f32(&self, name: &str) -> tenpak_error::Result<Vec<f32>>;
    /// The tokenizer.
    fn tokenizer(&self) -> TokenizerSource;
    /// Why [`ModelSource::tokenizer`] returned [`TokenizerSource::Missing`], when the source knows
    /// (a GGUF whose pre-tokenizer cannot be reproduced, say), so callers can say more than
    /// "no tokenizer".
    fn tokenizer_error(&self) -> Option<String> {
        None
    }
    /// The chat template shipped with the model ([`crate::chat`]), `None` when it has none.
    /// Errors name a side file that is malformed.
    fn chat_template(&self) -> tenpak_error::Result<Option<TemplateSource>> {
        Ok(None)
    }
    /// An HF `config.json` text for this model (copied if the source had one, derived otherwise).
    fn config_json(&self) -> tenpak_error::Result<String>;
    /// The files this model was read from (for hashing into the manifest).
    fn files(&self) -> Vec<PathBuf>;
    /// Info for tensor `name`, if present.
    fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors().iter().find(|t| t.name == name)
    }
}

/// Open `path`: a directory with `config.json` + `*.safetensors` (sharded through
/// `model.safetensors.index.json` or not), a single `.safetensors` file (with `config.json`
/// beside it), or a `.gguf` file.
pub fn open(path: &Path) -> tenpak_error::Result<Box<dyn ModelSource>> {
    open_named(path, path)
}

/// [`open`] the model at `path`, called `shown` in every message and by [`ModelSource::path`]:
/// a server opens `/srv/models/m.gguf` as `models/m.gguf`, the name its client gave, so no
/// message it returns shows where its files are.
pub fn open_named(path: &Path, shown: &Path) -> tenpak_error::Result<Box<dyn ModelSource>> {
    if !path.exists() {
        return Err(tenpak_error::Kind::NotFound.error(format!("{}: no such file or directory", shown.display())));
    }
    if path.is_dir() {
        return Ok(Box::new(safetensors_source::SafetensorsModel::open_dir_named(path, shown)?));
    }
    match path.extension().and_then(|e| e.to_str()) {
        Some("gguf") => Ok(Box::new(gguf::GgufModel::open_named(path, shown)?)),
        Some("safetensors") => Ok(Box::new(safetensors_source::SafetensorsModel::open_file_named(path, shown)?)),
        _ => tenpak_error::bail!(
            "{}: not a model (expected a directory with config.json and *.safetensors, a .safetensors file, or a .gguf file)",
            shown.display()
        ),
    }
}

/// Drop the pages of `mmap[start..start + len]` from this process's resident set once a tensor
/// has been copied out of them, so that loading a whole f32 model does not hold the file's pages
/// and the copies at the same time. Best effort: an error only means the pages stay resident.
pub(crate) fn release_pages(mmap: &memmap2::Mmap, start: usize, len: usize) {
    #[cfg(unix)]
    // SAFETY: the map is read-only and backed by a file that TenPak never writes while it is
    // open (the same assumption that makes mapping it sound at all). MADV_DONTNEED on such a
    // mapping only discards this process's copy of the pages; the next access faults the same
    // bytes back in from the file, so no slice into the map ever sees different contents.
    let _ = unsafe { mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len) };
}
