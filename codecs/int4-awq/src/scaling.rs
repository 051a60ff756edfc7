//! AWQ's per-input-channel scales (Lin et al., "AWQ: Activation-aware Weight Quantization",
//! MLSys 2024, §3.2): `s_j = act_scale_j^α`, normalized as AutoAWQ does.

use half::f16;

/// The stored column scales for exponent `alpha`: `s_j = a_j^α / sqrt(max_k a_k^α · min_k a_k^α)`,
/// rounded to f16 (nearest). `act_scale` must be positive and finite (see
/// [`crate::calibration::Calibration`], whose floor keeps every `a_j ≥ 1e-6 · max`).
///
/// The normalization centres the scales on 1 in log space, so scaling never pushes a group's
/// range far from where f16 headers are precise; it does not change the quantization (a common
/// factor of all `s_j` moves every group's grid with it). With the floor and `α ≤ 1` every `s_j`
/// lies in `[1e-3, 1e3]`, a normal f16, so rounding keeps it positive and finite. The encoder
/// uses these rounded values, so what it measured is what the decoder computes.
pub fn column_scales(act_scale: &[f64], alpha: f64) -> Vec<f16> {
    let powered: Vec<f64> = act_scale.iter().map(|&a| a.powf(alpha)).collect();
    let max = powered.iter().copied().fold(f64::MIN_POSITIVE, f64::max);
    let min = powered.iter().copied().fold(f64::MAX, f64::min);
    let norm = (max * min).sqrt();
    powered.iter().map(|&p| f16::from_f64(p / norm)).collect()
}

/// `out_j = w_j · s_j` along every row of a `cols`-wide row-major matrix (the weights AWQ
/// quantizes in place of `W`).
pub fn scale_columns(weight: &[f32], scales: &[f32]) -> Vec<f32> {
    let cols = scales.len();
    let mut out = weight.to_vec();
    if cols > 0 {
        for row in out.chunks_exact_mut(cols) {
            for (w, s) in row.iter_mut().zip(scales) {
                *w *= s;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_are_normalized_powers() {
        let act = [1e-6f64, 0.01, 1.0, 4.0];
        for alpha in [0.0, 0.25, 0.5, 1.0] {
            let s = column_scales(&act, alpha);
            for (j, &a) in act.iter().enumerate() {
                let want = a.powf(alpha) / (4f64.powf(alpha) * 1e-6f64.powf(alpha)).sqrt();
                let got = s[j].to_f64();
                assert!(
                    (got - want).abs() <= want * 1e-3,
                    "alpha {alpha} j {j}: {got} vs {want}"
                );
            }
        }
        assert!(column_scales(&act, 0.0).iter().all(|s| s.to_f32() == 1.0));
        assert!(column_scales(&[], 0.5).is_empty());
    }
}
