//! Encode times of the `ggml` codec's stages on synthetic layers of SmolLM2-135M's shapes
//! (`cargo run --release -p tenpak-codec-ggml --example ggml_timing [type]`): the weighted
//! round-to-nearest fit, each GPTQ sweep, and the whole encode with its output-error records.

use std::time::Instant;

use tenpak_api::{Params, WeightView};
use tenpak_codec_ggml::sweep::{Headers, round_to_nearest, sweep};
use tenpak_codec_ggml::{Ggml, GgmlType};
use tenpak_quant::gptq::hessian::Hessian;
use tenpak_quant::gptq::sweep::InverseFactor;
use tenpak_quant::testing;

fn main() {
    let ty = std::env::args()
        .nth(1)
        .and_then(|n| GgmlType::from_name(&n))
        .unwrap_or(GgmlType::Q4_0);
    println!("| shape | type | weighted fit | dynamic sweep | static sweep | whole encode |");
    println!("|---|---|---:|---:|---:|---:|");
    for (rows, cols) in [(1536, 576), (576, 1536), (576, 576)] {
        let ty = if cols % ty.block_weights() == 0 {
            ty
        } else {
            ty.fallback().unwrap_or(ty)
        };
        let m = testing::llm_like(rows, cols, 1);
        let st = testing::stats_of(&testing::activations(2048, cols, 2), cols);
        let h = st.hessian_diag.clone().unwrap();
        let t = Instant::now();
        let rtn = round_to_nearest(ty, &m.data, cols, &h);
        let fit = t.elapsed().as_secs_f64();
        let factor = InverseFactor::new(&Hessian::from_stats(&st, cols).unwrap(), 0.01).unwrap();
        let t = Instant::now();
        sweep(ty, &m.data, cols, &h, &factor, Headers::Dynamic, 128);
        let dynamic = t.elapsed().as_secs_f64();
        let t = Instant::now();
        sweep(
            ty,
            &m.data,
            cols,
            &h,
            &factor,
            Headers::Static(&rtn.headers),
            128,
        );
        let stat = t.elapsed().as_secs_f64();
        let w = WeightView::new(&m.data, rows, cols).unwrap();
        let t = Instant::now();
        Ggml.encode_report(w, &st, &Params::new().with("type", ty.name()))
            .unwrap();
        let whole = t.elapsed().as_secs_f64();
        println!(
            "| {rows} x {cols} | {} | {fit:.3} s | {dynamic:.3} s | {stat:.3} s | {whole:.3} s |",
            ty.name()
        );
    }
}
