//! The [`kernels`](super::kernels) as candle tensor operations (custom ops on CPU storage), so
//! the forward pass reads as tensor code; and the matrix products of the linear layers
//! ([`linear`]) and of attention ([`attention`]) in the kernel [`blas::kernel`] chose.
//!
//! The ops take contiguous f32 CPU tensors; they make the input contiguous first when it is not.
//! They are registered without a backward pass for now: the forward pass is what perplexity and
//! calibration need.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor};

use super::blas::{self, Kernel, OpenBlas, Operand};
use super::kernels::{self, CausalBlock, HeadLayout};
use super::rope::RopeTables;

/// The f32 slice a contiguous layout covers.
fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> candle_core::Result<&'a [f32]> {
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: input is not contiguous")))?;
    Ok(&storage.as_slice::<f32>()?[start..end])
}

/// Check a tensor is f32 and make it contiguous (a no-op when it already is).
fn prepared(tensor: &Tensor, op: &str) -> candle_core::Result<Tensor> {
    if tensor.dtype() != DType::F32 {
        candle_core::bail!("{op}: expected an f32 tensor, found {:?}", tensor.dtype());
    }
    tensor.contiguous()
}

struct RmsNorm {
    eps: f32,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "tenpak-rms-norm"
    }

    fn cpu_fwd(
        &self,
        input: &CpuStorage,
        input_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let input = contiguous_f32(input, input_layout, self.name())?;
        let weight = contiguous_f32(weight, weight_layout, self.name())?;
        let mut out = vec![0.0f32; input.len()];
        kernels::rms_norm(input, weight, self.eps, &mut out);
        Ok((CpuStorage::F32(out), input_layout.shape().clone()))
    }
}

/// RMSNorm over the last dimension of `input` with `weight` (`[width]`).
pub fn rms_norm(input: &Tensor, weight: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let width = weight.dims1()?;
    if input.dims().last() != Some(&width) {
        candle_core::bail!("rms_norm: input {:?} does not end in the weight's width {width}", input.dims());
    }
    let input = prepared(input, "rms_norm")?;
    let weight = prepared(weight, "rms_norm")?;
    input.apply_op2_no_bwd(&weight, &RmsNorm { eps: eps as f32 })
}

struct RopeToHeads<'a> {
    layout: HeadLayout,
    tables: &'a RopeTables,
    scale: f32,
}

impl CustomOp1 for RopeToHeads<'_> {
    fn name(&self) -> &'static str {
        "tenpak-rope-to-heads"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let input = contiguous_f32(storage, layout, self.name())?;
        let mut out = vec![0.0f32; input.len()];
        kernels::rope_to_heads(input, self.layout, &self.tables.cos, &self.tables.sin, self.scale, &mut out);
        let HeadLayout { batch, seq, heads, head_dim, group } = self.layout;
        Ok((CpuStorage::F32(out), Shape::from_dims(&[batch, heads / group, seq * group, head_dim])))
    }
}

/// RoPE on projection rows `[batch·seq, heads·head_dim]`, multiplied by `scale` and returned as
/// `[batch, heads/group, seq·group, head_dim]`: per key/value head, rows (position, query head of
/// its group) — see [`kernels::rope_to_heads`].
pub fn rope_to_heads(input: &Tensor, layout: HeadLayout, tables: &RopeTables, scale: f32) -> candle_core::Result<Tensor> {
    let HeadLayout { batch, seq, heads, head_dim, group } = layout;
    if group == 0 || heads % group != 0 {
        candle_core::bail!("rope: group {group} does not divide {heads} heads");
    }
    if input.dims() != [batch * seq, heads * head_dim] {
        candle_core::bail!("rope: input {:?}, expected [{}, {}]", input.dims(), batch * seq, heads * head_dim);
    }
    if tables.seq < seq || tables.half * 2 != head_dim {
        candle_core::bail!(
            "rope: tables cover {} positions of width {}, need {seq} of width {head_dim}",
            tables.seq,
            tables.half * 2
        );
    }
    let input = prepared(input, "rope")?;
    input.apply_op1_no_bwd(&RopeToHeads { layout, tables, scale })
}

struct CausalSoftmax {
    block: CausalBlock,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "tenpak-causal-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let mut scores = contiguous_f32(storage, layout, self.name())?.to_vec();
        kernels::causal_softmax(&mut scores, self.block);
        Ok((CpuStorage::F32(scores), layout.shape().clone()))
    }
}

