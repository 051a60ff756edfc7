//! Weights kept out of the INT4 grid: the largest `|w|`, corrected by an fp16 residual.
//!
//! A handful of very large weights stretch their groups' ranges and coarsen every other weight's
//! step (the "dense-and-sparse" observation of SqueezeLLM, Kim et al. 2023, and SpQR, Dettmers et
//! al. 2023). The codec picks the top `outlier_fraction` of weights by salience (see [`select`]),
//! leaves them out of their groups' range fit (importance 0), codes them like any other weight,
//! and stores at each of their positions the f16 of what the grid missed, `w − ŵ_dense`.
//! Decoding adds it back.
//!
//! Parts: `outlier_index` (u32 `[k]`, flat row-major indices, strictly increasing) and
//! `outlier_value` (f16 `[k]`): 48 bits per outlier.

use half::f16;
use tenpak_api::{Error, Result};

use crate::ID;

/// Number of outliers for `numel` weights: `round(fraction · numel)`, at most `numel`.
pub fn outlier_count(numel: usize, fraction: f64) -> usize {
    ((fraction * numel as f64).round() as usize).min(numel)
}

/// Flat indices of the `outlier_count(weight.len(), fraction)` most salient weights of a
/// row-major matrix with `act_scale.len()` columns, increasing. Salience is
/// `|w_ij| · sqrt(act_scale_j)`; ties go to the lower index, so the choice is deterministic.
///
/// Why not plain `|w|`: AWQ's finding (§3.1) is that the weights that matter are those on
/// channels with large activations, not the largest weights. Measured on SmolLM2-135M (49 layers
/// of 7 blocks, output error relative to int4_rtn, 0.5 % outliers, the rest of the codec at its
/// defaults): `|w|` 0.308 / 0.312 / 0.307 at groups 128 / 512 / 2048, `|w|·act_scale^¼` – / 0.286
/// / –, `|w|·act_scale^½` 0.305 / 0.284 / 0.278, `|w|·act_scale^¾` – / 0.298 / –,
/// `|w|·act_scale` – / 0.317 / –, `|w|·sqrt(hessian_diag)` – / 0.314 / –.
pub fn select(weight: &[f32], act_scale: &[f64], fraction: f64) -> Result<Vec<u32>> {
    let k = outlier_count(weight.len(), fraction);
    if k == 0 {
        return Ok(Vec::new());
    }
    if weight.len() > u32::MAX as usize + 1 {
        return Err(Error::invalid_input(format!(
            "{ID}: a matrix of {} weights is too large for u32 outlier indices; set outlier_fraction = 0",
            weight.len()
        )));
    }
    let cols = act_scale.len();
    let weight_of_column: Vec<f32> = act_scale.iter().map(|a| a.sqrt() as f32).collect();
    let salience: Vec<f32> = weight
        .iter()
        .enumerate()
        .map(|(i, w)| w.abs() * weight_of_column[i % cols])
        .collect();
    let mut order: Vec<u32> = (0..weight.len() as u32).collect();
    // More salient first, then lower index: a total order, so the selected set is unique.
    let rank = |a: &u32, b: &u32| {
        salience[*b as usize]
            .total_cmp(&salience[*a as usize])
            .then(a.cmp(b))
    };
    if k < order.len() {
        order.select_nth_unstable_by(k - 1, rank);
        order.truncate(k);
    }
    order.sort_unstable();
    Ok(order)
}

/// The f16 residuals `w − ŵ_dense` at the outlier positions; an error if one exceeds f16's range
/// (a weight beyond ±65504 plus its grid level), naming its position.
pub fn residuals(weight: &[f32], dense: &[f32], index: &[u32], cols: usize) -> Result<Vec<f16>> {
    index
        .iter()
        .map(|&i| {
            let i = i as usize;
            let r = f16::from_f32(weight[i] - dense[i]);
            if r.is_finite() {
                Ok(r)
            } else {
                Err(Error::invalid_input(format!(
                    "{ID}: outlier at row {}, column {} (weight {}) is too far from its grid level ({}) for an f16 \
                     residual; store this tensor unquantized",
                    i / cols.max(1),
                    i % cols.max(1),
                    weight[i],
                    dense[i]
                )))
            }
        })
        .collect()
}

/// Add the residuals back: `out[index[k]] += value[k]`, in f32.
pub fn apply(out: &mut [f32], index: &[u32], value: &[f16]) {
    for (&i, v) in index.iter().zip(value) {
        out[i as usize] += v.to_f32();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_takes_the_most_salient_deterministically() {
        let w = [0.1f32, -5.0, 0.2, 5.0, -0.3, 0.0, 2.0, -2.0];
        let ones = [1.0; 8];
        assert_eq!(select(&w, &ones, 0.25).unwrap(), vec![1, 3]);
        assert_eq!(select(&w, &ones, 0.375).unwrap(), vec![1, 3, 6]);
        assert_eq!(select(&w, &ones, 0.5).unwrap(), vec![1, 3, 6, 7]);
        assert_eq!(
            select(&w, &ones, 1.0).unwrap(),
            (0..8).collect::<Vec<u32>>()
        );
        assert!(select(&w, &ones, 0.0).unwrap().is_empty());
        assert!(select(&[], &ones, 0.1).unwrap().is_empty());
        // Salience is |w|·sqrt(act_scale): a quiet channel's large weight ranks below a loud
        // channel's smaller one. Two rows of four columns.
        let act = [0.01, 1.0, 1.0, 100.0];
        let w = [5.0f32, 1.0, 0.0, 0.6, 0.0, -2.0, 0.1, 0.0];
        assert_eq!(select(&w, &act, 0.25).unwrap(), vec![3, 5]);
        assert_eq!(outlier_count(1000, 0.005), 5);
        assert_eq!(outlier_count(99, 0.005), 0);
    }
}
