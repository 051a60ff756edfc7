//! Shared quantization kernels for TenPak codecs: group layout, bit packing, asymmetric and
//! symmetric grids, and the methods that choose a group's range.
//!
//! The main design choice: **a group is its stored header, and codes always follow from it.**
//! A method such as range search only picks a [`GroupHeader`] (`scale`, `min`, rounded to the f16
//! that will be written); every weight is then coded to its nearest level under that header by
//! the one function [`grid::quantize_value`] that all paths share. Three things follow. A method
//! is judged by the error the decoder will really produce, f16 rounding included. The min/max
//! header can always be among the candidates, so refinement never loses to round-to-nearest on
//! any group. And the fast paths differ from the reference ones only in loop structure (rows in
//! parallel, word-wise packing), so tests can demand bit-identical output.
//!
//! Modules, one purpose each:
//! - [`layout`]: which columns form which group (any group size, short last group allowed);
//! - [`linalg`]: dense f64 Cholesky factorization and triangular inversion (LAPACK from the
//!   system OpenBLAS, with plain references), for codecs with error feedback through a Hessian;
//! - [`pack`]: b-bit codes packed per row (grid codes of 1 to 8 bits, codebook indices of up to
//!   16);
//! - [`grid`]: one group's header and the per-weight arithmetic;
//! - [`fit`]: choosing a header (min/max, the prototype's min/max iteration, alternating least
//!   squares, k-quants-style search), on the plain squared error or, in [`fit::weighted`], on an
//!   importance-weighted one (calibrated codecs); [`fit::params`]: the same choice as the codec
//!   parameters `refine`, `iterations` and `search_steps`;
//! - [`asym`]: whole matrices on asymmetric b-bit grids and their stored parts (with a plain or
//!   an importance-weighted fit);
//! - [`rotation`]: incoherence processing, a seeded random orthogonal transform of the input
//!   dimension (fast Walsh–Hadamard ⊗ a small random rotation) and its inverse;
//! - [`quadratic`]: a layer's output error `tr(E G Eᵀ)`, per row or in total;
//! - [`gptq`]: GPTQ's Hessian, inverse factor and column sweep (error feedback through the
//!   layer's Gram matrix), for every codec that compensates errors across columns;
//! - [`rng`]: the seeded generator of rotations and codebooks;
//! - [`sym`]: whole matrices on symmetric int8 grids;
//! - [`dq`]: double-quantized group headers (small integer scale and min per group against an
//!   f16 pair per super-group, as k-quants);
//! - [`zp`]: integer zero points (an f16 scale and a `bits`-wide zero point per group, as GPTQ
//!   checkpoints and compressed-tensors store them);
//! - [`ggml`]: GGML's block types (Q4_1, Q8_0, Q4_K) as `#[repr(C)]` structs, built from the
//!   grids above where they hold them exactly: the native forms of the GGUF export;
//! - [`encoded`]: the checks every decoder makes on what it is given;
//! - [`metrics`]: reconstruction error;
//! - [`testing`]: deterministic test matrices (Gaussian, heavy-tailed, adversarial).
//!
//! Why an f16 `min` and not an integer zero point (GPTQ-style `ŵ = scale · (q − z)`), measured
//! with round-to-nearest at 4 bits on SmolLM2-135M's 210 linear layers (relative MSE):
//!
//! | group | f32 min | f16 min (stored) | u4/u8 zero point |
//! |---|---|---|---|
//! | 64 | 6.4287e-3 | 6.4306e-3 | 8.7856e-3 |
//! | 128 | 9.8730e-3 | 9.8779e-3 | 1.0814e-2 |
//! | 256 | 1.2577e-2 | 1.2584e-2 | 1.3030e-2 |
//!
//! Rounding `min` to f16 costs under 0.06 %; forcing the offset onto a multiple of the step costs
//! 4–37 %, and it rules out the least-squares offsets of [`fit`], which gain another 20–30 %. A
//! zero point is cheaper (4 or 8 bits instead of 16 per group), and at *equal bits* on synthetic
//! heavy-tailed matrices a u4 zero point with smaller groups beats an f16 min with round-to-nearest
//! (e.g. 1.19e-2 at g=40 vs 1.62e-2 at g=64, both 4.5 bits per weight); on the real model the f16
//! min still wins at equal bits (6.43e-3 vs 7.37e-3). TenPak stores the f16 min.
#![deny(missing_docs)]

pub mod asym;
pub mod dq;
pub mod encoded;
pub mod f16round;
pub mod fit;
pub mod ggml;
pub mod gptq;
pub mod grid;
mod kernels;
pub mod layout;
pub mod linalg;
pub mod metrics;
pub mod pack;
pub mod quadratic;
pub mod rng;
pub mod rotation;
pub mod sym;
pub mod testing;
pub mod zp;

pub use asym::{AsymFormat, AsymQuantized};
pub use fit::{FitOptions, Refine, SearchGrid, fit_group};
pub use grid::GroupHeader;
pub use layout::GroupLayout;
pub use sym::{SymFormat, SymQuantized};

#[cfg(test)]
mod tests;