/// Causal softmax over a block of attention scores `[…, rows, keys]` (see
/// [`kernels::causal_softmax`] for which row is which query position).
pub fn causal_softmax(scores: &Tensor, block: CausalBlock) -> candle_core::Result<Tensor> {
    let dims = scores.dims();
    let rows = if dims.len() >= 2 { dims[dims.len() - 2] } else { 0 };
    if dims.last() != Some(&block.keys) || block.first_position >= block.keys || rows % block.rows_per_plane().max(1) != 0 {
        candle_core::bail!("causal_softmax: scores {dims:?} do not fit the block {block:?}");
    }
    let scores = prepared(scores, "causal_softmax")?;
    scores.apply_op1_no_bwd(&CausalSoftmax { block })
}

struct SiluMul;

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "tenpak-silu-mul"
    }

    fn cpu_fwd(
        &self,
        gate: &CpuStorage,
        gate_layout: &Layout,
        up: &CpuStorage,
        up_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let gate = contiguous_f32(gate, gate_layout, self.name())?;
        let up = contiguous_f32(up, up_layout, self.name())?;
        let mut out = vec![0.0f32; gate.len()];
        kernels::silu_mul(gate, up, &mut out);
        Ok((CpuStorage::F32(out), gate_layout.shape().clone()))
    }
}

/// `silu(gate) · up`, element-wise; both of one shape.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
    if gate.dims() != up.dims() {
        candle_core::bail!("silu_mul: gate {:?} and up {:?} differ in shape", gate.dims(), up.dims());
    }
    let gate = prepared(gate, "silu_mul")?;
    let up = prepared(up, "silu_mul")?;
    gate.apply_op2_no_bwd(&up, &SiluMul)
}

struct Add;

impl CustomOp2 for Add {
    fn name(&self) -> &'static str {
        "tenpak-add"
    }

    fn cpu_fwd(&self, a: &CpuStorage, a_layout: &Layout, b: &CpuStorage, b_layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let a = contiguous_f32(a, a_layout, self.name())?;
        let b = contiguous_f32(b, b_layout, self.name())?;
        let mut out = vec![0.0f32; a.len()];
        kernels::add(a, b, &mut out);
        Ok((CpuStorage::F32(out), a_layout.shape().clone()))
    }
}

/// `a + b` for two tensors of one shape (see [`kernels::add`] for why not candle's `add`).
pub fn add(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    if a.dims() != b.dims() {
        candle_core::bail!("add: shapes {:?} and {:?} differ", a.dims(), b.dims());
    }
    let a = prepared(a, "add")?;
    let b = prepared(b, "add")?;
    a.apply_op2_no_bwd(&b, &Add)
}

struct AddBias;

impl CustomOp2 for AddBias {
    fn name(&self) -> &'static str {
        "tenpak-add-bias"
    }

    fn cpu_fwd(
        &self,
        rows: &CpuStorage,
        rows_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let mut out = contiguous_f32(rows, rows_layout, self.name())?.to_vec();
        kernels::add_bias(&mut out, contiguous_f32(bias, bias_layout, self.name())?);
        Ok((CpuStorage::F32(out), rows_layout.shape().clone()))
    }
}

/// `rows + bias` with `bias` (`[width]`) added to every row of `rows` (`[…, width]`).
pub fn add_bias(rows: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    let width = bias.dims1()?;
    if rows.dims().last() != Some(&width) {
        candle_core::bail!("add_bias: rows {:?} do not end in the bias width {width}", rows.dims());
    }
    let rows = prepared(rows, "add_bias")?;
    let bias = prepared(bias, "add_bias")?;
    rows.apply_op2_no_bwd(&bias, &AddBias)
}

struct BlasLinear(&'static OpenBlas);

impl CustomOp2 for BlasLinear {
    fn name(&self) -> &'static str {
        "tenpak-openblas-linear"
    }

    fn cpu_fwd(&self, x: &CpuStorage, x_layout: &Layout, w: &CpuStorage, w_layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, k) = x_layout.shape().dims2()?;
        let (n, w_k) = w_layout.shape().dims2()?;
        if k != w_k {
            candle_core::bail!("linear: input {rows}×{k} and weight {n}×{w_k} differ in width");
        }
        let x = contiguous_f32(x, x_layout, self.name())?;
        let w = contiguous_f32(w, w_layout, self.name())?;
        let mut out = vec![0.0f32; rows * n];
        self.0.linear(x, rows, k, w, n, &mut out);
        Ok((CpuStorage::F32(out), Shape::from((rows, n))))
    }
}

