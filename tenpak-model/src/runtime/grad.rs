//! A differentiable twin of the Llama-family forward pass, for the loss gradients the Fisher
//! calibrator needs (the diagonal Fisher information is the mean squared gradient of the
//! next-token loss with respect to each weight).
//!
//! The runtime's fast kernels ([`super::ops`]) have no backward, so this module writes the
//! same model with candle operations that do: matrix products, broadcast arithmetic, `exp`,
//! `sqr`/`sqrt`/`recip`, sums, `narrow`/`cat`, reshapes and transposes, `silu`. It follows the
//! runtime's conventions exactly: Hugging Face's "rotate half" RoPE on Hugging Face's q/k row
//! order (the GGUF loader undoes llama.cpp's permutation before weights get here), query head
//! `h` attending with key/value head `h / group` (transformers' `repeat_kv`), RMSNorm as
//! `x / √(mean x² + ε) · w`, SwiGLU, Qwen2's q/k/v biases.
//!
//! Memory stays bounded by one block plus stored activations, never the whole model's graph
//! ([`weight_gradients`]): a forward pass block by block keeps only each block's input hidden
//! states (`ctx × hidden` per window per block; in f32 the runtime's own kernels run it, since
//! it needs no graph); the head gives the gradient of each window's loss with respect to the
//! last hidden states; then the blocks run top-down, each loaded once and recomputed window by
//! window with its input and its seven weights as variables, so one window's graph of one block
//! is all that is ever alive.
//!
//! Two backward steps are written out in closed form with candle operations rather than left to
//! autograd, where autograd would spend most of the time on work it throws away: the attention
//! core `softmax(q·kᵀ + mask)·v` (see `GradBlock::backward`) and the logits of the head
//! (`softmax − onehot`). Everything else, RMSNorm, RoPE, the grouped-query repeat, SwiGLU and
//! every matrix product with a weight, is candle's autograd. The tests check the result against
//! central differences of the loss in f64 and the loss against the runtime's.
//!
//! One window of 512 tokens through SmolLM2-135M (30 blocks) takes about 5.5 s on two cores,
//! most of it in matrix products: the forward pass, its recomputation and the backward pass are
//! about 4 forward passes' worth of arithmetic.

use tenpak_error::{Context, ensure};
use candle_core::{D, DType, Device, Tensor, Var};

use super::WeightLoader;
use super::llama::{self, Block, Head, load_tensor};
use super::rope::RopeTables;
use crate::ModelConfig;

/// Rows of the head computed at once: the logits of 128 positions over SmolLM2's 49,152-token
/// vocabulary are 25 MB in f32 (and the softmax and its gradient as much again), where a whole
/// 511-position window would take 100 MB each.
const HEAD_ROWS: usize = 128;

/// What [`weight_gradients`] hands each gradient to: `(weight_name, gradient, rows, cols)`, the
/// gradient row-major `[rows, cols]` as the weight is stored. An error stops the pass.
pub type GradientVisitor<'a> = dyn FnMut(&str, &[f32], usize, usize) -> tenpak_error::Result<()> + 'a;

/// The arithmetic of the differentiable pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// f32, as the runtime computes: what calibration uses.
    #[default]
    F32,
    /// f64, for checking gradients against finite differences (weights are loaded as f32 and
    /// widened).
    F64,
}

impl Precision {
    fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::F64 => DType::F64,
        }
    }
}

/// Gradient of each window's mean next-token NLL with respect to every block linear weight
/// (q, k, v, o, gate, up, down of every block), in f32. See [`weight_gradients_as`].
pub fn weight_gradients(
    config: &ModelConfig,
    weights: &(impl WeightLoader + ?Sized),
    ids: &[u32],
    windows: usize,
    ctx: usize,
    visit: &mut GradientVisitor<'_>,
) -> tenpak_error::Result<Vec<f64>> {
    weight_gradients_as(Precision::F32, config, weights, ids, windows, ctx, visit)
}

