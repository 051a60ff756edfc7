//! KL divergence and token agreement: how far a candidate model's next-token distributions moved
//! from its base's, token by token on the same windows. Perplexity alone can hide a damaged model
//! whose errors cancel; llama.cpp's community ranks quantized files by these figures
//! (`llama-perplexity --kl-divergence`), and [`Divergence::record`] computes its statistics the
//! way it does.
//!
//! Two forms, by [`Protocol`]:
//! - TenPak's: both distributions exact (f32 logits, f64 sums; [`kernels::compare_rows`]), every
//!   position but the first of each window.
//! - llama.cpp's: the base's log-probabilities stored as llama.cpp stores them in its
//!   `--kl-divergence-base` file (16 bits per vocabulary entry over the top 16 nats, [`quantize_base_row`])
//!   and compared as it compares them ([`compare_quantized_row`]), on the second half of each
//!   window. Such a file can be written ([`BaseLogitsWriter`]) and read ([`BaseLogits`]) in
//!   llama.cpp's own layout, so one base run serves many candidates, from either program.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use rayon::prelude::*;
use tenpak_error::{Context, bail, ensure};
use tenpak_model::runtime::kernels::{self, TokenComparison};
use tenpak_model::runtime::{Head, ops};

use super::Protocol;
use crate::artifact::DivergenceRecord;

/// Rows whose logits are computed at once, per model: 64 × 49,152 × 4 B = 12.6 MB for SmolLM2.
const ROW_BLOCK: usize = 64;

/// Magic that opens llama.cpp's base log-probability file.
const MAGIC: &[u8; 8] = b"_logits_";

/// Running sums and per-token values of a comparison, in token order.
#[derive(Clone, Debug, Default)]
pub struct Divergence {
    kld: Vec<f32>,
    sum_nll: f64,
    sum_nll2: f64,
    sum_nll_base: f64,
    sum_nll_base2: f64,
    sum_nll_nll_base: f64,
    sum_kld: f64,
    sum_kld2: f64,
    sum_p_diff2: f64,
    sum_p_diff4: f64,
    same_top: usize,
}

impl Divergence {
    /// Add one token's comparison; `position` names it in the error when a figure is not finite.
    pub fn push(&mut self, c: &TokenComparison, position: impl FnOnce() -> String) -> tenpak_error::Result<()> {
        if !(c.kld.is_finite() && c.nll.is_finite() && c.nll_base.is_finite()) {
            bail!("{}: the logits are not finite (KLD {}, NLL {}, base NLL {}); are the weights finite?", position(), c.kld, c.nll, c.nll_base);
        }
        self.kld.push(c.kld as f32);
        self.sum_nll += c.nll;
        self.sum_nll2 += c.nll * c.nll;
        self.sum_nll_base += c.nll_base;
        self.sum_nll_base2 += c.nll_base * c.nll_base;
        self.sum_nll_nll_base += c.nll * c.nll_base;
        self.sum_kld += c.kld;
        self.sum_kld2 += c.kld * c.kld;
        let p2 = c.p_diff * c.p_diff;
        self.sum_p_diff2 += p2;
        self.sum_p_diff4 += p2 * p2;
        self.same_top += usize::from(c.same_top);
        Ok(())
    }

    /// Tokens compared so far.
    pub fn count(&self) -> usize {
        self.kld.len()
    }

