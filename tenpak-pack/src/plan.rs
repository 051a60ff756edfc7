//! One validated pack job, whoever asked for it.
//!
//! The CLI turns its flags into a [`PackRequest`]; the server turns a JSON body into one after
//! resolving names under its roots. [`PackPlan::build`] then checks *everything* before any work
//! starts or any file is written: the preset against the registry, the model (readable, an
//! architecture the runtime runs), every layer's plan, the calibrators the plan needs, the texts
//! (present, long enough for the windows asked, not longer than the model's context), and the
//! output (not an existing directory unless replacing is allowed). What comes out is everything
//! [`crate::pack::run`] needs, texts already tokenized, so a running job fails only for reasons no
//! check could foresee.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tenpak_api::registry::Registry;
use tenpak_api::{LayerInfo, LayerPlan, LayerStats, Params, Plan, Probe, ProbeResult, StatKind, StatsNeeds, WeightView};
use tenpak_error::{Context, Error, Kind, Result, bail, ensure};
use tenpak_model::{ModelSource, roles, tokenize};

use crate::encode::reconstruction_error;
use crate::eval::{self, PplOptions};
use crate::limits::Limits;
pub use crate::model::ModelSpec;
use crate::preset::{BUILTIN, Preset};
use crate::text::{Text, TextSpec};

/// Where the preset comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PresetSpec {
    /// A built-in preset by name (`balanced`).
    Builtin(String),
    /// A TOML file (CLI only: the server never reads paths from a request).
    File(PathBuf),
    /// TOML text given with the request; `origin` names it in errors.
    Inline {
        /// What to call it in errors (`request body`).
        origin: String,
        /// The TOML text.
        text: String,
    },
}

impl PresetSpec {
    /// The CLI's reading of `--preset X`: a built-in name, else a file path.
    pub fn from_cli(value: &str) -> Self {
        if BUILTIN.iter().any(|(name, _)| *name == value) {
            PresetSpec::Builtin(value.to_owned())
        } else {
            PresetSpec::File(PathBuf::from(value))
        }
    }

    /// Parse the preset, returning it with its text (for the manifest).
    pub fn load(&self) -> Result<(Preset, String)> {
        self.load_within(&Limits::none())
    }

    /// [`PresetSpec::load`], refusing a text longer than `limits` allow before parsing it.
    pub fn load_within(&self, limits: &Limits) -> Result<(Preset, String)> {
        match self {
            PresetSpec::Builtin(name) => Preset::builtin(name).ok_or_else(|| {
                Kind::NotFound.error(format!("no built-in preset `{name}` (built-in: {})", builtin_names()))
            }),
            PresetSpec::File(path) => {
                if !path.is_file() {
                    return Err(Kind::NotFound.error(format!(
                        "preset `{}` is neither a built-in preset ({}) nor an existing file",
                        path.display(),
                        builtin_names()
                    )));
                }
                let text = std::fs::read_to_string(path).with_context(|| format!("reading preset {}", path.display()))?;
                limits.check_preset_text(&text, &path.display().to_string())?;
                Ok((Preset::parse(&text, &path.display().to_string())?, text))
            }
            PresetSpec::Inline { origin, text } => {
                limits.check_preset_text(text, origin)?;
                Ok((Preset::parse(text, origin)?, text.clone()))
            }
        }
    }
}

/// The built-in preset names, comma-separated (for errors).
fn builtin_names() -> String {
    BUILTIN.iter().map(|(name, _)| *name).collect::<Vec<_>>().join(", ")
}

/// What to pack, as the user asked for it: nothing here is checked yet.
#[derive(Clone, Debug)]
pub struct PackRequest {
    /// The model.
    pub model: ModelSpec,
    /// The preset.
    pub preset: PresetSpec,
    /// Where the artifact goes.
    pub output: PathBuf,
    /// Replace an existing artifact at `output`.
    pub force: bool,
    /// Calibration text; used only when the plan's codecs or the preset calibrate.
    pub calib: Option<TextSpec>,
    /// Evaluation text: when given, baseline and compressed perplexity go into the manifest.
    pub eval: Option<TextSpec>,
    /// Bits per weight on the block linears, overriding the preset's `target_bpw` (a preset
    /// whose allocator measures, such as `bit_budget`).
    pub target_bpw: Option<f64>,
    /// Multiple-choice items to score the source and the artifact on ([`crate::tasks`]), the
    /// accuracies recorded beside the evaluation's perplexities; needs `eval`.
    pub tasks: Option<TaskSpec>,
}

