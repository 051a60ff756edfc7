//! Rotary position embedding tables: the frequencies of a model's `rope_theta` and
//! `rope_scaling`, and the cos/sin of every position of a sequence at every frequency.

use tenpak_error::{Context, bail};
use serde_json::Value;

use crate::ModelConfig;

/// `rope_scaling` types this runtime reproduces. `default` is plain RoPE; `linear` divides
/// positions by `factor` (Chen et al. 2023, position interpolation); `llama3` rescales low
/// frequencies and blends the middle band (transformers' `_compute_llama3_parameters`).
pub const SUPPORTED_ROPE_SCALING: &[&str] = &["default", "linear", "llama3"];

/// The inverse frequencies `1 / theta^(2i/d)` for `i < head_dim/2`, after the model's
/// `rope_scaling`. Computed in f32 first, as transformers does (`inv_freq` is an f32 buffer),
/// so the angles match the reference implementation bit for bit before the trigonometry.
pub fn inverse_frequencies(config: &ModelConfig) -> tenpak_error::Result<Vec<f64>> {
    let dim = config.head_dim;
    let base = config.rope_theta;
    let plain: Vec<f64> =
        (0..dim / 2).map(|i| f64::from((1.0 / base.powf((2 * i) as f64 / dim as f64)) as f32)).collect();
    let Some(scaling) = &config.rope_scaling else {
        return Ok(plain);
    };
    let kind = scaling
        .get("rope_type")
        .or_else(|| scaling.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let number = |key: &str| -> tenpak_error::Result<f64> {
        scaling
            .get(key)
            .and_then(Value::as_f64)
            .with_context(|| format!("rope_scaling of type \"{kind}\" needs a numeric `{key}`, found {scaling}"))
    };
    match kind {
        "default" => Ok(plain),
        "linear" => {
            let factor = number("factor")?;
            if !(factor.is_finite() && factor > 0.0) {
                bail!("rope_scaling.factor must be positive, found {factor}");
            }
            Ok(plain.iter().map(|f| f / factor).collect())
        }
        "llama3" => {
            let factor = number("factor")?;
            let low_freq_factor = number("low_freq_factor")?;
            let high_freq_factor = number("high_freq_factor")?;
            let old_context = number("original_max_position_embeddings")?;
            if !(factor > 0.0 && high_freq_factor > low_freq_factor && low_freq_factor > 0.0 && old_context > 0.0) {
                bail!("rope_scaling (llama3) needs factor > 0 and high_freq_factor > low_freq_factor > 0, found {scaling}");
            }
            let low_freq_wavelen = old_context / low_freq_factor;
            let high_freq_wavelen = old_context / high_freq_factor;
            Ok(plain
                .iter()
                .map(|&freq| {
                    let wavelen = 2.0 * std::f64::consts::PI / freq;
                    if wavelen < high_freq_wavelen {
                        freq
                    } else if wavelen > low_freq_wavelen {
                        freq / factor
                    } else {
                        let smooth = (old_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * freq / factor + smooth * freq
                    }
                })
                .collect())
        }
        other => bail!(
            "rope_scaling type \"{other}\" is not supported (supported: {})",
            SUPPORTED_ROPE_SCALING.join(", ")
        ),
    }
}

/// cos and sin of every position `0..seq` at every frequency, `[seq, head_dim/2]` row-major.
/// Every window of a perplexity run starts at position 0, so one table serves a whole batch.
#[derive(Clone, Debug)]
pub struct RopeTables {
    /// Positions covered.
    pub seq: usize,
    /// Frequencies per position (`head_dim / 2`).
    pub half: usize,
    /// cos(t · f_i) at `t * half + i`.
    pub cos: Vec<f32>,
    /// sin(t · f_i) at `t * half + i`.
    pub sin: Vec<f32>,
}

impl RopeTables {
    /// Tables for positions `0..seq` of `config`'s RoPE. Errors if the scaling is unsupported.
    pub fn new(config: &ModelConfig, seq: usize) -> tenpak_error::Result<RopeTables> {
        let inv_freq = inverse_frequencies(config)?;
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(seq * half);
        let mut sin = Vec::with_capacity(seq * half);
        for t in 0..seq {
            for &freq in &inv_freq {
                let angle = t as f64 * freq;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        Ok(RopeTables { seq, half, cos, sin })
    }

    /// The tables of positions `start..start + len` alone (their row 0 is position `start`), for
    /// positions decoded after a key/value cache.
    pub fn positions(&self, start: usize, len: usize) -> tenpak_error::Result<RopeTables> {
        tenpak_error::ensure!(start + len <= self.seq, "positions {start}..{} exceed the {} the RoPE tables cover", start + len, self.seq);
        let (from, to) = (start * self.half, (start + len) * self.half);
        Ok(RopeTables { seq: len, half: self.half, cos: self.cos[from..to].to_vec(), sin: self.sin[from..to].to_vec() })
    }
}
