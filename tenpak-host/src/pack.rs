//! `tenpak pack`: plan every weight, encode it, write the artifact, record what it cost.
//!
//! Two paths, one artifact format:
//!
//! - **calibration-free** (every planned codec needs no statistics): each tensor is loaded,
//!   encoded and written on its own, so peak memory is about one tensor in f32 plus its encoding;
//!   with an evaluation text, the finished artifact is then scored against the source;
//! - **calibrated** ([`crate::pipeline`]): block by block on calibration text, with the baseline
//!   and compressed perplexity computed along the way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use tenpak_api::registry::Registry;
use tenpak_api::{LayerInfo, LayerPlan, LayerStats, Params, Probe, ProbeResult, WeightView};

use crate::artifact::safetensors_writer::sha256_file;
use crate::artifact::{
    ArtifactSource, ArtifactWriter, EvaluationRecord, FORMAT, FORMAT_VERSION, FileRecord, Manifest, PresetRecord,
    SourceRecord, TensorRecord, Totals,
};
use crate::eval::{self, PplReport};
use crate::model::{ModelSource, TensorInfo, TokenizerSource};
use crate::preset::Preset;
use crate::progress::Progress;
use crate::runtime::LlamaModel;
use crate::{pipeline, roles, tokenize};

/// What to pack and where.
pub struct PackJob<'a> {
    /// The model.
    pub model: &'a dyn ModelSource,
    /// The validated preset.
    pub preset: &'a Preset,
    /// The preset's text, embedded in the manifest.
    pub preset_text: &'a str,
    /// Where the artifact goes.
    pub output: PathBuf,
    /// Replace an existing artifact at `output`.
    pub force: bool,
    /// Show progress.
    pub progress: bool,
    /// Calibration text (needed when the plan's codecs or the preset ask for calibrators).
    pub calib: Option<PathBuf>,
    /// Evaluation text: when given, baseline and compressed perplexity go into the manifest.
    pub eval: Option<PathBuf>,
}

/// Error of a reconstruction: relative MSE and SNR in dB (`None` when exact).
pub fn reconstruction_error(original: &[f32], decoded: &[f32]) -> (f64, Option<f64>) {
    let (mut signal, mut noise) = (0f64, 0f64);
    for (&w, &d) in original.iter().zip(decoded) {
        signal += (w as f64) * (w as f64);
        noise += ((w - d) as f64) * ((w - d) as f64);
    }
    let rel = if signal > 0.0 { noise / signal } else if noise > 0.0 { f64::INFINITY } else { 0.0 };
    let snr = (noise > 0.0).then(|| 10.0 * (signal / noise).log10());
    (rel, snr)
}

/// A probe that really encodes: loads the layer, encodes it with the asked codec, measures.
struct MeasuringProbe<'a> {
    model: &'a dyn ModelSource,
    registry: &'a Registry,
    layers: &'a [LayerInfo],
}

impl Probe for MeasuringProbe<'_> {
    fn try_codec(&mut self, index: usize, codec: &str, params: &Params) -> tenpak_api::Result<ProbeResult> {
        let layer = &self.layers[index];
        let to_api = |e: anyhow::Error| tenpak_api::Error::new(tenpak_api::ErrorKind::Other, format!("{e:#}"));
        let values = self.model.load_f32(&layer.name).map_err(to_api)?;
        let codec = self.registry.codec(codec)?;
        let view = WeightView::new(&values, layer.rows, layer.cols)?;
        let encoded = codec.encode(view, &LayerStats::none(), params)?;
        let decoded = codec.decode(&encoded)?;
        Ok(ProbeResult { bits: codec.size_bits(&encoded), rel_mse: reconstruction_error(&values, &decoded).0 })
    }
}

/// The per-layer plan for `model` under `preset`, keyed by tensor name. Every codec id and
/// parameter set is checked here, before any encoding starts.
pub fn plan(model: &dyn ModelSource, preset: &Preset, registry: &Registry) -> Result<BTreeMap<String, LayerPlan>> {
    let layers: Vec<LayerInfo> = model
        .tensors()
        .iter()
        .filter(|t| t.shape.len() == 2)
        .map(|t| {
            let (role, block) = roles::classify(&t.name, &t.shape);
            LayerInfo { name: t.name.clone(), role, block, rows: t.shape[0], cols: t.shape[1] }
        })
        .collect();
    let allocator = registry.allocator(&preset.allocator.id)?;
    let mut probe = MeasuringProbe { model, registry, layers: &layers };
    let plan = allocator
        .plan(&layers, &preset.allocator_config(), &mut probe)
        .with_context(|| format!("allocator `{}`", preset.allocator.id))?;
    if plan.layers.len() != layers.len() {
        bail!("allocator `{}` planned {} layers, expected {}", preset.allocator.id, plan.layers.len(), layers.len());
    }
    let mut out = BTreeMap::new();
    for lp in plan.layers {
        let codec = registry.codec(&lp.codec).with_context(|| format!("plan for `{}`", lp.name))?;
        codec.validate(&lp.params).with_context(|| format!("plan for `{}` ({})", lp.name, lp.codec))?;
        out.insert(lp.name.clone(), lp);
    }
    Ok(out)
}