    /// The statistics, by llama.cpp's formulas (`kl_divergence` in tools/perplexity): means with
    /// the standard error `sqrt(var / (n − 1))`, percentiles interpolated between sorted ranks,
    /// the PPL ratio's error from both NLL variances and their covariance.
    pub fn record(&self) -> tenpak_error::Result<DivergenceRecord> {
        let n = self.count();
        ensure!(n >= 2, "{n} tokens compared: too few for statistics");
        let count = n as f64;
        let mean_and_err = |sum: f64, sum2: f64| {
            let mean = sum / count;
            let var = sum2 / count - mean * mean;
            (mean, if var > 0.0 { (var / (count - 1.0)).sqrt() } else { 0.0 })
        };
        let (ln_ppl, ln_ppl_err) = mean_and_err(self.sum_nll, self.sum_nll2);
        let (ln_base, ln_base_err) = mean_and_err(self.sum_nll_base, self.sum_nll_base2);
        let cov = (self.sum_nll_nll_base / count - ln_ppl * ln_base) / (count - 1.0);
        let ln_ratio = ln_ppl - ln_base;
        let ln_ratio_err = (ln_ppl_err * ln_ppl_err + ln_base_err * ln_base_err - 2.0 * cov).max(0.0).sqrt();
        let (kld_mean, kld_mean_err) = mean_and_err(self.sum_kld, self.sum_kld2);
        let (mse, mse_err) = mean_and_err(self.sum_p_diff2, self.sum_p_diff4);
        let rms = mse.sqrt();
        let same = self.same_top as f64 / count;
        let mut sorted = self.kld.clone();
        sorted.sort_by(f32::total_cmp);
        Ok(DivergenceRecord {
            tokens: n,
            kld_mean,
            kld_mean_err,
            kld_median: f64::from(if n % 2 == 0 { 0.5 * (sorted[n / 2] + sorted[n / 2 - 1]) } else { sorted[n / 2] }),
            kld_p90: percentile(&sorted, 0.90),
            kld_p99: percentile(&sorted, 0.99),
            kld_p999: percentile(&sorted, 0.999),
            kld_max: f64::from(sorted[n - 1]),
            same_top_pct: 100.0 * same,
            same_top_err_pct: 100.0 * (same * (1.0 - same) / (count - 1.0)).sqrt(),
            dp_rms_pct: 100.0 * rms,
            dp_rms_err_pct: if rms > 0.0 { 100.0 * 0.5 / rms * mse_err } else { 0.0 },
            ppl_base: ln_base.exp(),
            ppl: ln_ppl.exp(),
            ppl_ratio: ln_ratio.exp(),
            ppl_ratio_err: ln_ratio.exp() * ln_ratio_err,
        })
    }
}

/// llama.cpp's percentile of sorted values: linear interpolation at `fraction · (n − 1)`.
fn percentile(sorted: &[f32], fraction: f32) -> f64 {
    let p = fraction * (sorted.len() - 1) as f32;
    let i = p as usize;
    let t = p - i as f32;
    f64::from((1.0 - t) * sorted[i] + t * sorted[(i + 1).min(sorted.len() - 1)])
}

// ---------------------------------------------------------------------------------------------
// llama.cpp's stored base log-probabilities

/// u16 entries of one stored row: a 4-entry header holding two f32 (scale, smallest log-prob),
/// then one entry per vocabulary token, padded to an even count (llama.cpp's `nv`).
pub fn row_width(vocab: usize) -> usize {
    2 * vocab.div_ceil(2) + 4
}