/// Gradient of each window's mean next-token NLL with respect to every block linear weight,
/// one window at a time, computed in `precision`.
///
/// Window `w` is `ids[w·ctx .. (w+1)·ctx]`, taken as it is (a caller wanting a BOS first puts it
/// there) and starting at position 0, as in the calibration pipeline; its loss is the mean NLL of
/// its `ctx − 1` predicted tokens, every position but the first, as `tenpak eval` scores.
///
/// `visit(weight_name, gradient, rows, cols)` receives each gradient, row-major with
/// `rows = out_features` (`model.layers.3.self_attn.q_proj.weight`, `[rows, cols]` as stored), once
/// per window per layer, in this order: blocks from the last to the first; within a block,
/// windows in order; within a window, q, k, v, o, gate, up, down. An error from `visit` stops
/// the pass. Returns each window's loss.
///
/// Peak memory: one block's weights and one window's graph through it, plus the stored block
/// inputs (`num_hidden_layers · windows · ctx · hidden` values) and one upstream gradient per
/// window; the head (`lm_head`, the embedding if tied) is loaded only while it runs.
pub fn weight_gradients_as(
    precision: Precision,
    config: &ModelConfig,
    weights: &(impl WeightLoader + ?Sized),
    ids: &[u32],
    windows: usize,
    ctx: usize,
    visit: &mut GradientVisitor<'_>,
) -> tenpak_error::Result<Vec<f64>> {
    let setup = Setup::new(config, ids, windows, ctx, precision)?;
    let mut hidden = setup.embed(weights, ids)?;
    let mut block_inputs = Vec::with_capacity(config.num_hidden_layers);
    for index in 0..config.num_hidden_layers {
        let block = GradBlock::load(&setup, index, weights)?;
        let outputs = block.forward_fast(&hidden, &setup)?;
        block_inputs.push(std::mem::replace(&mut hidden, outputs));
    }
    let head = GradHead::load(&setup, weights)?;
    let mut losses = Vec::with_capacity(windows);
    let mut upstream = Vec::with_capacity(windows);
    for (window, last) in hidden.iter().enumerate() {
        let (loss, gradient) = head.loss_and_gradient(last, setup.targets(ids, window)).with_context(|| format!("head, window {window}"))?;
        losses.push(loss);
        upstream.push(gradient);
    }
    drop((head, hidden));
    for index in (0..config.num_hidden_layers).rev() {
        let block = GradBlock::load(&setup, index, weights)?;
        let inputs = block_inputs.pop().context("one stored input per block")?;
        for (window, input) in inputs.iter().enumerate() {
            upstream[window] = block.backward(input, &upstream[window], &setup, window, visit)?;
        }
    }
    Ok(losses)
}

/// Each window's mean next-token NLL under the differentiable forward pass (the loss
/// [`weight_gradients_as`] differentiates), computed in `precision`, without a backward pass.
pub fn window_losses(
    precision: Precision,
    config: &ModelConfig,
    weights: &(impl WeightLoader + ?Sized),
    ids: &[u32],
    windows: usize,
    ctx: usize,
) -> tenpak_error::Result<Vec<f64>> {
    let setup = Setup::new(config, ids, windows, ctx, precision)?;
    let mut hidden = setup.embed(weights, ids)?;
    for index in 0..config.num_hidden_layers {
        let block = GradBlock::load(&setup, index, weights)?;
        hidden = hidden.iter().map(|h| block.forward(h, &block.weights, &setup)).collect::<tenpak_error::Result<_>>()?;
    }
    let head = GradHead::load(&setup, weights)?;
    hidden
        .iter()
        .enumerate()
        .map(|(window, last)| head.loss(last, setup.targets(ids, window)).with_context(|| format!("head, window {window}")))
        .collect()
}

/// What every block and window shares: the configuration, the RoPE tables as `[ctx, head_dim]`
/// tensors (each frequency's column twice, for the two halves), the causal mask.
struct Setup<'a> {
    config: &'a ModelConfig,
    dtype: DType,
    windows: usize,
    ctx: usize,
    /// The runtime's tables, for its fast forward pass.
    rope: RopeTables,
    cos: Tensor,
    sin: Tensor,
    /// `[ctx, ctx]`: 0 where key ≤ query, −∞ above the diagonal.
    mask: Tensor,
}

