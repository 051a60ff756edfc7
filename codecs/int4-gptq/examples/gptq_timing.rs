//! Time `int4_gptq` on layers of SmolLM2-135M's shapes and print its output error against the
//! same range fit without compensation, for dynamic groups, static groups and the default
//! per-row best.
//!
//! `MATMUL_NUM_THREADS=1 RAYON_NUM_THREADS=1 cargo run --release -p tenpak-codec-int4-gptq --example gptq_timing`
//! for one core.

use std::time::Instant;

use ndarray::{Array2, ArrayView2};
use tenpak_api::{Gram, LayerStats, Params, WeightView};
use tenpak_codec_int4_gptq::Int4Gptq;
use tenpak_quant::gptq::hessian::Hessian;
use tenpak_quant::gptq::sweep::InverseFactor;
use tenpak_quant::testing::{ActivationShape, correlated_activations, llm_like};

/// `tokens × cols` activations shaped like an LLM layer's inputs
/// ([`tenpak_quant::testing::correlated_activations`]).
fn activations(tokens: usize, cols: usize, seed: u64) -> Vec<f32> {
    correlated_activations(tokens, cols, seed, ActivationShape { outlier_every: 32, outlier_at: 7, factors: 8 })
}

fn gram_of(x: &[f32], cols: usize) -> Vec<f32> {
    let tokens = x.len() / cols;
    let xv = ArrayView2::from_shape((tokens, cols), x)
        .unwrap()
        .mapv(f64::from);
    let mut g = Array2::<f64>::zeros((cols, cols));
    ndarray::linalg::general_mat_mul(1.0 / tokens as f64, &xv.t(), &xv, 0.0, &mut g);
    g.iter().map(|&v| v as f32).collect()
}

fn main() {
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    for (rows, cols) in [(1536usize, 576usize), (576, 1536), (576, 576), (192, 576)] {
        let x = activations(2048, cols, 7);
        let stats = LayerStats {
            gram: Some(Gram {
                dim: cols,
                data: gram_of(&x, cols),
            }),
            samples: 2048,
            ..LayerStats::none()
        };
        let m = llm_like(rows, cols, 11);
        let view = WeightView::new(&m.data, rows, cols).unwrap();
        for group_size in [128usize, 64] {
            let encode = |extra: &[(&str, &str)]| {
                let mut params = Params::new().with("group_size", group_size);
                for (k, v) in extra {
                    params.set(k, *v);
                }
                if extra.iter().any(|(k, _)| *k == "groups") {
                    params.set("rtn_fallback", false);
                }
                let t = Instant::now();
                let report = Int4Gptq.encode_report(view, &stats, &params).unwrap();
                (report, ms(t))
            };
            let (dynamic, t_dynamic) = encode(&[("groups", "dynamic")]);
            let (fixed, _) = encode(&[("groups", "static")]);
            let (best, t_best) = encode(&[]);
            let t = Instant::now();
            let hessian = Hessian::from_stats(&stats, cols).unwrap();
            InverseFactor::new(&hessian, 0.01).unwrap();
            let t_factor = ms(t);
            let rel = |r: &tenpak_codec_int4_gptq::Report| r.output_error / r.energy;
            println!(
                "{rows:>5} x {cols:<5} g{group_size:<4} relative output error: uncompensated {:.3e}, dynamic {:.3e} ({:.3}), \
                 static {:.3e} ({:.3}), default {:.3e} ({:.3}; {} static, {} uncompensated rows) | \
                 encode: dynamic only {t_dynamic:.0} ms, default {t_best:.0} ms (factorization {t_factor:.0} ms)",
                best.rtn_output_error / best.energy,
                rel(&dynamic),
                dynamic.output_error / dynamic.rtn_output_error,
                rel(&fixed),
                fixed.output_error / fixed.rtn_output_error,
                rel(&best),
                best.output_error / best.rtn_output_error,
                best.static_rows,
                best.rtn_rows,
            );
        }
    }
}