/// A task file for a pack to score, and at most how many items of each task.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskSpec {
    /// The JSONL file ([`crate::tasks`] describes its forms).
    pub file: PathBuf,
    /// How messages name it (a server's `root/path`, never its own path).
    pub name: String,
    /// Only the first `limit` items of each task.
    pub limit: Option<usize>,
}

/// The calibration input of a plan.
pub struct Calibration {
    /// The text.
    pub text: Text,
    /// Its first `windows · ctx` token ids (at least).
    pub ids: Vec<u32>,
    /// Windows to run.
    pub windows: usize,
    /// Tokens per window.
    pub ctx: usize,
}

/// The evaluation input of a plan.
pub struct Evaluation {
    /// The text.
    pub text: Text,
    /// Its token ids, whole.
    pub ids: Vec<u32>,
    /// Windows to score (the preset's count, capped by what the text holds).
    pub windows: usize,
    /// How to score.
    pub options: PplOptions,
    /// Set when the figures will not be held-out (the evaluation text is the calibration text).
    pub warning: Option<String>,
    /// The source model's perplexity on exactly these windows, when this process has measured it
    /// already (the later points of a sweep): the pack records it instead of scoring the source
    /// again, and says so in the protocol. `None` from [`PackPlan::build`].
    pub known_baseline: Option<f64>,
}

/// How a plan's tensors get their codecs and parameters.
pub enum Allocation {
    /// Decided now: every planned tensor's codec and parameters, by name (tensors absent are
    /// stored raw), checked.
    Fixed(BTreeMap<String, LayerPlan>),
    /// Decided inside the pack by the preset's measuring allocator (`bit_budget`), on the
    /// calibration text ([`crate::allocate`]).
    Measured(MeasuredAllocation),
}

/// What a measuring allocator chooses from, checked.
pub struct MeasuredAllocation {
    /// The plan the preset's rules resolve to, by name: what each candidate is laid over, and
    /// what the layers that are not block linears keep.
    pub rules: BTreeMap<String, LayerPlan>,
    /// Every configuration the allocator may choose for a block linear: each candidate laid
    /// over that layer's rules.
    pub candidates: Vec<LayerPlan>,
}

impl Allocation {
    /// Every configuration the pack may encode with (the fixed plan; or the rules and every
    /// candidate), for the calibrators they need.
    pub fn possible(&self) -> Box<dyn Iterator<Item = &LayerPlan> + '_> {
        match self {
            Allocation::Fixed(layers) => Box::new(layers.values()),
            Allocation::Measured(m) => Box::new(m.rules.values().chain(&m.candidates)),
        }
    }
}

/// A validated pack job: everything [`crate::pack::run`] needs.
pub struct PackPlan {
    /// The model, open.
    pub model: Arc<dyn ModelSource>,
    /// The preset, checked against the registry.
    pub preset: Preset,
    /// The preset's text, for the manifest.
    pub preset_text: String,
    /// How every tensor gets its codec: fixed now, or chosen by measurement inside the pack.
    pub allocation: Allocation,
    /// Ids of the calibrators to run; empty for a calibration-free pack.
    pub calibrators: Vec<String>,
    /// Calibration text and windows, when `calibrators` is not empty.
    pub calibration: Option<Calibration>,
    /// Evaluation text and windows, when asked for.
    pub evaluation: Option<Evaluation>,
    /// Where the artifact goes.
    pub output: PathBuf,
    /// Replace an existing artifact at `output`.
    pub force: bool,
    /// Multiple-choice items to score the source and the artifact on, read and checked.
    pub tasks: Option<Vec<crate::tasks::Item>>,
}

