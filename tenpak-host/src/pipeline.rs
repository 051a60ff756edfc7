//! The calibrated pipeline (DESIGN.md, "The pipeline"): block by block, so peak memory is about
//! one block's weights plus the calibration activations, never the whole model in f32.
//!
//! ```text
//! non-block tensors (embedding, norms, lm_head) -> encoded as planned, no statistics
//! calibration windows -> embedded with the *decoded* embedding
//! for each block:
//!   calibrate  run the block (original weights) on the current hidden states; the calibrators
//!              watch every linear's input through the runtime's hook
//!   encode     each linear by its plan with its statistics; the decoded weight replaces it
//!   propagate  re-run the block, now quantized, so the next block sees quantized inputs
//! evaluate     the evaluation windows went through both the original and the quantized blocks
//!              alongside, so the baseline and compressed perplexity come out at the end
//! ```
//!
//! The evaluation hidden states are small (16 windows of 512 tokens are 19 MB at SmolLM2's
//! width), so both paths ride along instead of loading the model twice afterwards. They go through
//! exactly the operations `tenpak eval` runs, on the same weights a reader decodes, so the
//! compressed figure equals `tenpak eval <artifact>` (a test checks it).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use candle_core::{Device, Tensor};
use tenpak_api::registry::Registry;
use tenpak_api::{Calibrator, LayerInfo, LayerPlan, LayerStats, StatKind, StatsNeeds, WeightView};

use crate::artifact::safetensors_writer::sha256_file;
use crate::artifact::{ArtifactWriter, CalibrationRecord, EvaluationRecord};
use crate::eval;
use crate::pack::{PackJob, evaluation_record, write_tensor};
use crate::preset::Preset;
use crate::progress::Progress;
use crate::roles;
use crate::runtime::llama::embed;
use crate::runtime::{Block, Head, RopeTables, ops};
use crate::tokenize;

/// What the pipeline adds to the manifest.
pub struct Outcome {
    /// Baseline and compressed perplexity, if an evaluation text was given.
    pub evaluation: Option<EvaluationRecord>,
    /// How the statistics were gathered.
    pub calibration: CalibrationRecord,
}

const KINDS: [StatKind; 4] = [StatKind::ActScale, StatKind::HessianDiag, StatKind::Gram, StatKind::FisherDiag];

fn wants(needs: StatsNeeds, kind: StatKind) -> bool {
    match kind {
        StatKind::ActScale => needs.act_scale,
        StatKind::HessianDiag => needs.hessian_diag,
        StatKind::Gram => needs.gram,
        StatKind::FisherDiag => needs.fisher_diag,
    }
}

/// The calibrators a pack needs: those the preset lists, plus a registered provider of every
/// statistic a planned codec needs. Empty when nothing needs calibration.
pub fn calibrators_for(
    plan: &BTreeMap<String, LayerPlan>,
    preset: &Preset,
    registry: &Registry,
) -> Result<Vec<Box<dyn Calibrator>>> {
    let mut needs = StatsNeeds::NONE;
    for lp in plan.values() {
        needs = needs.union(registry.codec(&lp.codec)?.needs());
    }
    let mut chosen = Vec::new();
    for id in &preset.calibration.calibrators {
        chosen.push(registry.calibrator(id).with_context(|| format!("preset `{}`, [calibration] calibrators", preset.name))?);
    }
    let registered: Vec<String> = registry.calibrators().map(|(id, _)| id.to_owned()).collect();
    for kind in KINDS {
        if !wants(needs, kind) || chosen.iter().any(|c| c.provides() == kind) {
            continue;
        }
        let provider = registered.iter().find_map(|id| registry.calibrator(id).ok().filter(|c| c.provides() == kind));
        let Some(provider) = provider else {
            let codecs: Vec<&str> = plan
                .values()
                .filter(|lp| registry.codec(&lp.codec).is_ok_and(|c| wants(c.needs(), kind)))
                .map(|lp| lp.codec.as_str())
                .collect();
            bail!("codec `{}` needs {kind:?} statistics, but no registered calibrator provides them", codecs[0]);
        };
        chosen.push(provider);
    }
    if let Some(c) = chosen.iter().find(|c| c.needs_gradients()) {
        bail!(
            "calibrator `{}` needs loss gradients (a backward pass), which this build's runtime does not compute",
            c.id()
        );
    }
    Ok(chosen)
}

