//! The Llama-family decoder (Llama, Mistral, Qwen2, SmolLM): token embedding, blocks of
//! RMSNorm → grouped-query attention with RoPE → residual → RMSNorm → SwiGLU MLP → residual,
//! then a final RMSNorm and the `lm_head` (tied to the embedding or not).
//!
//! The pieces are separate values ([`Block`], [`Head`], the embedding) that load on their own,
//! because the compression pipeline runs the model one block at a time with bounded memory:
//! it loads a block, runs it on the current hidden states with a [`LinearHook`] listening,
//! swaps in decoded weights ([`Linear::set_weight`]) and runs it again.
//!
//! Layouts: hidden states are `[batch, seq, hidden]` f32 on the CPU; every sequence in a batch
//! starts at position 0 (independent windows, as the perplexity protocol wants).

use tenpak_error::{Context, bail, ensure};
use candle_core::{Device, Tensor};
use rayon::prelude::*;

use super::blas::{self, Kernel};
use super::kernels::{self, CausalBlock, HeadLayout, NllState};
use super::ops;
use super::rope::RopeTables;
use super::{LinearHook, WeightLoader};
use crate::ModelConfig;

/// Vocabulary entries whose logits are computed at once when only the per-token NLL is wanted:
/// a 511 × 2048 block (4 MiB) stays in cache while its log-sum-exp is folded in, where the whole
/// 511 × 49,152 logits matrix (100 MiB) would stream through memory twice. The matrix product
/// also runs faster at this width (measured: 77 vs 62 GFLOP/s on one core).
const VOCAB_BLOCK: usize = 2048;

/// Query positions per attention block. Scores of a block only cover the keys up to its last
/// position, so at 512 positions blocks of 128 compute 1280 of 2048 key columns (causal attention
/// needs 1024), instead of all 2048.
const ATTENTION_BLOCK: usize = 128;

/// Load tensor `name` of `shape` through `weights` as a CPU f32 tensor, checking the shape the
/// source declares (when it declares one) and the number of values it returns.
pub fn load_tensor(weights: &(impl WeightLoader + ?Sized), name: &str, shape: &[usize]) -> tenpak_error::Result<Tensor> {
    let expected: usize = shape.iter().product();
    match weights.tensor_shape(name) {
        None => bail!("the model has no tensor {name} (expected shape {shape:?})"),
        Some(found) if found != shape => {
            bail!("tensor {name} has shape {found:?}; the configuration implies {shape:?}")
        }
        Some(_) => {}
    }
    let values = weights.tensor_f32(name)?;
    ensure!(
        values.len() == expected,
        "tensor {name}: the loader returned {} values, expected {expected} for shape {shape:?}",
        values.len()
    );
    Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
}

/// One linear layer `y = x Wᵀ (+ b)`, weight `[out_features, in_features]` as stored.
#[derive(Clone, Debug)]
pub struct Linear {
    name: String,
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// Load `<prefix>.weight` (and `<prefix>.bias` when `bias`) of `[out_features, in_features]`.
    pub fn load(
        weights: &(impl WeightLoader + ?Sized),
        prefix: &str,
        out_features: usize,
        in_features: usize,
        bias: bool,
    ) -> tenpak_error::Result<Linear> {
        let name = format!("{prefix}.weight");
        let weight = load_tensor(weights, &name, &[out_features, in_features])?;
        let bias = if bias { Some(load_tensor(weights, &format!("{prefix}.bias"), &[out_features])?) } else { None };
        Ok(Linear { name, weight, bias })
    }

    /// A linear layer from a weight tensor `[out_features, in_features]` (and optional bias).
    pub fn from_tensor(name: impl Into<String>, weight: Tensor, bias: Option<Tensor>) -> tenpak_error::Result<Linear> {
        let name = name.into();
        let (out_features, _) = weight.dims2().with_context(|| format!("{name}: a linear weight must be 2-D"))?;
        if let Some(bias) = &bias {
            ensure!(bias.dims() == [out_features], "{name}: bias shape {:?}, expected [{out_features}]", bias.dims());
        }
        Ok(Linear { name, weight, bias })
    }

    /// The weight's tensor name (`model.layers.3.mlp.up_proj.weight`); hooks receive this name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The weight, `[out_features, in_features]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, if the layer has one.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Output width.
    pub fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Input width.
    pub fn in_features(&self) -> usize {
        self.weight.dims()[1]
    }

    /// Replace the weight with `values` (row-major, same shape): how decoded weights take the
    /// place of the originals.
    pub fn set_weight(&mut self, values: Vec<f32>) -> tenpak_error::Result<()> {
        let (out_features, in_features) = (self.out_features(), self.in_features());
        ensure!(
            values.len() == out_features * in_features,
            "{}: new weight has {} values, expected {out_features}×{in_features}",
            self.name,
            values.len()
        );
        self.weight = Tensor::from_vec(values, (out_features, in_features), &Device::Cpu)?;
        Ok(())
    }