impl<'a> Setup<'a> {
    fn new(config: &'a ModelConfig, ids: &[u32], windows: usize, ctx: usize, precision: Precision) -> tenpak_error::Result<Setup<'a>> {
        config.validate()?;
        ensure!(ctx >= 2, "ctx must be at least 2 tokens (a window's loss scores ctx − 1 predictions), got {ctx}");
        ensure!(windows >= 1, "at least one window is needed for a gradient");
        ensure!(
            ids.len() >= windows * ctx,
            "{} token ids hold fewer than {windows} windows of {ctx} tokens",
            ids.len()
        );
        ensure!(
            ctx <= config.max_position_embeddings,
            "ctx {ctx} exceeds the model's max_position_embeddings {}",
            config.max_position_embeddings
        );
        let dtype = precision.dtype();
        let tables = RopeTables::new(config, ctx)?;
        let full = |half_table: &[f32]| -> tenpak_error::Result<Tensor> {
            let half = Tensor::from_slice(half_table, (ctx, tables.half), &Device::Cpu)?;
            Ok(Tensor::cat(&[&half, &half], 1)?.to_dtype(dtype)?)
        };
        let mask: Vec<f32> = (0..ctx * ctx).map(|i| if i % ctx > i / ctx { f32::NEG_INFINITY } else { 0.0 }).collect();
        Ok(Setup {
            config,
            dtype,
            windows,
            ctx,
            cos: full(&tables.cos)?,
            sin: full(&tables.sin)?,
            mask: Tensor::from_vec(mask, (ctx, ctx), &Device::Cpu)?.to_dtype(dtype)?,
            rope: tables,
        })
    }

    /// Each window's embedded tokens, `[ctx, hidden]` in the pass's precision.
    fn embed(&self, weights: &(impl WeightLoader + ?Sized), ids: &[u32]) -> tenpak_error::Result<Vec<Tensor>> {
        let (vocab, hidden) = (self.config.vocab_size, self.config.hidden_size);
        let embed_tokens = load_tensor(weights, "model.embed_tokens.weight", &[vocab, hidden])?;
        (0..self.windows)
            .map(|w| {
                let rows = llama::embed(&embed_tokens, &ids[w * self.ctx..(w + 1) * self.ctx], 1).with_context(|| format!("window {w}"))?;
                Ok(rows.reshape((self.ctx, hidden))?.to_dtype(self.dtype)?)
            })
            .collect()
    }

    /// The tokens window `window` predicts: its ids but the first.
    fn targets<'i>(&self, ids: &'i [u32], window: usize) -> &'i [u32] {
        &ids[window * self.ctx + 1..(window + 1) * self.ctx]
    }
}

/// RMSNorm over the last dimension: `x / √(mean x² + ε) · w`.
fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let width = x.dim(D::Minus1)?;
    let mean_sq = x.sqr()?.sum_keepdim(D::Minus1)?.affine(1.0 / width as f64, eps)?;
    x.broadcast_mul(&mean_sq.sqrt()?.recip()?)?.broadcast_mul(weight)
}

/// `x Wᵀ (+ b)` for rows `x` `[n, in]` and a weight `[out, in]`.
fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let out = x.matmul(&weight.t()?)?;
    match bias {
        Some(bias) => out.broadcast_add(bias),
        None => Ok(out),
    }
}

/// Projection rows `[seq, heads·head_dim]` as `[heads, seq, head_dim]`.
fn to_heads(rows: &Tensor, heads: usize, head_dim: usize) -> candle_core::Result<Tensor> {
    let seq = rows.dim(0)?;
    rows.reshape((seq, heads, head_dim))?.transpose(0, 1)?.contiguous()
}

/// RoPE on `[heads, seq, head_dim]`, Hugging Face's `x·cos + rotate_half(x)·sin` with
/// `rotate_half(x) = (−x₂, x₁)` for the halves `x₁`, `x₂` (the runtime's kernel, written out).
fn rope(x: &Tensor, setup: &Setup<'_>) -> candle_core::Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let rotated = Tensor::cat(&[&x.narrow(D::Minus1, half, half)?.neg()?, &x.narrow(D::Minus1, 0, half)?], D::Minus1)?;
    x.broadcast_mul(&setup.cos)? + rotated.broadcast_mul(&setup.sin)?
}

