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
use std::time::Instant;

use tenpak_error::{Context, Result, bail};
use candle_core::{Device, Tensor};
use rayon::prelude::*;
use tenpak_api::registry::Registry;
use tenpak_api::{Calibrator, LayerInfo, LayerPlan, LayerRole, LayerStats, StatsNeeds, WeightView};

use crate::artifact::{ArtifactWriter, CalibrationRecord, DivergenceRecord, EvaluationRecord};
use crate::encode::{Prepared, prepare_tensor, write_prepared, write_tensor};
use crate::eval;
use crate::observe::{Stage, Tracker};
use crate::calibrate::{self, Watched};
use crate::eval::{Baseline, Protocol, evaluation_record};
use crate::plan::{Calibration, PackPlan};
use tenpak_model::roles;
use tenpak_model::runtime::llama::embed;
use tenpak_model::runtime::{Block, Head, RopeTables, ops};

/// What the pipeline adds to the manifest.
pub struct Outcome {
    /// Baseline and compressed perplexity, if an evaluation text was given.
    pub evaluation: Option<EvaluationRecord>,
    /// How the statistics were gathered.
    pub calibration: CalibrationRecord,
}

/// Steps the pipeline reports for `plan`: the tensors outside the blocks, three stages per
/// block, and the head with the scoring.
pub(crate) fn steps(plan: &PackPlan) -> u64 {
    3 * plan.model.config().num_hidden_layers as u64 + 2
}

/// The linear layers of the current block: what each is and which calibrators watch it, and
/// each one's plan.
struct BlockLayers<'p> {
    watched: Vec<Watched>,
    plans: Vec<Option<&'p LayerPlan>>,
}

/// The hidden states of the evaluation windows on both paths (the original one only when the
/// baseline is not known already).
struct EvalState {
    rope: RopeTables,
    float: Option<Vec<Tensor>>,
    quant: Vec<Tensor>,
}

/// Split `ids` into `windows` windows of `ctx` tokens and embed each as `[1, ctx, hidden]`.
fn embed_windows(embed_tokens: &Tensor, ids: &[u32], windows: usize, ctx: usize) -> Result<Vec<Tensor>> {
    (0..windows).map(|w| embed(embed_tokens, &ids[w * ctx..(w + 1) * ctx], 1)).collect()
}

/// Run `block` over every window (several at once).
fn forward_all(block: &Block, hidden: &[Tensor], rope: &RopeTables) -> Result<Vec<Tensor>> {
    tenpak_model::runtime::llama::forward_windows(block, hidden, rope)
}

/// The pipeline's state between stages.
struct Pipeline<'a> {
    plan: &'a PackPlan,
    layers: &'a BTreeMap<String, LayerPlan>,
    registry: &'a Registry,
    writer: &'a mut ArtifactWriter,
    tracker: &'a Tracker<'a>,
    calibration: &'a Calibration,
    calibrators: Vec<Box<dyn Calibrator>>,
    /// Calibration hidden states on the quantized path.
    hidden: Vec<Tensor>,
    cal_rope: RopeTables,
    eval: Option<EvalState>,
    /// The original head, for the baseline perplexity (only when evaluating).
    float_head: Option<Head>,
    /// The quantized head, for the compressed perplexity and a calibrated lm_head (absent when
    /// neither is wanted, so a pack without evaluation holds no vocabulary-sized matrix).
    quant_head: Option<Head>,
    /// lm_head is separate from the embedding and its codec needs statistics: it is encoded last,
    /// on the quantized path's final hidden states.
    calibrated_lm_head: bool,
    tied: bool,
}

/// Calibrate, encode and write every weight of `plan.model` by `plan`, block by block.
/// `layers` is the plan (the preset's, or what a measuring allocator chose).
pub(crate) fn run(
    plan: &PackPlan,
    layers: &BTreeMap<String, LayerPlan>,
    registry: &Registry,
    writer: &mut ArtifactWriter,
    tracker: &Tracker<'_>,
) -> Result<Outcome> {
    let started = Instant::now();
    let mut pipeline = Pipeline::start(plan, layers, registry, writer, tracker)?;
    let n = plan.model.config().num_hidden_layers;
    for i in 0..n {
        let mut block = Block::load(plan.model.config(), i, plan.model.as_ref()).with_context(|| format!("loading block {i}"))?;
        let float_block = pipeline.eval.is_some().then(|| block.clone());
        let layers = pipeline.block_layers(&block)?;
        pipeline.calibrate(&block, &layers, (i, n))?;
        pipeline.encode(&mut block, &layers, (i, n))?;
        pipeline.propagate(&block, float_block.as_ref(), (i, n))?;
    }
    pipeline.finish(started)
}