/// One linear layer of the current block: what it is, its plan, and which calibrators watch it.
struct BlockLayer<'p> {
    info: LayerInfo,
    plan: Option<&'p LayerPlan>,
    calibrators: Vec<usize>,
}

/// The evaluation text's windows and the hidden states of both paths.
struct EvalState<'a> {
    path: &'a Path,
    ids: Vec<u32>,
    windows: usize,
    ctx: usize,
    rope: RopeTables,
    float: Vec<Tensor>,
    quant: Vec<Tensor>,
    warning: Option<String>,
}

/// Split `ids` into `windows` windows of `ctx` tokens and embed each as `[1, ctx, hidden]`.
fn embed_windows(embed_tokens: &Tensor, ids: &[u32], windows: usize, ctx: usize) -> Result<Vec<Tensor>> {
    (0..windows).map(|w| embed(embed_tokens, &ids[w * ctx..(w + 1) * ctx], 1)).collect()
}

/// Run `block` over every window.
fn forward_all(block: &Block, hidden: &[Tensor], rope: &RopeTables) -> Result<Vec<Tensor>> {
    hidden.iter().map(|h| block.forward(h, rope, None)).collect()
}

/// Perplexity of hidden states after the last block through `head`.
fn score(head: &Head, hidden: &[Tensor], eval: &EvalState<'_>, seconds: f64) -> Result<eval::PplReport> {
    let name = eval.path.display().to_string();
    let mut sum = 0f64;
    for (w, h) in hidden.iter().enumerate() {
        let ids = &eval.ids[w * eval.ctx..(w + 1) * eval.ctx];
        sum += eval::sum_nll(&head.token_nll(h, ids, None)?, w, eval.ctx, &name)?;
    }
    Ok(eval::report(sum, eval.windows, eval.ids.len(), eval.ctx, &name, seconds))
}

