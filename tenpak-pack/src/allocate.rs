//! Planning by measurement: a measuring allocator (`bit_budget`) chooses each layer's codec
//! configuration from what its candidates cost on *this* model and calibration text.
//!
//! ```text
//! (fisher)   gradient pass over the first FISHER_WINDOWS calibration windows; the Fisher diagonal
//!            of every block linear, reduced to one weight per output channel
//! measure    block by block on the original model: calibrate the block's linears (Gram matrix and
//!            what the candidate codecs need), then encode each linear with each candidate the
//!            allocator asks for: exact bits, output error tr(E G Eᵀ), Fisher-weighted output error
//! allocate   the allocator's choice from those measurements (bit_budget: a knapsack over the
//!            budget); the pack then encodes by that plan through the usual pipeline
//! ```
//!
//! Measurements run on the original model's activations (every candidate of a block sees the
//! same inputs, so the choice compares like with like); the pack afterwards encodes on the
//! quantized path, as every calibrated pack does, so it re-encodes the chosen configuration
//! rather than keeping the measurement's encoding. Each measurement is cached on disk per
//! (model files, calibration text and windows, tool version, layer, codec, parameters) in
//! [`cache_dir`], so a second pack at another target measures nothing and runs no model.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tenpak_api::registry::Registry;
use tenpak_api::{Calibrator, LayerInfo, LayerPlan, LayerStats, Params, Probe, ProbeResult, StatKind, StatsNeeds, WeightView};
use tenpak_error::{Context, Kind, Result, bail};
use tenpak_model::ModelSource;
use tenpak_quant::quadratic::{quadratic_form, quadratic_form_rows};

use crate::artifact::safetensors_writer::{hex, sha256_file_named};
use crate::artifact::{AllocationRecord, ChosenLayer};
use crate::calibrate::{self, Watched};
use crate::encode::reconstruction_error;
use crate::observe::{Stage, Tracker};
use crate::plan::{Calibration, MeasuredAllocation, PackPlan, check_plan};
use tenpak_model::runtime::llama::embed;
use tenpak_model::runtime::{Block, RopeTables};
use tenpak_model::{roles, runtime};

/// Calibration windows the Fisher gradient pass runs on (the first of the calibration text).
pub const FISHER_WINDOWS: usize = 8;

/// The directory measurements are cached in: `$TENPAK_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/tenpak`, else `$HOME/.cache/tenpak`; `None` (no cache) when none is set.
pub fn cache_dir() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("TENPAK_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("tenpak")))
        .or_else(|| var("HOME").map(|d| d.join(".cache").join("tenpak")))
}

/// Measurements of one (model, calibration) context, kept in one JSON file.
#[derive(Default, Serialize, Deserialize)]
struct CacheFile {
    /// What the measurements depend on, spelled out (the file name is its hash).
    context: BTreeMap<String, String>,
    /// `layer|codec|parameters as JSON` → result.
    entries: BTreeMap<String, Measured>,
}

/// One measurement: the probe's result and the parameters the codec recorded with its encoding.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Measured {
    #[serde(flatten)]
    result: ProbeResult,
    /// What the encoder recorded (decisions such as int4_awq's searched `alpha`): the pack
    /// encodes the chosen configuration with them pinned, so it stores what was measured.
    recorded: Params,
}

struct Cache {
    path: Option<PathBuf>,
    file: CacheFile,
    dirty: bool,
}

impl Cache {
    /// The cache for `context` under `dir`, read if it exists (an unreadable file is a warning's
    /// worth: it is measured again and rewritten).
    fn open(dir: Option<&Path>, context: BTreeMap<String, String>) -> Cache {
        let digest = hex(&Sha256::digest(serde_json::to_vec(&context).expect("strings serialize")));
        let path = dir.map(|d| d.join("probes").join(format!("{}.json", &digest[..24])));
        let file = path
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|bytes| serde_json::from_slice::<CacheFile>(&bytes).ok())
            .filter(|f| f.context == context)
            .unwrap_or(CacheFile { context, entries: BTreeMap::new() });
        Cache { path, file, dirty: false }
    }

    /// Write the file if anything was added: to a temporary name, then renamed over, so a crash
    /// never leaves half a file.
    fn save(&mut self) -> Result<()> {
        let Some(path) = &self.path else { return Ok(()) };
        if !self.dirty {
            return Ok(());
        }
        let dir = path.parent().expect("a file under the cache directory");
        std::fs::create_dir_all(dir).with_context(|| format!("creating the measurement cache {}", dir.display()))?;
        let temp = path.with_extension(format!("json.{}.tmp", std::process::id()));
        let written = std::fs::write(&temp, serde_json::to_vec(&self.file)?)
            .with_context(|| format!("writing {}", temp.display()))
            .and_then(|()| std::fs::rename(&temp, path).with_context(|| format!("replacing {}", path.display())));
        if written.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        written?;
        self.dirty = false;
        Ok(())
    }
}