/// Key/value heads `[kv, seq, d]` repeated to `[kv·group, seq, d]`: head `h` is kv head
/// `h / group` (transformers' `repeat_kv`).
fn repeat_kv(x: &Tensor, group: usize) -> candle_core::Result<Tensor> {
    if group == 1 {
        return Ok(x.clone());
    }
    let (kv, seq, d) = x.dims3()?;
    x.unsqueeze(1)?.broadcast_as((kv, group, seq, d))?.reshape((kv * group, seq, d))
}

/// Softmax over the last dimension, shifted by the row maximum so that `exp` stays in range
/// (detached: softmax does not depend on the shift, so no gradient need flow through it).
fn softmax_last(x: &Tensor) -> candle_core::Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let exp = x.broadcast_sub(&max)?.exp()?;
    exp.broadcast_div(&exp.sum_keepdim(D::Minus1)?)
}

/// One block in the pass's precision: the seven linear weights in execution order (q, k, v, o,
/// gate, up, down), the two norms, the q/k/v biases (constants: no gradient is wanted for them).
struct GradBlock {
    index: usize,
    /// The runtime's block (f32, fast kernels, no backward), for the forward phase.
    runtime: Block,
    names: [String; 7],
    weights: [Tensor; 7],
    biases: [Option<Tensor>; 3],
    input_norm: Tensor,
    post_attention_norm: Tensor,
}

impl GradBlock {
    /// Load block `index` through the runtime's [`Block::load`] (same names, same shape checks).
    fn load(setup: &Setup<'_>, index: usize, weights: &(impl WeightLoader + ?Sized)) -> tenpak_error::Result<GradBlock> {
        let block = Block::load(setup.config, index, weights)?;
        let convert = |t: &Tensor| -> tenpak_error::Result<Tensor> { Ok(t.to_dtype(setup.dtype)?) };
        let linears = block.linears();
        let weights: Vec<Tensor> = linears.iter().map(|l| convert(l.weight())).collect::<tenpak_error::Result<_>>()?;
        let biases: Vec<Option<Tensor>> =
            linears[..3].iter().map(|l| l.bias().map(convert).transpose()).collect::<tenpak_error::Result<_>>()?;
        Ok(GradBlock {
            index,
            names: linears.map(|l| l.name().to_owned()),
            weights: weights.try_into().expect("a block has seven linear layers"),
            biases: biases.try_into().expect("q, k and v"),
            input_norm: convert(block.input_norm())?,
            post_attention_norm: convert(block.post_attention_norm())?,
            runtime: block,
        })
    }

    /// The block's output on each window's hidden states `[ctx, hidden]`, where no gradient is
    /// wanted: in f32 the runtime's kernels compute it (several times faster than candle's
    /// element-wise operations, and only the causal half of the attention scores), windows in
    /// parallel as everywhere in the runtime; in f64 the differentiable forward.
    fn forward_fast(&self, hidden: &[Tensor], setup: &Setup<'_>) -> tenpak_error::Result<Vec<Tensor>> {
        if setup.dtype != DType::F32 {
            return hidden.iter().map(|h| self.forward(h, &self.weights, setup)).collect();
        }
        let batched = hidden.iter().map(|h| Ok(h.unsqueeze(0)?)).collect::<tenpak_error::Result<Vec<_>>>()?;
        let outputs = crate::runtime::llama::forward_windows(&self.runtime, &batched, &setup.rope)?;
        outputs.into_iter().map(|o| Ok(o.squeeze(0)?)).collect()
    }

