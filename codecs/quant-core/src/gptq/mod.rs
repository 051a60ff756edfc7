//! GPTQ's machinery (Frantar, Ashkboos, Hoefler, Alistarh 2022, "GPTQ: Accurate Post-Training
//! Quantization for Generative Pre-trained Transformers"): quantize a weight matrix one input
//! column at a time, each column's error compensated by the columns not yet quantized through the
//! inverse of the layer's Hessian `G = XᵀX / n`.
//!
//! Shared here because more than one codec runs it: `int4_gptq` sweeps with dynamic or static
//! group headers, `int4_awq`'s error feedback sweeps on its own stored grids with column scales,
//! and each codec stores what it likes of the result.
//!
//! - [`hessian`]: `G` checked (missing, mis-sized, non-finite, negative diagonal), dead channels
//!   repaired, the diagonal dampened by `percdamp` (raised ×10 up to four times if the
//!   factorization still fails);
//! - [`sweep`]: `U` with `H⁻¹ = UᵀU` (one Cholesky factorization and one triangular inverse,
//!   [`crate::linalg`]), and the column sweep with lazy batches of `block_size` columns, rows in
//!   parallel, on dynamic, static or given grids (optionally column-scaled); and a plain reference
//!   sweep (explicit inverse, no blocking) that the tests hold it to, code for code.

pub mod hessian;
pub mod sweep;

#[cfg(test)]
mod tests;
