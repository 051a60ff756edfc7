//! Assigning codewords: nearest per sub-vector, or with GPTQ's error feedback across columns.
//!
//! Feedback: with `U` upper triangular and `(G + damp·I)⁻¹ = UᵀU`, the columns are visited in
//! order, a sub-vector's columns at a time. Each row's sub-vector (divided by its group's scale)
//! gets its nearest codeword; then for each of its columns `i` in turn,
//! `e = (w̃_i − q_i) / U_ii` and every later column `k` moves by `w̃_k −= e · U_ik` (the later
//! columns of the same sub-vector too: their codes are already chosen, and their own errors are
//! then taken against the moved targets). So `W − Q = E U` as in GPTQ, and the damped output
//! error is `‖E‖²`. Rows are independent and run in parallel.

use half::f16;
use rayon::prelude::*;
use tenpak_api::{Error, Result};
use tenpak_quant::linalg::inverse_cholesky_upper;

use crate::kmeans::{importances, nearest};
use crate::{ID, Shape};

fn book_f32(codebook: &[f16]) -> Vec<f32> {
    codebook.iter().map(|v| v.to_f32()).collect()
}

/// Nearest codeword of every sub-vector (weighted by `hessian_diag`), row-major
/// `[rows, subvectors_per_row]`.
pub fn assign_nearest(weight: &[f32], scales: &[f16], codebook: &[f16], hdiag: &[f32], shape: Shape) -> Vec<u16> {
    let subs = shape.subvectors();
    let (d, gpr, nsub) = (shape.dim, shape.groups_per_row(), subs.len());
    let book = book_f32(codebook);
    let h = importances(hdiag);
    let mut out = vec![0u16; shape.rows * nsub];
    if nsub == 0 {
        return out;
    }
    out.par_chunks_mut(nsub).enumerate().for_each(|(r, row_out)| {
        let mut x = vec![0f32; d];
        let mut hw = vec![0f32; d];
        for (s, cols) in subs.iter().enumerate() {
            let scale = scales[r * gpr + cols.start / shape.group_size].to_f32();
            fill(&mut x, &mut hw, cols.clone(), |c| weight[r * shape.cols + c], &h, scale);
            row_out[s] = nearest(&x, &hw, &book, d).0 as u16;
        }
    });
    out
}

/// The normalized sub-vector `x` and its coordinate weights (0 for padding, and all 0 with a
/// zero scale, where every codeword decodes to 0).
fn fill(x: &mut [f32], hw: &mut [f32], cols: std::ops::Range<usize>, value: impl Fn(usize) -> f32, h: &[f32], scale: f32) {
    x.fill(0.0);
    hw.fill(0.0);
    if scale == 0.0 {
        return;
    }
    for (k, c) in cols.enumerate() {
        x[k] = value(c) / scale;
        hw[k] = h[c];
    }
}

/// `U` of the damped Gram matrix (`(G + damp·I)⁻¹ = UᵀU`, dead channels' diagonal set to 1),
/// raising `percdamp` ×10 up to four times if the factorization fails.
fn inverse_factor(gram: &[f32], n: usize, percdamp: f64) -> Result<Vec<f64>> {
    let mut h: Vec<f64> = (0..n * n).map(|i| 0.5 * (f64::from(gram[i]) + f64::from(gram[(i % n) * n + i / n]))).collect();
    for j in 0..n {
        if h[j * n + j] == 0.0 {
            h[j * n + j] = 1.0;
        }
    }
    let mean = (0..n).map(|j| h[j * n + j]).sum::<f64>() / n.max(1) as f64;
    let mut damp = percdamp;
    for _ in 0..5 {
        let mut hd = h.clone();
        for j in 0..n {
            hd[j * n + j] += damp * mean;
        }
        if let Ok(u) = inverse_cholesky_upper(hd, n) {
            return Ok(u);
        }
        damp *= 10.0;
    }
    Err(Error::invalid_input(format!(
        "{ID}: the Gram matrix is not positive definite even dampened by {damp} of its mean diagonal"
    )))
}

/// Codewords chosen with error feedback (see the module docs), row-major
/// `[rows, subvectors_per_row]`.
pub fn assign_with_feedback(
    weight: &[f32],
    scales: &[f16],
    codebook: &[f16],
    hdiag: &[f32],
    gram: &[f32],
    shape: Shape,
    percdamp: f64,
) -> Result<Vec<u16>> {
    let n = shape.cols;
    let u = inverse_factor(gram, n, percdamp)?;
    let subs = shape.subvectors();
    let (d, gpr, nsub) = (shape.dim, shape.groups_per_row(), subs.len());
    let book = book_f32(codebook);
    let h = importances(hdiag);
    let mut out = vec![0u16; shape.rows * nsub];
    if nsub == 0 {
        return Ok(out);
    }
    out.par_chunks_mut(nsub).enumerate().for_each(|(r, row_out)| {
        let mut w: Vec<f64> = weight[r * n..(r + 1) * n].iter().map(|&v| f64::from(v)).collect();
        let mut x = vec![0f32; d];
        let mut hw = vec![0f32; d];
        for (s, cols) in subs.iter().enumerate() {
            let scale = scales[r * gpr + cols.start / shape.group_size].to_f32();
            fill(&mut x, &mut hw, cols.clone(), |c| w[c] as f32, &h, scale);
            let k = nearest(&x, &hw, &book, d).0;
            row_out[s] = k as u16;
            for (j, i) in cols.clone().enumerate() {
                // The decoded value exactly as `decode` computes it.
                let q = f64::from(scale * book[k * d + j]);
                let u_row = &u[i * n..(i + 1) * n];
                let e = (w[i] - q) / u_row[i];
                for (wk, uk) in w[i + 1..].iter_mut().zip(&u_row[i + 1..]) {
                    *wk -= e * uk;
                }
            }
        }
    });
    Ok(out)
}