fn cache_key(layer: &str, codec: &str, params: &Params) -> String {
    format!("{layer}|{codec}|{}", serde_json::to_string(params).expect("parameters serialize"))
}

/// The original model's hidden states of the calibration windows, at the input of block `next`.
struct FloatPath {
    rope: RopeTables,
    hidden: Vec<Tensor>,
    next: usize,
}

/// The block being measured: its linears' original weights and statistics.
struct MeasuredBlock {
    index: usize,
    weights: BTreeMap<String, Vec<f32>>,
    stats: BTreeMap<String, LayerStats>,
}

/// A probe that encodes with calibration statistics, block by block on the original model.
struct CalibratedProbe<'a> {
    plan: &'a PackPlan,
    calibration: &'a Calibration,
    registry: &'a Registry,
    layers: &'a [LayerInfo],
    tracker: &'a Tracker<'a>,
    /// Statistics gathered for every block linear: what the allocator and every planned codec
    /// need, and the preset's listed calibrators.
    needs: StatsNeeds,
    /// Statistic kinds the preset lists (passed to every codec, as the pipeline does).
    listed: Vec<StatKind>,
    cache: Cache,
    float: Option<FloatPath>,
    current: Option<MeasuredBlock>,
    /// Per layer, Σᵢ F[o, i] for every output channel o (when the allocator wants Fisher).
    fisher_rows: Option<BTreeMap<String, Vec<f64>>>,
    results: HashMap<(usize, String), Measured>,
    measured: usize,
    cached: usize,
}