/// llama.cpp's `nearest_int`: round to nearest, ties to even, through the float's mantissa.
fn nearest_int(value: f32) -> i32 {
    let shifted = value + 12_582_912.0;
    (shifted.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// Store one row of base logits as llama.cpp does (`log_softmax(n_vocab, logits, log_prob, tok)`
/// in tools/perplexity): the log-probabilities from the largest down to 16 nats below it, in 65,535
/// steps; anything lower is stored as the bottom step. `out` is [`row_width`] entries. Returns the
/// exact negative log-likelihood of `target`, as llama.cpp sums it for the base's perplexity.
pub fn quantize_base_row(logits: &[f32], out: &mut [u16], target: usize) -> f32 {
    assert_eq!(out.len(), row_width(logits.len()), "quantize_base_row: output width");
    let (mut max, mut min) = (logits[0], logits[0]);
    for &v in &logits[1..] {
        max = max.max(v);
        min = min.min(v);
    }
    let min = min.max(max - 16.0);
    let sum_exp: f64 = logits.iter().map(|&v| f64::from((v - max).exp())).sum();
    let log_sum_exp = sum_exp.ln() as f32;
    let min_log_prob = min - max - log_sum_exp;
    let scale = (max - min) / 65535.0;
    let (header, values) = out.split_at_mut(4);
    for (pair, value) in header.chunks_exact_mut(2).zip([scale, min_log_prob]) {
        let bytes = value.to_le_bytes();
        pair[0] = u16::from_le_bytes([bytes[0], bytes[1]]);
        pair[1] = u16::from_le_bytes([bytes[2], bytes[3]]);
    }
    values.fill(0);
    if scale != 0.0 {
        let inverse = 1.0 / scale;
        for (out, &v) in values.iter_mut().zip(logits) {
            *out = if v > min { nearest_int(inverse * (v - min)) as u16 } else { 0 };
        }
    }
    max + log_sum_exp - logits[target]
}

/// Compare one row of candidate logits with a stored base row as llama.cpp does (`log_softmax(n_vocab,
/// logits, base_log_prob, tok, kld)`): f32 arithmetic, the KL sum over base log-probabilities
/// above −16 only, the top tokens compared by first maximum.
pub fn compare_quantized_row(logits: &[f32], base: &[u16], target: usize) -> TokenComparison {
    let (mut max, mut top) = (logits[0], 0);
    for (i, &v) in logits.iter().enumerate().skip(1) {
        if v > max {
            (max, top) = (v, i);
        }
    }
    let sum_exp: f64 = logits.iter().map(|&v| f64::from((v - max).exp())).sum();
    let log_sum_exp = sum_exp.ln() as f32;
    let header = |i: usize| f32::from_le_bytes([base[i].to_le_bytes()[0], base[i].to_le_bytes()[1], base[i + 1].to_le_bytes()[0], base[i + 1].to_le_bytes()[1]]);
    let (scale, min_log_prob) = (header(0), header(2));
    let base = &base[4..4 + logits.len()];
    let nll = max + log_sum_exp - logits[target];
    let nll_base = -(scale * f32::from(base[target]) + min_log_prob);
    let shift = max + log_sum_exp;
    let (mut sum, mut base_top, mut base_max) = (0.0f64, 0usize, 0.0f32);
    for (i, (&stored, &v)) in base.iter().zip(logits).enumerate() {
        let log_p = scale * f32::from(stored) + min_log_prob;
        if i == 0 || log_p > base_max {
            (base_max, base_top) = (log_p, i);
        }
        if log_p > -16.0 {
            sum += f64::from(log_p.exp() * (log_p - v + shift));
        }
    }
    TokenComparison {
        kld: sum,
        nll_base: f64::from(nll_base),
        nll: f64::from(nll),
        same_top: top == base_top,
        p_diff: f64::from((-nll).exp() - (-nll_base).exp()),
    }
}

/// A base log-probability file in llama.cpp's layout (`llama-perplexity --kl-divergence-base F`
/// writes it; `--kl-divergence` reads it): `_logits_`, n_ctx (u32), n_vocab (i32), n_chunk (i32),
/// the n_ctx · n_chunk token ids (i32), then for every window the [`row_width`] u16 entries of
/// each of its scored rows (positions n_ctx/2 .. n_ctx − 2, predicting the next token), little-endian.
pub struct BaseLogits {
    /// Window length.
    pub ctx: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Windows stored.
    pub windows: usize,
    /// The token ids the base saw, as tokenized (before any BOS replacement).
    pub tokens: Vec<u32>,
    path: PathBuf,
    reader: BufReader<File>,
    next_window: usize,
}

impl BaseLogits {
    /// Whether `path` starts like such a file.
    pub fn is_base_file(path: &Path) -> bool {
        let mut magic = [0u8; 8];
        path.is_file() && File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && &magic == MAGIC
    }

    /// Open one and read its header and tokens, checking its length against them.
    pub fn open(path: &Path) -> tenpak_error::Result<BaseLogits> {
        let name = path.display();
        let file = File::open(path).with_context(|| format!("opening base log-probabilities {name}"))?;
        let length = file.metadata().with_context(|| format!("reading {name}"))?.len();
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut header = [0u8; 20];
        reader.read_exact(&mut header).with_context(|| format!("{name}: shorter than a base log-probability header"))?;
        ensure!(&header[..8] == MAGIC, "{name} is not a base log-probability file (no `_logits_` at its start)");
        let word = |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().expect("4 bytes"));
        let (ctx, vocab, windows) = (word(8) as usize, word(12) as i32, word(16) as i32);
        ensure!(ctx >= 4 && vocab > 0 && windows > 0, "{name}: header says ctx {ctx}, vocabulary {vocab}, {windows} windows");
        let (vocab, windows) = (vocab as usize, windows as usize);
        let rows = ctx - 1 - ctx / 2;
        let expected = 20 + 4 * (ctx * windows) as u64 + 2 * (windows * rows * row_width(vocab)) as u64;
        ensure!(
            length == expected,
            "{name}: {length} bytes, but ctx {ctx}, vocabulary {vocab} and {windows} windows make {expected}; the file is truncated or not from llama-perplexity"
        );
        let mut raw = vec![0u8; 4 * ctx * windows];
        reader.read_exact(&mut raw).with_context(|| format!("{name}: reading the token ids"))?;
        let tokens: Vec<u32> = raw.chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes")) as u32).collect();
        if let Some((i, &t)) = tokens.iter().enumerate().find(|&(_, &t)| t as usize >= vocab) {
            bail!("{name}: token id {t} at position {i} is outside the vocabulary of {vocab}");
        }
        Ok(BaseLogits { ctx, vocab, windows, tokens, path: path.to_owned(), reader, next_window: 0 })
    }

    /// The stored rows of the next window, `(ctx − 1 − ctx/2) · row_width(vocab)` entries.
    pub fn next_window(&mut self) -> tenpak_error::Result<Vec<u16>> {
        ensure!(self.next_window < self.windows, "{}: all {} windows read", self.path.display(), self.windows);
        let entries = (self.ctx - 1 - self.ctx / 2) * row_width(self.vocab);
        let mut raw = vec![0u8; 2 * entries];
        self.reader.read_exact(&mut raw).with_context(|| format!("{}: reading window {}", self.path.display(), self.next_window))?;
        self.next_window += 1;
        Ok(raw.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect())
    }
}

/// Writes a [`BaseLogits`] file to a temporary sibling and moves it into place on
/// [`BaseLogitsWriter::finish`], so a failed or cancelled run leaves no half-written file.
pub struct BaseLogitsWriter {
    path: PathBuf,
    temporary: PathBuf,
    /// `None` once finished.
    writer: Option<BufWriter<File>>,
}

impl BaseLogitsWriter {
    /// Start one: the header and the token ids of `windows` windows of `ctx`.
    pub fn create(path: &Path, ctx: usize, vocab: usize, windows: usize, tokens: &[u32]) -> tenpak_error::Result<BaseLogitsWriter> {
        ensure!(tokens.len() >= ctx * windows, "{} tokens for {windows} windows of {ctx}", tokens.len());
        let temporary = crate::artifact::temp_sibling(path)?;
        let file = File::create(&temporary).with_context(|| format!("creating {}", temporary.display()))?;
        let mut writer = BufWriter::with_capacity(1 << 20, file);
        let mut header = Vec::with_capacity(20 + 4 * ctx * windows);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&(ctx as u32).to_le_bytes());
        header.extend_from_slice(&(vocab as i32).to_le_bytes());
        header.extend_from_slice(&(windows as i32).to_le_bytes());
        for &t in &tokens[..ctx * windows] {
            header.extend_from_slice(&(t as i32).to_le_bytes());
        }
        writer.write_all(&header).with_context(|| format!("writing {}", temporary.display()))?;
        Ok(BaseLogitsWriter { path: path.to_owned(), temporary, writer: Some(writer) })
    }

    /// Append one window's stored rows.
    pub fn write_window(&mut self, rows: &[u16]) -> tenpak_error::Result<()> {
        let bytes: Vec<u8> = rows.iter().flat_map(|v| v.to_le_bytes()).collect();
        let writer = self.writer.as_mut().expect("not finished");
        writer.write_all(&bytes).with_context(|| format!("writing {}", self.temporary.display()))
    }

    /// Flush, sync and move the file into place.
    pub fn finish(mut self) -> tenpak_error::Result<()> {
        let writer = self.writer.take().expect("finished once");
        let file = writer.into_inner().map_err(|e| e.into_error()).with_context(|| format!("writing {}", self.temporary.display()))?;
        file.sync_all().with_context(|| format!("syncing {}", self.temporary.display()))?;
        std::fs::rename(&self.temporary, &self.path).with_context(|| format!("moving {} into place", self.path.display()))?;
        Ok(())
    }
}

