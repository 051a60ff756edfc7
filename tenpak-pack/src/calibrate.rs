//! Calibrating one block: the block runs on the calibration windows while calibrators watch the
//! inputs of its linear layers, then each layer's statistics are collected. The pipeline
//! calibrates every block this way on the quantized path ([`crate::pipeline`]), and the measuring
//! allocator on the original model ([`crate::allocate`]), so both see the same statistics of the
//! same inputs.

use candle_core::Tensor;
use tenpak_api::{Calibrator, LayerInfo, LayerStats, WeightView};
use tenpak_error::{Context, Result};
use tenpak_model::roles;
use tenpak_model::runtime::{Block, RopeTables, llama, ops};

/// A linear layer of the block and the calibrators that watch its input (indices into the
/// caller's list).
pub struct Watched {
    /// The layer.
    pub info: LayerInfo,
    /// Which calibrators observe its input.
    pub calibrators: Vec<usize>,
}

/// The linear layers of `block`, in execution order, as calibrators and allocators see them.
pub fn linears(block: &Block) -> Vec<LayerInfo> {
    block
        .linears()
        .iter()
        .map(|linear| {
            let name = linear.name().to_owned();
            let (rows, cols) = (linear.out_features(), linear.in_features());
            let (role, index) = roles::classify(&name, &[rows, cols]);
            LayerInfo { name, role, block: index, rows, cols }
        })
        .collect()
}

/// Run `block` on the windows `hidden` while each layer's calibrators observe its input, window
/// by window in order (several windows run at once: `llama::observe_windows`). With `outputs`,
/// the block's outputs too (the next block's inputs, as `llama::forward_windows` computes them);
/// else `None`, and the block's last product is not computed.
pub fn observe(
    block: &Block,
    hidden: &[Tensor],
    rope: &RopeTables,
    calibrators: &mut [Box<dyn Calibrator>],
    layers: &[Watched],
    outputs: bool,
) -> Result<Option<Vec<Tensor>>> {
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
    if outputs {
        Ok(Some(llama::forward_observed_windows(block, hidden, rope, &mut hook)?))
    } else {
        llama::observe_windows(block, hidden, rope, &mut hook)?;
        Ok(None)
    }
}

/// The statistics that the calibrators `watching` gathered for `layer` (each writes its own into
/// the result, and forgets the layer).
pub fn statistics(calibrators: &mut [Box<dyn Calibrator>], layer: &LayerInfo, watching: &[usize]) -> Result<LayerStats> {
    let mut stats = LayerStats::none();
    for &c in watching {
        let calibrator = &mut calibrators[c];
        calibrator.finish(layer, &mut stats).with_context(|| format!("calibrator `{}`", calibrator.id()))?;
    }
    Ok(stats)
}