impl CalibratedProbe<'_> {
    /// Statistics for a codec that needs `needs`: the kinds it asks for and the preset's listed
    /// ones, out of everything measured for the layer.
    fn stats_for(&self, all: &LayerStats, needs: StatsNeeds) -> LayerStats {
        let keep = |kind: StatKind| needs.wants(kind) || self.listed.contains(&kind);
        LayerStats {
            act_scale: all.act_scale.clone().filter(|_| keep(StatKind::ActScale)),
            hessian_diag: all.hessian_diag.clone().filter(|_| keep(StatKind::HessianDiag)),
            gram: all.gram.clone().filter(|_| keep(StatKind::Gram)),
            fisher_diag: None,
            samples: all.samples,
        }
    }

    /// Make block `index` current: its weights and the statistics of its linears' inputs on the
    /// original model, the float path moved past it.
    fn enter_block(&mut self, index: usize) -> Result<()> {
        if self.current.as_ref().is_some_and(|b| b.index == index) {
            return Ok(());
        }
        let model = self.plan.model.as_ref();
        let config = model.config();
        let n = config.num_hidden_layers;
        if self.float.as_ref().is_none_or(|f| f.next > index) {
            let embed_tokens = runtime::llama::load_tensor(model, "model.embed_tokens.weight", &[config.vocab_size, config.hidden_size])?;
            let c = self.calibration;
            let hidden = (0..c.windows).map(|w| embed(&embed_tokens, &c.ids[w * c.ctx..(w + 1) * c.ctx], 1)).collect::<Result<_>>()?;
            self.float = Some(FloatPath { rope: RopeTables::new(config, c.ctx)?, hidden, next: 0 });
        }
        let float = self.float.as_mut().expect("set above");
        while float.next < index {
            let block = Block::load(config, float.next, model).with_context(|| format!("loading block {}", float.next))?;
            float.hidden = runtime::llama::forward_windows(&block, &float.hidden, &float.rope)?;
            float.next += 1;
        }
        self.tracker.begin(Stage::Measure, Some((index, n)), format!("block {}/{n}: measuring", index + 1))?;
        let block = Block::load(config, index, model).with_context(|| format!("loading block {index}"))?;
        // Every calibrator watches every linear; the block's outputs move the float path on.
        let mut calibrators = calibrators_providing(self.needs, self.registry)?;
        let every: Vec<usize> = (0..calibrators.len()).collect();
        let linears: Vec<Watched> = calibrate::linears(&block).into_iter().map(|info| Watched { info, calibrators: every.clone() }).collect();
        let outputs = calibrate::observe(&block, &float.hidden, &float.rope, &mut calibrators, &linears, true)?;
        float.hidden = outputs.expect("asked for the outputs");
        float.next = index + 1;
        let mut stats = BTreeMap::new();
        let mut weights = BTreeMap::new();
        for (layer, linear) in linears.iter().zip(block.linears()) {
            stats.insert(layer.info.name.clone(), calibrate::statistics(&mut calibrators, &layer.info, &every)?);
            weights.insert(layer.info.name.clone(), linear.weight().flatten_all()?.to_vec1::<f32>()?);
        }
        self.current = Some(MeasuredBlock { index, weights, stats });
        self.tracker.end(Stage::Measure, Some((index, n)), format!("block {}/{n}: measured", index + 1));
        Ok(())
    }

    fn measure(&mut self, index: usize, codec_id: &str, params: &Params) -> Result<Measured> {
        let layer = &self.layers[index];
        let codec = self.registry.codec(codec_id)?;
        let block_linear = layer.role.is_block_linear() && layer.block.is_some();
        let (values, all_stats) = match layer.block.filter(|_| block_linear) {
            Some(b) => {
                if self.plan.model.config().num_hidden_layers <= b {
                    bail!("`{}` names block {b}, which the model does not have", layer.name);
                }
                if self.fisher_rows.is_none() && self.needs.fisher_diag {
                    self.fisher_rows = Some(fisher_rows(self.plan, self.calibration, self.registry, self.tracker)?);
                }
                self.enter_block(b)?;
                let current = self.current.as_ref().expect("entered");
                let values = current.weights.get(&layer.name).with_context(|| format!("`{}` is not a linear of block {b}", layer.name))?;
                (values.clone(), current.stats[&layer.name].clone())
            }
            None => (self.plan.model.load_f32(&layer.name)?, LayerStats::none()),
        };
        if !block_linear && !codec.needs().is_none() {
            bail!("`{}` is not a block linear, so it has no calibration statistics for codec `{codec_id}`", layer.name);
        }
        let stats = self.stats_for(&all_stats, codec.needs());
        let view = WeightView::new(&values, layer.rows, layer.cols)?;
        let fisher = self.fisher_rows.as_ref().and_then(|f| f.get(&layer.name)).map(Vec::as_slice);
        // OpenBLAS on one thread, as in every encode: the same measurement at any thread count.
        tenpak_model::runtime::blas::single_threaded(|| {
            let encoded = codec.encode(view, &stats, params).with_context(|| format!("measuring `{}` with {codec_id}", layer.name))?;
            let decoded = codec.decode(&encoded).with_context(|| format!("decoding `{}` with {codec_id}", layer.name))?;
            let result = probe_result(&values, &decoded, layer.cols, codec.size_bits(&encoded), all_stats.gram.as_ref(), fisher);
            Ok(Measured { result, recorded: encoded.params })
        })
    }
}

impl Probe for CalibratedProbe<'_> {
    fn try_codec(&mut self, index: usize, codec: &str, params: &Params) -> tenpak_api::Result<ProbeResult> {
        let Some(layer) = self.layers.get(index) else {
            return Err(tenpak_api::Error::invalid_param(format!("probe: no layer {index} ({} layers)", self.layers.len())));
        };
        let key = cache_key(&layer.name, codec, params);
        let measured = match self.cache.file.entries.get(&key) {
            Some(cached) => {
                self.cached += 1;
                cached.clone()
            }
            None => {
                let previous_block = self.current.as_ref().map(|b| b.index);
                let measured = self.measure(index, codec, params).map_err(to_api)?;
                // Save after each block, so an interrupted pack keeps what it measured.
                if previous_block.is_some() && previous_block != self.current.as_ref().map(|b| b.index) {
                    self.cache.save().map_err(to_api)?;
                }
                self.cache.file.entries.insert(key.clone(), measured.clone());
                self.cache.dirty = true;
                self.measured += 1;
                measured
            }
        };
        let result = measured.result;
        self.results.insert((index, key), measured);
        Ok(result)
    }
}

fn to_api(e: tenpak_error::Error) -> tenpak_api::Error {
    match e.downcast_ref::<tenpak_api::Error>() {
        Some(e) => e.clone(),
        None => tenpak_api::Error::new(tenpak_api::ErrorKind::Other, format!("{e:#}")),
    }
}

