//! The layer's output error on the calibration activations, `tr(E G Eᵀ)` with `E = W − Ŵ` and
//! `G = XᵀX / n`: the mean over calibration tokens of `‖(W − Ŵ) x‖²`, what GPTQ minimizes.

use tenpak_quant::gptq::hessian::Hessian;

pub use tenpak_quant::quadratic::{difference, quadratic_form, quadratic_form_reference, quadratic_form_rows};

/// GPTQ's output error per row, `δ G δᵀ` (`δ = w − ŵ`), from what the sweep measured for free on
/// the dampened Hessian: `H_d = G + Σ_dead e_j e_jᵀ + damp · I`, so
/// `δ G δᵀ = δ H_d δᵀ − damp · ‖δ‖² − Σ_dead δ_j²` with `damp = percdamp_applied · mean(diag H)`.
/// One pass over `Δ` instead of a matrix product; clamped at 0 against rounding.
pub fn from_damped_rows(
    row_damped_errors: &[f64],
    weight: &[f32],
    reconstruction: &[f32],
    hessian: &Hessian,
    percdamp_applied: f64,
) -> Vec<f64> {
    let cols = hessian.dim();
    if cols == 0 {
        return vec![0.0; row_damped_errors.len()];
    }
    let damp = percdamp_applied * hessian.mean_diag();
    let dead = hessian.dead();
    weight
        .chunks_exact(cols)
        .zip(reconstruction.chunks_exact(cols))
        .zip(row_damped_errors)
        .map(|((w, r), &damped)| {
            let mut penalty = 0f64;
            for j in 0..cols {
                let delta = f64::from(w[j]) - f64::from(r[j]);
                penalty += delta * delta * (damp + if dead[j] { 1.0 } else { 0.0 });
            }
            (damped - penalty).max(0.0)
        })
        .collect()
}
