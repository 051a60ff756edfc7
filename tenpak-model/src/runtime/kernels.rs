//! CPU kernels for the parts of the forward pass that are not matrix products: RMSNorm, RoPE,
//! causal softmax, SiLU-gated product, and the per-token negative log-likelihood.
//!
//! Matrix products go through OpenBLAS or candle ([`super::blas`]). Everything else here
//! works on plain row-major slices, in parallel over rows with rayon, because candle's generic
//! element-wise ops run on one thread and would materialize a mask and several temporaries per
//! attention layer. About 85 million exponentials go into one 512-token window of SmolLM2
//! (attention softmax, SiLU, the 49,152-way log-softmax), so [`exp`] is a branch-free polynomial
//! that the compiler vectorizes instead of a libm call per element.
//!
//! Each kernel has a plain scalar reference beside it (`*_reference`, f64 accumulation, std
//! `exp`), and the unit tests compare the two on random and adversarial inputs.
//!
//! The default x86-64 target has SSE2 only; the row loops that do the exponentials are compiled a
//! second time with AVX2 + FMA enabled and picked at run time ([`with_avx2`]), which doubles the
//! vector width without a line of intrinsics.

use rayon::prelude::*;

/// Define `fn $name(args) -> ret` whose body is compiled twice, once for the baseline target and
/// once with AVX2 and FMA enabled; the AVX2 copy runs when the CPU has both (checked at run time,
/// cached by the standard library). The body must be plain Rust: the compiler vectorizes it for
/// each target.
macro_rules! with_avx2 {
    ($(#[$meta:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if avx2_available() {
                    // SAFETY: `avx2` only needs the CPU to support AVX2 and FMA, checked just above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

/// Set by tests to run the baseline copies of [`with_avx2`] functions on an AVX2 machine.
#[cfg(test)]
static FORCE_BASELINE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the AVX2 + FMA copies may run (checked at run time; the standard library caches it).
#[cfg(target_arch = "x86_64")]
#[inline]
fn avx2_available() -> bool {
    #[cfg(test)]
    if FORCE_BASELINE.load(std::sync::atomic::Ordering::Relaxed) {
        return false;
    }
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// Elements of work below which a kernel does not split across threads.
const PARALLEL_GRAIN: usize = 1 << 14;

/// Rows per rayon task for rows of `width` elements: enough rows to make a task worth
/// scheduling, at least one.
fn rows_per_task(width: usize) -> usize {
    PARALLEL_GRAIN.div_ceil(width.max(1)).max(1)
}

// ---------------------------------------------------------------------------------------------
// exp

/// Below this, `exp` returns 0 (e^-87.34 is the smallest normal f32; we flush the subnormal tail).
const EXP_MIN_INPUT: f32 = -87.336_55;
/// Inputs are clamped to this from above, so the result stays finite (e^88 ≈ 1.65e38).
const EXP_MAX_INPUT: f32 = 88.0;

/// e^x in f32, vectorizable: Cody-Waite range reduction to r = x − n·ln2 with |r| ≤ ln2/2, the
/// degree-6 minimax polynomial of Cephes' `expf`, and 2^n assembled in the exponent bits.
/// Relative error below 3e-7 on [−87.3, 88]. Below −87.34 (and for −∞) it returns 0; above 88
/// it returns e^88 instead of overflowing; NaN stays NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // 1.5 · 2^23: adding it rounds to an integer (ties to even) and leaves that integer in the
    // low mantissa bits, a branch-free `round` that also yields the integer without a cast.
    const ROUNDER: f32 = 12_582_912.0;
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n · LN2_HI is exact for |n| ≤ 128 (Cody & Waite).
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let clamped = x.clamp(EXP_MIN_INPUT, EXP_MAX_INPUT);
    let shifted = clamped * LOG2E + ROUNDER;
    let n = shifted - ROUNDER;
    let r = (clamped - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_2e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5.000_000_1e-1;
    let poly = p * r * r + r + 1.0;
    let n_int = shifted.to_bits().wrapping_sub(ROUNDER.to_bits()) as i32;
    let scale = f32::from_bits(((n_int + 127) as u32) << 23);
    // NaN compares false, so it takes the polynomial branch and stays NaN.
    if x < EXP_MIN_INPUT { 0.0 } else { poly * scale }
}

/// Sum of a slice with eight independent accumulators, so the loop vectorizes (a single f32
/// accumulator is a serial dependency chain the compiler may not reorder).
#[inline(always)]
fn sum8(values: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let chunks = values.chunks_exact(8);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            *lane += v;
        }
    }
    let mut total = lanes.iter().sum::<f32>();
    for v in tail {
        total += v;
    }
    total
}

/// Σ e^(x − shift) over a slice. The exponentials go through a small stack buffer first: a loop
/// that only maps is one the compiler vectorizes, a loop that maps and sums is not (it may not
/// reorder float additions, and unrolled by hand the exponential defeats its straight-line
/// vectorizer).
#[inline(always)]
fn sum_exp(values: &[f32], shift: f32) -> f32 {
    let mut buffer = [0.0f32; 256];
    let mut total = 0.0f32;
    for chunk in values.chunks(buffer.len()) {
        let buffer = &mut buffer[..chunk.len()];
        for (e, &v) in buffer.iter_mut().zip(chunk) {
            *e = exp(v - shift);
        }
        total += sum8(buffer);
    }
    total
}

/// Maximum of a slice with eight lanes. NaN entries are skipped (comparisons with NaN are false);
/// callers propagate NaN through the exponentials instead. Empty slices give −∞.
#[inline(always)]
fn max8(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = values.chunks_exact(8);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane = if v > *lane { v } else { *lane };
        }
    }
    let mut best = f32::NEG_INFINITY;
    for &v in lanes.iter().chain(tail) {
        best = if v > best { v } else { best };
    }
    best
}

