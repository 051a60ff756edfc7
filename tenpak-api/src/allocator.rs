use serde::{Deserialize, Serialize};

use crate::{Error, LayerInfo, ParamSpec, Params, Result, StatsNeeds};

/// The codec and parameters chosen for one weight.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerPlan {
    /// Tensor name.
    pub name: String,
    /// Codec id.
    pub codec: String,
    /// Codec parameters.
    pub params: Params,
}

/// An allocator's output: one entry per layer it was given, in the same order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Per-layer choices.
    pub layers: Vec<LayerPlan>,
}

impl LayerPlan {
    /// Lay `choice` over this plan: a different codec id starts from that codec's defaults (one
    /// codec's parameters mean nothing to another), then `choice`'s parameters override.
    pub fn apply(&mut self, choice: &CodecChoice) {
        if let Some(codec) = &choice.codec
            && *codec != self.codec
        {
            self.codec = codec.clone();
            self.params = Params::new();
        }
        self.params = self.params.merged(&choice.params);
    }
}

/// What trying one codec configuration on one layer cost.
///
/// Errors are measured against the layer's original weight W and its decode Ŵ (E = W − Ŵ); G is
/// the Gram matrix XᵀX/n of the layer's calibration inputs, so tr(E G Eᵀ) is the mean squared
/// error of the layer's *output* on that text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProbeResult {
    /// Exact stored bits.
    pub bits: u64,
    /// ‖E‖² / ‖W‖²: the weight error, without statistics.
    pub rel_mse: f64,
    /// tr(E G Eᵀ) / tr(W G Wᵀ): the relative output error, when the host has the layer's Gram
    /// matrix.
    #[serde(default)]
    pub output_error: Option<f64>,
    /// Σₒ fₒ (E G Eᵀ)ₒₒ with fₒ the loss's mean squared gradient with respect to output channel
    /// o (from the Fisher diagonal): twice the predicted increase of the loss, when the host has
    /// Fisher statistics.
    #[serde(default)]
    pub loss_error: Option<f64>,
}

/// Lets a measuring allocator try a codec configuration on a layer before committing to it.
pub trait Probe {
    /// Encode layer `index` (into the slice given to [`Allocator::plan`]) with `codec` and
    /// `params`, and report its size and error.
    fn try_codec(&mut self, index: usize, codec: &str, params: &Params) -> Result<ProbeResult>;
}

/// Decides which codec, with which parameters, each weight gets.
///
/// Allocator parameters are a preset's `[allocator]` table; rule-based allocators read their
/// rules from there, and measuring allocators use the [`Probe`] to try configurations.
pub trait Allocator: Send + Sync {
    /// Stable id (`"role_rules"`).
    fn id(&self) -> &str;

    /// One line for `tenpak codecs`. Default: empty.
    fn description(&self) -> &str {
        ""
    }

    /// Parameters this allocator accepts at the top level of its table. Default: none.
    fn params(&self) -> &[ParamSpec] {
        &[]
    }

    /// Statistics the allocator wants its probes measured with (the Gram matrix for the output
    /// error, the Fisher diagonal for the loss error). An allocator that needs any plans inside
    /// the pack, on the calibration text, instead of before it. Default: none.
    fn needs(&self, config: &AllocatorConfig) -> StatsNeeds {
        let _ = config;
        StatsNeeds::NONE
    }

    /// Check the preset's allocator table before any work. Default: accept anything.
    fn validate(&self, config: &AllocatorConfig) -> Result<()> {
        let _ = config;
        Ok(())
    }

    /// Plan every layer in `layers`.
    fn plan(&self, layers: &[LayerInfo], config: &AllocatorConfig, probe: &mut dyn Probe) -> Result<Plan>;
}

/// A codec choice that may leave the codec id open (inheriting it) and override some parameters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CodecChoice {
    /// Codec id; `None` keeps the one inherited from the enclosing rule.
    pub codec: Option<String>,
    /// Parameters laid over the inherited ones.
    pub params: Params,
}

/// A per-layer override: every weight whose name matches `pattern` gets `choice`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Override {
    /// Glob over tensor names; `*` matches any run of characters.
    pub pattern: String,
    /// What matching weights get.
    pub choice: CodecChoice,
}

/// The allocation rules a preset gives an allocator: a default codec, per-role refinements,
/// per-name overrides (last match wins), and allocator-specific parameters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AllocatorConfig {
    /// Codec for every block linear unless something more specific applies.
    pub default: CodecChoice,
    /// Refinements by role class: keys are role names (`"attn_q"`), `"attention"` or `"mlp"`.
    pub roles: std::collections::BTreeMap<String, CodecChoice>,
    /// Name overrides, applied in order after roles.
    pub overrides: Vec<Override>,
    /// Allocator-specific parameters (e.g. a bits-per-weight target).
    pub params: Params,
    /// Configurations a measuring allocator may choose from for each block linear, each laid
    /// over the layer's resolved plan ([`LayerPlan::apply`]).
    #[serde(default)]
    pub candidates: Vec<CodecChoice>,
}

impl AllocatorConfig {
    /// The plan the rules give `layer`: the default codec, then the role class (`attention` or
    /// `mlp`), then the exact role (`attn_q`, `embedding`, …), then every override whose pattern
    /// matches, in order (so the last match wins); each laid over the previous with
    /// [`LayerPlan::apply`].
    pub fn resolve(&self, layer: &LayerInfo) -> Result<LayerPlan> {
        let codec = self
            .default
            .codec
            .clone()
            .ok_or_else(|| Error::invalid_param("the preset's default codec has no `codec` id"))?;
        let mut plan = LayerPlan { name: layer.name.clone(), codec, params: self.default.params.clone() };
        let class = if layer.role.is_attention() {
            Some("attention")
        } else if layer.role.is_mlp() {
            Some("mlp")
        } else {
            None
        };
        if let Some(choice) = class.and_then(|c| self.roles.get(c)) {
            plan.apply(choice);
        }
        if let Some(choice) = self.roles.get(layer.role.name()) {
            plan.apply(choice);
        }
        for rule in &self.overrides {
            if glob_match(&rule.pattern, &layer.name) {
                plan.apply(&rule.choice);
            }
        }
        Ok(plan)
    }
}

/// True if `name` matches `pattern`, where `*` matches any run of characters (including none)
/// and every other character matches itself.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Classic two-pointer wildcard match with backtracking to the last star.
    let (mut pi, mut ni) = (0, 0);
    let (mut star, mut star_n) = (None, 0);
    while ni < n.len() {
        if pi < p.len() && p[pi] != '*' && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            star_n = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            star_n += 1;
            ni = star_n;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}
