//! The GPTQ sweep: quantize a matrix column by column, spreading each column's error over the
//! columns not yet quantized through the inverse Hessian (Frantar et al. 2022, Algorithm 1).
//!
//! Every row of `W` meets the same Hessian and is otherwise independent, so the sweep runs on
//! chunks of rows in parallel. Within a chunk, column `i` of the current (error-updated) weights
//! `w̃` is coded to its nearest level `q` under its group's header, and with `U` the upper Cholesky
//! factor of `H⁻¹`, the scaled error `e = (w̃_i − q) / U_ii` updates every later column
//! `w̃_k −= e · U_ik`. Over the whole sweep `W − Q = E U`, so the output error on the dampened
//! Hessian is `tr((W − Q) H (W − Q)ᵀ) = ‖E‖²` (since `U H Uᵀ = I`): the sweep measures its own
//! objective for free ([`GptqQuantized::damped_error`]).
//!
//! *Lazy batches* (§3 "Lazy batch-updates"): each column's update is applied at once only to the
//! rest of its block of `block_size` columns; the columns after the block are updated once per
//! block, by one matrix product `W[:, i2..] −= E[:, i1..i2] · U[i1..i2, i2..]`. The same
//! arithmetic up to its order, with far fewer passes over memory.
//!
//! *Groups* ([`Groups`]). Dynamic: a group's `(scale, min)` is fitted when the sweep reaches its
//! first column, from the current weights of all its columns (quant-core's [`fit_group`], rounded
//! to the stored f16). The reference fits on `W[:, s..s+g]` of the outer matrix, whose columns
//! past the current block have not yet received the block's updates; here a block ends early
//! instead, at the start of a group that would stick out of it, so every group is fitted on fully
//! updated weights, whatever `block_size` is, and `block_size` changes only the order of
//! floating-point operations. Static: the headers are given before the sweep (the codec passes
//! the uncompensated fit's), and the sweep only chooses codes. Dynamic headers follow the
//! compensation, but when the updates push later weights far out (channels of very different
//! activation scale make the compensating moves large), a later group's range widens and its grid
//! coarsens; static headers cannot widen, and out-of-range updates are clipped and compensated in
//! turn. Neither wins every row, which is why the codec runs both by default.
//!
//! [`quantize_reference`] is the plain version: column by column, no blocking, an explicit
//! inverse `H⁻¹` downdated after every column as in Optimal Brain Quantization (Frantar &
//! Alistarh 2022), `w̃_k −= (w̃_i − q) · [H⁻¹]_ik / [H⁻¹]_ii`. It shares no linear algebra
//! with the fast path, and the two agree up to floating-point rounding.

use std::ops::Range;

use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2, s};
use rayon::prelude::*;
use tenpak_api::{DType, Error, Part, Result};

use crate::fit::{FitOptions, fit_group, min_max};
use crate::gptq::hessian::Hessian;
use crate::grid::{GridF32, dequantize_value, quantize_index};
use crate::linalg::{inverse_cholesky_upper, inverse_reference};
use crate::pack::pack_row;
use crate::{AsymFormat, AsymQuantized, GroupHeader};

/// Rows per parallel task. Fixed (not derived from the thread count) so the result is the same
/// on every machine: each row's arithmetic does not depend on which rows share its chunk.
const CHUNK_ROWS: usize = 32;

/// What the sweep produced: headers and codes in [`AsymFormat`]'s order, and how it got there.
#[derive(Clone, Debug, PartialEq)]
pub struct GptqQuantized {
    /// One header per group, row-major over `[rows, groups_per_row]`.
    pub headers: Vec<GroupHeader>,
    /// One code per weight, row-major, unpacked.
    pub codes: Vec<u8>,
    /// The `percdamp` the factorization succeeded with.
    pub percdamp_applied: f64,
    /// Per row, `(w − q) H_d (w − q)ᵀ` on the dampened Hessian `H_d`, as the sweep accumulated
    /// it (`‖e‖²` of the row's scaled errors).
    pub row_damped_errors: Vec<f64>,
}