/// A probe's result from the original weight `original`, its decode and the layer's Gram matrix
/// and Fisher row sums (Σᵢ F[o, i] per output channel o), where measured.
///
/// With F ≈ fₒ·Gᵢᵢ (the Kronecker-factored view of the Fisher: output-gradient power times input
/// power), fₒ = Σᵢ F[o, i] / tr(G), and the loss grows by about ½ Σₒ fₒ (E G Eᵀ)ₒₒ.
pub fn probe_result(original: &[f32], decoded: &[f32], cols: usize, bits: u64, gram: Option<&tenpak_api::Gram>, fisher_rows: Option<&[f64]>) -> ProbeResult {
    let rel_mse = reconstruction_error(original, decoded).0;
    let (mut output_error, mut loss_error) = (None, None);
    if let Some(g) = gram.filter(|g| g.dim == cols && cols > 0) {
        let error: Vec<f32> = original.iter().zip(decoded).map(|(w, d)| w - d).collect();
        let rows = quadratic_form_rows(&error, &g.data, original.len() / cols, cols);
        let energy = quadratic_form(original, &g.data, cols);
        let total: f64 = rows.iter().sum();
        output_error = Some(if energy > 0.0 { total / energy } else if total > 0.0 { f64::INFINITY } else { 0.0 });
        if let Some(f) = fisher_rows.filter(|f| f.len() == rows.len()) {
            let trace: f64 = (0..cols).map(|i| f64::from(g.data[i * cols + i])).sum();
            if trace > 0.0 {
                loss_error = Some(rows.iter().zip(f).map(|(r, f)| r * f / trace).sum());
            }
        }
    }
    ProbeResult { bits, rel_mse, output_error, loss_error }
}

/// Fresh calibrators providing every statistic in `needs` (the Fisher diagonal excepted: it
/// comes from the gradient pass).
fn calibrators_providing(needs: StatsNeeds, registry: &Registry) -> Result<Vec<Box<dyn Calibrator>>> {
    let mut out: Vec<Box<dyn Calibrator>> = Vec::new();
    for kind in [StatKind::ActScale, StatKind::HessianDiag, StatKind::Gram] {
        if needs.wants(kind) {
            out.push(registry.calibrator_for(kind).with_context(|| format!("no registered calibrator provides {kind:?} statistics"))?);
        }
    }
    Ok(out)
}

/// Σᵢ F[o, i] per output channel of every block linear: the Fisher diagonal (the registered
/// `fisher_diag` calibrator fed by the runtime's gradient pass on the first [`FISHER_WINDOWS`]
/// calibration windows), summed over each row.
fn fisher_rows(plan: &PackPlan, calibration: &Calibration, registry: &Registry, tracker: &Tracker<'_>) -> Result<BTreeMap<String, Vec<f64>>> {
    let model = plan.model.as_ref();
    let config = model.config();
    let n = config.num_hidden_layers;
    let windows = calibration.windows.min(FISHER_WINDOWS);
    tracker.begin(Stage::Measure, None, format!("Fisher information: gradients of {windows} windows"))?;
    let mut calibrator =
        registry.calibrator_for(StatKind::FisherDiag).context("no registered calibrator provides the Fisher diagonal (fisher_diag)")?;
    let mut rows: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut pending: Vec<LayerInfo> = Vec::new();
    let finish = |calibrator: &mut Box<dyn Calibrator>, pending: &mut Vec<LayerInfo>, rows: &mut BTreeMap<String, Vec<f64>>| -> Result<()> {
        for layer in pending.drain(..) {
            let mut stats = LayerStats::none();
            calibrator.finish(&layer, &mut stats).with_context(|| format!("fisher_diag for `{}`", layer.name))?;
            let fisher = stats.fisher_diag.context("fisher_diag finished without a diagonal")?;
            let sums = fisher.chunks_exact(layer.cols).map(|r| r.iter().map(|&v| f64::from(v)).sum()).collect();
            rows.insert(layer.name, sums);
        }
        Ok(())
    };
    let mut visit = |name: &str, gradient: &[f32], r: usize, c: usize| -> Result<()> {
        let (role, block) = roles::classify(name, &[r, c]);
        // Gradients arrive block by block: finish a block's layers (and free their
        // accumulators) once the next block's start.
        if pending.first().is_some_and(|p| p.block != block) {
            finish(&mut calibrator, &mut pending, &mut rows)?;
            tracker.check()?;
        }
        let layer = LayerInfo { name: name.to_owned(), role, block, rows: r, cols: c };
        calibrator.observe_gradient(&layer, WeightView::new(gradient, r, c)?)?;
        if !pending.iter().any(|p| p.name == name) {
            pending.push(layer);
        }
        Ok(())
    };
    let started = Instant::now();
    runtime::grad::weight_gradients(config, model, &calibration.ids, windows, calibration.ctx, &mut visit)?;
    finish(&mut calibrator, &mut pending, &mut rows)?;
    tracker.end(Stage::Measure, None, format!("Fisher information: {n} blocks in {:.0} s", started.elapsed().as_secs_f64()));
    Ok(rows)
}

