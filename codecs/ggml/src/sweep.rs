//! GPTQ error feedback on a llama.cpp type's grid: quantize a matrix column by column, moving
//! the columns not yet quantized to absorb each column's error through the inverse Hessian
//! (Frantar et al. 2022), with each block's header fitted as the sweep reaches it.
//!
//! The arithmetic is quant-core's sweep ([`tenpak_quant::gptq::sweep`]): `U` the upper Cholesky
//! factor of `H_d⁻¹`, the scaled error `e = (w̃_i − q_i) / U_ii`, `w̃_k −= e · U_ik` for the later
//! columns of the lazy batch, one matrix product per batch for the rest, and `‖e‖²` per row is
//! the row's output error `(w − q) H_d (w − q)ᵀ`. What differs is the grid: a column's code is
//! the nearest level of its sub-block's [`crate::types::Grid`], whose values are the type's own
//! dequantization; and a block's header is either fitted when the sweep reaches the block's
//! first column, on the error-updated weights of the whole block ([`Headers::Dynamic`]; the
//! batches end at block starts, so those weights have every earlier update), or given
//! ([`Headers::Static`], fitted on the original weights).
//!
//! [`sweep_reference`] is the plain version: one column at a time, no batches, every later
//! column updated at once; the tests hold the fast sweep to it.

use std::ops::Range;

use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2, s};
use rayon::prelude::*;
use tenpak_quant::gptq::sweep::{InverseFactor, blocks};

use crate::fit::{fit_block, nearest_codes};
use crate::types::{GgmlType, Header};

/// Rows per parallel task (fixed, so results do not depend on the thread count).
const CHUNK_ROWS: usize = 32;

/// Where each block's header comes from.
#[derive(Clone, Copy, Debug)]
pub enum Headers<'a> {
    /// Fitted on the error-updated weights when the sweep reaches the block.
    Dynamic,
    /// Given, one per block, row-major over `[rows, blocks_per_row]`.
    Static(&'a [Header]),
}

/// An encoded matrix: one header and `block_weights` codes per block, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Coded {
    /// One header per block, row-major over `[rows, blocks_per_row]`.
    pub headers: Vec<Header>,
    /// One code per weight, row-major.
    pub codes: Vec<u8>,
    /// Per row, the output error on the dampened Hessian (`‖e‖²` for a sweep; filled in by the
    /// caller for round-to-nearest).
    pub row_errors: Vec<f64>,
}

impl Coded {
    /// The type's blocks, row-major: a GGUF tensor's data.
    pub fn to_bytes(&self, ty: GgmlType) -> Vec<u8> {
        let bw = ty.block_weights();
        let mut out = Vec::with_capacity(self.headers.len() * ty.block_bytes());
        for (header, codes) in self.headers.iter().zip(self.codes.chunks_exact(bw)) {
            ty.write(header, codes, &mut out);
        }
        out
    }

    /// Row `r` of `other` in place of row `r` of `self`.
    pub fn take_row(&mut self, other: &Coded, r: usize, cols: usize, ty: GgmlType) {
        let bpr = cols / ty.block_weights();
        self.headers[r * bpr..(r + 1) * bpr]
            .copy_from_slice(&other.headers[r * bpr..(r + 1) * bpr]);
        self.codes[r * cols..(r + 1) * cols]
            .copy_from_slice(&other.codes[r * cols..(r + 1) * cols]);
        self.row_errors[r] = other.row_errors[r];
    }
}

/// Round to nearest: each block's header fitted on its weights under `importance` (one per
/// column), every weight at its nearest level. Row errors are left at 0.
pub fn round_to_nearest(ty: GgmlType, weight: &[f32], cols: usize, importance: &[f32]) -> Coded {
    let bw = ty.block_weights();
    let rows = weight.len() / cols;
    let mut headers = vec![Header::default(); weight.len() / bw];
    let mut codes = vec![0u8; weight.len()];
    headers
        .par_chunks_mut(CHUNK_ROWS * cols / bw)
        .zip(codes.par_chunks_mut(CHUNK_ROWS * cols))
        .zip(weight.par_chunks(CHUNK_ROWS * cols))
        .for_each(|((headers, codes), weight)| {
            for ((header, codes), (b, x)) in headers
                .iter_mut()
                .zip(codes.chunks_exact_mut(bw))
                .zip(weight.chunks_exact(bw).enumerate())
            {
                let h = &importance[(b * bw) % cols..(b * bw) % cols + bw];
                *header = fit_block(ty, x, h);
                nearest_codes(ty, header, x, codes);
            }
        });
    Coded {
        headers,
        codes,
        row_errors: vec![0.0; rows],
    }
}

/// The fast sweep: rows in parallel chunks, lazy batches of `block_size` columns (ended early at
/// block starts).
pub fn sweep(
    ty: GgmlType,
    weight: &[f32],
    cols: usize,
    importance: &[f32],
    factor: &InverseFactor,
    headers: Headers<'_>,
    block_size: usize,
) -> Coded {
    assert_eq!(
        factor.dim(),
        cols,
        "the factor must match the weight's columns"
    );
    let bw = ty.block_weights();
    let rows = weight.len() / cols;
    let bpr = cols / bw;
    let batches = blocks(cols, bw, block_size.max(1));
    let mut out_headers = vec![Header::default(); rows * bpr];
    let mut codes = vec![0u8; weight.len()];
    let per_chunk: Vec<Vec<f64>> = weight
        .par_chunks(CHUNK_ROWS * cols)
        .zip(out_headers.par_chunks_mut(CHUNK_ROWS * bpr))
        .zip(codes.par_chunks_mut(CHUNK_ROWS * cols))
        .enumerate()
        .map(|(chunk, ((w, h), q))| {
            let given = match headers {
                Headers::Static(all) => Some(&all[chunk * CHUNK_ROWS * bpr..]),
                Headers::Dynamic => None,
            };
            sweep_rows(
                ty,
                w,
                cols,
                importance,
                factor.upper(),
                given,
                &batches,
                h,
                q,
            )
        })
        .collect();
    Coded {
        headers: out_headers,
        codes,
        row_errors: per_chunk.into_iter().flatten().collect(),
    }
}