// ---------------------------------------------------------------------------------------------
// RMSNorm

/// RMSNorm over rows of `weight.len()` elements: `out = x / sqrt(mean(x²) + eps) * weight`
/// (Zhang & Sennrich 2019, as Llama's `LlamaRMSNorm` computes it in f32).
pub fn rms_norm(input: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let width = weight.len();
    assert_eq!(input.len(), out.len(), "rms_norm: input and output lengths differ");
    if width == 0 {
        return;
    }
    assert_eq!(input.len() % width, 0, "rms_norm: input is not whole rows of the weight's width");
    let per_task = rows_per_task(width) * width;
    out.par_chunks_mut(per_task).zip(input.par_chunks(per_task)).for_each(|(out, input)| {
        for (out_row, row) in out.chunks_exact_mut(width).zip(input.chunks_exact(width)) {
            let mut lanes = [0.0f32; 8];
            let chunks = row.chunks_exact(8);
            let tail = chunks.remainder();
            for chunk in chunks {
                for (lane, v) in lanes.iter_mut().zip(chunk) {
                    *lane += v * v;
                }
            }
            let sum_sq = lanes.iter().sum::<f32>() + tail.iter().map(|v| v * v).sum::<f32>();
            let inv_rms = 1.0 / (sum_sq / width as f32 + eps).sqrt();
            for ((o, x), w) in out_row.iter_mut().zip(row).zip(weight) {
                *o = x * inv_rms * w;
            }
        }
    });
}

