//! Perplexity of a model on a text, for benchmarking the runtime before `tenpak eval` exists:
//! `cargo run --release -p tenpak-pack --example ppl -- MODEL TEXT [CTX] [SAMPLES] [BATCH]`.

use std::path::Path;
use std::time::Instant;

use tenpak_pack::eval::{self, PplOptions};
use tenpak_model::runtime::LlamaModel;
use tenpak_model as model;
use tenpak_model::tokenize;

fn main() -> tenpak_error::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    tenpak_error::ensure!(args.len() >= 3, "usage: ppl MODEL TEXT [CTX] [SAMPLES] [BATCH]");
    let ctx = args.get(3).map_or(Ok(512), |s| s.parse())?;
    let samples = args.get(4).map(|s| s.parse()).transpose()?;
    let batch = args.get(5).map_or(Ok(1), |s| s.parse())?;

    let started = Instant::now();
    let source = model::open(Path::new(&args[1]))?;
    let model = LlamaModel::load(source.config(), source.as_ref())?;
    let loaded = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let tokenizer = tokenize::for_model(source.as_ref())?;
    let ids = tokenize::encode_file(&tokenizer, Path::new(&args[2]))?;
    let tokenized = started.elapsed().as_secs_f64();

    let report = eval::perplexity(&model, &ids, &args[2], &PplOptions { ctx, samples, batch }, &mut |done, total| {
        eprintln!("window {done}/{total}");
    })?;
    println!("load {loaded:.2}s, tokenize {tokenized:.2}s ({} tokens)", ids.len());
    println!(
        "PPL {:.4} (mean NLL {:.6}) over {} tokens, {:.1} tokens/s ({:.2}s)",
        report.ppl, report.mean_nll, report.tokens_scored, report.tokens_per_second, report.seconds
    );
    println!("protocol: {}", report.protocol);
    Ok(())
}