impl PackPlan {
    /// Check `request` against `registry` and prepare it, without [`Limits`] (the local CLI; a
    /// server calls [`PackPlan::build_within`]). Errors are [`Kind::BadRequest`] unless
    /// they say otherwise (a missing model or text is [`Kind::NotFound`], an architecture the
    /// runtime does not run is [`Kind::Unsupported`]).
    pub fn build(request: &PackRequest, registry: &Registry) -> std::result::Result<PackPlan, Error> {
        Self::build_within(request, registry, &Limits::none())
    }

    /// [`PackPlan::build`] under `limits` (checked first, before the model is opened).
    pub fn build_within(request: &PackRequest, registry: &Registry, limits: &Limits) -> std::result::Result<PackPlan, Error> {
        Self::build_inner(request, registry, limits, false).map_err(|e| e.or_kind(Kind::BadRequest))
    }

    /// Every check of [`PackPlan::build_within`], at a cost that does not grow with the
    /// evaluation text: only as much of it is tokenized as the evaluation's windows need (the
    /// plan a job runs tokenizes it whole, for its figures). A server checks requests this way
    /// before accepting them.
    pub fn check_within(request: &PackRequest, registry: &Registry, limits: &Limits) -> std::result::Result<(), Error> {
        Self::build_inner(request, registry, limits, true).map(drop).map_err(|e| e.or_kind(Kind::BadRequest))
    }