impl GptqQuantized {
    /// `tr((W − Q) H_d (W − Q)ᵀ)`: the sum of [`GptqQuantized::row_damped_errors`].
    pub fn damped_error(&self) -> f64 {
        self.row_damped_errors.iter().sum()
    }

    /// The stored parts (`codes`: u8 `[rows, row_code_bytes]`, packed per row; `scale_min`: f16
    /// `[rows, groups_per_row, 2]`), exactly as [`AsymQuantized::to_parts`] lays them out.
    pub fn to_parts(&self, format: AsymFormat) -> [Part; 2] {
        let layout = format.layout();
        let stride = format.row_code_bytes();
        let mut packed = vec![0u8; format.code_bytes()];
        if layout.cols() > 0 {
            for (codes, out) in self
                .codes
                .chunks_exact(layout.cols())
                .zip(packed.chunks_exact_mut(stride))
            {
                pack_row(codes, format.bits(), out);
            }
        }
        let codes = Part {
            name: "codes".to_owned(),
            dtype: DType::U8,
            shape: vec![layout.rows(), stride],
            data: packed,
        };
        let headers = Part {
            name: "scale_min".to_owned(),
            dtype: DType::F16,
            shape: vec![layout.rows(), layout.groups_per_row(), 2],
            data: self.headers.iter().flat_map(|h| h.to_le_bytes()).collect(),
        };
        [codes, headers]
    }

    /// The same as an [`AsymQuantized`], whose dequantization is what the codec decodes to.
    pub fn to_asym(&self, format: AsymFormat) -> Result<AsymQuantized> {
        let [codes, headers] = self.to_parts(format);
        AsymQuantized::from_parts(format, &codes, &headers)
    }
}

fn range_error(row: usize, cols: Range<usize>, values: &[f32]) -> Error {
    let (lo, hi) = min_max(values);
    Error::invalid_input(format!(
        "row {row}, columns {}..{}: the error-updated weights span [{lo}, {hi}], which a 4-bit grid with \
         f16 scale and min cannot hold; store this tensor unquantized",
        cols.start, cols.end
    ))
}

/// The lazy batches: `block_size` columns each, except that a block ends early at the start of
/// a group that would otherwise extend past it (see the module docs).
pub fn blocks(cols: usize, group_size: usize, block_size: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut i1 = 0;
    while i1 < cols {
        let mut i2 = (i1 + block_size).min(cols);
        let last_start = (i2 - 1) / group_size * group_size;
        if last_start > i1 && (last_start + group_size).min(cols) > i2 {
            i2 = last_start;
        }
        out.push(i1..i2);
        i1 = i2;
    }
    out
}

/// How each group's header is chosen.
#[derive(Clone, Copy, Debug)]
pub enum Groups<'a> {
    /// Fitted with these options when the sweep reaches the group's first column, from the
    /// error-updated weights of all its columns (the reference's default).
    Dynamic(FitOptions),
    /// Given before the sweep, one per group, row-major over `[rows, groups_per_row]` (the
    /// reference's `static_groups`, which fits them on the original weights).
    Static(&'a [GroupHeader]),
    /// Given before the sweep as decoded grids, one per group (headers stored some other way,
    /// e.g. double-quantized); the sweep's `headers` are then left at zero.
    Grids(&'a [GridF32]),
}

impl Groups<'_> {
    fn check(&self, layout: &crate::GroupLayout) {
        match self {
            Groups::Static(headers) => {
                assert_eq!(
                    headers.len(),
                    layout.num_groups(),
                    "one static header per group"
                )
            }
            Groups::Grids(grids) => {
                assert_eq!(grids.len(), layout.num_groups(), "one grid per group")
            }
            Groups::Dynamic(_) => {}
        }
    }
}

/// `U` (upper triangular, `H_d⁻¹ = Uᵀ U`) of the dampened Hessian `H_d`: computed once per
/// layer, shared by every sweep over it.
#[derive(Clone, Debug)]
pub struct InverseFactor {
    u: Vec<f64>,
    dim: usize,
    percdamp_applied: f64,
}

