//! Encode time of `int4_awq` on the two SmolLM2 layer shapes, with synthetic calibration
//! statistics, for each α-search setting. Run on one core:
//! `RAYON_NUM_THREADS=1 MATMUL_NUM_THREADS=1 cargo run --release -p tenpak-codec-int4-awq --example awq_timing`
use std::time::Instant;

use ndarray::Array2;
use tenpak_api::{Codec, Gram, LayerStats, Params, WeightView};
use tenpak_codec_int4_awq::Int4Awq;
use tenpak_quant::testing::{Rng, llm_like};

fn stats(tokens: usize, cols: usize, seed: u64) -> LayerStats {
    let mut rng = Rng::new(seed);
    let channel: Vec<f64> = (0..cols)
        .map(|j| rng.normal().exp() * if j % 32 == 7 { 20.0 } else { 1.0 })
        .collect();
    let x = Array2::from_shape_fn((tokens, cols), |(_, j)| (channel[j] * rng.normal()) as f32);
    let gram = x.t().dot(&x) / tokens as f32;
    LayerStats {
        act_scale: Some(
            (0..cols)
                .map(|j| x.column(j).iter().map(|v| v.abs()).sum::<f32>() / tokens as f32)
                .collect(),
        ),
        hessian_diag: Some((0..cols).map(|j| gram[[j, j]]).collect()),
        gram: Some(Gram {
            dim: cols,
            data: gram.iter().copied().collect(),
        }),
        fisher_diag: None,
        samples: tokens,
    }
}

fn main() {
    for (rows, cols) in [(1536, 576), (576, 1536), (192, 576)] {
        let m = llm_like(rows, cols, 3);
        let s = stats(2048, cols, 4);
        let view = WeightView::new(&m.data, rows, cols).unwrap();
        for (name, p) in [
            ("alpha = 0.5 fixed", Params::new().with("alpha", 0.5)),
            ("defaults (alpha searched)", Params::new()),
            (
                "ranking on all rows",
                Params::new().with("alpha_search_rows", 0usize),
            ),
            (
                "ranking with the rtn fit",
                Params::new().with("alpha_search_fit", "rtn"),
            ),
        ] {
            let t = Instant::now();
            let e = Int4Awq.encode(view, &s, &p).unwrap();
            println!(
                "[{rows}x{cols}] {name:26} {:7.1} ms  alpha {}  output_error {:.4e}",
                t.elapsed().as_secs_f64() * 1e3,
                e.params.get("alpha").unwrap(),
                e.params.float_or("output_error", f64::NAN).unwrap()
            );
        }
    }
}