impl<'a> Pipeline<'a> {
    /// Everything outside the blocks' linear layers, encoded without statistics; the embedding
    /// and lm_head kept, original and decoded, for the two paths; the windows embedded.
    fn start(
        plan: &'a PackPlan,
        layers: &'a BTreeMap<String, LayerPlan>,
        registry: &'a Registry,
        writer: &'a mut ArtifactWriter,
        tracker: &'a Tracker<'a>,
    ) -> Result<Self> {
        let model = plan.model.as_ref();
        let config = model.config();
        let calibration = plan.calibration.as_ref().context("a calibrated plan has a calibration text")?;
        let calibrators = plan.calibrators.iter().map(|id| registry.calibrator(id)).collect::<tenpak_api::Result<Vec<_>>>()?;
        tracker.begin(Stage::Encode, None, "embedding, norms and head")?;
        let calibrated_lm_head = layers
            .get("lm_head.weight")
            .is_some_and(|lp| registry.codec(&lp.codec).is_ok_and(|c| !c.needs().is_none()));
        let (mut embed_float, mut embed_quant, mut lm_head_quant) = (None, None, None);
        for info in model.tensors() {
            let (role, block) = roles::classify(&info.name, &info.shape);
            if (role.is_block_linear() && block.is_some()) || (calibrated_lm_head && info.name == "lm_head.weight") {
                continue;
            }
            let lp = layers.get(&info.name);
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
            // The original embedding is only needed for the baseline perplexity.
            let original = (info.name == "model.embed_tokens.weight" && plan.evaluation.is_some()).then(|| values.clone());
            let decoded = write_tensor(writer, registry, info, values, lp, &LayerStats::none())?;
            let as_tensor = |v: Vec<f32>| Tensor::from_vec(v, (info.shape[0], info.shape[1]), &Device::Cpu);
            match info.name.as_str() {
                "model.embed_tokens.weight" => {
                    embed_float = original.map(as_tensor).transpose()?;
                    embed_quant = Some(as_tensor(decoded)?);
                }
                "lm_head.weight" => lm_head_quant = Some(decoded),
                _ => {}
            }
        }
        let Some(embed_quant) = embed_quant else {
            bail!("{}: no model.embed_tokens.weight", model.path().display());
        };
        // lm_head (tied or not) for each path: the float head as the source has it (only when
        // evaluating); the quantized head gets the decoded weight (a calibrated one at the end),
        // sharing the decoded embedding's storage when tied.
        // (Head::load's rule: tied if the configuration says so or there is no lm_head.weight.)
        let float_head = embed_float.as_ref().map(|e| Head::load(config, model, Some(e))).transpose()?;
        let tied = config.tie_word_embeddings || model.tensor("lm_head.weight").is_none();
        let quant_head = match (tied, lm_head_quant) {
            _ if plan.evaluation.is_none() && !calibrated_lm_head => None,
            (true, _) => Some(Head::load(config, model, Some(&embed_quant))?),
            (false, Some(decoded)) => Some(Head::with_lm_head(
                config,
                model,
                Tensor::from_vec(decoded, (config.vocab_size, config.hidden_size), &Device::Cpu)?,
            )?),
            (false, None) => Some(Head::load(config, model, None)?),
        };

        let hidden = embed_windows(&embed_quant, &calibration.ids, calibration.windows, calibration.ctx)?;
        let cal_rope = RopeTables::new(config, calibration.ctx)?;
        let eval = match &plan.evaluation {
            None => None,
            Some(e) => Some(EvalState {
                rope: RopeTables::new(config, e.options.ctx)?,
                float: match e.known_baseline {
                    Some(_) => None,
                    None => Some(embed_windows(
                        embed_float.as_ref().context("the original embedding is kept when evaluating")?,
                        &e.ids,
                        e.windows,
                        e.options.ctx,
                    )?),
                },
                quant: embed_windows(&embed_quant, &e.ids, e.windows, e.options.ctx)?,
            }),
        };
        tracker.end(Stage::Encode, None, "embedding, norms and head");
        Ok(Pipeline {
            plan,
            layers,
            registry,
            writer,
            tracker,
            calibration,
            calibrators,
            hidden,
            cal_rope,
            eval,
            float_head,
            quant_head,
            calibrated_lm_head,
            tied,
        })
    }

    /// Which calibrators watch a layer planned as `lp`: those providing what its codec needs,
    /// and every one the preset lists.
    fn watchers(&self, lp: Option<&LayerPlan>) -> Result<Vec<usize>> {
        let needs = match lp {
            Some(lp) => self.registry.codec(&lp.codec)?.needs(),
            None => StatsNeeds::NONE,
        };
        let listed = &self.plan.preset.calibration.calibrators;
        Ok((0..self.calibrators.len())
            .filter(|&c| {
                let calibrator = &self.calibrators[c];
                needs.wants(calibrator.provides()) || listed.iter().any(|id| id == calibrator.id())
            })
            .collect())
    }