/// What the measurement depends on, for the cache.
fn cache_context(plan: &PackPlan, calibration: &Calibration, needs: StatsNeeds, model: &dyn ModelSource) -> Result<BTreeMap<String, String>> {
    let mut context = BTreeMap::new();
    context.insert("tool".into(), format!("tenpak {}", env!("CARGO_PKG_VERSION")));
    for f in model.files() {
        let file = f.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        let sha256 = sha256_file_named(&f, &format!("{}, file {file}", model.path().display()))?;
        context.insert(format!("model {file}"), sha256);
    }
    context.insert("calibration text sha256".into(), calibration.text.sha256.clone());
    context.insert("calibration windows".into(), format!("{} x {}", calibration.windows, calibration.ctx));
    context.insert("calibrators listed".into(), plan.preset.calibration.calibrators.join(","));
    if needs.fisher_diag {
        context.insert("fisher windows".into(), calibration.windows.min(FISHER_WINDOWS).to_string());
    }
    Ok(context)
}

/// Run the preset's measuring allocator on `plan`, starting from `measured` (its rules and
/// candidates): the per-layer plan it chooses, and the record of how.
pub(crate) fn allocate(
    plan: &PackPlan,
    measured: &MeasuredAllocation,
    registry: &Registry,
    tracker: &Tracker<'_>,
) -> Result<(BTreeMap<String, LayerPlan>, AllocationRecord)> {
    let started = Instant::now();
    let model = plan.model.as_ref();
    let calibration = plan.calibration.as_ref().context("a measuring allocator needs the calibration text")?;
    let config = plan.preset.allocator_config();
    let allocator = registry.allocator(&plan.preset.allocator.id)?;
    let mut needs = allocator.needs(&config).union(StatsNeeds { gram: true, ..StatsNeeds::NONE });
    for lp in measured.rules.values() {
        needs = needs.union(registry.codec(&lp.codec)?.needs());
    }
    for candidate in &config.candidates {
        if let Some(id) = &candidate.codec {
            needs = needs.union(registry.codec(id)?.needs());
        }
    }
    let listed: Vec<StatKind> = plan
        .preset
        .calibration
        .calibrators
        .iter()
        .map(|id| Ok(registry.calibrator(id)?.provides()))
        .collect::<tenpak_api::Result<_>>()?;
    // A listed calibrator's statistic is gathered too (the Fisher diagonal comes from the
    // gradient pass, when the allocator wants it).
    for &kind in listed.iter().filter(|&&kind| kind != StatKind::FisherDiag) {
        needs = needs.union(StatsNeeds::of(kind));
    }
    let layers = roles::layer_infos(model);
    let dir = cache_dir();
    let cache = Cache::open(dir.as_deref(), cache_context(plan, calibration, needs, model)?);
    // The file's name only: the cache directory is the machine's, and a served artifact must not
    // show it.
    let cache_path = cache.path.as_ref().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned());
    let mut probe = CalibratedProbe {
        plan,
        calibration,
        registry,
        layers: &layers,
        tracker,
        needs,
        listed,
        cache,
        float: None,
        current: None,
        fisher_rows: None,
        results: HashMap::new(),
        measured: 0,
        cached: 0,
    };
    // A target the candidates cannot meet is the request's fault, not the pack's.
    let chosen = allocator.plan(&layers, &config, &mut probe).map_err(|e| {
        let kind = if e.kind() == tenpak_api::ErrorKind::InvalidParam { Kind::BadRequest } else { Kind::Internal };
        kind.error(format!("allocator `{}`: {e}", allocator.id()))
    });
    probe.cache.save()?;
    let chosen = chosen?;
    let mut out = check_plan(chosen, &layers, registry, allocator.id())?;
    let mut record_layers = Vec::new();
    for (index, layer) in layers.iter().enumerate() {
        let lp = out.get_mut(&layer.name).expect("checked: one plan per layer");
        let Some(measured) = probe.results.get(&(index, cache_key(&layer.name, &lp.codec, &lp.params))) else { continue };
        // Pin what the measured encoding decided (the parameters a preset may set), so the pack
        // stores the configuration that was measured, with its size.
        let settable: Vec<&str> = registry.codec(&lp.codec)?.params().iter().map(|p| p.name).collect();
        let pinned: Params = measured.recorded.iter().filter(|(k, _)| settable.contains(k)).map(|(k, v)| (k, v.clone())).collect();
        lp.params = lp.params.merged(&pinned);
        if layer.role.is_block_linear() && layer.block.is_some() {
            record_layers.push(ChosenLayer { name: layer.name.clone(), result: measured.result });
        }
    }
    let record = AllocationRecord {
        allocator: allocator.id().to_owned(),
        params: config.params.clone(),
        measured: probe.measured,
        cached: probe.cached,
        cache: cache_path,
        seconds: started.elapsed().as_secs_f64(),
        layers: record_layers,
    };
    Ok((out, record))
}

