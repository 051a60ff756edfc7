//! The calibration statistics the codec runs on, checked before any work.

use tenpak_api::{Error, ErrorKind, LayerStats, Result};

use crate::ID;

/// Relative floor of `act_scale`: entries below `ACT_SCALE_FLOOR · max` are raised to it, so
/// `act_scale^α` and its normalization stay finite and the column scales stay within f16 (with
/// α ≤ 1 the normalized scales lie in `[1e-3, 1e3]`). A channel that quiet carries no output
/// error worth protecting either way.
pub const ACT_SCALE_FLOOR: f64 = 1e-6;

/// A layer's statistics, checked: every one present, of the right length, finite, and (for
/// the per-channel ones) non-negative.
#[derive(Clone, Debug)]
pub struct Calibration<'a> {
    /// Mean |x| per input channel, floored at [`ACT_SCALE_FLOOR`] of its maximum (all ones if
    /// every channel was silent), in f64 so even a denormal maximum has a positive floor.
    pub act_scale: Vec<f64>,
    /// Mean x² per input channel.
    pub hessian_diag: &'a [f32],
    /// XᵀX / n, `cols × cols`, row-major.
    pub gram: &'a [f32],
}

impl<'a> Calibration<'a> {
    /// Check `stats` for a layer with `cols` input channels. A missing statistic is a
    /// [`ErrorKind::MissingStats`] error naming every missing one (the codec cannot run
    /// uncalibrated); a wrong length, a NaN/Inf or a negative mean is
    /// [`ErrorKind::InvalidInput`] naming the statistic and position.
    pub fn new(stats: &'a LayerStats, cols: usize) -> Result<Self> {
        let missing: Vec<&str> = [
            ("act_scale", stats.act_scale.is_none()),
            ("hessian_diag", stats.hessian_diag.is_none()),
            ("gram", stats.gram.is_none()),
        ]
        .into_iter()
        .filter_map(|(name, absent)| absent.then_some(name))
        .collect();
        let (Some(act_scale), Some(hessian_diag), Some(gram)) =
            (&stats.act_scale, &stats.hessian_diag, &stats.gram)
        else {
            return Err(Error::new(
                ErrorKind::MissingStats,
                format!(
                    "{ID} needs calibration statistics act_scale, hessian_diag and gram; missing: {}",
                    missing.join(", ")
                ),
            ));
        };
        check_channels("act_scale", act_scale, cols)?;
        check_channels("hessian_diag", hessian_diag, cols)?;
        if gram.dim != cols || gram.data.len() != cols * cols {
            return Err(Error::invalid_input(format!(
                "{ID}: statistic `gram` must be {cols} x {cols} ({} values) for a layer with {cols} input columns, \
                 got dim {} with {} values",
                cols * cols,
                gram.dim,
                gram.data.len()
            )));
        }
        if let Some(i) = gram.data.iter().position(|v| !v.is_finite()) {
            return Err(Error::invalid_input(format!(
                "{ID}: statistic `gram` has non-finite value {} at [{}, {}]",
                gram.data[i],
                i / cols,
                i % cols
            )));
        }
        Ok(Self {
            act_scale: floored(act_scale),
            hessian_diag,
            gram: &gram.data,
        })
    }
}

fn check_channels(name: &str, values: &[f32], cols: usize) -> Result<()> {
    if values.len() != cols {
        return Err(Error::invalid_input(format!(
            "{ID}: statistic `{name}` must have one value per input column ({cols}), got {}",
            values.len()
        )));
    }
    match values.iter().position(|v| !(v.is_finite() && *v >= 0.0)) {
        None => Ok(()),
        Some(i) => Err(Error::invalid_input(format!(
            "{ID}: statistic `{name}` has value {} at column {i}; it must be finite and non-negative",
            values[i]
        ))),
    }
}

/// `act_scale` with every entry raised to at least [`ACT_SCALE_FLOOR`] of the largest (zeros and
/// denormals included); all ones if the largest is 0.
fn floored(act_scale: &[f32]) -> Vec<f64> {
    let max = f64::from(act_scale.iter().copied().fold(0f32, f32::max));
    if max == 0.0 {
        return vec![1.0; act_scale.len()];
    }
    let floor = max * ACT_SCALE_FLOOR;
    act_scale.iter().map(|&a| f64::from(a).max(floor)).collect()
}