    /// The block on one window's hidden states `[ctx, hidden]`, with `weights` standing for the
    /// seven linear weights (the block's own, or variables sharing their storage).
    fn forward(&self, hidden: &Tensor, weights: &[Tensor; 7], setup: &Setup<'_>) -> tenpak_error::Result<Tensor> {
        let output = self.attention_inputs(hidden, weights, setup).and_then(|(q, k, v)| {
            let attended = attention_probs(&q, &k, setup)?.matmul(&v)?;
            self.after_attention(hidden, &attended, weights, setup)
        });
        output.with_context(|| format!("differentiable forward of block {}", self.index))
    }

    /// The block up to the attention: queries (RoPE, 1/√d scale), keys (RoPE) and values, each
    /// `[heads, ctx, head_dim]`, keys and values repeated over each group of query heads.
    fn attention_inputs(&self, hidden: &Tensor, weights: &[Tensor; 7], setup: &Setup<'_>) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let config = setup.config;
        let (heads, kv_heads, head_dim) = (config.num_attention_heads, config.num_key_value_heads, config.head_dim);
        let [q_proj, k_proj, v_proj, ..] = weights;
        let [q_bias, k_bias, v_bias] = &self.biases;
        let normed = rms_norm(hidden, &self.input_norm, config.rms_norm_eps)?;
        // Queries carry the 1/√d scale (as in the runtime): a pass over `ctx·hidden` values, not
        // over the `heads·ctx²` scores.
        let q = rope(&to_heads(&linear(&normed, q_proj, q_bias.as_ref())?, heads, head_dim)?, setup)?;
        let q = q.affine(1.0 / (head_dim as f64).sqrt(), 0.0)?;
        let k = rope(&to_heads(&linear(&normed, k_proj, k_bias.as_ref())?, kv_heads, head_dim)?, setup)?;
        let v = to_heads(&linear(&normed, v_proj, v_bias.as_ref())?, kv_heads, head_dim)?;
        let group = heads / kv_heads;
        Ok((q, repeat_kv(&k, group)?, repeat_kv(&v, group)?))
    }

    /// The block after the attention, from the attended values `[heads, ctx, head_dim]`:
    /// `o_proj`, the residual, the MLP and its residual.
    fn after_attention(&self, hidden: &Tensor, attended: &Tensor, weights: &[Tensor; 7], setup: &Setup<'_>) -> candle_core::Result<Tensor> {
        let [.., o_proj, gate_proj, up_proj, down_proj] = weights;
        let width = setup.config.num_attention_heads * setup.config.head_dim;
        let attended = attended.transpose(0, 1)?.reshape((setup.ctx, width))?;
        let hidden = (hidden + linear(&attended, o_proj, None)?)?;
        let normed = rms_norm(&hidden, &self.post_attention_norm, setup.config.rms_norm_eps)?;
        let activated = (linear(&normed, gate_proj, None)?.silu()? * linear(&normed, up_proj, None)?)?;
        hidden + linear(&activated, down_proj, None)?
    }

