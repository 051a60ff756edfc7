//! `tenpak pack`: run a validated [`PackPlan`]: encode every weight, write the artifact, record
//! what it cost.
//!
//! Two paths, one artifact format:
//!
//! - **calibration-free** (every planned codec needs no statistics): each tensor is loaded,
//!   encoded and written on its own, so peak memory is about one tensor in f32 plus its encoding;
//!   with an evaluation text, the finished artifact is then scored against the source;
//! - **calibrated** ([`crate::pipeline`]): block by block on calibration text, with the baseline
//!   and compressed perplexity computed along the way.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tenpak_api::LayerStats;
use tenpak_api::registry::Registry;
use tenpak_error::{Context, Error, Kind};
use tenpak_model::{ModelSource, TokenizerSource};

use crate::artifact::safetensors_writer::sha256_file_named;
use crate::artifact::{
    ArtifactSource, ArtifactWriter, CHAT_TEMPLATE_FILE, EvaluationRecord, FORMAT, FORMAT_VERSION, FileRecord, Manifest, PresetRecord,
    SourceRecord, TensorRecord, Totals,
};
use crate::encode::write_tensor;
use crate::eval::{self, Baseline, PplReport, Protocol, evaluation_record};
use crate::observe::{PackObserver, Stage, Tracker};
use crate::plan::{Allocation, Evaluation, PackPlan};
use crate::{allocate, pipeline, tasks};

