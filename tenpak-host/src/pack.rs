//! `tenpak pack`: plan every weight, encode it, write the artifact, record what it cost.
//!
//! This is the calibration-free path: each tensor is loaded, encoded and written on its own, so
//! peak memory is about one tensor in f32 plus its encoding. The block-by-block calibrated
//! pipeline arrives with the calibrators.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use tenpak_api::registry::Registry;
use tenpak_api::{LayerInfo, LayerPlan, LayerStats, Params, Probe, ProbeResult, WeightView};

use crate::artifact::safetensors_writer::sha256_file;
use crate::artifact::{
    ArtifactWriter, FORMAT, FORMAT_VERSION, FileRecord, Manifest, PresetRecord, SourceRecord, TensorRecord, Totals,
};
use crate::model::{ModelSource, TokenizerSource};
use crate::preset::Preset;
use crate::progress::Progress;
use crate::roles;

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

/// Pack `job.model` into an artifact at `job.output`. Returns the manifest written.
pub fn pack(job: &PackJob<'_>, registry: &Registry) -> Result<Manifest> {
    let model = job.model;
    job.preset.validate(registry)?;
    if !job.preset.calibration.calibrators.is_empty() {
        bail!(
            "preset `{}` asks for calibrators ({}), but calibrated packing is not implemented in this build yet",
            job.preset.name,
            job.preset.calibration.calibrators.join(", ")
        );
    }
    let plan = plan(model, job.preset, registry)?;
    let mut writer = ArtifactWriter::create(&job.output, job.force)?;
    let mut progress = if job.progress { Progress::new(model.tensors().len() as u64, "pack") } else { Progress::hidden() };
    for info in model.tensors() {
        let values = model.load_f32(&info.name)?;
        let (role, _) = roles::classify(&info.name, &info.shape);
        let mut record = TensorRecord {
            name: info.name.clone(),
            shape: info.shape.clone(),
            role,
            source_dtype: info.dtype.name(),
            codec: None,
            codec_source: None,
            params: Params::new(),
            bits: values.len() as u64 * 32,
            bits_per_weight: 32.0,
            rel_mse: 0.0,
            snr_db: None,
            parts: Vec::new(),
        };
        match plan.get(&info.name) {
            None => writer.add_raw(record, &values)?,
            Some(lp) => {
                let codec = registry.codec(&lp.codec)?;
                let view = WeightView::new(&values, info.shape[0], info.shape[1])?;
                let encoded = codec
                    .encode(view, &LayerStats::none(), &lp.params)
                    .with_context(|| format!("encoding `{}` with {}", info.name, lp.codec))?;
                let decoded = codec
                    .decode(&encoded)
                    .with_context(|| format!("decoding `{}` with {}", info.name, lp.codec))?;
                let (rel_mse, snr_db) = reconstruction_error(&values, &decoded);
                record.codec = Some(lp.codec.clone());
                record.codec_source = registry.codec_source(&lp.codec).map(str::to_owned);
                record.params = encoded.params.clone();
                record.bits = codec.size_bits(&encoded);
                record.bits_per_weight = record.bits as f64 / values.len().max(1) as f64;
                record.rel_mse = rel_mse;
                record.snr_db = snr_db;
                writer.add_encoded(record, &encoded)?;
            }
        }
        progress.step(&info.name);
    }
    progress.finish();
    writer.add_file("config.json", model.config_json()?.as_bytes())?;
    match model.tokenizer() {
        TokenizerSource::File(path) => {
            let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            writer.add_file("tokenizer.json", &bytes)?;
        }
        TokenizerSource::Json(text) => writer.add_file("tokenizer.json", text.as_bytes())?,
        TokenizerSource::Missing => {}
    }
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
        evaluation: None,
        shards: Vec::new(),
    };
    let manifest = writer.commit(manifest)?;
    Ok(manifest)
}

/// Replace the manifest of a finished artifact atomically (write a temporary file, rename).
pub fn rewrite_manifest(dir: &Path, manifest: &Manifest) -> Result<()> {
    let tmp = dir.join(".manifest.json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(manifest)?)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, dir.join("manifest.json"))?;
    Ok(())
}