/// Scalar reference for [`rms_norm`] (f64 accumulation).
pub fn rms_norm_reference(input: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let width = weight.len();
    let mut out = vec![0.0; input.len()];
    if width == 0 {
        return out;
    }
    for (out_row, row) in out.chunks_mut(width).zip(input.chunks(width)) {
        let mean_sq = row.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / width as f64;
        let inv_rms = 1.0 / (mean_sq + f64::from(eps)).sqrt();
        for ((o, &x), &w) in out_row.iter_mut().zip(row).zip(weight) {
            *o = (f64::from(x) * inv_rms * f64::from(w)) as f32;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// RoPE

/// The shape of one RoPE application: `batch` sequences of `seq` positions, `heads` heads of
/// `head_dim` each, the heads in runs of `group` that share one key/value head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadLayout {
    /// Sequences.
    pub batch: usize,
    /// Positions per sequence.
    pub seq: usize,
    /// Heads.
    pub heads: usize,
    /// Width of one head (even).
    pub head_dim: usize,
    /// Consecutive heads that share a key/value head (1 for keys themselves). Divides `heads`.
    pub group: usize,
}

impl HeadLayout {
    /// Index in the output of [`rope_to_heads`] of element `i` of head `h` at position `t` of
    /// sequence `b`: the layout `[batch, heads/group, seq, group, head_dim]`.
    #[inline]
    pub fn out_index(&self, b: usize, h: usize, t: usize, i: usize) -> usize {
        let planes = self.heads / self.group;
        (((b * planes + h / self.group) * self.seq + t) * self.group + h % self.group) * self.head_dim + i
    }
}

/// Rotary position embedding in the Hugging Face "rotate half" convention (Su et al. 2021, as
/// transformers' `apply_rotary_pos_emb` does it), fused with the transpose the attention product
/// needs and an optional scale (1/√d for queries).
///
/// `input` is `[batch·seq, heads·head_dim]` (a projection's output rows); `out` is
/// `[batch, heads/group, seq, group, head_dim]`: for every key/value head, one matrix whose rows
/// are (position, query head of its group), so the attention of a block of positions is one
/// contiguous run of rows. `cos` and `sin` are `[seq, head_dim/2]`: entry `(t, i)` is the angle of
/// position `t` at frequency `i`. For `i < half`:
/// `out[i] = (x[i]·cos − x[i+half]·sin)·scale`, `out[i+half] = (x[i+half]·cos + x[i]·sin)·scale`.
pub fn rope_to_heads(input: &[f32], layout: HeadLayout, cos: &[f32], sin: &[f32], scale: f32, out: &mut [f32]) {
    let HeadLayout { batch, seq, heads, head_dim, group } = layout;
    let half = head_dim / 2;
    assert!(group > 0 && heads % group == 0, "rope: group {group} does not divide {heads} heads");
    assert_eq!(input.len(), batch * seq * heads * head_dim, "rope: input length");
    assert_eq!(out.len(), input.len(), "rope: output length");
    assert!(cos.len() >= seq * half && sin.len() >= seq * half, "rope: tables shorter than the sequence");
    if out.is_empty() {
        return;
    }
    let row_width = heads * head_dim;
    let planes = heads / group;
    out.par_chunks_mut(seq * group * head_dim).enumerate().for_each(|(plane, out)| {
        let (b, kv) = (plane / planes, plane % planes);
        for t in 0..seq {
            let (cos, sin) = (&cos[t * half..][..half], &sin[t * half..][..half]);
            for g in 0..group {
                let h = kv * group + g;
                let src = &input[(b * seq + t) * row_width + h * head_dim..][..head_dim];
                let dst = &mut out[(t * group + g) * head_dim..][..head_dim];
                let (x1, x2) = src.split_at(half);
                let (d1, d2) = dst.split_at_mut(half);
                for i in 0..half {
                    d1[i] = (x1[i] * cos[i] - x2[i] * sin[i]) * scale;
                    d2[i] = (x2[i] * cos[i] + x1[i] * sin[i]) * scale;
                }
            }
        }
    });
}

/// Scalar reference for [`rope_to_heads`] (f64 arithmetic).
pub fn rope_to_heads_reference(input: &[f32], layout: HeadLayout, cos: &[f32], sin: &[f32], scale: f32) -> Vec<f32> {
    let HeadLayout { batch, seq, heads, head_dim, .. } = layout;
    let half = head_dim / 2;
    let mut out = vec![0.0; input.len()];
    for b in 0..batch {
        for h in 0..heads {
            for t in 0..seq {
                for i in 0..half {
                    let x1 = f64::from(input[(b * seq + t) * heads * head_dim + h * head_dim + i]);
                    let x2 = f64::from(input[(b * seq + t) * heads * head_dim + h * head_dim + i + half]);
                    let (c, s) = (f64::from(cos[t * half + i]), f64::from(sin[t * half + i]));
                    out[layout.out_index(b, h, t, i)] = ((x1 * c - x2 * s) * f64::from(scale)) as f32;
                    out[layout.out_index(b, h, t, i + half)] = ((x2 * c + x1 * s) * f64::from(scale)) as f32;
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// causal softmax

/// Which query position each row of a block of attention scores belongs to.
///
/// A block holds the scores of query positions `first_position..keys` against keys `0..keys`
/// (rows `keys` wide), for one or more key/value heads after another ("planes"). Within a plane
/// the rows run over (position, query head of the group): row `r` of a plane is position
/// `first_position + r / group`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CausalBlock {
    /// Keys per row: positions `0..keys` are visible to the last query of the block.
    pub keys: usize,
    /// Query heads per key/value head.
    pub group: usize,
    /// Position of the block's first query.
    pub first_position: usize,
}

impl CausalBlock {
    /// Rows of one plane.
    pub fn rows_per_plane(&self) -> usize {
        (self.keys - self.first_position) * self.group
    }

    /// The query position of row `r` (counting over all planes).
    #[inline]
    pub fn position(&self, r: usize) -> usize {
        self.first_position + (r % self.rows_per_plane()) / self.group
    }
}

with_avx2! {
    /// Softmax of the first `visible` entries of `row`, zeros after them.
    fn causal_softmax_row(row: &mut [f32], visible: usize) {
        let (visible, masked) = row.split_at_mut(visible);
        masked.fill(0.0);
        let max = max8(visible);
        // A row whose maximum is not finite has no meaningful softmax; NaN marks it.
        let max = if max.is_finite() { max } else { f32::NAN };
        for v in visible.iter_mut() {
            *v = exp(*v - max);
        }
        let inv_sum = 1.0 / sum8(visible);
        for v in visible.iter_mut() {
            *v *= inv_sum;
        }
    }
}

/// Causal softmax over a block of attention scores, in place: each row becomes the softmax of
/// the keys up to its query position ([`CausalBlock::position`]), zeros after. A NaN in a row's
/// visible scores makes the row NaN (caught downstream), never a silent number.
pub fn causal_softmax(scores: &mut [f32], block: CausalBlock) {
    let CausalBlock { keys, group, first_position } = block;
    if scores.is_empty() {
        return;
    }
    assert!(group > 0 && first_position < keys, "causal_softmax: empty block {block:?}");
    assert_eq!(scores.len() % (block.rows_per_plane() * keys), 0, "causal_softmax: scores are not whole planes");
    let rows_each = rows_per_task(keys / 2 + 1);
    scores.par_chunks_mut(rows_each * keys).enumerate().for_each(|(task, chunk)| {
        for (i, row) in chunk.chunks_exact_mut(keys).enumerate() {
            causal_softmax_row(row, block.position(task * rows_each + i) + 1);
        }
    });
}

/// Scalar reference for [`causal_softmax`] (f64, std `exp`); returns a new buffer.
pub fn causal_softmax_reference(scores: &[f32], block: CausalBlock) -> Vec<f32> {
    let keys = block.keys;
    let mut out = vec![0.0; scores.len()];
    for (r, (row, out_row)) in scores.chunks(keys).zip(out.chunks_mut(keys)).enumerate() {
        let t = block.position(r);
        let max = row[..=t].iter().fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
        let max = if max.is_finite() { max } else { f64::NAN };
        let sum: f64 = row[..=t].iter().map(|&v| (f64::from(v) - max).exp()).sum();
        for j in 0..=t {
            out_row[j] = ((f64::from(row[j]) - max).exp() / sum) as f32;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// SwiGLU

with_avx2! {
    fn silu_mul_chunk(gate: &[f32], up: &[f32], out: &mut [f32]) {
        for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
            // sigmoid from e^-|g| ≤ 1, so a hugely negative gate gives exactly 0, not g / e^88
            // (the clamp of `exp`).
            let e = exp(-g.abs());
            let inv = 1.0 / (1.0 + e);
            let sigmoid = if g >= 0.0 { inv } else { e * inv };
            *o = g * sigmoid * u;
        }
    }
}

/// The SwiGLU gate (Shazeer 2020): `out = silu(gate) · up`, with `silu(g) = g / (1 + e^−g)`.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(gate.len() == up.len() && up.len() == out.len(), "silu_mul: lengths differ");
    out.par_chunks_mut(PARALLEL_GRAIN)
        .zip(gate.par_chunks(PARALLEL_GRAIN))
        .zip(up.par_chunks(PARALLEL_GRAIN))
        .for_each(|((out, gate), up)| silu_mul_chunk(gate, up, out));
}

/// Scalar reference for [`silu_mul`] (f64, std `exp`).
pub fn silu_mul_reference(gate: &[f32], up: &[f32]) -> Vec<f32> {
    gate.iter()
        .zip(up)
        .map(|(&g, &u)| {
            let g = f64::from(g);
            (g / (1.0 + (-g).exp()) * f64::from(u)) as f32
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// residual and bias additions

/// `out = a + b`, element-wise (the residual connection). Here rather than candle's `add` because
/// candle hands large element-wise ops to a thread pool of its own whose workers spin after each
/// op, taking the cores the next matrix product needs.
pub fn add(a: &[f32], b: &[f32], out: &mut [f32]) {
    assert!(a.len() == b.len() && b.len() == out.len(), "add: lengths differ");
    out.par_chunks_mut(4 * PARALLEL_GRAIN).zip(a.par_chunks(4 * PARALLEL_GRAIN)).zip(b.par_chunks(4 * PARALLEL_GRAIN)).for_each(
        |((out, a), b)| {
            for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
                *o = x + y;
            }
        },
    );
}

/// `rows[r] += bias` for every row (`bias.len()` wide), in place.
pub fn add_bias(rows: &mut [f32], bias: &[f32]) {
    if bias.is_empty() {
        return;
    }
    assert_eq!(rows.len() % bias.len(), 0, "add_bias: rows are not whole rows of the bias's width");
    rows.par_chunks_mut(rows_per_task(bias.len()) * bias.len()).for_each(|chunk| {
        for row in chunk.chunks_exact_mut(bias.len()) {
            for (v, b) in row.iter_mut().zip(bias) {
                *v += b;
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------
// negative log-likelihood

/// The running state of one row's log-sum-exp while its logits arrive block by block
/// (the "online softmax" of Milakov & Gimelshein 2018): the maximum so far, the sum of
/// `e^(x − max)` so far, and the target's logit once its block has passed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NllState {
    max: f32,
    /// f64, so that folding in many blocks adds no rounding error beyond each block's own.
    sum: f64,
    target_logit: f32,
}

impl Default for NllState {
    fn default() -> Self {
        NllState { max: f32::NEG_INFINITY, sum: 0.0, target_logit: f32::NAN }
    }
}

impl NllState {
    /// `logsumexp − target logit`, once every block has been seen. NaN if any logit was NaN or
    /// infinite, or if the target's block never came.
    pub fn nll(&self) -> f32 {
        (f64::from(self.max) + self.sum.ln() - f64::from(self.target_logit)) as f32
    }
}

with_avx2! {
    fn nll_update_row(state: &mut NllState, row: &[f32], first_column: usize, target: usize) {
        let block_max = max8(row);
        // NaN or ±∞ anywhere makes the row's result NaN rather than a plausible number.
        let block_max = if block_max.is_finite() || row.is_empty() { block_max } else { f32::NAN };
        let max = if block_max > state.max || block_max.is_nan() { block_max } else { state.max };
        let block_sum = sum_exp(row, max);
        let rescaled = if state.sum == 0.0 { 0.0 } else { state.sum * f64::from(state.max - max).exp() };
        state.sum = rescaled + f64::from(block_sum);
        state.max = max;
        if (first_column..first_column + row.len()).contains(&target) {
            state.target_logit = row[target - first_column];
        }
    }
}

/// Fold a block of logits into each row's [`NllState`]: `logits` holds one row per state, columns
/// `first_column..first_column + width` of the vocabulary; `targets` are the rows' target ids.
pub fn nll_update(logits: &[f32], width: usize, first_column: usize, targets: &[u32], states: &mut [NllState]) {
    assert_eq!(logits.len(), width * targets.len(), "nll_update: logits are not one row per target");
    assert_eq!(states.len(), targets.len(), "nll_update: one state per target");
    if width == 0 {
        return;
    }
    states.par_iter_mut().zip(logits.par_chunks(width)).zip(targets.par_iter()).with_min_len(4).for_each(
        |((state, row), &target)| nll_update_row(state, row, first_column, target as usize),
    );
}

/// Per-row negative log-likelihood of `targets` under whole logits rows (`vocab` wide):
/// `nll = logsumexp(row) − row[target]`, without materializing the log-softmax. A row with a NaN
/// or infinite logit, or a target outside the row, yields NaN.
pub fn nll_rows(logits: &[f32], vocab: usize, targets: &[u32], out: &mut [f32]) {
    assert_eq!(out.len(), targets.len(), "nll_rows: output length");
    let mut states = vec![NllState::default(); targets.len()];
    nll_update(logits, vocab, 0, targets, &mut states);
    for (out, state) in out.iter_mut().zip(&states) {
        *out = state.nll();
    }
}

/// Scalar reference for [`nll_rows`] (f64, std `exp`).
pub fn nll_rows_reference(logits: &[f32], vocab: usize, targets: &[u32]) -> Vec<f64> {
    logits
        .chunks(vocab)
        .zip(targets)
        .map(|(row, &target)| {
            let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
            let max = if max.is_finite() { max } else { f64::NAN };
            let sum: f64 = row.iter().map(|&v| (f64::from(v) - max).exp()).sum();
            max + sum.ln() - f64::from(row[target as usize])
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// one token's distribution against another's

/// What one scored token says about a candidate model against its base: both given the same
/// tokens before it, `p` the base's next-token distribution and `q` the candidate's.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TokenComparison {
    /// KL(p ‖ q) = Σ p (ln p − ln q), in nats.
    pub kld: f64,
    /// −ln p(target).
    pub nll_base: f64,
    /// −ln q(target).
    pub nll: f64,
    /// Whether both put their largest probability on the same token (the first such token of
    /// each, as llama.cpp's `llama-perplexity --kl-divergence` compares them).
    pub same_top: bool,
    /// q(target) − p(target).
    pub p_diff: f64,
}

/// The first index of the largest value (NaN entries skipped; 0 for an empty or all-NaN row).
#[inline(always)]
fn first_argmax(values: &[f32], max: f32) -> usize {
    values.iter().position(|&v| v == max).unwrap_or(0)
}

with_avx2! {
    fn compare_row(base: &[f32], candidate: &[f32], target: usize) -> TokenComparison {
        let (base_max, candidate_max) = (max8(base), max8(candidate));
        // One pass over the base: e = e^(a − max_a) through a stack buffer (so the map
        // vectorizes), summed to S_a and dotted with a − b. Then p = e / S_a exactly as the same
        // sum normalizes it, so KL(p ‖ q) = Σ e·(a − b) / S_a − (La − Lb) with La = max_a + ln S_a:
        // rows that differ by a constant give 0, not the rounding of two separate sums.
        let mut buffer = [0.0f32; 256];
        let (mut base_sum, mut weighted) = (0.0f64, 0.0f64);
        for (a, b) in base.chunks(buffer.len()).zip(candidate.chunks(buffer.len())) {
            let buffer = &mut buffer[..a.len()];
            for (e, &x) in buffer.iter_mut().zip(a) {
                *e = exp(x - base_max);
            }
            let mut lanes = [0.0f32; 8];
            let whole = a.len() / 8 * 8;
            for ((p, x), y) in buffer[..whole].chunks_exact(8).zip(a[..whole].chunks_exact(8)).zip(b[..whole].chunks_exact(8)) {
                for (lane, ((p, x), y)) in lanes.iter_mut().zip(p.iter().zip(x).zip(y)) {
                    *lane += p * (x - y);
                }
            }
            let tail: f32 = (whole..a.len()).map(|i| buffer[i] * (a[i] - b[i])).sum();
            weighted += f64::from(lanes.iter().sum::<f32>() + tail);
            base_sum += f64::from(sum8(buffer));
        }
        // The sums carry NaN (the maxima skip it): a row with a NaN or an infinity has no finite L.
        let base_lse = f64::from(base_max) + base_sum.ln();
        // The candidate's sum by the same steps, so a row compared with itself gives equal NLLs.
        let mut candidate_sum = 0.0f64;
        for chunk in candidate.chunks(buffer.len()) {
            let buffer = &mut buffer[..chunk.len()];
            for (e, &x) in buffer.iter_mut().zip(chunk) {
                *e = exp(x - candidate_max);
            }
            candidate_sum += f64::from(sum8(buffer));
        }
        let candidate_lse = f64::from(candidate_max) + candidate_sum.ln();
        if !(base_lse.is_finite() && candidate_lse.is_finite() && weighted.is_finite()) {
            return TokenComparison { kld: f64::NAN, nll_base: f64::NAN, nll: f64::NAN, same_top: false, p_diff: f64::NAN };
        }
        let kld = weighted / base_sum - (base_lse - candidate_lse);
        let nll_base = base_lse - f64::from(base[target]);
        let nll = candidate_lse - f64::from(candidate[target]);
        TokenComparison {
            // Rounding can leave a hair below zero when the two rows are (nearly) equal.
            kld: kld.max(0.0),
            nll_base,
            nll,
            same_top: first_argmax(base, base_max) == first_argmax(candidate, candidate_max),
            p_diff: (-nll).exp() - (-nll_base).exp(),
        }
    }
}

/// Compare whole logits rows (`vocab` wide) of a base model and a candidate, row by row in
/// parallel, the row's target id given by `targets`. A row with a NaN or infinite logit gives NaN
/// figures; a target outside the vocabulary panics (callers check ids against the vocabulary).
pub fn compare_rows(base: &[f32], candidate: &[f32], vocab: usize, targets: &[u32], out: &mut [TokenComparison]) {
    assert_eq!(base.len(), vocab * targets.len(), "compare_rows: base logits are not one row per target");
    assert_eq!(candidate.len(), base.len(), "compare_rows: candidate logits differ in shape from the base's");
    assert_eq!(out.len(), targets.len(), "compare_rows: one output per target");
    if vocab == 0 {
        return;
    }
    out.par_iter_mut()
        .zip(base.par_chunks(vocab).zip(candidate.par_chunks(vocab)))
        .zip(targets.par_iter())
        .with_min_len(4)
        .for_each(|((out, (a, b)), &target)| *out = compare_row(a, b, target as usize));
}

/// Scalar reference for [`compare_rows`]: the log-softmax of each row in f64 with std `exp`, then
/// Σ p (ln p − ln q) term by term.
pub fn compare_rows_reference(base: &[f32], candidate: &[f32], vocab: usize, targets: &[u32]) -> Vec<TokenComparison> {
    let log_softmax = |row: &[f32]| -> Vec<f64> {
        let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
        let lse = max + row.iter().map(|&v| (f64::from(v) - max).exp()).sum::<f64>().ln();
        row.iter().map(|&v| f64::from(v) - lse).collect()
    };
    let argmax = |row: &[f32]| (0..row.len()).fold(0, |best, i| if row[i] > row[best] { i } else { best });
    base.chunks(vocab)
        .zip(candidate.chunks(vocab))
        .zip(targets)
        .map(|((a, b), &target)| {
            let (lp, lq) = (log_softmax(a), log_softmax(b));
            let kld = lp.iter().zip(&lq).map(|(&p, &q)| p.exp() * (p - q)).sum::<f64>();
            let t = target as usize;
            TokenComparison { kld, nll_base: -lp[t], nll: -lq[t], same_top: argmax(a) == argmax(b), p_diff: lq[t].exp() - lp[t].exp() }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn random(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-1.0f32..1.0) * scale).collect()
    }

    fn assert_close(fast: &[f32], reference: &[f32], abs: f32, rel: f32, what: &str) {
        assert_eq!(fast.len(), reference.len(), "{what}: lengths");
        for (i, (&a, &b)) in fast.iter().zip(reference).enumerate() {
            let tol = abs + rel * b.abs();
            assert!((a - b).abs() <= tol, "{what}: element {i}: fast {a} vs reference {b} (tolerance {tol})");
        }
    }

    #[test]
    fn exp_matches_std_over_its_range() {
        let mut worst = 0.0f64;
        let mut x = -87.3f32;
        while x < 88.0 {
            let exact = f64::from(x).exp();
            let rel = ((f64::from(exp(x)) - exact) / exact).abs();
            worst = worst.max(rel);
            x += 0.000_97;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        for x in [0.0f32, -0.0, 1e-30, -1e-30, 0.5, -0.5, 1.0, -1.0, 20.0, -20.0] {
            let exact = f64::from(x).exp();
            assert!(((f64::from(exp(x)) - exact) / exact).abs() < 3e-7, "exp({x})");
        }
    }

    #[test]
    fn exp_edge_cases() {
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(-1e30), 0.0);
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(f32::INFINITY).is_finite() && exp(f32::INFINITY) > 1e38);
        assert!(exp(1000.0) > 1e38);
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn rms_norm_fast_equals_reference() {
        let mut rng = StdRng::seed_from_u64(1);
        for &(rows, width) in &[(0usize, 8usize), (1, 1), (3, 7), (17, 576), (300, 64), (2, 1000)] {
            let x = random(&mut rng, rows * width, 3.0);
            let w = random(&mut rng, width, 1.5);
            let mut out = vec![0.0; x.len()];
            rms_norm(&x, &w, 1e-5, &mut out);
            assert_close(&out, &rms_norm_reference(&x, &w, 1e-5), 1e-6, 1e-5, "random");
        }
        // Adversarial: constant rows, all-zero rows (eps keeps them finite), one huge outlier,
        // tiny values (denormals), mixed magnitudes.
        let width = 40;
        let mut x = vec![0.0f32; width * 5];
        x[..width].fill(2.5);
        x[2 * width + 3] = 1e18;
        for v in &mut x[3 * width..4 * width] {
            *v = 1e-39;
        }
        for (i, v) in x[4 * width..].iter_mut().enumerate() {
            *v = if i % 2 == 0 { 1e6 } else { 1e-6 };
        }
        let w = vec![0.7f32; width];
        let mut out = vec![0.0; x.len()];
        rms_norm(&x, &w, 1e-6, &mut out);
        let reference = rms_norm_reference(&x, &w, 1e-6);
        assert_close(&out, &reference, 1e-6, 1e-5, "adversarial");
        assert!(out[width..2 * width].iter().all(|&v| v == 0.0), "zero row stays zero");
        // NaN propagates.
        let mut x = vec![1.0f32; 16];
        x[5] = f32::NAN;
        let mut out = vec![0.0; 16];
        rms_norm(&x, &[1.0; 16], 1e-6, &mut out);
        assert!(out.iter().all(|v| v.is_nan()));
    }

    #[test]
    fn rope_fast_equals_reference() {
        let mut rng = StdRng::seed_from_u64(2);
        for layout in [
            HeadLayout { batch: 1, seq: 1, heads: 1, head_dim: 2, group: 1 },
            HeadLayout { batch: 2, seq: 5, heads: 3, head_dim: 8, group: 1 },
            HeadLayout { batch: 2, seq: 5, heads: 6, head_dim: 8, group: 3 },
            HeadLayout { batch: 3, seq: 33, heads: 9, head_dim: 64, group: 3 },
            HeadLayout { batch: 1, seq: 7, heads: 4, head_dim: 4, group: 4 },
            HeadLayout { batch: 0, seq: 4, heads: 2, head_dim: 4, group: 2 },
        ] {
            let n = layout.batch * layout.seq * layout.heads * layout.head_dim;
            let x = random(&mut rng, n, 4.0);
            let half = layout.head_dim / 2;
            let angles: Vec<f64> = (0..layout.seq * half).map(|i| i as f64 * 0.37).collect();
            let cos: Vec<f32> = angles.iter().map(|a| a.cos() as f32).collect();
            let sin: Vec<f32> = angles.iter().map(|a| a.sin() as f32).collect();
            let mut out = vec![0.0; n];
            rope_to_heads(&x, layout, &cos, &sin, 0.125, &mut out);
            assert_close(&out, &rope_to_heads_reference(&x, layout, &cos, &sin, 0.125), 1e-6, 1e-6, "rope");
        }
    }

    #[test]
    fn causal_block_positions() {
        // Positions 4..7 of 7 keys, groups of 3 query heads, two planes.
        let block = CausalBlock { keys: 7, group: 3, first_position: 4 };
        let positions: Vec<usize> = (0..18).map(|r| block.position(r)).collect();
        assert_eq!(positions, [4, 4, 4, 5, 5, 5, 6, 6, 6, 4, 4, 4, 5, 5, 5, 6, 6, 6]);
    }

    #[test]
    fn causal_softmax_fast_equals_reference() {
        let mut rng = StdRng::seed_from_u64(3);
        for (planes, block) in [
            (1usize, CausalBlock { keys: 1, group: 1, first_position: 0 }),
            (2, CausalBlock { keys: 3, group: 1, first_position: 0 }),
            (1, CausalBlock { keys: 64, group: 1, first_position: 0 }),
            (3, CausalBlock { keys: 40, group: 3, first_position: 0 }),
            (2, CausalBlock { keys: 513, group: 3, first_position: 384 }),
            (6, CausalBlock { keys: 256, group: 3, first_position: 128 }),
            (1, CausalBlock { keys: 9, group: 2, first_position: 8 }),
        ] {
            let x = random(&mut rng, planes * block.rows_per_plane() * block.keys, 10.0);
            let mut fast = x.clone();
            causal_softmax(&mut fast, block);
            assert_close(&fast, &causal_softmax_reference(&x, block), 1e-7, 2e-6, "random");
        }
        // Constant rows, a huge outlier, −∞ entries (a fully masked key), huge spread.
        let seq = 24;
        let block = CausalBlock { keys: seq, group: 1, first_position: 0 };
        let mut x = vec![0.5f32; seq * seq * 2];
        x[seq * 10 + 4] = 1e30;
        x[seq * 12 + 3] = f32::NEG_INFINITY;
        x[seq * 30 + 1] = -1e30;
        x[seq * 31] = 80.0;
        x[seq * 31 + 1] = -80.0;
        let mut fast = x.clone();
        causal_softmax(&mut fast, block);
        assert_close(&fast, &causal_softmax_reference(&x, block), 1e-7, 2e-6, "adversarial");
        for (r, row) in fast.chunks(seq).enumerate() {
            let t = r % seq;
            assert!(row[t + 1..].iter().all(|&v| v == 0.0), "row {r}: masked entries are zero");
            let sum: f32 = row.iter().sum();
            assert!((sum - 1.0).abs() < 1e-5, "row {r} sums to {sum}");
        }
        // NaN in a visible score poisons the row; a NaN in a masked entry does not matter.
        let block = CausalBlock { keys: 3, group: 1, first_position: 0 };
        let mut x = vec![0.0f32; 9];
        x[3 + 1] = f32::NAN;
        x[2] = f32::NAN;
        causal_softmax(&mut x, block);
        assert_eq!(x[0], 1.0);
        assert!(x[3..5].iter().all(|v| v.is_nan()));
        assert!(x[6..9].iter().all(|v| v.is_finite()));
        // A visible +∞ has no softmax: NaN, not a silent one-hot.
        let mut x = vec![0.0f32, 0.0, f32::INFINITY, 0.0];
        causal_softmax(&mut x, CausalBlock { keys: 2, group: 1, first_position: 0 });
        assert!(x[2..].iter().all(|v| v.is_nan()));
    }

    #[test]
    fn add_and_bias_are_exact() {
        let mut rng = StdRng::seed_from_u64(6);
        for n in [0usize, 1, 17, 300_000] {
            let (a, b) = (random(&mut rng, n, 5.0), random(&mut rng, n, 5.0));
            let mut out = vec![0.0; n];
            add(&a, &b, &mut out);
            assert!(out.iter().zip(a.iter().zip(&b)).all(|(o, (x, y))| *o == x + y));
        }
        let bias = random(&mut rng, 7, 1.0);
        let rows = random(&mut rng, 7 * 5000, 1.0);
        let mut biased = rows.clone();
        add_bias(&mut biased, &bias);
        for (i, (&got, &x)) in biased.iter().zip(&rows).enumerate() {
            assert_eq!(got, x + bias[i % 7]);
        }
    }

    #[test]
    fn silu_mul_fast_equals_reference() {
        let mut rng = StdRng::seed_from_u64(4);
        for n in [0usize, 1, 7, 1536, 40_000] {
            let g = random(&mut rng, n, 12.0);
            let u = random(&mut rng, n, 3.0);
            let mut out = vec![0.0; n];
            silu_mul(&g, &u, &mut out);
            assert_close(&out, &silu_mul_reference(&g, &u), 1e-7, 1e-6, "random");
        }
        let g = [0.0f32, 1e-40, -1e-40, 100.0, -100.0, 1e30, -1e30, 88.5, -88.5];
        let u = [1.0f32; 9];
        let mut out = vec![0.0; 9];
        silu_mul(&g, &u, &mut out);
        // Gates below −87 give |silu| < 1e-35, which `exp`'s flush to zero rounds to 0.
        assert_close(&out, &silu_mul_reference(&g, &u), 1e-35, 1e-6, "adversarial");
        assert_eq!(out[6], 0.0, "a hugely negative gate gives 0, not g / e^88");
        let mut out = vec![0.0; 1];
        silu_mul(&[f32::NAN], &[1.0], &mut out);
        assert!(out[0].is_nan());
    }

    #[test]
    fn nll_fast_equals_reference() {
        let mut rng = StdRng::seed_from_u64(5);
        for &(rows, vocab) in &[(1usize, 1usize), (3, 5), (7, 100), (40, 4099), (5, 49_152)] {
            let logits = random(&mut rng, rows * vocab, 15.0);
            let targets: Vec<u32> = (0..rows).map(|_| rng.random_range(0..vocab as u32)).collect();
            let mut out = vec![0.0; rows];
            nll_rows(&logits, vocab, &targets, &mut out);
            let reference = nll_rows_reference(&logits, vocab, &targets);
            for (a, b) in out.iter().zip(&reference) {
                assert!((f64::from(*a) - b).abs() < 1e-5 + 1e-6 * b.abs(), "{a} vs {b}");
            }
            // The same logits streamed in column blocks of uneven widths (the lm_head path),
            // ascending maxima included (the running sum must be rescaled).
            for block in [1usize, 3, 1000, 2048] {
                let mut states = vec![NllState::default(); rows];
                let mut start = 0;
                while start < vocab {
                    let width = block.min(vocab - start);
                    let part: Vec<f32> =
                        (0..rows).flat_map(|r| logits[r * vocab + start..r * vocab + start + width].to_vec()).collect();
                    nll_update(&part, width, start, &targets, &mut states);
                    start += width;
                }
                for (state, b) in states.iter().zip(&reference) {
                    let a = state.nll();
                    assert!((f64::from(a) - b).abs() < 1e-5 + 1e-6 * b.abs(), "block {block}: {a} vs {b}");
                }
            }
        }
        let ascending: Vec<f32> = (0..5000).map(|i| i as f32 * 0.01).collect();
        let mut states = vec![NllState::default()];
        for (j, part) in ascending.chunks(128).enumerate() {
            nll_update(part, part.len(), j * 128, &[17], &mut states);
        }
        let expected = nll_rows_reference(&ascending, 5000, &[17])[0];
        assert!((f64::from(states[0].nll()) - expected).abs() < 1e-4, "{} vs {expected}", states[0].nll());
        // Constant row: nll = ln(vocab). Huge outlier on the target: nll ≈ 0. On another: ≈ 1e4.
        let vocab = 1000;
        let mut logits = vec![3.0f32; 3 * vocab];
        logits[vocab + 7] = 1e4;
        logits[2 * vocab + 9] = 1e4;
        let mut out = vec![0.0; 3];
        nll_rows(&logits, vocab, &[0, 7, 8], &mut out);
        assert!((out[0] - (vocab as f32).ln()).abs() < 1e-5);
        assert!(out[1].abs() < 1e-5);
        assert!((out[2] - (1e4 - 3.0)).abs() < 1e-2);
        // Non-finite logits give NaN, never a number that looks fine.
        let mut logits = vec![0.0f32; 2 * 4];
        logits[1] = f32::NAN;
        logits[4 + 2] = f32::INFINITY;
        let mut out = vec![0.0; 2];
        nll_rows(&logits, 4, &[0, 0], &mut out);
        assert!(out[0].is_nan() && out[1].is_nan());
        // A NaN in a later block poisons a row that looked fine so far, and a target whose block
        // never arrives gives NaN, not a figure.
        let mut states = vec![NllState::default(); 2];
        nll_update(&[1.0, 2.0, 1.0, 2.0], 2, 0, &[0, 9], &mut states);
        nll_update(&[f32::NAN, 0.0, 0.0, 0.0], 2, 2, &[0, 9], &mut states);
        assert!(states[0].nll().is_nan() && states[1].nll().is_nan());
    }

    #[test]
    fn baseline_copies_equal_reference() {
        // The SSE2 copies of the `with_avx2` row loops, forced on; other tests running meanwhile
        // may take them too, which is harmless: both copies must be right.
        FORCE_BASELINE.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut rng = StdRng::seed_from_u64(7);
        let block = CausalBlock { keys: 300, group: 3, first_position: 100 };
        let x = random(&mut rng, 2 * block.rows_per_plane() * block.keys, 10.0);
        let mut fast = x.clone();
        causal_softmax(&mut fast, block);
        let softmax_ok = fast.iter().zip(causal_softmax_reference(&x, block)).all(|(a, b)| (a - b).abs() <= 1e-7 + 2e-6 * b.abs());
        let (g, u) = (random(&mut rng, 5000, 12.0), random(&mut rng, 5000, 3.0));
        let mut out = vec![0.0; 5000];
        silu_mul(&g, &u, &mut out);
        let silu_ok = out.iter().zip(silu_mul_reference(&g, &u)).all(|(a, b)| (a - b).abs() <= 1e-7 + 1e-6 * b.abs());
        let logits = random(&mut rng, 4 * 3000, 15.0);
        let mut nll = vec![0.0; 4];
        nll_rows(&logits, 3000, &[0, 5, 2999, 17], &mut nll);
        let reference = nll_rows_reference(&logits, 3000, &[0, 5, 2999, 17]);
        let nll_ok = nll.iter().zip(&reference).all(|(a, b)| (f64::from(*a) - b).abs() < 1e-5 + 1e-6 * b.abs());
        FORCE_BASELINE.store(false, std::sync::atomic::Ordering::Relaxed);
        assert!(softmax_ok && silu_ok && nll_ok, "softmax {softmax_ok}, silu {silu_ok}, nll {nll_ok}");
    }

    #[test]
    fn compare_rows_equal_reference() {
        let mut rng = StdRng::seed_from_u64(11);
        // A vocabulary that is no multiple of the 8 lanes or of the 256-wide buffer.
        let vocab = 3001;
        let targets = [0u32, 5, 3000, 17, 1234, 99];
        let base = random(&mut rng, targets.len() * vocab, 12.0);
        let mut candidate: Vec<f32> = base.iter().map(|&v| v + rng.random_range(-0.3f32..0.3)).collect();
        // Row 3: one huge outlier in the candidate; row 4: a far-off candidate.
        candidate[3 * vocab + 40] = 60.0;
        for v in &mut candidate[4 * vocab..5 * vocab] {
            *v = rng.random_range(-12.0f32..12.0);
        }
        let mut fast = vec![TokenComparison::default(); targets.len()];
        compare_rows(&base, &candidate, vocab, &targets, &mut fast);
        let reference = compare_rows_reference(&base, &candidate, vocab, &targets);
        for (row, (a, b)) in fast.iter().zip(&reference).enumerate() {
            let close = |x: f64, y: f64| (x - y).abs() <= 2e-5 + 1e-5 * y.abs();
            assert!(close(a.kld, b.kld), "row {row}: kld {} vs {}", a.kld, b.kld);
            assert!(close(a.nll, b.nll) && close(a.nll_base, b.nll_base), "row {row}: nll {a:?} vs {b:?}");
            assert!(close(a.p_diff, b.p_diff), "row {row}: p_diff {} vs {}", a.p_diff, b.p_diff);
            assert_eq!(a.same_top, b.same_top, "row {row}");
        }
        assert!(reference[3].kld > 10.0 && !reference[3].same_top, "the outlier moves all mass: {:?}", reference[3]);
        // The same row twice: no divergence, same top token, no change in p.
        let mut same = vec![TokenComparison::default(); targets.len()];
        compare_rows(&base, &base, vocab, &targets, &mut same);
        for c in &same {
            assert!(c.kld.abs() < 1e-6 && c.same_top && c.p_diff.abs() < 1e-7 && c.nll == c.nll_base, "{c:?}");
        }
        // Non-finite logits give NaN figures, never plausible ones.
        let (mut a, b) = (vec![0.0f32; 2 * 4], vec![0.0f32; 2 * 4]);
        a[1] = f32::NAN;
        a[4 + 2] = f32::INFINITY;
        let mut out = vec![TokenComparison::default(); 2];
        compare_rows(&a, &b, 4, &[0, 0], &mut out);
        assert!(out.iter().all(|c| c.kld.is_nan() && c.nll.is_nan()), "{out:?}");
        // Constant rows: uniform distributions, equal, the first token on top for both.
        let mut out = vec![TokenComparison::default(); 1];
        compare_rows(&[2.0; 7], &[-1.0; 7], 7, &[3], &mut out);
        assert!(out[0].kld.abs() < 1e-7 && out[0].same_top && (out[0].nll - 7f64.ln()).abs() < 1e-6, "{:?}", out[0]);
    }
}