fn source_record(model: &dyn ModelSource) -> Result<SourceRecord> {
    let mut dtypes = BTreeMap::new();
    for t in model.tensors() {
        *dtypes.entry(t.dtype.name()).or_insert(0) += 1;
    }
    let files = model
        .files()
        .iter()
        .map(|f| {
            Ok(FileRecord {
                file: f.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned(),
                bytes: std::fs::metadata(f).with_context(|| format!("{}", f.display()))?.len(),
                sha256: sha256_file(f)?,
            })
        })
        .collect::<Result<_>>()?;
    Ok(SourceRecord {
        path: model.path().display().to_string(),
        format: model.format().to_owned(),
        architecture: model.config().model_type.clone(),
        dtypes,
        files,
    })
}

/// Sizes and ratios over `records`; `source_bits` gives each tensor's size in the source.
pub fn totals(records: &[TensorRecord], model: &dyn ModelSource) -> Totals {
    let mut t = Totals::default();
    let mut source_bits = 0f64;
    for r in records {
        let n = r.numel() as u64;
        t.weights += n;
        t.bits += r.bits;
        if r.role.is_block_linear() {
            t.linear_weights += n;
            t.linear_bits += r.bits;
        }
        source_bits += model.tensor(&r.name).map_or(32.0, |i| i.dtype.bits_per_weight()) * n as f64;
    }
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    t.bits_per_weight = ratio(t.bits as f64, t.weights as f64);
    t.linear_bits_per_weight = ratio(t.linear_bits as f64, t.linear_weights as f64);
    t.source_bytes = (source_bits / 8.0).round() as u64;
    t.fp16_bytes = t.weights * 2;
    t.stored_bytes = t.bits.div_ceil(8);
    t.ratio_vs_source = ratio(t.source_bytes as f64, t.stored_bytes as f64);
    t.ratio_vs_fp16 = ratio(t.fp16_bytes as f64, t.stored_bytes as f64);
    t
}

/// A tensor record for `info` stored raw (32 bits per weight); encoding fills in the rest.
fn raw_record(info: &TensorInfo) -> TensorRecord {
    let (role, _) = roles::classify(&info.name, &info.shape);
    TensorRecord {
        name: info.name.clone(),
        shape: info.shape.clone(),
        role,
        source_dtype: info.dtype.name(),
        codec: None,
        codec_source: None,
        params: Params::new(),
        bits: info.numel() as u64 * 32,
        bits_per_weight: 32.0,
        rel_mse: 0.0,
        snr_db: None,
        parts: Vec::new(),
    }
}

/// Write tensor `info` with the values `values`: raw if the plan has no entry for it, else
/// encoded by the planned codec with `stats`. Returns what a reader of the artifact will decode.
pub(crate) fn write_tensor(
    writer: &mut ArtifactWriter,
    registry: &Registry,
    info: &TensorInfo,
    values: Vec<f32>,
    plan: Option<&LayerPlan>,
    stats: &LayerStats,
) -> Result<Vec<f32>> {
    let mut record = raw_record(info);
    let Some(lp) = plan else {
        writer.add_raw(record, &values)?;
        return Ok(values);
    };
    let codec = registry.codec(&lp.codec)?;
    let view = WeightView::new(&values, info.shape[0], info.shape[1])?;
    let encoded =
        codec.encode(view, stats, &lp.params).with_context(|| format!("encoding `{}` with {}", info.name, lp.codec))?;
    let decoded = codec.decode(&encoded).with_context(|| format!("decoding `{}` with {}", info.name, lp.codec))?;
    let (rel_mse, snr_db) = reconstruction_error(&values, &decoded);
    record.codec = Some(lp.codec.clone());
    record.codec_source = registry.codec_source(&lp.codec).map(str::to_owned);
    record.params = encoded.params.clone();
    record.bits = codec.size_bits(&encoded);
    record.bits_per_weight = record.bits as f64 / values.len().max(1) as f64;
    record.rel_mse = rel_mse;
    record.snr_db = snr_db;
    writer.add_encoded(record, &encoded)?;
    Ok(decoded)
}

