//! The model runtime: a Llama-family forward pass on candle-core, f32 on the CPU.
//!
//! TenPak needs its own runtime for two jobs no external runtime does for it: watching the input
//! of every linear layer while calibration text flows through (a [`LinearHook`]), and running the
//! model one block at a time so a block can be compressed, its weights swapped for the decoded
//! ones, and the next block fed the quantized block's output. Perplexity uses the same code, so
//! the figures that judge a compression come from the forward pass the compression saw.
//!
//! Weights arrive through [`WeightLoader`], by Hugging Face name, as f32: a
//! [`ModelSource`](crate::ModelSource) (safetensors or GGUF) implements it, and so can an
//! artifact reader that decodes through the codecs. Matrix products run in candle (`gemm`, on all
//! cores); the rest runs in this module's [`kernels`].

pub mod blas;
pub mod grad;
pub mod kernels;
pub mod llama;
pub mod ops;
pub mod rope;

use candle_core::Tensor;

pub use llama::{Block, Head, LayerCache, Linear, LlamaModel};
pub use rope::RopeTables;

use crate::ModelSource;

/// A source of weights by Hugging Face tensor name, as f32.
pub trait WeightLoader {
    /// The shape of tensor `name`, or `None` if the source has no such tensor. Optional tensors
    /// (`lm_head.weight` of a tied model) are detected through this.
    fn tensor_shape(&self, name: &str) -> Option<Vec<usize>>;
    /// The values of tensor `name`, row-major f32. Errors name the tensor (and file).
    fn tensor_f32(&self, name: &str) -> tenpak_error::Result<Vec<f32>>;
}

impl<S: ModelSource + ?Sized> WeightLoader for S {
    fn tensor_shape(&self, name: &str) -> Option<Vec<usize>> {
        self.tensor(name).map(|info| info.shape.clone())
    }

    fn tensor_f32(&self, name: &str) -> tenpak_error::Result<Vec<f32>> {
        self.load_f32(name)
    }
}

/// Something that watches the input of linear layers during a forward pass (calibrators collect
/// activation statistics through it). Passing `None` where a hook is accepted costs nothing.
pub trait LinearHook {
    /// Called before the linear layer whose weight is `weight_name`
    /// (`model.layers.3.self_attn.q_proj.weight`, `lm_head.weight`) multiplies `input`,
    /// a contiguous f32 tensor `[tokens, in_features]` (a batch's tokens, sequence by sequence).
    /// q/k/v (and gate/up) share one input tensor; each is reported under its own name.
    /// An error stops the forward pass.
    fn observe(&mut self, weight_name: &str, input: &Tensor) -> tenpak_error::Result<()>;
}

impl<F: FnMut(&str, &Tensor) -> tenpak_error::Result<()>> LinearHook for F {
    fn observe(&mut self, weight_name: &str, input: &Tensor) -> tenpak_error::Result<()> {
        self(weight_name, input)
    }
}