/// Progress steps of measuring `plan`: one per block, and the gradient pass.
pub(crate) fn steps(plan: &PackPlan) -> u64 {
    plan.model.config().num_hidden_layers as u64 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Σ_r a_r G a_rᵀ` by the definition, in f64.
    fn form(a: &[f32], g: &[f32], cols: usize) -> Vec<f64> {
        a.chunks_exact(cols)
            .map(|r| {
                let mut s = 0f64;
                for i in 0..cols {
                    for j in 0..cols {
                        s += f64::from(r[i]) * f64::from(g[i * cols + j]) * f64::from(r[j]);
                    }
                }
                s
            })
            .collect()
    }

    #[test]
    fn probe_errors_match_their_definitions() {
        let (rows, cols, n) = (5, 7, 40);
        let mut seed = 17u64;
        let mut next = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
        };
        let w: Vec<f32> = (0..rows * cols).map(|_| next()).collect();
        let d: Vec<f32> = w.iter().map(|v| v + 0.05 * next()).collect();
        let x: Vec<f32> = (0..n * cols).map(|_| next()).collect();
        let mut g = vec![0f32; cols * cols];
        for t in 0..n {
            for i in 0..cols {
                for j in 0..cols {
                    g[i * cols + j] += x[t * cols + i] * x[t * cols + j] / n as f32;
                }
            }
        }
        let gram = tenpak_api::Gram { dim: cols, data: g.clone() };
        let fisher: Vec<f64> = (0..rows).map(|o| 1.0 + o as f64).collect();
        let r = probe_result(&w, &d, cols, 123, Some(&gram), Some(&fisher));
        let e: Vec<f32> = w.iter().zip(&d).map(|(a, b)| a - b).collect();
        let (err_rows, energy) = (form(&e, &g, cols), form(&w, &g, cols).iter().sum::<f64>());
        let expected_output = err_rows.iter().sum::<f64>() / energy;
        let trace: f64 = (0..cols).map(|i| f64::from(g[i * cols + i])).sum();
        let expected_loss: f64 = err_rows.iter().zip(&fisher).map(|(r, f)| r * f / trace).sum();
        assert_eq!(r.bits, 123);
        assert!((r.output_error.unwrap() - expected_output).abs() <= 1e-5 * expected_output, "{r:?} vs {expected_output}");
        assert!((r.loss_error.unwrap() - expected_loss).abs() <= 1e-5 * expected_loss, "{r:?} vs {expected_loss}");
        assert!((r.rel_mse - reconstruction_error(&w, &d).0).abs() == 0.0);
        // Without statistics only the weight error; an exact decode has no error at all.
        assert_eq!(probe_result(&w, &d, cols, 1, None, None).output_error, None);
        let exact = probe_result(&w, &w, cols, 1, Some(&gram), Some(&fisher));
        assert_eq!((exact.output_error, exact.loss_error, exact.rel_mse), (Some(0.0), Some(0.0), 0.0));
        // A Gram matrix of another width (a stale statistic) is not used.
        let other = tenpak_api::Gram { dim: 3, data: vec![1.0; 9] };
        assert_eq!(probe_result(&w, &d, cols, 1, Some(&other), None).output_error, None);
    }
}