/// Pack `job.model` into an artifact at `job.output`. Returns the manifest written.
pub fn pack(job: &PackJob<'_>, registry: &Arc<Registry>) -> Result<Manifest> {
    let model = job.model;
    job.preset.validate(registry)?;
    let plan = plan(model, job.preset, registry)?;
    let calibrators = pipeline::calibrators_for(&plan, job.preset, registry)?;
    let mut writer = ArtifactWriter::create(&job.output, job.force)?;
    let (evaluation, calibration) = if calibrators.is_empty() {
        let mut progress =
            if job.progress { Progress::new(model.tensors().len() as u64, "pack") } else { Progress::hidden() };
        for info in model.tensors() {
            let values = model.load_f32(&info.name)?;
            write_tensor(&mut writer, registry, info, values, plan.get(&info.name), &LayerStats::none())?;
            progress.step(&info.name);
        }
        progress.finish();
        (None, None)
    } else {
        let outcome = pipeline::run(job, registry, &plan, calibrators, &mut writer)?;
        (outcome.evaluation, Some(outcome.calibration))
    };
    add_side_files(&mut writer, model)?;
    let totals = totals(writer.records(), model);
    let manifest = Manifest {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        tool: format!("tenpak {}", env!("CARGO_PKG_VERSION")),
        created_unix: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        source: source_record(model)?,
        model_config: model.config().clone(),
        preset: PresetRecord { name: job.preset.name.clone(), toml: job.preset_text.to_owned() },
        tensors: Vec::new(),
        totals,
        evaluation,
        calibration,
        shards: Vec::new(),
    };
    let mut manifest = writer.commit(manifest)?;
    if manifest.evaluation.is_none()
        && let Some(text) = &job.eval
    {
        // Calibration-free: score the finished artifact against its source.
        manifest.evaluation = Some(evaluate_artifact(job, text, registry)?);
        rewrite_manifest(&job.output, &manifest)?;
    }
    Ok(manifest)
}

/// config.json and the tokenizer, copied (or derived), so the artifact stands alone.
fn add_side_files(writer: &mut ArtifactWriter, model: &dyn ModelSource) -> Result<()> {
    writer.add_file("config.json", model.config_json()?.as_bytes())?;
    match model.tokenizer() {
        TokenizerSource::File(path) => {
            let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            writer.add_file("tokenizer.json", &bytes)?;
        }
        TokenizerSource::Json(text) => writer.add_file("tokenizer.json", text.as_bytes())?,
        TokenizerSource::Missing => {}
    }
    Ok(())
}

/// Perplexity of the source and of the finished artifact on `text`, by the preset's evaluation
/// settings.
fn evaluate_artifact(job: &PackJob<'_>, text: &Path, registry: &Arc<Registry>) -> Result<EvaluationRecord> {
    let options = job.preset.eval_options();
    let tokenizer = tokenize::for_model(job.model)?;
    let ids = tokenize::encode_file(&tokenizer, text)?;
    let name = text.display().to_string();
    let score = |source: &dyn ModelSource, what: &str| -> Result<PplReport> {
        let model = LlamaModel::load(source.config(), source)
            .with_context(|| format!("loading {} into the runtime", source.path().display()))?;
        let mut progress = Progress::hidden();
        if job.progress {
            progress = Progress::new(eval::window_count(ids.len(), options.ctx, options.samples, &name)? as u64, what);
        }
        let report = eval::perplexity(&model, &ids, &name, &options, &mut |done, _| progress.step(&format!("window {done}")))?;
        progress.finish();
        Ok(report)
    };
    let baseline = score(job.model, "eval baseline")?;
    let artifact = ArtifactSource::open(&job.output, registry.clone())?;
    let compressed = score(&artifact, "eval compressed")?;
    evaluation_record(&baseline, &compressed, text, None)
}

/// The manifest's evaluation entry; `warning` is appended to the protocol when set.
pub(crate) fn evaluation_record(
    baseline: &PplReport,
    compressed: &PplReport,
    text: &Path,
    warning: Option<&str>,
) -> Result<EvaluationRecord> {
    let mut protocol = format!("{} (text sha256 {})", compressed.protocol, sha256_file(text)?);
    if let Some(warning) = warning {
        protocol.push_str(&format!("; WARNING: {warning}"));
    }
    Ok(EvaluationRecord {
        baseline_ppl: baseline.ppl,
        compressed_ppl: compressed.ppl,
        delta_pct: 100.0 * (compressed.ppl - baseline.ppl) / baseline.ppl,
        protocol,
    })
}

/// Replace the manifest of a finished artifact atomically (write a temporary file, rename).
pub fn rewrite_manifest(dir: &Path, manifest: &Manifest) -> Result<()> {
    let tmp = dir.join(".manifest.json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(manifest)?)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, dir.join("manifest.json"))?;
    Ok(())
}
