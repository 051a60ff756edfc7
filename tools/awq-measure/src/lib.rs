//! Measuring `int4_awq` on SmolLM2-135M with statistics of real activations (the figures in the
//! codec's crate docs).
//!
//! - `awq-capture` runs the unquantized model on the first `WINDOWS` × 512 tokens of
//!   `assets/calib.txt` (default 32 windows) and writes, for every linear input of the blocks in
//!   `BLOCKS` (default `0,5,10,15,20,25,29`), the mean |x| and XᵀX/n to `STATS_DIR` (default
//!   `target/awq-stats`). q/k/v share one input, and so do gate/up.
//! - `awq-measure` encodes those blocks' linears with each configuration of `CONFIGS`
//!   (`name|key=value,key=value;name|…`, on top of `group_size = GROUP`, default 128) and prints
//!   the mean relative output error `tr(E G Eᵀ) / tr(W G Wᵀ)`, the geometric mean of each layer's
//!   ratio to the first configuration, the mean chosen α and the encode time.
//!
//! Both fail with a message naming scripts/fetch-assets.sh when the model or text is missing.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use tenpak_error::{Context, ensure};
use tenpak_api::{Gram, LayerStats, ParamValue, Params};

/// The model file.
pub const MODEL: &str = "assets/SmolLM2-135M-Instruct.Q4_1.gguf";
/// The calibration text.
pub const CALIB: &str = "assets/calib.txt";

/// `path`, or an error telling how to fetch it.
pub fn asset(path: &str) -> tenpak_error::Result<&Path> {
    let p = Path::new(path);
    ensure!(
        p.exists(),
        "{path} is missing: run scripts/fetch-assets.sh from the repository root (and run this tool from there)"
    );
    Ok(p)
}

/// Where statistics are written and read.
pub fn stats_dir() -> PathBuf {
    std::env::var("STATS_DIR")
        .unwrap_or_else(|_| "target/awq-stats".into())
        .into()
}

/// The blocks to capture or measure.
pub fn blocks() -> tenpak_error::Result<Vec<usize>> {
    std::env::var("BLOCKS")
        .unwrap_or_else(|_| "0,5,10,15,20,25,29".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .context("BLOCKS is a comma-separated list of block indices")
        })
        .collect()
}

/// One input's statistics as written by `awq-capture`: cols, tokens, mean |x|, XᵀX/n.
pub fn write_stats(
    key: &str,
    cols: usize,
    tokens: usize,
    abs_mean: &[f32],
    gram: &[f32],
) -> tenpak_error::Result<()> {
    let dir = stats_dir();
    std::fs::create_dir_all(&dir)?;
    let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join(format!("{key}.bin")))?);
    f.write_all(&(cols as u64).to_le_bytes())?;
    f.write_all(&(tokens as u64).to_le_bytes())?;
    for v in abs_mean.iter().chain(gram) {
        f.write_all(&v.to_le_bytes())?;
    }
    Ok(())
}

/// Read what [`write_stats`] wrote, as the host's calibrators would hand it to the codec.
pub fn read_stats(key: &str) -> tenpak_error::Result<LayerStats> {
    let path = stats_dir().join(format!("{key}.bin"));
    let mut buf = Vec::new();
    std::fs::File::open(&path)
        .with_context(|| format!("{}: run awq-capture first", path.display()))?
        .read_to_end(&mut buf)?;
    let cols = u64::from_le_bytes(buf[0..8].try_into()?) as usize;
    let tokens = u64::from_le_bytes(buf[8..16].try_into()?) as usize;
    let values: Vec<f32> = buf[16..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    ensure!(
        values.len() == cols + cols * cols,
        "{}: truncated",
        path.display()
    );
    let gram = values[cols..].to_vec();
    Ok(LayerStats {
        act_scale: Some(values[..cols].to_vec()),
        hessian_diag: Some((0..cols).map(|i| gram[i * cols + i]).collect()),
        gram: Some(Gram {
            dim: cols,
            data: gram,
        }),
        fisher_diag: None,
        samples: tokens,
    })
}

/// `key=value,key=value` as parameters (bool, int, float or string by what parses).
pub fn parse_params(text: &str) -> tenpak_error::Result<Params> {
    let mut params = Params::new();
    for pair in text.split(',').filter(|s| !s.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .with_context(|| format!("`{pair}` is not key=value"))?;
        let value = match value {
            "true" | "false" => ParamValue::Bool(value == "true"),
            _ => value
                .parse::<i64>()
                .map(ParamValue::Int)
                .or_else(|_| value.parse::<f64>().map(ParamValue::Float))
                .unwrap_or_else(|_| ParamValue::Str(value.to_owned())),
        };
        params.set(key, value);
    }
    Ok(params)
}