    /// Back-propagate `upstream` (d loss / d output, `[ctx, hidden]`) through the block on
    /// `input`: hand the seven weight gradients to `visit` and return d loss / d input.
    ///
    /// Autograd covers the block but the attention core, `softmax(q·kᵀ + mask)·v`, whose backward
    /// is written out (as in the FlashAttention paper, Dao et al. 2022, section 3.1 and
    /// appendix B.2): `dP = dO·vᵀ`, `dS = P ⊙ (dP − Σⱼ dP ⊙ P)`, `dq = dS·k`, `dk = dSᵀ·q`,
    /// `dv = Pᵀ·dO`. That is three element-wise passes over the `heads·ctx²` scores, where
    /// candle's autograd through the mask, max, exp, sum and division makes about twenty-five
    /// (it differentiates the constant mask and the detached maximum too), and those passes
    /// dominated the time.
    fn backward(
        &self,
        input: &Tensor,
        upstream: &Tensor,
        setup: &Setup<'_>,
        window: usize,
        visit: &mut GradientVisitor<'_>,
    ) -> tenpak_error::Result<Tensor> {
        let context = || format!("backward through block {}, window {window}", self.index);
        let input = Var::from_tensor(input).with_context(context)?;
        let vars = self.weights.each_ref().map(Var::from_tensor);
        let vars = vars.into_iter().collect::<candle_core::Result<Vec<Var>>>().with_context(context)?;
        let weights: [Tensor; 7] = std::array::from_fn(|i| vars[i].as_tensor().clone());
        // The gradient of ⟨f(x), g⟩ with respect to x is the vector-Jacobian product gᵀ·∂f/∂x,
        // so each autograd piece starts from such a product with its upstream gradient.
        let (before, after) = (|| {
            let (q, k, v) = self.attention_inputs(input.as_tensor(), &weights, setup)?;
            let (q0, k0, v0) = (q.detach(), k.detach(), v.detach());
            let probs = attention_probs(&q0, &k0, setup)?;
            let attended = Var::from_tensor(&probs.matmul(&v0)?)?;
            let output = self.after_attention(input.as_tensor(), attended.as_tensor(), &weights, setup)?;
            let after = (output * upstream)?.sum_all()?.backward()?;
            let Some(d_attended) = after.get(attended.as_tensor()) else {
                candle_core::bail!("no gradient reached the attention output");
            };
            let d_scores = softmax_backward(&probs, &d_attended.matmul(&v0.t()?)?)?;
            let (d_q, d_k, d_v) = (d_scores.matmul(&k0)?, d_scores.t()?.matmul(&q0)?, probs.t()?.matmul(d_attended)?);
            let products = [(q, d_q), (k, d_k), (v, d_v)].map(|(x, d)| (x * d).and_then(|p| p.sum_all()));
            let [pq, pk, pv] = products;
            let before = ((pq? + pk?)? + pv?)?.backward()?;
            candle_core::Result::Ok((before, after))
        })()
        .with_context(context)?;
        for (i, (name, var)) in self.names.iter().zip(&vars).enumerate() {
            // q, k and v come before the attention core; o and the MLP after it.
            let piece = if i < 3 { &before } else { &after };
            let gradient = piece.get(var.as_tensor()).with_context(|| format!("{name}: no gradient reached the weight"))?;
            let (rows, cols) = gradient.dims2()?;
            let values = gradient.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            visit(name, &values, rows, cols).with_context(|| format!("gradient of {name}, window {window}"))?;
        }
        // The input reaches the output through the attention and along the residual.
        match (before.get(input.as_tensor()), after.get(input.as_tensor())) {
            (Some(through_attention), Some(along_residual)) => Ok((through_attention + along_residual)?),
            _ => tenpak_error::bail!("block {}, window {window}: no gradient reached the input", self.index),
        }
    }
}

/// The causal attention probabilities `softmax(q·kᵀ + mask)` `[heads, ctx, ctx]` for queries
/// and keys `[heads, ctx, head_dim]` (queries already scaled).
fn attention_probs(q: &Tensor, k: &Tensor, setup: &Setup<'_>) -> candle_core::Result<Tensor> {
    softmax_last(&q.matmul(&k.t()?)?.broadcast_add(&setup.mask)?)
}

/// The softmax's vector-Jacobian product: for `probs = softmax(s)` over the last dimension and
/// `d_probs = dL/d probs`, `dL/ds = probs ⊙ (d_probs − Σ_last d_probs ⊙ probs)`.
fn softmax_backward(probs: &Tensor, d_probs: &Tensor) -> candle_core::Result<Tensor> {
    let weighted = (d_probs * probs)?;
    let row_sums = weighted.sum_keepdim(D::Minus1)?;
    weighted - probs.broadcast_mul(&row_sums)?
}

/// The final RMSNorm and `lm_head` (tied to the embedding when the configuration says so or the
/// source has no `lm_head.weight`, as [`Head::load`] decides), in the pass's precision.
struct GradHead {
    norm: Tensor,
    lm_head: Tensor,
    eps: f64,
}

impl GradHead {
    fn load(setup: &Setup<'_>, weights: &(impl WeightLoader + ?Sized)) -> tenpak_error::Result<GradHead> {
        let head = Head::load(setup.config, weights, None)?;
        Ok(GradHead {
            norm: head.norm().to_dtype(setup.dtype)?,
            lm_head: head.lm_head().weight().to_dtype(setup.dtype)?,
            eps: setup.config.rms_norm_eps,
        })
    }

