use serde::{Deserialize, Serialize};

use crate::{LayerInfo, ParamSpec, Params, Result};

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

/// What trying one codec configuration on one layer cost.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProbeResult {
    /// Exact stored bits.
    pub bits: u64,
    /// ‖W − Ŵ‖² / ‖W‖² (weighted by calibration statistics where the host has them).
    pub rel_mse: f64,
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
}