    fn build_inner(request: &PackRequest, registry: &Registry, limits: &Limits, checking: bool) -> Result<PackPlan> {
        let (mut preset, preset_text) = request.preset.load_within(limits)?;
        preset.check_limits(limits)?;
        if let Some(bpw) = request.target_bpw {
            ensure!(bpw.is_finite() && bpw > 0.0, "target_bpw = {bpw}: expected a positive number of bits per weight");
            if registry.allocator(&preset.allocator.id)?.needs(&preset.allocator_config()).is_none() {
                bail!(
                    "target_bpw needs a preset whose allocator measures (`bit_budget`); preset `{}` uses `{}`",
                    preset.name,
                    preset.allocator.id
                );
            }
            preset.allocator.params.0.remove("target_bytes");
            preset.allocator.params.set("target_bpw", bpw);
        }
        preset.validate(registry)?;
        if request.output.exists() && !request.force {
            bail!("{} already exists (pass --force to replace it)", request.output.display());
        }
        let model = request.model.open()?;
        let config = model.config();
        let allocator_config = preset.allocator_config();
        let measuring = !registry.allocator(&preset.allocator.id)?.needs(&allocator_config).is_none();
        let allocation = if measuring {
            // The rules' plan, every candidate laid over it checked now; the choice comes later.
            let mut candidates: Vec<LayerPlan> = Vec::new();
            let infos = roles::layer_infos(model.as_ref());
            let base = infos.iter().map(|l| allocator_config.resolve(l)).collect::<tenpak_api::Result<Vec<_>>>()?;
            for (lp, info) in base.iter().zip(&infos) {
                if !(info.role.is_block_linear() && info.block.is_some()) {
                    continue;
                }
                for (i, candidate) in allocator_config.candidates.iter().enumerate() {
                    let mut tried = lp.clone();
                    tried.apply(candidate);
                    let codec = registry.codec(&tried.codec)?;
                    codec.validate(&tried.params).with_context(|| {
                        format!("preset `{}`, [[allocator.candidates]] #{} on `{}` ({})", preset.name, i + 1, lp.name, tried.codec)
                    })?;
                    candidates.push(tried);
                }
            }
            let rules = check_plan(Plan { layers: base }, &infos, registry, &preset.allocator.id)?;
            Allocation::Measured(MeasuredAllocation { rules, candidates })
        } else {
            Allocation::Fixed(plan_layers(model.as_ref(), &preset, registry)?)
        };
        let calibrators = calibrators_for(allocation.possible(), &preset, registry)?;

        // Calibrating or evaluating runs the model, so the runtime must accept its configuration.
        let calibrating = !calibrators.is_empty() || measuring;
        let needs_tokens = calibrating || request.eval.is_some();
        if needs_tokens {
            config.validate().with_context(|| format!("{}", model.path().display()))?;
        }
        let tokenizer = if needs_tokens { Some(tokenize::for_model(model.as_ref())?) } else { None };
        let max_ctx = config.max_position_embeddings;
        let calibration = match (calibrating, &request.calib) {
            (false, _) => None,
            (true, None) => bail!("preset `{}` calibrates and needs a calibration text (or use the calibration-free preset `fast`)", preset.name),
            (true, Some(spec)) => {
                let (windows, ctx) = (preset.calibration.windows, preset.calibration.ctx);
                ensure!(windows > 0, "preset `{}`: [calibration] windows must be at least 1", preset.name);
                ensure!(ctx <= max_ctx, "preset `{}`: calibration ctx {ctx} exceeds the model's max_position_embeddings {max_ctx}", preset.name);
                let hint = format!(
                    "preset `{}` calibrates; run scripts/fetch-assets.sh, pass --calib FILE, or use the \
                     calibration-free preset `fast`",
                    preset.name
                );
                let text = spec.load("calibration text", &hint)?;
                let tokenizer = tokenizer.as_ref().expect("made when calibrating");
                let ids = tokenize::encode_prefix(tokenizer, &text.content, windows * ctx).context(text.name.clone())?;
                let available = ids.len() / ctx;
                if available < windows {
                    bail!(
                        "{}: its {} tokens make {available} windows of {ctx}, but preset `{}` asks for {windows} calibration \
                         windows; use a longer calibration text or fewer [calibration] windows",
                        text.name,
                        ids.len(),
                        preset.name
                    );
                }
                Some(Calibration { text, ids, windows, ctx })
            }
        };
        let evaluation = match &request.eval {
            None => None,
            Some(spec) => {
                let options = preset.eval_options();
                ensure!(
                    options.ctx <= max_ctx,
                    "preset `{}`: evaluation ctx {} exceeds the model's max_position_embeddings {max_ctx}",
                    preset.name,
                    options.ctx
                );
                let text = spec.load("evaluation text", "run scripts/fetch-assets.sh, or pass --eval FILE or --no-eval")?;
                let tokenizer = tokenizer.as_ref().expect("made when evaluating");
                let ids = if checking {
                    let wanted = options.ctx.saturating_mul(options.samples.unwrap_or(1));
                    tokenize::encode_prefix(tokenizer, &text.content, wanted)
                } else {
                    tokenize::encode(tokenizer, &text.content)
                }
                .context(text.name.clone())?;
                let windows = eval::window_count(ids.len(), options.ctx, options.samples, &text.name)?;
                let warning = calibration.as_ref().filter(|c| c.text.sha256 == text.sha256).map(|c| {
                    format!(
                        "the evaluation text {} is the calibration text {}: the perplexity figures are not held-out",
                        text.name, c.text.name
                    )
                });
                Some(Evaluation { text, ids, windows, options, warning, known_baseline: None })
            }
        };
        let tasks = match &request.tasks {
            None => None,
            Some(_) if evaluation.is_none() => {
                bail!("tasks are scored beside the evaluation's perplexities: give an evaluation text (drop --no-eval)")
            }
            Some(spec) => {
                let items = crate::tasks::read_items(&spec.file, &spec.name, spec.limit)?;
                limits.check_task_items(items.len(), &spec.name)?;
                Some(items)
            }
        };
        Ok(PackPlan {
            model,
            preset,
            preset_text,
            allocation,
            calibrators,
            calibration,
            evaluation,
            output: request.output.clone(),
            force: request.force,
            tasks,
        })
    }
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
        let to_api = |e: tenpak_error::Error| tenpak_api::Error::new(tenpak_api::ErrorKind::Other, format!("{e:#}"));
        let values = self.model.load_f32(&layer.name).map_err(to_api)?;
        let codec = self.registry.codec(codec)?;
        let view = WeightView::new(&values, layer.rows, layer.cols)?;
        let encoded = codec.encode(view, &LayerStats::none(), params)?;
        let decoded = codec.decode(&encoded)?;
        Ok(ProbeResult { bits: codec.size_bits(&encoded), rel_mse: reconstruction_error(&values, &decoded).0, ..Default::default() })
    }
}