    /// Show `input` to the hook, if any, as this layer's input.
    fn show(&self, input: &Tensor, hook: Option<&mut (dyn LinearHook + '_)>) -> tenpak_error::Result<()> {
        if let Some(hook) = hook {
            hook.observe(&self.name, input).with_context(|| format!("hook at {}", self.name))?;
        }
        Ok(())
    }

    /// `input` is `[rows, in_features]`; the hook, if any, sees it first.
    pub fn forward(&self, input: &Tensor, hook: Option<&mut (dyn LinearHook + '_)>) -> tenpak_error::Result<Tensor> {
        self.show(input, hook)?;
        let output = ops::linear(input, &self.weight)?;
        Ok(match &self.bias {
            Some(bias) => ops::add_bias(&output, bias)?,
            None => output,
        })
    }
}

/// The sizes a block needs from the configuration.
#[derive(Clone, Copy, Debug)]
struct Dims {
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    eps: f64,
}

impl Dims {
    fn of(config: &ModelConfig) -> Dims {
        Dims {
            hidden: config.hidden_size,
            heads: config.num_attention_heads,
            kv_heads: config.num_key_value_heads,
            head_dim: config.head_dim,
            eps: config.rms_norm_eps,
        }
    }
}

/// One transformer block.
#[derive(Clone, Debug)]
pub struct Block {
    index: usize,
    dims: Dims,
    input_norm: Tensor,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    post_attention_norm: Tensor,
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Block {
    /// Load block `index` (`model.layers.<index>.*`).
    pub fn load(config: &ModelConfig, index: usize, weights: &(impl WeightLoader + ?Sized)) -> tenpak_error::Result<Block> {
        config.validate()?;
        ensure!(
            index < config.num_hidden_layers,
            "block {index} does not exist (the model has {})",
            config.num_hidden_layers
        );
        let dims = Dims::of(config);
        let prefix = format!("model.layers.{index}");
        let (q_width, kv_width) = (dims.heads * dims.head_dim, dims.kv_heads * dims.head_dim);
        let bias = config.attention_bias;
        let attn = |name: &str, out: usize, input: usize, bias: bool| {
            Linear::load(weights, &format!("{prefix}.self_attn.{name}"), out, input, bias)
        };
        let mlp = |name: &str, out: usize, input: usize| Linear::load(weights, &format!("{prefix}.mlp.{name}"), out, input, false);
        Ok(Block {
            index,
            dims,
            input_norm: load_tensor(weights, &format!("{prefix}.input_layernorm.weight"), &[dims.hidden])?,
            q_proj: attn("q_proj", q_width, dims.hidden, bias)?,
            k_proj: attn("k_proj", kv_width, dims.hidden, bias)?,
            v_proj: attn("v_proj", kv_width, dims.hidden, bias)?,
            o_proj: attn("o_proj", dims.hidden, q_width, false)?,
            post_attention_norm: load_tensor(weights, &format!("{prefix}.post_attention_layernorm.weight"), &[dims.hidden])?,
            gate_proj: mlp("gate_proj", config.intermediate_size, dims.hidden)?,
            up_proj: mlp("up_proj", config.intermediate_size, dims.hidden)?,
            down_proj: mlp("down_proj", dims.hidden, config.intermediate_size)?,
        })
    }

    /// The block's position in the model.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The RMSNorm weight before attention (`input_layernorm`), `[hidden]`.
    pub fn input_norm(&self) -> &Tensor {
        &self.input_norm
    }

    /// The RMSNorm weight before the MLP (`post_attention_layernorm`), `[hidden]`.
    pub fn post_attention_norm(&self) -> &Tensor {
        &self.post_attention_norm
    }

    /// The seven linear layers, in execution order: q, k, v, o, gate, up, down.
    pub fn linears(&self) -> [&Linear; 7] {
        [&self.q_proj, &self.k_proj, &self.v_proj, &self.o_proj, &self.gate_proj, &self.up_proj, &self.down_proj]
    }

    /// The linear layer whose weight is called `weight_name`, for replacing its weight.
    pub fn linear_mut(&mut self, weight_name: &str) -> Option<&mut Linear> {
        [
            &mut self.q_proj,
            &mut self.k_proj,
            &mut self.v_proj,
            &mut self.o_proj,
            &mut self.gate_proj,
            &mut self.up_proj,
            &mut self.down_proj,
        ]
        .into_iter()
        .find(|linear| linear.name == weight_name)
    }

    /// Run the block on `hidden` (`[batch, seq, hidden]`); `rope` must cover `seq` positions.
    /// The hook sees each linear layer's input as `[batch·seq, in_features]`.
    pub fn forward(&self, hidden: &Tensor, rope: &RopeTables, hook: Option<&mut (dyn LinearHook + '_)>) -> tenpak_error::Result<Tensor> {
        Ok(self.run(hidden, rope, hook, true, None)?.expect("the output was asked for"))
    }

    /// Run the block on `hidden` (`[1, new, hidden]`): the positions after the `cache.len()`
    /// already in `cache`, whose keys and values it attends to and to which it appends the new
    /// ones (decoding). `rope` must cover positions up to `cache.len() + new`. The same
    /// operations as [`Block::forward`] on the whole sequence, row for row.
    pub fn forward_cached(&self, hidden: &Tensor, rope: &RopeTables, cache: &mut LayerCache) -> tenpak_error::Result<Tensor> {
        Ok(self.run(hidden, rope, None, true, Some(cache))?.expect("the output was asked for"))
    }

    /// Show `hook` every linear layer's input, as [`Block::forward`] would, without computing the
    /// block's output: the last product (`down_proj`, a quarter of the block's work) is skipped.
    pub fn observe(&self, hidden: &Tensor, rope: &RopeTables, hook: &mut (dyn LinearHook + '_)) -> tenpak_error::Result<()> {
        self.run(hidden, rope, Some(hook), false, None)?;
        Ok(())
    }

    /// The block on `hidden`; its output only when `output` is asked for (after the hook has
    /// seen `down_proj`'s input either way).
    fn run(
        &self,
        hidden: &Tensor,
        rope: &RopeTables,
        mut hook: Option<&mut (dyn LinearHook + '_)>,
        output: bool,
        cache: Option<&mut LayerCache>,
    ) -> tenpak_error::Result<Option<Tensor>> {
        let Dims { hidden: width, heads, kv_heads, head_dim, eps } = self.dims;
        let (batch, seq, found_width) = hidden.dims3().context("block input must be [batch, seq, hidden]")?;
        ensure!(found_width == width, "block {}: hidden width {found_width}, expected {width}", self.index);
        ensure!(seq > 0, "block {}: empty sequence", self.index);
        let group = heads / kv_heads;
        let residual = hidden.reshape((batch * seq, width))?;

        // Attention. Queries carry the 1/√d scale from RoPE on, so scores need no extra pass.
        let normed = ops::rms_norm(&residual, &self.input_norm, eps)?;
        let q = self.q_proj.forward(&normed, hook.as_deref_mut())?;
        let k = self.k_proj.forward(&normed, hook.as_deref_mut())?;
        let v = self.v_proj.forward(&normed, hook.as_deref_mut())?;
        let scale = 1.0 / (head_dim as f32).sqrt();
        // Grouped-query attention without repeating k/v: query head h uses kv head h / group
        // (transformers' `repeat_kv`), so per kv head the queries form one matrix whose rows are
        // (position, head of the group), and a block of positions is a contiguous run of rows.
        let start = cache.as_ref().map_or(0, |c| c.len());
        let window;
        let rope = if start == 0 {
            rope
        } else {
            window = rope.positions(start, seq)?;
            &window
        };
        let q = ops::rope_to_heads(&q, HeadLayout { batch, seq, heads, head_dim, group }, rope, scale)?;
        let k = ops::rope_to_heads(&k, HeadLayout { batch, seq, heads: kv_heads, head_dim, group: 1 }, rope, 1.0)?;
        let v = v.reshape((batch, seq, kv_heads, head_dim))?.transpose(1, 2)?.contiguous()?;
        let attended = match (blas::kernel()?, cache) {
            (_, Some(cache)) => {
                ensure!(batch == 1, "block {}: a key/value cache holds one sequence, got {batch}", self.index);
                let (k, v) = cache.append(k, v)?;
                attention_cached(&q, &k, &v, start, (seq, kv_heads, group, head_dim))?
            }
            (Kernel::OpenBlas(blas), None) => {
                let shape = ops::AttentionShape { batch, seq, kv_heads, group, head_dim, block: ATTENTION_BLOCK };
                ops::attention(blas, &q, &k, &v, shape)?
            }
            (Kernel::Candle, None) => attention_candle(&q, &k, &v, (batch, seq, kv_heads, group, head_dim))?,
        };
        let residual = ops::add(&residual, &self.o_proj.forward(&attended, hook.as_deref_mut())?)?;

        // SwiGLU MLP.
        let normed = ops::rms_norm(&residual, &self.post_attention_norm, eps)?;
        let gate = self.gate_proj.forward(&normed, hook.as_deref_mut())?;
        let up = self.up_proj.forward(&normed, hook.as_deref_mut())?;
        let activated = ops::silu_mul(&gate, &up)?;
        if !output {
            self.down_proj.show(&activated, hook)?;
            return Ok(None);
        }
        let residual = ops::add(&residual, &self.down_proj.forward(&activated, hook.as_deref_mut())?)?;
        Ok(Some(residual.reshape((batch, seq, width))?))
    }
}

/// Run `block` over each of `hidden`'s tensors (independent windows or batches), several at once
/// on rayon's threads (OpenBLAS runs on one thread in each, as everywhere: [`blas`]): a window
/// per core keeps both cores busy through the element-wise kernels too, where one window at a
/// time leaves them waking each other between every step. The outputs are the same bit for bit
/// as one at a time (every kernel's result is independent of its thread count), in order.
pub fn forward_windows(block: &Block, hidden: &[Tensor], rope: &RopeTables) -> tenpak_error::Result<Vec<Tensor>> {
    per_window(hidden, |h| block.forward(h, rope, None))
}

/// `f` on each item, several at once on rayon's threads with OpenBLAS single-threaded in each
/// (one at a time for one item or one thread); the results in order.
pub fn per_window<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> tenpak_error::Result<R> + Sync) -> tenpak_error::Result<Vec<R>> {
    if items.len() < 2 || rayon::current_num_threads() < 2 {
        return items.iter().map(f).collect();
    }
    blas::single_threaded(|| items.par_iter().map(&f).collect())
}

/// Run `block` over each of `hidden`'s tensors for what its linear layers see: as many windows at
/// once as rayon has threads (as in [`forward_windows`]), each window's linear inputs recorded,
/// then handed to `observe` window by window in order, layers in execution order, while the next
/// windows run. So `observe` sees exactly the sequence a one-at-a-time loop with a [`LinearHook`]
/// would, whatever the thread count, and needs no locking. The block's outputs are not computed ([`Block::observe`]).
pub fn observe_windows(
    block: &Block,
    hidden: &[Tensor],
    rope: &RopeTables,
    observe: &mut (dyn FnMut(&str, &Tensor) -> tenpak_error::Result<()> + Send),
) -> tenpak_error::Result<()> {
    observed_windows(block, hidden, rope, observe, false).map(|_| ())
}

/// [`observe_windows`], and the block's outputs too, as [`forward_windows`] computes them: for a
/// caller that both calibrates on a block and moves on past it (the measuring pass, on the
/// original model).
pub fn forward_observed_windows(
    block: &Block,
    hidden: &[Tensor],
    rope: &RopeTables,
    observe: &mut (dyn FnMut(&str, &Tensor) -> tenpak_error::Result<()> + Send),
) -> tenpak_error::Result<Vec<Tensor>> {
    observed_windows(block, hidden, rope, observe, true)
}

/// One window through `block` with its linear inputs recorded, and its output when asked for.
type Observed = (Vec<(String, Tensor)>, Option<Tensor>);

fn observed_windows(
    block: &Block,
    hidden: &[Tensor],
    rope: &RopeTables,
    observe: &mut (dyn FnMut(&str, &Tensor) -> tenpak_error::Result<()> + Send),
    outputs: bool,
) -> tenpak_error::Result<Vec<Tensor>> {
    let record = |h: &Tensor| -> tenpak_error::Result<Observed> {
        let mut seen = Vec::with_capacity(7);
        let mut hook = |name: &str, input: &Tensor| -> tenpak_error::Result<()> {
            seen.push((name.to_string(), input.clone()));
            Ok(())
        };
        let output = if outputs { Some(block.forward(h, rope, Some(&mut hook))?) } else { block.observe(h, rope, &mut hook).map(|()| None)? };
        Ok((seen, output))
    };
    let mut out = Vec::with_capacity(if outputs { hidden.len() } else { 0 });
    let mut observe_all = |recorded: Vec<Observed>, observe: &mut (dyn FnMut(&str, &Tensor) -> tenpak_error::Result<()> + Send)| {
        for (seen, output) in recorded {
            for (name, input) in &seen {
                observe(name, input).with_context(|| format!("hook at {name}"))?;
            }
            out.extend(output);
        }
        Ok::<(), tenpak_error::Error>(())
    };
    // The next windows run through the block while `observe` takes the last ones' inputs, so the
    // statistics (single-threaded but for their matrix products) do not leave a core idle.
    let mut chunks = hidden.chunks(rayon::current_num_threads().max(1));
    let forward = |chunk: &[Tensor]| per_window(chunk, record);
    blas::single_threaded(|| {
        let Some(first) = chunks.next() else { return Ok(()) };
        let mut pending = forward(first)?;
        for chunk in chunks {
            let (next, observed) = rayon::join(|| forward(chunk), || observe_all(pending, &mut *observe));
            observed?;
            pending = next?;
        }
        observe_all(pending, observe)
    })?;
    Ok(out)
}

/// [`Head::token_nll`] of each of `hidden`'s tensors with its token ids, several at once as in
/// [`forward_windows`], in order.
pub fn token_nll_windows(head: &Head, hidden: &[Tensor], ids: &[&[u32]]) -> tenpak_error::Result<Vec<Vec<f32>>> {
    tenpak_error::ensure!(hidden.len() == ids.len(), "{} hidden states for {} token sequences", hidden.len(), ids.len());
    let windows: Vec<(&Tensor, &[u32])> = hidden.iter().zip(ids.iter().copied()).collect();
    per_window(&windows, |&(h, ids)| head.token_nll(h, ids, None))
}

/// Causal grouped-query attention in candle's products (the kernel used without OpenBLAS), the
/// same computation as [`ops::attention`]: queries `[batch, kv, seq·group, d]` (rows are
/// (position, head of the group)), keys and values `[batch, kv, seq, d]`; returns the rows
/// `[batch·seq, kv·group·d]` that `o_proj` reads.
fn attention_candle(q: &Tensor, k: &Tensor, v: &Tensor, (batch, seq, kv_heads, group, head_dim): (usize, usize, usize, usize, usize)) -> tenpak_error::Result<Tensor> {
    let mut blocks = Vec::with_capacity(seq.div_ceil(ATTENTION_BLOCK));
    for first in (0..seq).step_by(ATTENTION_BLOCK) {
        let end = (first + ATTENTION_BLOCK).min(seq);
        let queries = q.narrow(2, first * group, (end - first) * group)?;
        let scores = queries.matmul(&k.narrow(2, 0, end)?.t()?)?;
        let probs = ops::causal_softmax(&scores, CausalBlock { keys: end, group, first_position: first })?;
        let attended = probs.matmul(&v.narrow(2, 0, end)?)?;
        // [batch, kv, (position, head), d] → [batch, position, (kv, head, d)] = rows for o_proj.
        let attended = attended.reshape((batch, kv_heads, end - first, group * head_dim))?.transpose(1, 2)?;
        blocks.push(attended.contiguous()?);
    }
    Ok(Tensor::cat(&blocks, 1)?.reshape((batch * seq, kv_heads * group * head_dim))?)
}

/// Attention of `new` query positions starting at `start` over the keys and values of positions
/// `0..start + new` (a decoding step after a cache): queries `[1, kv, new·group, d]`, keys and
/// values `[1, kv, start + new, d]`; returns the rows `[new, kv·group·d]` that `o_proj` reads.
fn attention_cached(q: &Tensor, k: &Tensor, v: &Tensor, start: usize, (new, kv_heads, group, head_dim): (usize, usize, usize, usize)) -> tenpak_error::Result<Tensor> {
    let keys = start + new;
    ensure!(k.dims() == [1, kv_heads, keys, head_dim], "cached keys {:?}, expected [1, {kv_heads}, {keys}, {head_dim}]", k.dims());
    let scores = q.matmul(&k.t()?)?;
    let probs = ops::causal_softmax(&scores, CausalBlock { keys, group, first_position: start })?;
    let attended = probs.matmul(v)?;
    let attended = attended.reshape((1, kv_heads, new, group * head_dim))?.transpose(1, 2)?;
    Ok(attended.contiguous()?.reshape((new, kv_heads * group * head_dim))?)
}

/// One block's keys (after RoPE) and values of the positions decoded so far, `[1, kv, len, d]`.
#[derive(Clone, Debug, Default)]
pub struct LayerCache {
    keys: Option<Tensor>,
    values: Option<Tensor>,
}

impl LayerCache {
    /// Positions held.
    pub fn len(&self) -> usize {
        self.keys.as_ref().map_or(0, |k| k.dims()[2])
    }

    /// Whether no position is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Append new positions' keys and values; returns all of them.
    fn append(&mut self, k: Tensor, v: Tensor) -> tenpak_error::Result<(Tensor, Tensor)> {
        let (k, v) = match (self.keys.take(), self.values.take()) {
            (Some(old_k), Some(old_v)) => (Tensor::cat(&[&old_k, &k], 2)?, Tensor::cat(&[&old_v, &v], 2)?),
            _ => (k, v),
        };
        self.keys = Some(k.clone());
        self.values = Some(v.clone());
        Ok((k, v))
    }
}

/// The final RMSNorm and the output projection.
#[derive(Clone, Debug)]
pub struct Head {
    norm: Tensor,
    lm_head: Linear,
    eps: f64,
}

impl Head {
    /// Load `model.norm.weight` and `lm_head.weight`; with tied embeddings (the configuration
    /// says so, or the source has no `lm_head.weight`), `lm_head` is `embed_tokens` (pass it to
    /// avoid loading it twice).
    pub fn load(config: &ModelConfig, weights: &(impl WeightLoader + ?Sized), embed_tokens: Option<&Tensor>) -> tenpak_error::Result<Head> {
        let norm = load_tensor(weights, "model.norm.weight", &[config.hidden_size])?;
        let shape = [config.vocab_size, config.hidden_size];
        let tied = config.tie_word_embeddings || weights.tensor_shape("lm_head.weight").is_none();
        let weight = match (tied, embed_tokens) {
            (false, _) => load_tensor(weights, "lm_head.weight", &shape)?,
            (true, Some(embed)) => embed.clone(),
            (true, None) => load_tensor(weights, "model.embed_tokens.weight", &shape)?,
        };
        Ok(Head { norm, lm_head: Linear::from_tensor("lm_head.weight", weight, None)?, eps: config.rms_norm_eps })
    }

    /// `model.norm.weight` from `weights` and the given `lm_head` weight `[vocab, hidden]` (a
    /// decoded one), without loading the source's.
    pub fn with_lm_head(config: &ModelConfig, weights: &(impl WeightLoader + ?Sized), lm_head: Tensor) -> tenpak_error::Result<Head> {
        ensure!(
            lm_head.dims() == [config.vocab_size, config.hidden_size],
            "lm_head weight has shape {:?}, expected [{}, {}]",
            lm_head.dims(),
            config.vocab_size,
            config.hidden_size
        );
        let norm = load_tensor(weights, "model.norm.weight", &[config.hidden_size])?;
        Ok(Head { norm, lm_head: Linear::from_tensor("lm_head.weight", lm_head, None)?, eps: config.rms_norm_eps })
    }

    /// The final RMSNorm weight (`model.norm.weight`), `[hidden]`.
    pub fn norm(&self) -> &Tensor {
        &self.norm
    }

    /// The output projection. Its name is `lm_head.weight` even when tied to the embedding.
    pub fn lm_head(&self) -> &Linear {
        &self.lm_head
    }

    /// The output projection, for replacing its weight.
    pub fn lm_head_mut(&mut self) -> &mut Linear {
        &mut self.lm_head
    }

    /// Final-normed hidden states as rows `[batch·seq, hidden]`.
    pub fn normed_rows(&self, hidden: &Tensor) -> tenpak_error::Result<Tensor> {
        let width = self.norm.dims1()?;
        let rows = hidden.elem_count() / width.max(1);
        Ok(ops::rms_norm(&hidden.reshape((rows, width))?, &self.norm, self.eps)?)
    }

    /// Logits `[batch, seq, vocab]` for hidden states `[batch, seq, hidden]`.
    pub fn logits(&self, hidden: &Tensor, hook: Option<&mut (dyn LinearHook + '_)>) -> tenpak_error::Result<Tensor> {
        let (batch, seq, _) = hidden.dims3().context("head input must be [batch, seq, hidden]")?;
        let normed = self.normed_rows(hidden)?;
        let logits = self.lm_head.forward(&normed, hook)?;
        Ok(logits.reshape((batch, seq, self.lm_head.out_features()))?)
    }

    /// Negative log-likelihood of every token but the first of each sequence, from the hidden
    /// states `[batch, seq, hidden]` after the last block; `ids` are the `batch` sequences'
    /// tokens. See [`LlamaModel::token_nll`].
    pub fn token_nll(&self, hidden: &Tensor, ids: &[u32], hook: Option<&mut (dyn LinearHook + '_)>) -> tenpak_error::Result<Vec<f32>> {
        let (batch, seq, _) = hidden.dims3().context("head input must be [batch, seq, hidden]")?;
        ensure!(ids.len() == batch * seq, "{} token ids for {batch} sequences of {seq}", ids.len());
        let normed = self.normed_rows(hidden)?;
        let lm_head = &self.lm_head;
        if let Some(hook) = hook {
            hook.observe(lm_head.name(), &normed).with_context(|| format!("hook at {}", lm_head.name()))?;
        }
        let scored = seq.saturating_sub(1);
        let vocab = lm_head.out_features();
        let mut nll = Vec::with_capacity(batch * scored);
        for b in 0..batch {
            if scored == 0 {
                continue;
            }
            let rows = normed.narrow(0, b * seq, scored)?;
            let targets = &ids[b * seq + 1..(b + 1) * seq];
            let mut states = vec![NllState::default(); scored];
            for first in (0..vocab).step_by(VOCAB_BLOCK) {
                let width = VOCAB_BLOCK.min(vocab - first);
                let weight = lm_head.weight.narrow(0, first, width)?;
                let mut logits = ops::linear(&rows, &weight)?;
                if let Some(bias) = &lm_head.bias {
                    logits = ops::add_bias(&logits, &bias.narrow(0, first, width)?)?;
                }
                ops::with_f32_slice(&logits, |logits| kernels::nll_update(logits, width, first, targets, &mut states))?;
            }
            nll.extend(states.iter().map(NllState::nll));
        }
        Ok(nll)
    }
}

/// A whole Llama-family model in memory, f32 on the CPU.
#[derive(Clone, Debug)]
pub struct LlamaModel {
    config: ModelConfig,
    embed_tokens: Tensor,
    blocks: Vec<Block>,
    head: Head,
}

impl LlamaModel {
    /// Load every weight through `weights` (HF names): a [`crate::ModelSource`] works
    /// directly; an artifact reader implements [`WeightLoader`] by decoding through its codecs.
    pub fn load(config: &ModelConfig, weights: &(impl WeightLoader + ?Sized)) -> tenpak_error::Result<LlamaModel> {
        Self::load_with_progress(config, weights, &mut |_, _| {})
    }

    /// [`LlamaModel::load`], calling `progress(done, total)` after each block.
    pub fn load_with_progress(
        config: &ModelConfig,
        weights: &(impl WeightLoader + ?Sized),
        progress: &mut dyn FnMut(usize, usize),
    ) -> tenpak_error::Result<LlamaModel> {
        config.validate()?;
        let embed_tokens = load_tensor(weights, "model.embed_tokens.weight", &[config.vocab_size, config.hidden_size])?;
        let total = config.num_hidden_layers;
        let mut blocks = Vec::with_capacity(total);
        for index in 0..total {
            blocks.push(Block::load(config, index, weights)?);
            progress(index + 1, total);
        }
        let head = Head::load(config, weights, Some(&embed_tokens))?;
        Ok(LlamaModel { config: config.clone(), embed_tokens, blocks, head })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The token embedding `[vocab, hidden]`.
    pub fn embed_tokens(&self) -> &Tensor {
        &self.embed_tokens
    }

    /// The blocks, in order.
    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    /// The blocks, for replacing weights.
    pub fn blocks_mut(&mut self) -> &mut [Block] {
        &mut self.blocks
    }

    /// Final norm and output projection.
    pub fn head(&self) -> &Head {
        &self.head
    }

    /// Final norm and output projection, for replacing the `lm_head` weight.
    pub fn head_mut(&mut self) -> &mut Head {
        &mut self.head
    }

    /// RoPE tables for sequences of `seq` positions, checked against the trained context.
    pub fn rope(&self, seq: usize) -> tenpak_error::Result<RopeTables> {
        ensure!(
            seq <= self.config.max_position_embeddings,
            "sequence of {seq} positions exceeds the model's max_position_embeddings {}",
            self.config.max_position_embeddings
        );
        RopeTables::new(&self.config, seq)
    }

    /// Embed `ids` (`batch` sequences of equal length, concatenated) as `[batch, seq, hidden]`.
    pub fn embed(&self, ids: &[u32], batch: usize) -> tenpak_error::Result<Tensor> {
        embed(&self.embed_tokens, ids, batch)
    }

    /// Hidden states after the last block, `[batch, seq, hidden]`.
    pub fn forward_hidden(&self, ids: &[u32], batch: usize, mut hook: Option<&mut (dyn LinearHook + '_)>) -> tenpak_error::Result<Tensor> {
        let mut hidden = self.embed(ids, batch)?;
        let rope = self.rope(hidden.dims()[1])?;
        for block in &self.blocks {
            hidden = block.forward(&hidden, &rope, hook.as_deref_mut())?;
        }
        Ok(hidden)
    }

    /// Logits `[new, vocab]` of `ids`, the positions after those in `cache` (one per block;
    /// [`LlamaModel::new_cache`]), whose keys and values are appended to it: the prompt in one
    /// call, then one token at a time. `rope` must cover the positions up to the cache's length
    /// plus `ids.len()`.
    pub fn forward_cached(&self, ids: &[u32], rope: &RopeTables, cache: &mut [LayerCache]) -> tenpak_error::Result<Tensor> {
        ensure!(cache.len() == self.blocks.len(), "a cache of {} blocks for a model of {}", cache.len(), self.blocks.len());
        let mut hidden = self.embed(ids, 1)?;
        for (block, layer) in self.blocks.iter().zip(cache.iter_mut()) {
            hidden = block.forward_cached(&hidden, rope, layer)?;
        }
        let logits = self.head.logits(&hidden, None)?;
        Ok(logits.squeeze(0)?)
    }

    /// An empty key/value cache for [`LlamaModel::forward_cached`].
    pub fn new_cache(&self) -> Vec<LayerCache> {
        vec![LayerCache::default(); self.blocks.len()]
    }

    /// Logits `[batch, seq, vocab]` for `batch` sequences of equal length.
    pub fn forward_logits(&self, ids: &[u32], batch: usize, mut hook: Option<&mut (dyn LinearHook + '_)>) -> tenpak_error::Result<Tensor> {
        let hidden = self.forward_hidden(ids, batch, hook.as_deref_mut())?;
        self.head.logits(&hidden, hook)
    }

    /// Negative log-likelihood of every token but the first of each sequence given the tokens
    /// before it: `batch · (seq − 1)` values, sequence by sequence. The logits are computed
    /// [`VOCAB_BLOCK`] vocabulary entries at a time and folded into a running log-sum-exp, never
    /// held whole.
    pub fn token_nll(&self, ids: &[u32], batch: usize, mut hook: Option<&mut (dyn LinearHook + '_)>) -> tenpak_error::Result<Vec<f32>> {
        let hidden = self.forward_hidden(ids, batch, hook.as_deref_mut())?;
        self.head.token_nll(&hidden, ids, hook)
    }
}

/// Look up `ids` in `embed_tokens` (`[vocab, hidden]`) as `[batch, seq, hidden]`.
pub fn embed(embed_tokens: &Tensor, ids: &[u32], batch: usize) -> tenpak_error::Result<Tensor> {
    let (vocab, hidden) = embed_tokens.dims2()?;
    ensure!(batch > 0 && ids.len() % batch == 0, "{} token ids do not split into {batch} equal sequences", ids.len());
    if let Some((position, &id)) = ids.iter().enumerate().find(|&(_, &id)| id as usize >= vocab) {
        bail!("token id {id} at position {position} is outside the vocabulary of {vocab} tokens");
    }
    let index = Tensor::from_slice(ids, ids.len(), &Device::Cpu)?;
    let rows = embed_tokens.index_select(&index, 0)?;
    Ok(rows.reshape((batch, ids.len() / batch, hidden))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::blas::OpenBlas;

    fn random(shape: &[usize], seed: u64) -> Tensor {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let values: Vec<f32> = (0..shape.iter().product::<usize>())
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
            })
            .collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    /// The OpenBLAS attention and the candle one agree on shapes around the causal blocking:
    /// one position, a block and one, several blocks with a short last one, two sequences.
    #[test]
    fn openblas_attention_equals_candle_attention() {
        let blas = OpenBlas::open().expect("the tests need OpenBLAS (scripts/install-deps.sh installs libopenblas-dev)");
        for (case, &(batch, seq, kv_heads, group, d)) in
            [(1, 1, 1, 1, 8), (1, ATTENTION_BLOCK + 1, 3, 3, 64), (2, 300, 2, 2, 16), (1, 512, 3, 3, 64)].iter().enumerate()
        {
            let q = random(&[batch, kv_heads, seq * group, d], 3 * case as u64 + 1);
            let k = random(&[batch, kv_heads, seq, d], 3 * case as u64 + 2);
            let v = random(&[batch, kv_heads, seq, d], 3 * case as u64 + 3);
            let shape = ops::AttentionShape { batch, seq, kv_heads, group, head_dim: d, block: ATTENTION_BLOCK };
            let fast = ops::attention(&blas, &q, &k, &v, shape).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let slow = attention_candle(&q, &k, &v, (batch, seq, kv_heads, group, d)).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(fast.len(), slow.len());
            let worst = fast.iter().zip(&slow).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            // Scores of 64 products of magnitude ≤ 4 in f32, a softmax, then a convex mix of values ≤ 2.
            assert!(worst < 1e-4, "case {case}: largest difference {worst}");
        }
    }

    /// `ops::linear` through OpenBLAS equals candle's product on a non-contiguous input (a
    /// transposed view, made contiguous first), one row, and the model's 576 × 1536 shape.
    #[test]
    fn openblas_linear_equals_candle_on_views_and_edge_shapes() {
        let blas = OpenBlas::open().expect("the tests need OpenBLAS");
        let cases = [
            (random(&[576, 7], 1).t().unwrap(), random(&[1536, 576], 2)),
            (random(&[1, 576], 3), random(&[1536, 576], 4)),
            (random(&[33, 5], 5), random(&[3, 5], 6)),
        ];
        for (case, (x, w)) in cases.iter().enumerate() {
            let want = x.matmul(&w.t().unwrap()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let (rows, k) = x.dims2().unwrap();
            let xs = x.contiguous().unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let ws = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let n = w.dims()[0];
            let mut got = vec![f32::NAN; rows * n];
            blas.linear(&xs, rows, k, &ws, n, &mut got);
            let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            // Sums of up to 576 products of magnitude ≤ 4 in f32, by two summation orders.
            assert!(worst < 1e-3, "case {case}: largest difference {worst}");
            let through_ops = ops::linear(x, w).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let worst = through_ops.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(worst < 1e-3, "case {case} through ops::linear: largest difference {worst}");
        }
    }

    #[test]
    fn attention_rejects_mismatched_shapes() {
        let blas = OpenBlas::open().expect("the tests need OpenBLAS");
        let q = random(&[1, 2, 8, 4], 1);
        let k = random(&[1, 2, 4, 4], 2);
        let shape = ops::AttentionShape { batch: 1, seq: 4, kv_heads: 2, group: 2, head_dim: 4, block: 2 };
        assert!(ops::attention(&blas, &q, &k, &k, shape).is_ok());
        let error = ops::attention(&blas, &q, &random(&[1, 2, 5, 4], 3), &k, shape).unwrap_err().to_string();
        assert!(error.contains("keys"), "{error}");
    }
}