impl InverseFactor {
    /// Factor `hessian` dampened by `percdamp` (raised if needed, see
    /// [`Hessian::factor_dampened`]) with [`inverse_cholesky_upper`].
    pub fn new(hessian: &Hessian, percdamp: f64) -> Result<Self> {
        let dim = hessian.dim();
        let (u, percdamp_applied) =
            hessian.factor_dampened(percdamp, |h| inverse_cholesky_upper(h, dim))?;
        Ok(Self {
            u,
            dim,
            percdamp_applied,
        })
    }

    /// The `percdamp` the factorization succeeded with.
    pub fn percdamp_applied(&self) -> f64 {
        self.percdamp_applied
    }

    /// `U`, row-major `dim × dim` (zero below the diagonal): for sweeps over grids other than
    /// [`AsymFormat`]'s (the `ggml` codec's block types).
    pub fn upper(&self) -> &[f64] {
        &self.u
    }

    /// The side of `U`: the layer's input features.
    pub fn dim(&self) -> usize {
        self.dim
    }
}

/// The fast sweep: rows in parallel chunks, lazy batches of `block_size` columns.
pub fn quantize(
    weight: &[f32],
    format: AsymFormat,
    factor: &InverseFactor,
    groups: Groups<'_>,
    block_size: usize,
) -> Result<GptqQuantized> {
    quantize_scaled(weight, format, factor, groups, None, block_size)
}

/// [`quantize`] for a codec that stores `W·diag(s)` on the grid and decodes `deq(W') / s`
/// (`int4_awq`'s column scales): the sweep still runs on `W` with `W`'s own factor, and only the
/// grid of column `j` changes, to the stored grid divided by `s_j`. Each weight is coded on
/// `(w̃·s_j)` rounded to f32 (what a fit on `W·diag(s)` saw) and decoded as
/// `dequantize(code) / s_j` in f32, exactly as the decoder computes it; dynamic headers are
/// fitted on the scaled values. `col_scale = None` is [`quantize`].
pub fn quantize_scaled(
    weight: &[f32],
    format: AsymFormat,
    factor: &InverseFactor,
    groups: Groups<'_>,
    col_scale: Option<&[f32]>,
    block_size: usize,
) -> Result<GptqQuantized> {
    let layout = format.layout();
    layout.check_data(weight)?;
    groups.check(&layout);
    let cols = layout.cols();
    if let Some(s) = col_scale {
        assert_eq!(s.len(), cols, "one column scale per column");
    }
    assert_eq!(
        factor.dim, cols,
        "the factor must match the weight's columns"
    );
    assert!(block_size > 0, "block_size must be positive");
    let percdamp_applied = factor.percdamp_applied;
    let mut headers = vec![GroupHeader::ZERO; layout.num_groups()];
    let mut codes = vec![0u8; layout.numel()];
    if layout.numel() == 0 {
        let row_damped_errors = vec![0.0; layout.rows()];
        return Ok(GptqQuantized {
            headers,
            codes,
            percdamp_applied,
            row_damped_errors,
        });
    }
    let sweep = Sweep {
        u: &factor.u,
        cols,
        group_size: layout.group_size(),
        groups_per_row: layout.groups_per_row(),
        nmax: format.nmax(),
        groups,
        col_scale,
        blocks: blocks(cols, layout.group_size(), block_size),
    };
    let per_chunk: Vec<Result<Vec<f64>>> = weight
        .par_chunks(CHUNK_ROWS * cols)
        .zip(headers.par_chunks_mut(CHUNK_ROWS * layout.groups_per_row()))
        .zip(codes.par_chunks_mut(CHUNK_ROWS * cols))
        .enumerate()
        .map(|(chunk, ((w, h), q))| sweep.rows(w, h, q, chunk * CHUNK_ROWS))
        .collect();
    let mut row_damped_errors = Vec::with_capacity(layout.rows());
    // In chunk order, so the reported error is the first by row on every run.
    for r in per_chunk {
        row_damped_errors.extend(r?);
    }
    Ok(GptqQuantized {
        headers,
        codes,
        percdamp_applied,
        row_damped_errors,
    })
}

/// Everything a chunk of rows needs.
struct Sweep<'a> {
    u: &'a [f64],
    cols: usize,
    group_size: usize,
    groups_per_row: usize,
    nmax: u8,
    groups: Groups<'a>,
    col_scale: Option<&'a [f32]>,
    blocks: Vec<Range<usize>>,
}