/// Calibrate, encode and write every weight of `job.model` by `plan`, block by block.
pub(crate) fn run(
    job: &PackJob<'_>,
    registry: &Registry,
    plan: &BTreeMap<String, LayerPlan>,
    mut calibrators: Vec<Box<dyn Calibrator>>,
    writer: &mut ArtifactWriter,
) -> Result<Outcome> {
    let model = job.model;
    let config = model.config();
    config.validate()?;
    let preset = job.preset;
    let (cal_windows, cal_ctx) = (preset.calibration.windows, preset.calibration.ctx);
    ensure!(cal_windows > 0, "preset `{}`: [calibration] windows must be at least 1", preset.name);
    let Some(calib_path) = job.calib.as_deref() else {
        bail!("preset `{}` needs calibration text: pass --calib FILE", preset.name);
    };
    for ctx in [cal_ctx, preset.evaluation.ctx] {
        ensure!(
            ctx <= config.max_position_embeddings,
            "ctx {ctx} exceeds the model's max_position_embeddings {}",
            config.max_position_embeddings
        );
    }
    ensure!(
        calib_path.is_file(),
        "{}: no such calibration text (preset `{}` calibrates; run scripts/fetch-assets.sh, pass --calib FILE, \
         or use the calibration-free preset `fast`)",
        calib_path.display(),
        preset.name
    );
    let started = Instant::now();
    let tokenizer = tokenize::for_model(model)?;
    let calib_ids = tokenize::encode_file_prefix(&tokenizer, calib_path, cal_windows * cal_ctx)?;
    let available = calib_ids.len() / cal_ctx;
    if available < cal_windows {
        bail!(
            "{}: its {} tokens make {available} windows of {cal_ctx}, but preset `{}` asks for {cal_windows} calibration \
             windows; use a longer calibration text or fewer [calibration] windows",
            calib_path.display(),
            calib_ids.len(),
            preset.name
        );
    }
    let calib_sha = sha256_file(calib_path)?;

    let mut eval = match job.eval.as_deref() {
        None => None,
        Some(path) => {
            let ids = tokenize::encode_file(&tokenizer, path)?;
            let options = preset.eval_options();
            let windows = eval::window_count(ids.len(), options.ctx, options.samples, &path.display().to_string())?;
            let warning = (sha256_file(path)? == calib_sha).then(|| {
                let warning = format!(
                    "the evaluation text {} is the calibration text {}: the perplexity figures are not held-out",
                    path.display(),
                    calib_path.display()
                );
                eprintln!("\nWARNING: {warning}\n");
                warning
            });
            Some(EvalState {
                path,
                ids,
                windows,
                ctx: options.ctx,
                rope: RopeTables::new(config, options.ctx)?,
                float: Vec::new(),
                quant: Vec::new(),
                warning,
            })
        }
    };

    // Everything outside the blocks' linear layers, encoded without statistics. The embedding
    // and lm_head are kept, original and decoded, for the two evaluation paths.
    let calibrated_lm_head = plan
        .get("lm_head.weight")
        .is_some_and(|lp| registry.codec(&lp.codec).is_ok_and(|c| !c.needs().is_none()));
    let (mut embed_float, mut embed_quant, mut lm_head_quant) = (None, None, None);
    for info in model.tensors() {
        let (role, block) = roles::classify(&info.name, &info.shape);
        if (role.is_block_linear() && block.is_some()) || (calibrated_lm_head && info.name == "lm_head.weight") {
            continue;
        }
        let lp = plan.get(&info.name);
        if let Some(lp) = lp
            && !registry.codec(&lp.codec)?.needs().is_none()
        {
            bail!(
                "`{}` ({}) is not the input of a linear layer, so it has no calibration statistics, but its codec \
                 `{}` needs them; give it a codec that needs none (an override such as int8)",
                info.name,
                role.name(),
                lp.codec
            );
        }
        let values = model.load_f32(&info.name)?;
        let original = (info.name == "model.embed_tokens.weight").then(|| values.clone());
        let decoded = write_tensor(writer, registry, info, values, lp, &LayerStats::none())?;
        let as_tensor = |v: Vec<f32>| Tensor::from_vec(v, (info.shape[0], info.shape[1]), &Device::Cpu);
        match info.name.as_str() {
            "model.embed_tokens.weight" => {
                embed_float = Some(as_tensor(original.expect("kept above"))?);
                embed_quant = Some(as_tensor(decoded)?);
            }
            "lm_head.weight" => lm_head_quant = Some(decoded),
            _ => {}
        }
    }
    let (Some(embed_float), Some(embed_quant)) = (embed_float, embed_quant) else {
        bail!("{}: no model.embed_tokens.weight", model.path().display());
    };
    // lm_head (tied or not) for each path: the float head as the source has it; the quantized
    // head gets the decoded weight below.
    // (Head::load's rule: tied if the configuration says so or there is no lm_head.weight.)
    let float_head = Head::load(config, model, Some(&embed_float))?;
    let mut quant_head = float_head.clone();
    let tied = config.tie_word_embeddings || model.tensor("lm_head.weight").is_none();
    match (tied, lm_head_quant) {
        (true, _) => quant_head.lm_head_mut().set_weight(embed_quant.flatten_all()?.to_vec1()?)?,
        (false, Some(decoded)) => quant_head.lm_head_mut().set_weight(decoded)?,
        (false, None) => {} // calibrated below
    }

    let mut hidden = embed_windows(&embed_quant, &calib_ids, cal_windows, cal_ctx)?;
    let cal_rope = RopeTables::new(config, cal_ctx)?;
    if let Some(eval) = eval.as_mut() {
        eval.float = embed_windows(&embed_float, &eval.ids, eval.windows, eval.ctx)?;
        eval.quant = embed_windows(&embed_quant, &eval.ids, eval.windows, eval.ctx)?;
    }
    drop(embed_quant);

    let n = config.num_hidden_layers;
    let mut progress = if job.progress { Progress::new(3 * n as u64 + 1, "pack") } else { Progress::hidden() };
    // Which calibrators watch a layer: those providing what its codec needs, and every one the
    // preset lists.
    let listed = &preset.calibration.calibrators;
    let provides: Vec<(StatKind, String)> = calibrators.iter().map(|c| (c.provides(), c.id().to_owned())).collect();
    let watchers = |lp: Option<&LayerPlan>| -> Result<Vec<usize>> {
        let needs = match lp {
            Some(lp) => registry.codec(&lp.codec)?.needs(),
            None => StatsNeeds::NONE,
        };
        Ok((0..provides.len())
            .filter(|&c| wants(needs, provides[c].0) || listed.contains(&provides[c].1))
            .collect())
    };
    for i in 0..n {
        let mut block = Block::load(config, i, model).with_context(|| format!("loading block {i}"))?;
        let float_block = eval.is_some().then(|| block.clone());
        let layers = block
            .linears()
            .iter()
            .map(|linear| {
                let name = linear.name().to_owned();
                let (role, block) = roles::classify(&name, &[linear.out_features(), linear.in_features()]);
                let info = LayerInfo { name, role, block, rows: linear.out_features(), cols: linear.in_features() };
                let plan = plan.get(&info.name);
                Ok(BlockLayer { calibrators: watchers(plan)?, plan, info })
            })
            .collect::<Result<Vec<_>>>()?;

        progress.message(&format!("block {}/{n}: calibrating on {cal_windows} windows", i + 1));
        if layers.iter().any(|l| !l.calibrators.is_empty()) {
            let mut hook = |name: &str, input: &Tensor| -> Result<()> {
                let Some(layer) = layers.iter().find(|l| l.info.name == name) else { return Ok(()) };
                let rows = input.dims()[0];
                ops::with_f32_slice(input, |data| -> Result<()> {
                    let view = WeightView::new(data, rows, layer.info.cols)?;
                    for &c in &layer.calibrators {
                        calibrators[c].observe_input(&layer.info, view).with_context(|| format!("calibrator `{}`", calibrators[c].id()))?;
                    }
                    Ok(())
                })?
            };
            for h in &hidden {
                block.forward(h, &cal_rope, Some(&mut hook))?;
            }
        }
        progress.step(&format!("block {}/{n}: calibrated", i + 1));

        progress.message(&format!("block {}/{n}: encoding", i + 1));
        for layer in &layers {
            let mut stats = LayerStats::none();
            for &c in &layer.calibrators {
                calibrators[c].finish(&layer.info, &mut stats).with_context(|| format!("calibrator `{}`", calibrators[c].id()))?;
            }
            let info = model.tensor(&layer.info.name).with_context(|| format!("no tensor `{}` in the source", layer.info.name))?;
            let linear = block.linear_mut(&layer.info.name).expect("the layer came from this block");
            let values = linear.weight().flatten_all()?.to_vec1::<f32>()?;
            let decoded = write_tensor(writer, registry, info, values, layer.plan, &stats)?;
            linear.set_weight(decoded)?;
        }
        progress.step(&format!("block {}/{n}: encoded", i + 1));

        progress.message(&format!("block {}/{n}: propagating", i + 1));
        if i + 1 < n || calibrated_lm_head {
            hidden = forward_all(&block, &hidden, &cal_rope)?;
        }
        if let (Some(eval), Some(float_block)) = (eval.as_mut(), float_block.as_ref()) {
            eval.quant = forward_all(&block, &eval.quant, &eval.rope)?;
            eval.float = forward_all(float_block, &eval.float, &eval.rope)?;
        }
        progress.step(&format!("block {}/{n}: done", i + 1));
    }

    if calibrated_lm_head {
        // A separate lm_head calibrated on the quantized path's final-normed hidden states.
        let info = model.tensor("lm_head.weight").expect("planned, so present");
        let layer = LayerInfo { name: info.name.clone(), role: tenpak_api::LayerRole::LmHead, block: None, rows: info.shape[0], cols: info.shape[1] };
        let watching = watchers(plan.get(&info.name))?;
        for h in &hidden {
            let normed = quant_head.normed_rows(h)?;
            let rows = normed.dims()[0];
            ops::with_f32_slice(&normed, |data| -> Result<()> {
                for &c in &watching {
                    calibrators[c].observe_input(&layer, WeightView::new(data, rows, layer.cols)?)?;
                }
                Ok(())
            })??;
        }
        let mut stats = LayerStats::none();
        for &c in &watching {
            calibrators[c].finish(&layer, &mut stats)?;
        }
        let decoded = write_tensor(writer, registry, info, model.load_f32(&info.name)?, plan.get(&info.name), &stats)?;
        if !tied {
            quant_head.lm_head_mut().set_weight(decoded)?;
        }
    }
    drop(hidden);
    let calibration = CalibrationRecord {
        calibrators: calibrators.iter().map(|c| c.id().to_owned()).collect(),
        text: calib_path.display().to_string(),
        text_sha256: calib_sha,
        windows: cal_windows,
        ctx: cal_ctx,
        seconds: started.elapsed().as_secs_f64(),
    };

    progress.message("evaluating");
    let evaluation = match eval {
        None => None,
        Some(eval) => {
            let baseline = score(&float_head, &eval.float, &eval, 0.0)?;
            let compressed = score(&quant_head, &eval.quant, &eval, 0.0)?;
            Some(evaluation_record(&baseline, &compressed, eval.path, eval.warning.as_deref())?)
        }
    };
    progress.step("evaluated");
    progress.finish();
    Ok(Outcome { evaluation, calibration })
}

