//! Capture the statistics of real linear inputs; see the crate docs.
use std::collections::HashMap;

use candle_core::Tensor;
use ndarray::{Array2, ArrayView2};
use tenpak_awq_measure::{CALIB, MODEL, asset, blocks, write_stats};
use tenpak_model::runtime::LlamaModel;

struct Sums {
    cols: usize,
    tokens: usize,
    abs: Vec<f64>,
    gram: Array2<f64>,
}

fn main() -> tenpak_error::Result<()> {
    let blocks = blocks()?;
    let windows: usize = std::env::var("WINDOWS")
        .unwrap_or_else(|_| "32".into())
        .parse()?;
    let ctx = 512;
    let source = tenpak_model::open(asset(MODEL)?)?;
    let model = LlamaModel::load(source.config(), source.as_ref())?;
    let tokenizer = tenpak_model::tokenize::for_model(source.as_ref())?;
    let ids = tenpak_model::tokenize::encode_file_prefix(&tokenizer, asset(CALIB)?, windows * ctx)?;
    tenpak_error::ensure!(
        ids.len() >= windows * ctx,
        "{CALIB} has fewer than {} tokens",
        windows * ctx
    );
    let mut sums: HashMap<String, Sums> = HashMap::new();
    let batch = 4;
    let start = std::time::Instant::now();
    for first in (0..windows).step_by(batch) {
        let count = batch.min(windows - first);
        let mut hook = |name: &str, input: &Tensor| -> tenpak_error::Result<()> {
            let parts: Vec<&str> = name.split('.').collect();
            if parts.len() < 5 || parts[0] != "model" || !blocks.contains(&parts[2].parse()?) {
                return Ok(());
            }
            // q/k/v share their input, and so do gate/up: one set of statistics each.
            let input_name = match parts[4] {
                "q_proj" => "attn_in",
                "o_proj" => "o_in",
                "gate_proj" => "mlp_in",
                "down_proj" => "down_in",
                _ => return Ok(()),
            };
            let cols = *input.dims().last().unwrap_or(&0);
            let x: Vec<f32> = input.flatten_all()?.to_vec1()?;
            let tokens = x.len() / cols;
            let x = ArrayView2::from_shape((tokens, cols), &x)?;
            let gram = x.t().dot(&x);
            let s = sums
                .entry(format!("{}.{input_name}", parts[2]))
                .or_insert_with(|| Sums {
                    cols,
                    tokens: 0,
                    abs: vec![0.0; cols],
                    gram: Array2::zeros((cols, cols)),
                });
            s.tokens += tokens;
            for row in x.rows() {
                for (a, v) in s.abs.iter_mut().zip(row) {
                    *a += f64::from(v.abs());
                }
            }
            s.gram.zip_mut_with(&gram, |a, &b| *a += f64::from(b));
            Ok(())
        };
        model.forward_hidden(
            &ids[first * ctx..(first + count) * ctx],
            count,
            Some(&mut hook),
        )?;
        eprintln!(
            "windows {}/{windows}, {:.0} s",
            first + count,
            start.elapsed().as_secs_f64()
        );
    }
    for (key, s) in &sums {
        let n = s.tokens as f64;
        let abs: Vec<f32> = s.abs.iter().map(|v| (v / n) as f32).collect();
        let gram: Vec<f32> = s.gram.iter().map(|v| (v / n) as f32).collect();
        write_stats(key, s.cols, s.tokens, &abs, &gram)?;
    }
    eprintln!(
        "wrote {} inputs' statistics to {}",
        sums.len(),
        tenpak_awq_measure::stats_dir().display()
    );
    Ok(())
}