impl Sweep<'_> {
    /// Sweep the rows `weight` (`first_row` is the index of the first, for errors); returns
    /// each row's `‖e‖²`.
    fn rows(
        &self,
        weight: &[f32],
        headers: &mut [GroupHeader],
        codes: &mut [u8],
        first_row: usize,
    ) -> Result<Vec<f64>> {
        let n = self.cols;
        let nrows = weight.len() / n;
        let nmax = f32::from(self.nmax);
        let mut w: Vec<f64> = weight.iter().map(|&v| f64::from(v)).collect();
        let max_block = self.blocks.iter().map(|b| b.len()).max().unwrap_or(0);
        let mut err = vec![0f64; nrows * max_block];
        let mut scratch = vec![0f32; self.group_size.min(n)];
        let mut grids = vec![GroupHeader::ZERO.unpack(); nrows];
        let u_view = ArrayView2::from_shape((n, n), self.u).expect("n x n");
        let mut totals = vec![0f64; nrows];
        for block in &self.blocks {
            let (i1, i2, b) = (block.start, block.end, block.len());
            for r in 0..nrows {
                let row = &mut w[r * n..(r + 1) * n];
                let row_err = &mut err[r * b..(r + 1) * b];
                for i in i1..i2 {
                    if i % self.group_size == 0 {
                        let group = (first_row + r) * self.groups_per_row + i / self.group_size;
                        if let Groups::Grids(given) = self.groups {
                            grids[r] = given[group];
                        } else {
                            let header = match self.groups {
                                Groups::Static(given) => given[group],
                                Groups::Grids(_) => unreachable!("handled above"),
                                Groups::Dynamic(fit) => {
                                    let end = (i + self.group_size).min(n);
                                    let values = &mut scratch[..end - i];
                                    for (k, (s, &v)) in
                                        values.iter_mut().zip(&row[i..end]).enumerate()
                                    {
                                        *s = scaled(v, self.col_scale, i + k);
                                    }
                                    fit_group(values, self.nmax, &fit)
                                        .ok_or_else(|| range_error(first_row + r, i..end, values))?
                                }
                            };
                            headers[r * self.groups_per_row + i / self.group_size] = header;
                            grids[r] = header.unpack();
                        }
                    }
                    let (code, decoded) = nearest_scaled(row[i], grids[r], nmax, self.col_scale, i);
                    codes[r * n + i] = code;
                    let u_row = &self.u[i * n..(i + 1) * n];
                    let e = (row[i] - decoded) / u_row[i];
                    row_err[i - i1] = e;
                    totals[r] += e * e;
                    for (wk, uk) in row[i + 1..i2].iter_mut().zip(&u_row[i + 1..i2]) {
                        *wk -= e * uk;
                    }
                }
            }
            if i2 < n {
                let e_view =
                    ArrayView2::from_shape((nrows, b), &err[..nrows * b]).expect("rows x b");
                let mut w_view =
                    ArrayViewMut2::from_shape((nrows, n), &mut w[..]).expect("rows x n");
                general_mat_mul(
                    -1.0,
                    &e_view,
                    &u_view.slice(s![i1..i2, i2..]),
                    1.0,
                    &mut w_view.slice_mut(s![.., i2..]),
                );
            }
        }
        Ok(totals)
    }
}

/// The code of the current weight `w` under `grid` (quant-core's nearest-level rule, on `w`
/// rounded to f32 as the fit saw it) and its decoded value, exactly as the decoder computes it.
#[inline]
fn nearest(w: f64, grid: GridF32, nmax: f32) -> (u8, f64) {
    let code = quantize_index(w as f32, grid.min, grid.inv_scale, nmax) as u8;
    (
        code,
        f64::from(dequantize_value(code, grid.scale, grid.min)),
    )
}

/// `w·s_j` rounded to f32 (plain `w` rounded to f32 without column scales): the value the grid
/// of column `j` sees.
#[inline]
fn scaled(w: f64, col_scale: Option<&[f32]>, j: usize) -> f32 {
    match col_scale {
        Some(s) => (w * f64::from(s[j])) as f32,
        None => w as f32,
    }
}