/// The per-layer plan for `model` under `preset`, keyed by tensor name. Every codec id and
/// parameter set is checked here, before any encoding starts.
pub fn plan_layers(model: &dyn ModelSource, preset: &Preset, registry: &Registry) -> Result<BTreeMap<String, LayerPlan>> {
    let layers = roles::layer_infos(model);
    let allocator = registry.allocator(&preset.allocator.id)?;
    let mut probe = MeasuringProbe { model, registry, layers: &layers };
    let plan = allocator
        .plan(&layers, &preset.allocator_config(), &mut probe)
        .with_context(|| format!("allocator `{}`", preset.allocator.id))?;
    check_plan(plan, &layers, registry, &preset.allocator.id)
}

/// An allocator's plan for `layers`, checked (one entry per layer, by name and in order; every
/// codec known and its parameters valid) and keyed by tensor name.
pub(crate) fn check_plan(plan: Plan, layers: &[LayerInfo], registry: &Registry, allocator: &str) -> Result<BTreeMap<String, LayerPlan>> {
    if plan.layers.len() != layers.len() {
        bail!("allocator `{allocator}` planned {} layers, expected {}", plan.layers.len(), layers.len());
    }
    let mut out = BTreeMap::new();
    for (lp, layer) in plan.layers.into_iter().zip(layers) {
        if lp.name != layer.name {
            bail!("allocator `{allocator}` planned `{}` where `{}` was expected", lp.name, layer.name);
        }
        let codec = registry.codec(&lp.codec).with_context(|| format!("plan for `{}`", lp.name))?;
        codec.validate(&lp.params).with_context(|| format!("plan for `{}` ({})", lp.name, lp.codec))?;
        out.insert(lp.name.clone(), lp);
    }
    Ok(out)
}

const KINDS: [StatKind; 4] = [StatKind::ActScale, StatKind::HessianDiag, StatKind::Gram, StatKind::FisherDiag];

/// Ids of the calibrators a pack needs: those the preset lists, plus a registered provider of
/// every statistic a planned codec needs. Empty when nothing needs calibration.
pub fn calibrators_for<'p>(plan: impl IntoIterator<Item = &'p LayerPlan>, preset: &Preset, registry: &Registry) -> Result<Vec<String>> {
    let plan: Vec<&LayerPlan> = plan.into_iter().collect();
    let mut needs = StatsNeeds::NONE;
    for lp in &plan {
        needs = needs.union(registry.codec(&lp.codec)?.needs());
    }
    let mut chosen = Vec::new();
    for id in &preset.calibration.calibrators {
        chosen.push(registry.calibrator(id).with_context(|| format!("preset `{}`, [calibration] calibrators", preset.name))?);
    }
    for kind in KINDS {
        if !needs.wants(kind) || chosen.iter().any(|c| c.provides() == kind) {
            continue;
        }
        let Some(provider) = registry.calibrator_for(kind) else {
            let codecs: Vec<&str> = plan
                .iter()
                .filter(|lp| registry.codec(&lp.codec).is_ok_and(|c| c.needs().wants(kind)))
                .map(|lp| lp.codec.as_str())
                .collect();
            return Err(Kind::Unsupported.error(format!(
                "codec `{}` needs {kind:?} statistics, but no registered calibrator provides them",
                codecs[0]
            )));
        };
        chosen.push(provider);
    }
    if let Some(c) = chosen.iter().find(|c| c.needs_gradients()) {
        return Err(Kind::Unsupported.error(format!(
            "calibrator `{}` needs loss gradients (a backward pass), which this build's runtime does not compute",
            c.id()
        )));
    }
    Ok(chosen.iter().map(|c| c.id().to_owned()).collect())
}

/// The default artifact path for `model`: `<model stem>.tenpak` in the current directory.
pub fn default_output(model: &Path) -> PathBuf {
    let stem = model.file_stem().and_then(|s| s.to_str()).unwrap_or("model");
    PathBuf::from(format!("{stem}.tenpak"))
}
