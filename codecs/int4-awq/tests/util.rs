//! Helpers of this crate's tests: synthetic calibration activations shaped like an LLM layer's
//! inputs, and the statistics the host's calibrators would compute from them.
#![allow(dead_code, unused_imports)]

use tenpak_api::{Gram, LayerStats};
pub use tenpak_quant::testing::{
    Rng, TestMatrix, codec_matrices as matrices, gaussian, llm_like, stored_bytes,
};

/// `tokens × cols` activations, row-major: per-channel scales log-normal (σ = 1) with one channel
/// in 32 an outlier channel 20× larger (as in LLM residual streams), channels correlated through
/// four shared factors, and per-token magnitudes heavy-tailed (Student-t-like).
pub fn activations(tokens: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let channel: Vec<f64> = (0..cols)
        .map(|j| rng.normal().exp() * if j % 32 == 7 { 20.0 } else { 1.0 })
        .collect();
    let loadings: Vec<[f64; 4]> = (0..cols)
        .map(|_| [rng.normal(), rng.normal(), rng.normal(), rng.normal()])
        .collect();
    let mut x = Vec::with_capacity(tokens * cols);
    for _ in 0..tokens {
        let factors = [rng.normal(), rng.normal(), rng.normal(), rng.normal()];
        let chi2: f64 = (0..4).map(|_| rng.normal().powi(2)).sum();
        let magnitude = 1.0 / (chi2 / 4.0).sqrt().max(0.2);
        for j in 0..cols {
            let shared: f64 = loadings[j].iter().zip(&factors).map(|(l, f)| l * f).sum();
            x.push((channel[j] * magnitude * (rng.normal() + 0.5 * shared)) as f32);
        }
    }
    x
}

/// What the calibrators compute from `x` (`tokens × cols`): mean |x|, mean x² and XᵀX / n per
/// input column, in f64 then rounded to f32.
pub fn stats_of(x: &[f32], cols: usize) -> LayerStats {
    let tokens = x.len() / cols;
    let mut act = vec![0f64; cols];
    let mut gram = vec![0f64; cols * cols];
    for t in x.chunks_exact(cols) {
        for i in 0..cols {
            act[i] += f64::from(t[i]).abs();
            let xi = f64::from(t[i]);
            for j in 0..cols {
                gram[i * cols + j] += xi * f64::from(t[j]);
            }
        }
    }
    let n = tokens as f64;
    LayerStats {
        act_scale: Some(act.iter().map(|v| (v / n) as f32).collect()),
        hessian_diag: Some((0..cols).map(|i| (gram[i * cols + i] / n) as f32).collect()),
        gram: Some(Gram {
            dim: cols,
            data: gram.iter().map(|v| (v / n) as f32).collect(),
        }),
        fisher_diag: None,
        samples: tokens,
    }
}

/// Statistics for a layer with `cols` inputs from `tokens` synthetic tokens.
pub fn synthetic_stats(tokens: usize, cols: usize, seed: u64) -> LayerStats {
    stats_of(&activations(tokens, cols, seed), cols)
}

/// Mean over the tokens of `‖(W − Ŵ) x‖²`, straight from the activations, in f64.
pub fn output_error_on(x: &[f32], w: &[f32], w_hat: &[f32], rows: usize, cols: usize) -> f64 {
    let tokens = x.len() / cols;
    let mut total = 0f64;
    for t in x.chunks_exact(cols) {
        for r in 0..rows {
            let mut y = 0f64;
            for j in 0..cols {
                y +=
                    (f64::from(w[r * cols + j]) - f64::from(w_hat[r * cols + j])) * f64::from(t[j]);
            }
            total += y * y;
        }
    }
    total / tokens as f64
}