    /// The linear layers of `block`, with their plans and watchers.
    fn block_layers(&self, block: &Block) -> Result<BlockLayers<'a>> {
        let mut layers = BlockLayers { watched: Vec::new(), plans: Vec::new() };
        for info in calibrate::linears(block) {
            let lp = self.layers.get(&info.name);
            layers.watched.push(Watched { calibrators: self.watchers(lp)?, info });
            layers.plans.push(lp);
        }
        Ok(layers)
    }

    /// Run `block` (original weights) on the calibration hidden states; the calibrators watch
    /// every linear's input through the runtime's hook.
    fn calibrate(&mut self, block: &Block, layers: &BlockLayers<'_>, (i, n): (usize, usize)) -> Result<()> {
        let windows = self.calibration.windows;
        self.tracker.begin(Stage::Calibrate, Some((i, n)), format!("block {}/{n}: calibrating on {windows} windows", i + 1))?;
        if layers.watched.iter().any(|l| !l.calibrators.is_empty()) {
            calibrate::observe(block, &self.hidden, &self.cal_rope, &mut self.calibrators, &layers.watched, false)?;
        }
        self.tracker.end(Stage::Calibrate, Some((i, n)), format!("block {}/{n}: calibrated", i + 1));
        Ok(())
    }

    /// Encode each linear of `block` by its plan with its statistics; the decoded weight replaces
    /// it, so propagation sees what a reader of the artifact decodes.
    fn encode(&mut self, block: &mut Block, layers: &BlockLayers<'_>, (i, n): (usize, usize)) -> Result<()> {
        self.tracker.begin(Stage::Encode, Some((i, n)), format!("block {}/{n}: encoding", i + 1))?;
        let model = self.plan.model.as_ref();
        // The block's layers are independent once their statistics are out: encode them in
        // parallel (OpenBLAS single-threaded in each), then write them in order, so the artifact
        // is the same whatever the thread count.
        let mut work = Vec::with_capacity(layers.watched.len());
        for (layer, &plan) in layers.watched.iter().zip(&layers.plans) {
            let stats = calibrate::statistics(&mut self.calibrators, &layer.info, &layer.calibrators)?;
            let info = model.tensor(&layer.info.name).with_context(|| format!("no tensor `{}` in the source", layer.info.name))?;
            let linear = block.linear_mut(&layer.info.name).expect("the layer came from this block");
            work.push((plan, info, linear.weight().flatten_all()?.to_vec1::<f32>()?, stats));
        }
        let registry = self.registry;
        let prepared: Vec<Prepared> = tenpak_model::runtime::blas::single_threaded(|| {
            work.into_par_iter().map(|(plan, info, values, stats)| prepare_tensor(registry, info, values, plan, &stats)).collect::<Result<Vec<_>>>()
        })?;
        for (layer, prepared) in layers.watched.iter().zip(prepared) {
            let decoded = write_prepared(self.writer, prepared)?;
            block.linear_mut(&layer.info.name).expect("the layer came from this block").set_weight(decoded)?;
        }
        self.tracker.end(Stage::Encode, Some((i, n)), format!("block {}/{n}: encoded", i + 1));
        Ok(())
    }

    /// Re-run the now quantized block so the next one sees quantized inputs; the evaluation
    /// windows go through the quantized and the original block alongside.
    fn propagate(&mut self, block: &Block, float_block: Option<&Block>, (i, n): (usize, usize)) -> Result<()> {
        self.tracker.begin(Stage::Propagate, Some((i, n)), format!("block {}/{n}: propagating", i + 1))?;
        if i + 1 < n || self.calibrated_lm_head {
            self.hidden = forward_all(block, &self.hidden, &self.cal_rope)?;
        }
        if let (Some(eval), Some(float_block)) = (self.eval.as_mut(), float_block) {
            eval.quant = forward_all(block, &eval.quant, &eval.rope)?;
            if let Some(float) = &eval.float {
                eval.float = Some(forward_all(float_block, float, &eval.rope)?);
            }
        }
        self.tracker.end(Stage::Propagate, Some((i, n)), format!("block {}/{n}: done", i + 1));
        Ok(())
    }

    /// A separate lm_head whose codec needs statistics, calibrated on the quantized path's
    /// final-normed hidden states.
    fn encode_lm_head(&mut self) -> Result<()> {
        let model = self.plan.model.as_ref();
        let info = model.tensor("lm_head.weight").context("lm_head.weight is planned, so present")?;
        let layer = LayerInfo { name: info.name.clone(), role: LayerRole::LmHead, block: None, rows: info.shape[0], cols: info.shape[1] };
        let lp = self.layers.get(&info.name);
        let watching = self.watchers(lp)?;
        for h in &self.hidden {
            let normed = self.quant_head.as_ref().context("a calibrated lm_head keeps the quantized head")?.normed_rows(h)?;
            let rows = normed.dims()[0];
            let calibrators = &mut self.calibrators;
            ops::with_f32_slice(&normed, |data| -> Result<()> {
                for &c in &watching {
                    calibrators[c].observe_input(&layer, WeightView::new(data, rows, layer.cols)?)?;
                }
                Ok(())
            })??;
        }
        let stats = calibrate::statistics(&mut self.calibrators, &layer, &watching)?;
        let decoded = write_tensor(self.writer, self.registry, info, model.load_f32(&info.name)?, lp, &stats)?;
        if !self.tied {
            self.quant_head.as_mut().context("a calibrated lm_head keeps the quantized head")?.lm_head_mut().set_weight(decoded)?;
        }
        Ok(())
    }

    /// The calibrated lm_head, then the baseline and compressed perplexity of the evaluation
    /// windows.
    fn finish(mut self, started: Instant) -> Result<Outcome> {
        self.tracker.begin(Stage::Evaluate, None, "head and scoring")?;
        if self.calibrated_lm_head {
            self.encode_lm_head()?;
        }
        self.hidden = Vec::new();
        let calibration = CalibrationRecord {
            calibrators: self.calibrators.iter().map(|c| c.id().to_owned()).collect(),
            text: self.calibration.text.name.clone(),
            text_sha256: self.calibration.text.sha256.clone(),
            windows: self.calibration.windows,
            ctx: self.calibration.ctx,
            seconds: started.elapsed().as_secs_f64(),
        };
        let evaluation = match (&self.eval, &self.plan.evaluation) {
            (Some(state), Some(e)) => {
                let quant_head = self.quant_head.as_ref().context("the quantized head is kept when evaluating")?;
                let (baseline, compressed, divergence) = match (e.known_baseline, &state.float) {
                    (Some(ppl), _) => (Baseline::Reused(ppl), score(quant_head, &state.quant, e)?, None),
                    (None, Some(float)) => {
                        let float_head = self.float_head.as_ref().context("the original head is kept when evaluating")?;
                        let divergence = compare(float_head, float, quant_head, &state.quant, e)?;
                        (Baseline::Scored(score(float_head, float, e)?.ppl), score(quant_head, &state.quant, e)?, Some(divergence))
                    }
                    (None, None) => bail!("the original path was not run, and no baseline is known"),
                };
                Some(evaluation_record(baseline, &compressed, divergence, &e.text, e.warning.as_deref()))
            }
            _ => None,
        };
        self.tracker.end(Stage::Evaluate, None, "evaluated");
        Ok(Outcome { evaluation, calibration })
    }
}

