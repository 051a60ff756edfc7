//! Helpers of this crate's tests: synthetic calibration activations shaped like an LLM layer's
//! inputs, and the statistics the host's calibrators would compute from them.
#![allow(dead_code, unused_imports)]

use tenpak_api::{Gram, LayerStats};
pub use tenpak_quant::testing::{
    Rng, TestMatrix, activations, codec_matrices as matrices, gaussian, llm_like, stats_of,
    stored_bytes,
};

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