/// [`nearest`] on column `j` of a column-scaled grid: the code of `w·s_j` and its decoded value
/// `dequantize(code) / s_j` (f32 arithmetic, as the codec's decoder).
#[inline]
fn nearest_scaled(
    w: f64,
    grid: GridF32,
    nmax: f32,
    col_scale: Option<&[f32]>,
    j: usize,
) -> (u8, f64) {
    match col_scale {
        None => nearest(w, grid, nmax),
        Some(s) => {
            let code =
                quantize_index(scaled(w, col_scale, j), grid.min, grid.inv_scale, nmax) as u8;
            (
                code,
                f64::from(dequantize_value(code, grid.scale, grid.min) / s[j]),
            )
        }
    }
}

/// The reference sweep: one column at a time over all rows, no blocking, the explicit inverse
/// Hessian downdated after each column (see the module docs). `O(cols³ + rows · cols²)` with no
/// matrix products: for tests.
pub fn quantize_reference(
    weight: &[f32],
    format: AsymFormat,
    hessian: &Hessian,
    percdamp: f64,
    groups: Groups<'_>,
) -> Result<GptqQuantized> {
    quantize_reference_scaled(weight, format, hessian, percdamp, groups, None)
}

/// The reference for [`quantize_scaled`]: [`quantize_reference`] on column-scaled grids.
pub fn quantize_reference_scaled(
    weight: &[f32],
    format: AsymFormat,
    hessian: &Hessian,
    percdamp: f64,
    groups: Groups<'_>,
    col_scale: Option<&[f32]>,
) -> Result<GptqQuantized> {
    let layout = format.layout();
    layout.check_data(weight)?;
    groups.check(&layout);
    let (rows, n, g) = (layout.rows(), layout.cols(), layout.group_size());
    assert_eq!(hessian.dim(), n, "hessian must match the weight's columns");
    if let Some(s) = col_scale {
        assert_eq!(s.len(), n, "one column scale per column");
    }
    let (mut hinv, percdamp_applied) =
        hessian.factor_dampened(percdamp, |h| inverse_reference(&h, n))?;
    let nmax = f32::from(format.nmax());
    let mut w: Vec<f64> = weight.iter().map(|&v| f64::from(v)).collect();
    let mut headers = vec![GroupHeader::ZERO; layout.num_groups()];
    let mut codes = vec![0u8; layout.numel()];
    let mut grids = vec![GroupHeader::ZERO.unpack(); rows];
    let mut row_damped_errors = vec![0f64; rows];
    for j in 0..n {
        if j % g == 0 {
            let end = (j + g).min(n);
            for r in 0..rows {
                let group = r * layout.groups_per_row() + j / g;
                if let Groups::Grids(given) = groups {
                    grids[r] = given[group];
                    continue;
                }
                let header = match groups {
                    Groups::Static(given) => given[group],
                    Groups::Grids(_) => unreachable!("handled above"),
                    Groups::Dynamic(fit) => {
                        let values: Vec<f32> = (j..end)
                            .map(|k| scaled(w[r * n + k], col_scale, k))
                            .collect();
                        fit_group(&values, format.nmax(), &fit)
                            .ok_or_else(|| range_error(r, j..end, &values))?
                    }
                };
                headers[group] = header;
                grids[r] = header.unpack();
            }
        }
        let d = hinv[j * n + j];
        for r in 0..rows {
            let (code, decoded) = nearest_scaled(w[r * n + j], grids[r], nmax, col_scale, j);
            codes[r * n + j] = code;
            let delta = w[r * n + j] - decoded;
            row_damped_errors[r] += delta * delta / d;
            for k in j + 1..n {
                w[r * n + k] -= delta * hinv[j * n + k] / d;
            }
        }
        // Remove column j from the problem: H⁻¹ of the remaining columns.
        for a in j + 1..n {
            let f = hinv[a * n + j] / d;
            for b in j + 1..n {
                hinv[a * n + b] -= f * hinv[j * n + b];
            }
        }
    }
    Ok(GptqQuantized {
        headers,
        codes,
        percdamp_applied,
        row_damped_errors,
    })
}