/// The quantized path's next-token distributions against the original's, window by window
/// ([`eval::kld::compare_window`]).
fn compare(float_head: &Head, float: &[Tensor], head: &Head, hidden: &[Tensor], e: &crate::plan::Evaluation) -> Result<DivergenceRecord> {
    let ctx = e.options.ctx;
    let windows: Vec<usize> = (0..hidden.len()).collect();
    let compared = tenpak_model::runtime::llama::per_window(&windows, |&w| {
        let base = eval::kld::BaseRows::Model(float_head, float[w].get(0)?);
        eval::kld::compare_window(head, &hidden[w].get(0)?, &base, &e.ids[w * ctx..(w + 1) * ctx], Protocol::Tenpak)
    })?;
    Ok(eval::summarize(&e.text.name, 0, &windows, &compared)?.0)
}

/// Perplexity of hidden states after the last block through `head`.
fn score(head: &Head, hidden: &[Tensor], e: &crate::plan::Evaluation) -> Result<eval::PplReport> {
    let ctx = e.options.ctx;
    let ids: Vec<&[u32]> = (0..hidden.len()).map(|w| &e.ids[w * ctx..(w + 1) * ctx]).collect();
    let nlls = tenpak_model::runtime::llama::token_nll_windows(head, hidden, &ids)?;
    let mut sum = 0f64;
    for (w, nll) in nlls.iter().enumerate() {
        sum += eval::sum_nll(nll, w, ctx, &e.text.name)?;
    }
    Ok(eval::report(sum, e.windows, e.ids.len(), ctx, &e.text.name, 0.0))
}
