//! Helpers of this crate's tests: synthetic calibration activations shaped like an LLM layer's
//! inputs, their statistics, and the baselines GPTQ is compared with.
#![allow(dead_code, unused_imports)]

use tenpak_api::{Gram, LayerStats, Params, WeightView};
use tenpak_codec_int4_gptq::{Int4Gptq, Report, Settings};
pub use tenpak_quant::testing::{
    Rng, TestMatrix, adversarial, codec_matrices as matrices, gaussian, llm_like, stored_bytes,
    student_t,
};
use tenpak_quant::testing::{ActivationShape, correlated_activations};
use tenpak_quant::{AsymFormat, AsymQuantized, GroupLayout};

/// `tokens × cols` activations shaped like an LLM layer's inputs
/// ([`tenpak_quant::testing::correlated_activations`]).
pub fn activations(tokens: usize, cols: usize, seed: u64) -> Vec<f32> {
    correlated_activations(tokens, cols, seed, ActivationShape { outlier_every: 16, outlier_at: 5, factors: 4 })
}

/// XᵀX / n of `x` (`tokens × cols`), accumulated in f64 and rounded to f32, as the `gram`
/// calibrator computes it.
pub fn gram_of(x: &[f32], cols: usize) -> Vec<f32> {
    let tokens = x.len() / cols;
    let mut gram = vec![0f64; cols * cols];
    for t in x.chunks_exact(cols) {
        for i in 0..cols {
            let xi = f64::from(t[i]);
            for j in 0..cols {
                gram[i * cols + j] += xi * f64::from(t[j]);
            }
        }
    }
    gram.iter()
        .map(|v| (v / tokens.max(1) as f64) as f32)
        .collect()
}

/// Statistics holding only `gram`.
pub fn stats_with_gram(gram: Vec<f32>, cols: usize, samples: usize) -> LayerStats {
    LayerStats {
        gram: Some(Gram {
            dim: cols,
            data: gram,
        }),
        samples,
        ..LayerStats::none()
    }
}

/// Statistics of `tokens` synthetic tokens for a layer with `cols` inputs.
pub fn synthetic_stats(tokens: usize, cols: usize, seed: u64) -> LayerStats {
    stats_with_gram(
        gram_of(&activations(tokens, cols, seed), cols),
        cols,
        tokens,
    )
}

/// The 4-bit format of an `rows × cols` matrix in groups of `group_size`.
pub fn format(rows: usize, cols: usize, group_size: usize) -> AsymFormat {
    AsymFormat::new(GroupLayout::new(rows, cols, group_size).unwrap(), 4).unwrap()
}

/// The same range fit without error compensation: `int4_residual`'s stage 1 with these settings.
pub fn rtn_search(m: &TestMatrix, settings: &Settings) -> AsymQuantized {
    AsymQuantized::quantize(
        &m.data,
        format(m.rows, m.cols, settings.group_size),
        &settings.fit_options(),
    )
    .unwrap()
}

/// Encode `m` with `stats` and `params`, panicking with the matrix and parameters in the message.
pub fn report(m: &TestMatrix, stats: &LayerStats, params: &Params) -> Report {
    let view = WeightView::new(&m.data, m.rows, m.cols).unwrap();
    Int4Gptq
        .encode_report(view, stats, params)
        .unwrap_or_else(|e| panic!("{} [{}, {}] {params:?}: {e}", m.name, m.rows, m.cols))
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