fn source_record(model: &dyn ModelSource) -> tenpak_error::Result<SourceRecord> {
    let mut dtypes = BTreeMap::new();
    for t in model.tensors() {
        *dtypes.entry(t.dtype.name()).or_insert(0) += 1;
    }
    let files = model
        .files()
        .iter()
        .map(|f| {
            let file = f.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
            let shown = format!("{}, file {file}", model.path().display());
            Ok(FileRecord {
                bytes: std::fs::metadata(f).with_context(|| shown.clone())?.len(),
                sha256: sha256_file_named(f, &shown)?,
                file,
            })
        })
        .collect::<tenpak_error::Result<_>>()?;
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

/// Run a validated plan: encode every weight, write the artifact at `plan.output`, and (with an
/// evaluation text) record the baseline and compressed perplexity. Returns the manifest written.
/// Nothing is left at the output on an error or a cancellation.
pub fn run(plan: &PackPlan, registry: &Arc<Registry>, observer: &dyn PackObserver) -> Result<Manifest, Error> {
    run_inner(plan, registry, observer).map_err(|e| e.or_kind(Kind::Internal))
}

fn run_inner(plan: &PackPlan, registry: &Arc<Registry>, observer: &dyn PackObserver) -> tenpak_error::Result<Manifest> {
    let model = plan.model.as_ref();
    if let Some(warning) = plan.evaluation.as_ref().and_then(|e| e.warning.as_deref()) {
        observer.warning(warning);
    }
    let calibrated = !plan.calibrators.is_empty();
    // The calibration-free path scores the source and the artifact block by block (and the head).
    let eval_steps = plan.evaluation.as_ref().map_or(0, |_| 2 * (model.config().num_hidden_layers as u64 + 1));
    let measure_steps = match plan.allocation {
        Allocation::Measured(_) => allocate::steps(plan),
        Allocation::Fixed(_) => 0,
    };
    // Tasks: each item on the source, then on the artifact.
    let task_steps = plan.tasks.as_ref().map_or(0, |items| 2 * items.len() as u64);
    let total = measure_steps + task_steps + if calibrated { pipeline::steps(plan) } else { model.tensors().len() as u64 + eval_steps };
    let tracker = Tracker::new(observer, total);
    // A measuring allocator chooses the plan now, before anything is written.
    let (layers, allocation) = match &plan.allocation {
        Allocation::Fixed(layers) => (layers.clone(), None),
        Allocation::Measured(measured) => {
            let (layers, record) = allocate::allocate(plan, measured, registry, &tracker)?;
            (layers, Some(record))
        }
    };
    let mut writer = ArtifactWriter::create(&plan.output, plan.force)?;
    let (evaluation, calibration) = if calibrated {
        let outcome = pipeline::run(plan, &layers, registry, &mut writer, &tracker)?;
        (outcome.evaluation, Some(outcome.calibration))
    } else {
        for info in model.tensors() {
            tracker.begin(Stage::Encode, None, &info.name)?;
            let values = model.load_f32(&info.name)?;
            write_tensor(&mut writer, registry, info, values, layers.get(&info.name), &LayerStats::none())?;
            tracker.end(Stage::Encode, None, &info.name);
        }
        (None, None)
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
        preset: PresetRecord { name: plan.preset.name.clone(), toml: plan.preset_text.clone() },
        tensors: Vec::new(),
        totals,
        evaluation,
        calibration,
        allocation,
        shards: Vec::new(),
    };
    let evaluate_now = !calibrated && plan.evaluation.is_some();
    if !evaluate_now && plan.tasks.is_none() {
        return writer.commit(manifest);
    }
    // Score the finished artifact (calibration-free: against its source; tasks: both) before it
    // is moved into place, so a failed or cancelled evaluation leaves nothing behind.
    let mut staged = writer.finish(manifest)?;
    let mut manifest = staged.manifest().clone();
    if evaluate_now {
        let evaluation = plan.evaluation.as_ref().expect("checked above");
        manifest.evaluation = Some(evaluate_artifact(plan, evaluation, staged.dir(), registry, &tracker)?);
    }
    if let Some(items) = &plan.tasks {
        let record = manifest.evaluation.as_mut().context("tasks are scored beside an evaluation")?;
        let artifact = ArtifactSource::open(staged.dir(), registry.clone())?;
        let score = |what: &str, source: &dyn ModelSource| -> tenpak_error::Result<Vec<tasks::TaskScore>> {
            tracker.begin(Stage::Evaluate, None, format!("{what}: {} multiple-choice items", items.len()))?;
            let report = tasks::run_on(source, items, &mut |done, total| {
                tracker.end(Stage::Evaluate, None, format!("{what}: item {done}/{total}"));
                tracker.check()
            })?;
            Ok(report.scores)
        };
        record.baseline_tasks = score("source", model)?;
        record.tasks = score("compressed", &artifact)?;
    }
    staged.set_manifest(manifest)?;
    staged.publish()
}

/// config.json, the tokenizer and the chat template, copied (or derived), so the artifact
/// stands alone.
fn add_side_files(writer: &mut ArtifactWriter, model: &dyn ModelSource) -> tenpak_error::Result<()> {
    writer.add_file("config.json", model.config_json()?.as_bytes())?;
    match model.tokenizer() {
        TokenizerSource::File(path) => {
            let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            writer.add_file("tokenizer.json", &bytes)?;
        }
        TokenizerSource::Json(text) => writer.add_file("tokenizer.json", text.as_bytes())?,
        TokenizerSource::Missing => {}
    }
    if let Some(chat) = model.chat_template()? {
        writer.add_file(CHAT_TEMPLATE_FILE, chat.template.as_bytes())?;
    }
    Ok(())
}

/// Perplexity of the source and of the staged artifact in `dir` on the evaluation text, by the
/// preset's evaluation settings.
fn evaluate_artifact(
    plan: &PackPlan,
    evaluation: &Evaluation,
    dir: &Path,
    registry: &Arc<Registry>,
    tracker: &Tracker<'_>,
) -> tenpak_error::Result<EvaluationRecord> {
    let name = &evaluation.text.name;
    // Block by block, windows in parallel, as `tenpak eval` scores (the same figure it prints).
    let score = |source: &dyn ModelSource, what: &str| -> tenpak_error::Result<PplReport> {
        tracker.begin(Stage::Evaluate, None, format!("{what}: scoring {} windows", evaluation.windows))?;
        let mut step = |done: usize, total: usize| -> tenpak_error::Result<()> {
            let detail = if done < total { format!("{what}: block {done}/{}", total - 1) } else { format!("{what}: head") };
            tracker.end(Stage::Evaluate, None, detail);
            tracker.check()
        };
        eval::perplexity_streamed(source.config(), source, &evaluation.ids, name, &evaluation.options, Protocol::Tenpak, None, &mut step)
            .with_context(|| format!("scoring {}", source.path().display()))
    };
    let artifact = ArtifactSource::open(dir, registry.clone())?;
    let (baseline, compressed, divergence) = match evaluation.known_baseline {
        Some(ppl) => (Baseline::Reused(ppl), score(&artifact, "compressed")?, None),
        None => {
            // Both models block by block on the same windows: perplexities and divergence at once.
            tracker.begin(Stage::Evaluate, None, format!("comparing with the source: {} windows", evaluation.windows))?;
            let compared = eval::compare_streamed(
                plan.model.as_ref(),
                &artifact,
                &evaluation.ids,
                name,
                &evaluation.options,
                Protocol::Tenpak,
                None,
                &mut |detail| {
                    tracker.end(Stage::Evaluate, None, detail);
                    tracker.check()
                },
            )?;
            (Baseline::Scored(compared.base.ppl), compared.candidate, Some(compared.divergence))
        }
    };
    Ok(evaluation_record(baseline, &compressed, divergence, &evaluation.text, evaluation.warning.as_deref()))
}
