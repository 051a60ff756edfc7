//! Encode real layers with each configuration and compare output errors; see the crate docs.
use std::time::Instant;

use tenpak_error::Context;
use tenpak_api::{Codec, Params, WeightView};
use tenpak_awq_measure::{MODEL, asset, blocks, parse_params, read_stats};
use tenpak_codec_int4_awq::Int4Awq;

const LINEARS: [(&str, &str); 7] = [
    ("self_attn.q_proj", "attn_in"),
    ("self_attn.k_proj", "attn_in"),
    ("self_attn.v_proj", "attn_in"),
    ("self_attn.o_proj", "o_in"),
    ("mlp.gate_proj", "mlp_in"),
    ("mlp.up_proj", "mlp_in"),
    ("mlp.down_proj", "down_in"),
];

struct Totals {
    name: String,
    params: Params,
    error: f64,
    log_ratio: f64,
    at_most_first: usize,
    alpha: f64,
    seconds: f64,
}

fn main() -> tenpak_error::Result<()> {
    let group: usize = std::env::var("GROUP")
        .unwrap_or_else(|_| "128".into())
        .parse()?;
    let configs = std::env::var("CONFIGS").context("set CONFIGS, e.g. 'rtn|alpha=0,outlier_fraction=0,weighted_fit=false,refine=none;defaults|'")?;
    let mut totals = Vec::new();
    for config in configs.split(';') {
        let (name, text) = config.split_once('|').unwrap_or((config, ""));
        totals.push(Totals {
            name: name.to_owned(),
            params: Params::new()
                .with("group_size", group)
                .merged(&parse_params(text)?),
            error: 0.0,
            log_ratio: 0.0,
            at_most_first: 0,
            alpha: 0.0,
            seconds: 0.0,
        });
    }
    let verbose = std::env::var("VERBOSE").is_ok();
    let source = tenpak_model::open(asset(MODEL)?)?;
    let mut layers = 0usize;
    for block in blocks()? {
        for (linear, input) in LINEARS {
            let name = format!("model.layers.{block}.{linear}.weight");
            let shape = source
                .tensor(&name)
                .with_context(|| format!("no tensor {name}"))?
                .shape
                .clone();
            let weight = source.load_f32(&name)?;
            let stats = read_stats(&format!("{block}.{input}"))?;
            let view = WeightView::new(&weight, shape[0], shape[1])?;
            let mut errors = Vec::new();
            for t in &mut totals {
                let start = Instant::now();
                let encoded = Int4Awq.encode(view, &stats, &t.params)?;
                t.seconds += start.elapsed().as_secs_f64();
                t.alpha += encoded.params.float_or("alpha", f64::NAN)?;
                errors.push(encoded.params.float_or("output_error", f64::NAN)?);
            }
            for (t, e) in totals.iter_mut().zip(&errors) {
                t.error += e;
                t.log_ratio += (e / errors[0]).ln();
                t.at_most_first += usize::from(*e <= errors[0]);
            }
            if verbose {
                println!("{name:44} {shape:?} {:?}", errors);
            }
            layers += 1;
        }
    }
    let n = layers as f64;
    println!(
        "group {group}, {layers} layers; ratio = geometric mean of each layer's output error over the first configuration's"
    );
    for t in &totals {
        println!(
            "{:40} mean {:.4e}  ratio {:.4}  <= first on {:>3}/{layers}  mean alpha {:.3}  {:.0} ms/layer",
            t.name,
            t.error / n,
            (t.log_ratio / n).exp(),
            t.at_most_first,
            t.alpha / n,
            t.seconds * 1e3 / n
        );
    }
    Ok(())
}