/// `x · wᵀ` for rows `x` (`[rows, k]`) and a linear weight `w` (`[n, k]`, as stored), by the
/// kernel [`blas::kernel`] chose: OpenBLAS, or candle's `matmul`.
pub fn linear(x: &Tensor, w: &Tensor) -> tenpak_error::Result<Tensor> {
    Ok(match blas::kernel()? {
        Kernel::OpenBlas(blas) => prepared(x, "linear")?.apply_op2_no_bwd(&prepared(w, "linear")?, &BlasLinear(blas))?,
        Kernel::Candle => x.matmul(&w.t()?)?,
    })
}

/// Queries, keys and values of one attention layer, as the forward pass lays them out.
#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    /// Sequences.
    pub batch: usize,
    /// Positions per sequence.
    pub seq: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Query heads per key/value head.
    pub group: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Query positions per block (the causal blocking of the forward pass).
    pub block: usize,
}

/// Causal grouped-query attention through OpenBLAS, the same computation as the candle products
/// of [`super::Block::forward`]: `q` is `[batch, kv_heads, seq·group, head_dim]` (rows are
/// (position, head of the group), from [`rope_to_heads`], already scaled), `k` and `v` are
/// `[batch, kv_heads, seq, head_dim]`; the result is `[batch·seq, kv_heads·group·head_dim]`,
/// the rows `o_proj` reads. Per plane and block of query positions: scores = Q Kᵀ over the keys
/// up to the block's last position, causal softmax, then P V, written into each position's row.
pub fn attention(blas: &OpenBlas, q: &Tensor, k: &Tensor, v: &Tensor, shape: AttentionShape) -> tenpak_error::Result<Tensor> {
    let AttentionShape { batch, seq, kv_heads, group, head_dim: d, block } = shape;
    tenpak_error::ensure!(block > 0 && group > 0, "attention: empty block or group in {shape:?}");
    tenpak_error::ensure!(q.dims() == [batch, kv_heads, seq * group, d], "attention: queries {:?} do not fit {shape:?}", q.dims());
    tenpak_error::ensure!(k.dims() == [batch, kv_heads, seq, d], "attention: keys {:?} do not fit {shape:?}", k.dims());
    tenpak_error::ensure!(v.dims() == [batch, kv_heads, seq, d], "attention: values {:?} do not fit {shape:?}", v.dims());
    let row_width = kv_heads * group * d;
    let mut out = vec![0.0f32; batch * seq * row_width];
    let mut scores = vec![0.0f32; block * group * seq];
    let mut attended = vec![0.0f32; block * group * d];
    with_f32_slice(q, |q| {
        with_f32_slice(k, |k| {
            with_f32_slice(v, |v| {
                for plane in 0..batch * kv_heads {
                    let (b, h) = (plane / kv_heads, plane % kv_heads);
                    let q = &q[plane * seq * group * d..(plane + 1) * seq * group * d];
                    let k = &k[plane * seq * d..(plane + 1) * seq * d];
                    let v = &v[plane * seq * d..(plane + 1) * seq * d];
                    for first in (0..seq).step_by(block) {
                        let end = (first + block).min(seq);
                        let rows = (end - first) * group;
                        let scores = &mut scores[..rows * end];
                        let queries = Operand { data: &q[first * group * d..], stride: d };
                        blas.gemm(queries, Operand { data: k, stride: d }, true, (rows, end, d), scores, end);
                        kernels::causal_softmax(scores, CausalBlock { keys: end, group, first_position: first });
                        let attended = &mut attended[..rows * d];
                        blas.gemm(Operand { data: scores, stride: end }, Operand { data: v, stride: d }, false, (rows, d, end), attended, d);
                        // Rows (position, head of the group) → row `position` of the output, at
                        // the columns of kv head h.
                        for (p, heads) in (first..end).zip(attended.chunks_exact(group * d)) {
                            let at = (b * seq + p) * row_width + h * group * d;
                            out[at..at + group * d].copy_from_slice(heads);
                        }
                    }
                }
            })
        })
    })???;
    Ok(Tensor::from_vec(out, (batch * seq, row_width), q.device())?)
}

/// Run `f` on the contiguous f32 data of a CPU tensor, without copying.
pub fn with_f32_slice<R>(tensor: &Tensor, f: impl FnOnce(&[f32]) -> R) -> tenpak_error::Result<R> {
    let tensor = prepared(tensor, "read")?;
    let (storage, layout) = tensor.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        tenpak_error::bail!("the TenPak runtime runs on the CPU; found a tensor on another device");
    };
    Ok(f(contiguous_f32(cpu, layout, "read")?))
}