impl Drop for BaseLogitsWriter {
    fn drop(&mut self) {
        // After `finish` the temporary has been renamed and this does nothing.
        let _ = std::fs::remove_file(&self.temporary);
    }
}

// ---------------------------------------------------------------------------------------------
// comparing heads

/// Where the base's distributions for one window come from.
pub enum BaseRows<'a> {
    /// The base's final hidden states of the window, `[ctx, hidden]` rows, through its head.
    Model(&'a Head, Tensor),
    /// Rows stored in llama.cpp's form (the scored rows only, [`row_width`] entries each).
    Stored(&'a [u16]),
}

/// One window's comparisons: the candidate's final hidden states `[ctx, hidden]` through
/// `head`, against `base`, at the positions `protocol` scores; `ids` are the window's `ctx` token
/// ids (the target of row j is `ids[j + 1]`). TenPak's protocol compares exact distributions;
/// llama.cpp's stores the base's as llama.cpp does first (or takes them stored).
pub fn compare_window(head: &Head, hidden: &Tensor, base: &BaseRows<'_>, ids: &[u32], protocol: Protocol) -> tenpak_error::Result<Vec<TokenComparison>> {
    let ctx = ids.len();
    let first = protocol.first_scored(ctx);
    let scored = ctx - 1 - first;
    let normed = head.normed_rows(hidden)?;
    let base_normed = match base {
        BaseRows::Model(base_head, h) => Some((base_head, base_head.normed_rows(h)?)),
        BaseRows::Stored(rows) => {
            ensure!(protocol == Protocol::LlamaCpp, "stored base log-probabilities are llama.cpp's: compare them by its protocol");
            let vocab = head.lm_head().out_features();
            ensure!(rows.len() == scored * row_width(vocab), "stored base rows: {} entries, expected {}", rows.len(), scored * row_width(vocab));
            None
        }
    };
    let mut out = Vec::with_capacity(scored);
    for start in (first..ctx - 1).step_by(ROW_BLOCK) {
        let n = ROW_BLOCK.min(ctx - 1 - start);
        let targets = &ids[start + 1..start + 1 + n];
        let logits = head.lm_head().forward(&normed.narrow(0, start, n)?, None)?;
        let vocab = head.lm_head().out_features();
        let mut block = vec![TokenComparison::default(); n];
        match (&base_normed, base) {
            (Some((base_head, base_normed)), _) => {
                let base_logits = base_head.lm_head().forward(&base_normed.narrow(0, start, n)?, None)?;
                ops::with_f32_slice(&logits, |q| {
                    ops::with_f32_slice(&base_logits, |p| match protocol {
                        Protocol::Tenpak => kernels::compare_rows(p, q, vocab, targets, &mut block),
                        Protocol::LlamaCpp => {
                            let width = row_width(vocab);
                            block.par_iter_mut().enumerate().for_each(|(r, out)| {
                                let mut stored = vec![0u16; width];
                                quantize_base_row(&p[r * vocab..(r + 1) * vocab], &mut stored, targets[r] as usize);
                                *out = compare_quantized_row(&q[r * vocab..(r + 1) * vocab], &stored, targets[r] as usize);
                            });
                        }
                    })
                })??;
            }
            (None, BaseRows::Stored(rows)) => {
                let width = row_width(vocab);
                ops::with_f32_slice(&logits, |q| {
                    block.par_iter_mut().enumerate().for_each(|(r, out)| {
                        let row = start - first + r;
                        *out = compare_quantized_row(&q[r * vocab..(r + 1) * vocab], &rows[row * width..(row + 1) * width], targets[r] as usize);
                    });
                })?;
            }
            (None, BaseRows::Model(..)) => unreachable!("a model base has its normed rows"),
        }
        out.extend(block);
    }
    Ok(out)
}

/// The stored rows of one window of base logits (the positions llama.cpp's protocol scores),
/// from its final hidden states `[ctx, hidden]` through `head`, and the sum of their negative
/// log-likelihoods of `ids` (the window's `ctx` token ids).
pub fn store_window(head: &Head, hidden: &Tensor, ids: &[u32]) -> tenpak_error::Result<(Vec<u16>, f64)> {
    let ctx = ids.len();
    let first = Protocol::LlamaCpp.first_scored(ctx);
    let vocab = head.lm_head().out_features();
    let width = row_width(vocab);
    let normed = head.normed_rows(hidden)?;
    let mut out = vec![0u16; (ctx - 1 - first) * width];
    let mut nll = vec![0f32; ctx - 1 - first];
    for start in (first..ctx - 1).step_by(ROW_BLOCK) {
        let n = ROW_BLOCK.min(ctx - 1 - start);
        let logits = head.lm_head().forward(&normed.narrow(0, start, n)?, None)?;
        let rows = &mut out[(start - first) * width..(start - first + n) * width];
        let nll = &mut nll[start - first..start - first + n];
        ops::with_f32_slice(&logits, |q| {
            rows.par_chunks_mut(width).zip(nll.par_iter_mut()).enumerate().for_each(|(r, (row, nll))| {
                *nll = quantize_base_row(&q[r * vocab..(r + 1) * vocab], row, ids[start + r + 1] as usize);
            });
        })?;
    }
    Ok((out, nll.iter().map(|&v| f64::from(v)).sum()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits(seed: u64, n: usize) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 24) as f32 * 20.0 - 10.0
            })
            .collect()
    }

    /// llama.cpp's stored form loses at most half a step (16 nats / 65,535) per log-probability
    /// above the cut, so its KLD stays within that of the exact one.
    #[test]
    fn stored_base_rows_compare_like_exact_ones() {
        for (vocab, seed) in [(1001, 1), (4096, 2), (3, 3)] {
            let base = logits(seed, vocab);
            let candidate: Vec<f32> = base.iter().zip(logits(seed + 10, vocab)).map(|(a, b)| a + 0.05 * b).collect();
            let mut stored = vec![0u16; row_width(vocab)];
            // A target above the 16-nat cut (below it, llama.cpp stores the cut itself).
            let top = base.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let target = (0..vocab).rev().find(|&i| base[i] > top - 8.0).unwrap();
            let nll = quantize_base_row(&base, &mut stored, target);
            let llama = compare_quantized_row(&candidate, &stored, target);
            let mut exact = [TokenComparison::default()];
            kernels::compare_rows(&base, &candidate, vocab, &[target as u32], &mut exact);
            let exact = exact[0];
            assert!((f64::from(nll) - exact.nll_base).abs() < 1e-4, "vocab {vocab}: {nll} vs {}", exact.nll_base);
            assert!((llama.kld - exact.kld).abs() < 2e-3 * exact.kld + 1e-5, "vocab {vocab}: {} vs {}", llama.kld, exact.kld);
            assert!((llama.nll_base - exact.nll_base).abs() < 2e-4, "vocab {vocab}: {} vs {}", llama.nll_base, exact.nll_base);
            assert!((llama.nll - exact.nll).abs() < 1e-4 && llama.same_top == exact.same_top);
        }
        // A constant row: scale 0, every entry stored as 0, each log-prob = −ln(vocab).
        let mut stored = vec![0u16; row_width(5)];
        quantize_base_row(&[1.0; 5], &mut stored, 0);
        let c = compare_quantized_row(&[1.0; 5], &stored, 2);
        assert!(c.kld.abs() < 1e-6 && (c.nll_base - 5f64.ln()).abs() < 1e-6 && c.same_top, "{c:?}");
    }

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!([0.5, 1.5, 2.4, 2.6, 65534.6].map(nearest_int), [0, 2, 2, 3, 65535]);
    }

    #[test]
    fn statistics_follow_llama_cpp_formulas() {
        let mut d = Divergence::default();
        for (i, kld) in [0.1, 0.3, 0.2, 0.0, 0.4].into_iter().enumerate() {
            let c = TokenComparison { kld, nll_base: 1.0 + i as f64, nll: 1.0 + i as f64 + kld, same_top: i % 2 == 0, p_diff: 0.01 * i as f64 };
            d.push(&c, || format!("token {i}")).unwrap();
        }
        let r = d.record().unwrap();
        assert_eq!(r.tokens, 5);
        assert!((r.kld_mean - 0.2).abs() < 1e-12 && (r.kld_median - 0.2).abs() < 1e-7 && (r.kld_max - 0.4).abs() < 1e-7);
        // sqrt(var/(n−1)) with var = E[x²] − E[x]² = 0.06 − 0.04.
        assert!((r.kld_mean_err - (0.02f64 / 4.0).sqrt()).abs() < 1e-9, "{}", r.kld_mean_err);
        // Rank 0.9 · 4 = 3.6 between 0.3 and 0.4.
        assert!((r.kld_p90 - 0.36).abs() < 1e-6, "{}", r.kld_p90);
        assert!((r.same_top_pct - 60.0).abs() < 1e-9 && (r.ppl_ratio - 0.2f64.exp()).abs() < 1e-9);
        // NLL and base NLL move together: the ratio's error is that of the KLD-like difference.
        assert!((r.ppl_ratio_err - 0.2f64.exp() * r.kld_mean_err).abs() < 1e-9, "{}", r.ppl_ratio_err);
        let bad = TokenComparison { kld: f64::NAN, ..Default::default() };
        let err = d.push(&bad, || "window 3, position 7".into()).unwrap_err().to_string();
        assert!(err.contains("window 3, position 7"), "{err}");
    }
}