    /// The mean NLL of `targets` predicted from the first `targets.len()` rows of `last`
    /// (`[ctx, hidden]`, the hidden states after the last block).
    fn loss(&self, last: &Tensor, targets: &[u32]) -> tenpak_error::Result<f64> {
        let mut sum = 0.0;
        for first in (0..targets.len()).step_by(HEAD_ROWS) {
            let n = HEAD_ROWS.min(targets.len() - first);
            let normed = rms_norm(&last.narrow(0, first, n)?, &self.norm, self.eps)?;
            sum += self.nll(&normed, &targets[first..first + n], false)?.0;
        }
        finite_mean(sum, targets.len())
    }

    /// The mean NLL as [`GradHead::loss`] and its gradient with respect to `last` (the last row,
    /// which predicts nothing, gets zeros).
    ///
    /// The logits' gradient is written in closed form, `(softmax − onehot) / n`, and carried to
    /// the normed rows by one product with `lm_head`; autograd takes it through the RMSNorm.
    /// Autograd through the logits would also differentiate the constant `lm_head` (candle's
    /// matrix-product backward computes both operands' gradients): a `vocab × hidden` product per
    /// block of rows for nothing.
    fn loss_and_gradient(&self, last: &Tensor, targets: &[u32]) -> tenpak_error::Result<(f64, Tensor)> {
        let scored = targets.len();
        let mut sum = 0.0;
        let mut gradients = Vec::with_capacity(scored.div_ceil(HEAD_ROWS) + 1);
        for first in (0..scored).step_by(HEAD_ROWS) {
            let n = HEAD_ROWS.min(scored - first);
            let rows = Var::from_tensor(&last.narrow(0, first, n)?)?;
            let normed = rms_norm(rows.as_tensor(), &self.norm, self.eps)?;
            let (nll, d_logits) = self.nll(&normed.detach(), &targets[first..first + n], true)?;
            let d_logits = d_logits.context("nll was asked for the gradient")?;
            sum += nll;
            let d_normed = d_logits.affine(1.0 / scored as f64, 0.0)?.matmul(&self.lm_head)?;
            let grads = (normed * d_normed)?.sum_all()?.backward()?;
            gradients.push(grads.get(rows.as_tensor()).context("no gradient reached the head's input")?.clone());
        }
        gradients.push(last.narrow(0, scored, last.dim(0)? - scored)?.zeros_like()?);
        Ok((finite_mean(sum, scored)?, Tensor::cat(&gradients, 0)?))
    }

    /// The summed NLL of `targets` given normed rows `[n, hidden]`, and, when `gradient`,
    /// d(summed NLL)/d logits `= softmax(logits) − onehot(targets)`.
    fn nll(&self, normed: &Tensor, targets: &[u32], gradient: bool) -> tenpak_error::Result<(f64, Option<Tensor>)> {
        let n = targets.len();
        let logits = normed.matmul(&self.lm_head.t()?)?;
        let max = logits.max_keepdim(1)?;
        let exp = logits.broadcast_sub(&max)?.exp()?;
        let sum = exp.sum_keepdim(1)?;
        let index = Tensor::from_slice(targets, (n, 1), &Device::Cpu)?;
        let nll = ((max + sum.log()?)? - logits.gather(&index, 1)?)?;
        let total = nll.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
        if !gradient {
            return Ok((total, None));
        }
        let minus_one = Tensor::full(-1.0f32, (n, 1), &Device::Cpu)?.to_dtype(logits.dtype())?;
        let d_logits = exp.broadcast_div(&sum)?.scatter_add(&index, &minus_one, 1)?;
        Ok((total, Some(d_logits)))
    }
}

/// `sum / count`, refusing a non-finite loss (a NaN gradient would poison every statistic).
fn finite_mean(sum: f64, count: usize) -> tenpak_error::Result<f64> {
    let mean = sum / count as f64;
    ensure!(mean.is_finite(), "the loss is not finite ({mean}): the model's activations overflowed or a weight is NaN");
    Ok(mean)
}
