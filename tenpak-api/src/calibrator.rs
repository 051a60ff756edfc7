use crate::{LayerInfo, LayerStats, Result, WeightView};

/// One kind of calibration statistic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum StatKind {
    ActScale,
    HessianDiag,
    Gram,
    FisherDiag,
}

/// Which statistics a codec (or allocator) needs; the host runs the calibrators that provide them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsNeeds {
    /// Mean |x| per input channel.
    pub act_scale: bool,
    /// Mean x² per input channel.
    pub hessian_diag: bool,
    /// Full XᵀX / n.
    pub gram: bool,
    /// Mean squared gradient per weight.
    pub fisher_diag: bool,
}

impl StatsNeeds {
    /// Nothing: the codec works without calibration.
    pub const NONE: StatsNeeds =
        StatsNeeds { act_scale: false, hessian_diag: false, gram: false, fisher_diag: false };

    /// True if nothing is needed.
    pub fn is_none(&self) -> bool {
        *self == Self::NONE
    }

    /// Exactly the statistic `kind`.
    pub fn of(kind: StatKind) -> StatsNeeds {
        let mut needs = Self::NONE;
        match kind {
            StatKind::ActScale => needs.act_scale = true,
            StatKind::HessianDiag => needs.hessian_diag = true,
            StatKind::Gram => needs.gram = true,
            StatKind::FisherDiag => needs.fisher_diag = true,
        }
        needs
    }

    /// True if statistic `kind` is needed.
    pub fn wants(self, kind: StatKind) -> bool {
        match kind {
            StatKind::ActScale => self.act_scale,
            StatKind::HessianDiag => self.hessian_diag,
            StatKind::Gram => self.gram,
            StatKind::FisherDiag => self.fisher_diag,
        }
    }

    /// The union of two needs.
    pub fn union(self, other: StatsNeeds) -> StatsNeeds {
        StatsNeeds {
            act_scale: self.act_scale || other.act_scale,
            hessian_diag: self.hessian_diag || other.hessian_diag,
            gram: self.gram || other.gram,
            fisher_diag: self.fisher_diag || other.fisher_diag,
        }
    }
}

/// Watches the model run on calibration text and summarizes what each layer saw.
///
/// The host calls [`observe_input`](Calibrator::observe_input) with every batch of inputs a
/// linear layer receives (rows = tokens, cols = in_features), and, for calibrators that
/// [`need gradients`](Calibrator::needs_gradients), [`observe_gradient`](Calibrator::observe_gradient)
/// with the loss gradient of the layer's weight. [`finish`](Calibrator::finish) then writes the
/// statistic into the layer's [`LayerStats`].
pub trait Calibrator: Send {
    /// Stable id (`"act_scale"`).
    fn id(&self) -> &str;

    /// The statistic this calibrator produces.
    fn provides(&self) -> StatKind;

    /// True if the host must run a backward pass and call
    /// [`observe_gradient`](Calibrator::observe_gradient). Default: false.
    fn needs_gradients(&self) -> bool {
        false
    }

    /// Accumulate one batch of a layer's inputs.
    fn observe_input(&mut self, layer: &LayerInfo, inputs: WeightView<'_>) -> Result<()>;

    /// Accumulate one gradient of a layer's weight (same shape as the weight). Default: ignore.
    fn observe_gradient(&mut self, layer: &LayerInfo, gradient: WeightView<'_>) -> Result<()> {
        let _ = (layer, gradient);
        Ok(())
    }

    /// Write the finished statistic for `layer` into `stats` and drop what was accumulated for it.
    fn finish(&mut self, layer: &LayerInfo, stats: &mut LayerStats) -> Result<()>;
}