/// Sweep the rows `weight` (row-major, `cols` wide); `given` holds their static headers.
#[allow(clippy::too_many_arguments)]
fn sweep_rows(
    ty: GgmlType,
    weight: &[f32],
    n: usize,
    importance: &[f32],
    u: &[f64],
    given: Option<&[Header]>,
    batches: &[Range<usize>],
    headers: &mut [Header],
    codes: &mut [u8],
) -> Vec<f64> {
    let (bw, sub) = (ty.block_weights(), ty.sub_len());
    let bpr = n / bw;
    let nrows = weight.len() / n;
    let mut w: Vec<f64> = weight.iter().map(|&v| f64::from(v)).collect();
    let max_batch = batches.iter().map(|b| b.len()).max().unwrap_or(0);
    let mut err = vec![0f64; nrows * max_batch];
    let mut scratch = vec![0f32; bw];
    let mut totals = vec![0f64; nrows];
    let u_view = ArrayView2::from_shape((n, n), u).expect("n x n");
    for batch in batches {
        let (i1, i2, b) = (batch.start, batch.end, batch.len());
        for r in 0..nrows {
            let row = &mut w[r * n..(r + 1) * n];
            let row_err = &mut err[r * b..(r + 1) * b];
            let mut grids = Vec::new();
            for i in i1..i2 {
                let block = i / bw;
                if i % bw == 0 || grids.is_empty() {
                    let start = block * bw;
                    if i % bw == 0 {
                        headers[r * bpr + block] = match given {
                            Some(given) => given[r * bpr + block],
                            None => {
                                for (s, &v) in scratch.iter_mut().zip(&row[start..start + bw]) {
                                    *s = v as f32;
                                }
                                fit_block(ty, &scratch, &importance[start..start + bw])
                            }
                        };
                    }
                    let header = headers[r * bpr + block];
                    grids = (0..ty.subs()).map(|j| ty.grid(&header, j)).collect();
                }
                let grid = &grids[(i % bw) / sub];
                let code = grid.nearest(row[i] as f32);
                codes[r * n + i] = code;
                let u_row = &u[i * n..(i + 1) * n];
                let e = (row[i] - f64::from(grid.value(code))) / u_row[i];
                row_err[i - i1] = e;
                totals[r] += e * e;
                for (wk, uk) in row[i + 1..i2].iter_mut().zip(&u_row[i + 1..i2]) {
                    *wk -= e * uk;
                }
            }
        }
        if i2 < n {
            let e_view = ArrayView2::from_shape((nrows, b), &err[..nrows * b]).expect("rows x b");
            let mut w_view = ArrayViewMut2::from_shape((nrows, n), &mut w[..]).expect("rows x n");
            general_mat_mul(
                -1.0,
                &e_view,
                &u_view.slice(s![i1..i2, i2..]),
                1.0,
                &mut w_view.slice_mut(s![.., i2..]),
            );
        }
    }
    totals
}

/// The plain sweep, for tests: one column at a time over all rows, every later column updated
/// right away, headers fitted (or taken) at each block's first column.
pub fn sweep_reference(
    ty: GgmlType,
    weight: &[f32],
    cols: usize,
    importance: &[f32],
    factor: &InverseFactor,
    headers: Headers<'_>,
) -> Coded {
    let n = cols;
    let (bw, sub) = (ty.block_weights(), ty.sub_len());
    let rows = weight.len() / n;
    let bpr = n / bw;
    let u = factor.upper();
    let mut w: Vec<f64> = weight.iter().map(|&v| f64::from(v)).collect();
    let mut out_headers = vec![Header::default(); rows * bpr];
    let mut codes = vec![0u8; weight.len()];
    let mut row_errors = vec![0f64; rows];
    for i in 0..n {
        let block = i / bw;
        for r in 0..rows {
            let row = &mut w[r * n..(r + 1) * n];
            if i % bw == 0 {
                out_headers[r * bpr + block] = match headers {
                    Headers::Static(given) => given[r * bpr + block],
                    Headers::Dynamic => {
                        let x: Vec<f32> = row[i..i + bw].iter().map(|&v| v as f32).collect();
                        fit_block(ty, &x, &importance[i..i + bw])
                    }
                };
            }
            let grid = ty.grid(&out_headers[r * bpr + block], (i % bw) / sub);
            let code = grid.nearest(row[i] as f32);
            codes[r * n + i] = code;
            let e = (row[i] - f64::from(grid.value(code))) / u[i * n + i];
            row_errors[r] += e * e;
            for k in i + 1..n {
                row[k] -= e * u[i * n + k];
            }
        }
    }
    Coded {
        headers: out_headers,
        codes,
        row_errors,
    }
}
