//! `manifest.json`: what an artifact holds and how it was made, as types.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tenpak_api::{LayerRole, Params, ProbeResult};
use tenpak_model::ModelConfig;

/// The `format` field of every manifest.
pub const FORMAT: &str = "tenpak-artifact";
/// The artifact format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Shards are closed once they hold this many bytes of tensor data.
pub const SHARD_BYTES: u64 = 2 << 30;

/// `manifest.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`FORMAT_VERSION`] at writing time.
    pub format_version: u32,
    /// `tenpak <version>`.
    pub tool: String,
    /// Seconds since the Unix epoch when the artifact was finished.
    pub created_unix: u64,
    /// The model it was made from.
    pub source: SourceRecord,
    /// Hyper-parameters of the model (so readers need not parse `config.json`).
    pub model_config: ModelConfig,
    /// The preset, whole.
    pub preset: PresetRecord,
    /// Every tensor, in source order.
    pub tensors: Vec<TensorRecord>,
    /// Sizes and ratios.
    pub totals: Totals,
    /// Baseline and compressed perplexity, when `pack` evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<EvaluationRecord>,
    /// How calibration statistics were gathered (absent for calibration-free presets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<CalibrationRecord>,
    /// What a measuring allocator measured and chose (absent for rule-based presets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation: Option<AllocationRecord>,
    /// The weight shards with their hashes.
    pub shards: Vec<ShardRecord>,
}

/// Where the weights came from.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SourceRecord {
    /// Path as given.
    pub path: String,
    /// "safetensors" or "gguf".
    pub format: String,
    /// HF `model_type`.
    pub architecture: String,
    /// Storage types of the source's tensors with their counts (`{"q4_1": 210, "f32": 61}`).
    pub dtypes: BTreeMap<String, usize>,
    /// The source files and their sha256.
    pub files: Vec<FileRecord>,
}

/// A file and its hash.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FileRecord {
    /// File name.
    pub file: String,
    /// Size in bytes.
    pub bytes: u64,
    /// sha256, lowercase hex.
    pub sha256: String,
}

/// The preset an artifact was made with.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PresetRecord {
    /// Preset name.
    pub name: String,
    /// The preset file's text, whole.
    pub toml: String,
}

/// One stored part of a tensor.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PartRecord {
    /// Part name within the tensor.
    pub name: String,
    /// Key in the shard (`"<tensor>.<part>"`).
    pub key: String,
    /// Index into [`Manifest::shards`].
    pub shard: usize,
}

/// One tensor of the model.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TensorRecord {
    /// Hugging Face name.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Role in the model.
    pub role: LayerRole,
    /// Storage type in the source.
    pub source_dtype: String,
    /// Codec id, or `None` for a tensor stored as-is (f32, keyed by its own name).
    pub codec: Option<String>,
    /// Where the codec came from when the artifact was written (crate and version, or plugin
    /// library), so a reader missing it knows what to install.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codec_source: Option<String>,
    /// Codec parameters (empty for raw tensors).
    pub params: Params,
    /// Exact stored bits.
    pub bits: u64,
    /// `bits / numel`.
    pub bits_per_weight: f64,
    /// ‖W − Ŵ‖² / ‖W‖².
    pub rel_mse: f64,
    /// 10·log10(‖W‖² / ‖W − Ŵ‖²), dB (infinite when exact: stored as null).
    pub snr_db: Option<f64>,
    /// Stored parts.
    pub parts: Vec<PartRecord>,
}

impl TensorRecord {
    /// Number of elements (`usize::MAX` for a shape too large to exist, so it matches nothing).
    pub fn numel(&self) -> usize {
        self.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).unwrap_or(usize::MAX)
    }
}

/// Sizes and ratios.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Totals {
    /// Weights in the model.
    pub weights: u64,
    /// Stored bits over all tensors.
    pub bits: u64,
    /// `bits / weights`.
    pub bits_per_weight: f64,
    /// Weights in block linears (attention and MLP projections).
    pub linear_weights: u64,
    /// Stored bits of block linears.
    pub linear_bits: u64,
    /// `linear_bits / linear_weights`.
    pub linear_bits_per_weight: f64,
    /// Size of the tensors in the source's own storage types, bytes.
    pub source_bytes: u64,
    /// Size the model would have in fp16, bytes.
    pub fp16_bytes: u64,
    /// Stored tensor bytes in the artifact (`bits / 8`).
    pub stored_bytes: u64,
    /// `source_bytes / stored_bytes`.
    pub ratio_vs_source: f64,
    /// `fp16_bytes / stored_bytes`.
    pub ratio_vs_fp16: f64,
}

