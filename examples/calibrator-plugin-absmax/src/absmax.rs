//! The `act_absmax` calibrator (see the crate docs).

use std::collections::HashMap;

use tenpak_api::{Calibrator, Error, LayerInfo, LayerStats, Result, StatKind, WeightView};

/// Largest |x| per input channel, per layer.
#[derive(Debug, Default)]
pub struct ActAbsMax {
    /// Per layer name: the running maximum per channel and the number of rows seen.
    layers: HashMap<String, (Vec<f32>, usize)>,
}

impl Calibrator for ActAbsMax {
    fn id(&self) -> &str {
        "act_absmax"
    }

    fn provides(&self) -> StatKind {
        StatKind::ActScale
    }

    fn observe_input(&mut self, layer: &LayerInfo, inputs: WeightView<'_>) -> Result<()> {
        if inputs.cols() != layer.cols {
            return Err(Error::invalid_input(format!(
                "act_absmax: `{}` has {} input channels, but a batch of {} was observed",
                layer.name,
                layer.cols,
                inputs.cols()
            )));
        }
        let (max, rows) = self.layers.entry(layer.name.clone()).or_insert_with(|| (vec![0.0; layer.cols], 0));
        for row in inputs.data().chunks_exact(layer.cols) {
            for (channel, (m, &x)) in max.iter_mut().zip(row).enumerate() {
                if !x.is_finite() {
                    return Err(Error::invalid_input(format!(
                        "act_absmax: input {x} in channel {channel} of `{}`",
                        layer.name
                    )));
                }
                *m = m.max(x.abs());
            }
        }
        *rows += inputs.rows();
        Ok(())
    }

    fn finish(&mut self, layer: &LayerInfo, stats: &mut LayerStats) -> Result<()> {
        let (max, rows) = self.layers.remove(&layer.name).ok_or_else(|| {
            Error::invalid_input(format!("act_absmax: no inputs were observed for `{}`", layer.name))
        })?;
        stats.act_scale = Some(max);
        stats.samples = rows;
        Ok(())
    }
}