/// Perplexity before and after compression.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvaluationRecord {
    /// PPL of the source model.
    pub baseline_ppl: f64,
    /// PPL of the compressed model.
    pub compressed_ppl: f64,
    /// `100 · (compressed − baseline) / baseline`.
    pub delta_pct: f64,
    /// How the figures were measured (text, its sha256, ctx, windows, tokens scored).
    pub protocol: String,
    /// The compressed model's next-token distributions against the baseline's on the same
    /// tokens; absent when the baseline was not run (a baseline reused from an earlier pack) and
    /// in manifests written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub divergence: Option<DivergenceRecord>,
    /// Multiple-choice accuracy of the compressed model per task ([`crate::tasks`]), when the
    /// pack was given tasks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<TaskScore>,
    /// The source model's accuracy on the same items.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub baseline_tasks: Vec<TaskScore>,
}

/// A model's multiple-choice accuracy on one task, as lm-eval-harness reports it (uncertainties
/// are one standard error: sample standard deviation / √n).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskScore {
    /// The task's name (the items' `task` field).
    pub task: String,
    /// Items scored.
    pub items: usize,
    /// Fraction of items whose most likely choice is the right one.
    pub acc: f64,
    /// Its standard error.
    pub acc_err: f64,
    /// The same with log-likelihoods per character of the choice; absent for acc-only tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acc_norm: Option<f64>,
    /// Its standard error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acc_norm_err: Option<f64>,
}

/// How far a compressed model's next-token distributions moved from its base's, token by token
/// on the same windows (llama.cpp's `llama-perplexity --kl-divergence` statistics). Uncertainties
/// are one standard error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DivergenceRecord {
    /// Tokens compared.
    pub tokens: usize,
    /// Mean KL(base ‖ compressed), nats per token.
    pub kld_mean: f64,
    /// Standard error of the mean KLD.
    pub kld_mean_err: f64,
    /// Median KLD.
    pub kld_median: f64,
    /// 90th percentile of the KLD (linear interpolation between ranks, as llama.cpp).
    pub kld_p90: f64,
    /// 99th percentile of the KLD.
    pub kld_p99: f64,
    /// 99.9th percentile of the KLD.
    pub kld_p999: f64,
    /// Largest KLD of a token.
    pub kld_max: f64,
    /// Percentage of tokens where both models rank the same token first.
    pub same_top_pct: f64,
    /// Its standard error, in percentage points.
    pub same_top_err_pct: f64,
    /// RMS of p_compressed(correct token) − p_base(correct token), in percentage points.
    pub dp_rms_pct: f64,
    /// Its standard error.
    pub dp_rms_err_pct: f64,
    /// Perplexity of the base on these tokens.
    pub ppl_base: f64,
    /// Perplexity of the compressed model on these tokens.
    pub ppl: f64,
    /// PPL(compressed) / PPL(base).
    pub ppl_ratio: f64,
    /// Its standard error (from the per-token NLL variances and their covariance).
    pub ppl_ratio_err: f64,
}

/// The calibration behind a calibrated artifact.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CalibrationRecord {
    /// Calibrator ids that ran.
    pub calibrators: Vec<String>,
    /// The calibration text's path, as given.
    pub text: String,
    /// Its sha256.
    pub text_sha256: String,
    /// Windows used (the first this-many non-overlapping windows of the text).
    pub windows: usize,
    /// Tokens per window.
    pub ctx: usize,
    /// Wall time of calibration, encoding and evaluation together, in seconds.
    pub seconds: f64,
}

/// One weight shard.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShardRecord {
    /// Path relative to the artifact directory.
    pub file: String,
    /// Size in bytes.
    pub bytes: u64,
    /// sha256, lowercase hex.
    pub sha256: String,
}

/// What a measured allocation chose, for the manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AllocationRecord {
    /// Allocator id.
    pub allocator: String,
    /// Its parameters as the pack used them (the target included).
    pub params: Params,
    /// Measurements made in this pack.
    pub measured: usize,
    /// Measurements read from the cache.
    pub cached: usize,
    /// The cache file's name (in the probe cache directory, `TENPAK_CACHE_DIR`), when one was used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
    /// Wall time of measuring and choosing, in seconds.
    pub seconds: f64,
    /// Every block linear's chosen configuration as measured: stored bits and errors.
    pub layers: Vec<ChosenLayer>,
}

/// One layer's measured choice.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChosenLayer {
    /// Tensor name.
    pub name: String,
    /// What its measurement found.
    #[serde(flatten)]
    pub result: ProbeResult,
}
