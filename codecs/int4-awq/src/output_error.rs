//! The layer's output error on the calibration activations: `tr(E G Eᵀ)` with `E = W − Ŵ` and
//! `G = XᵀX / n`, i.e. the mean over calibration tokens of `‖(W − Ŵ) x‖²`. AWQ's α search
//! minimizes this (the paper measures it on the activations directly; with the Gram matrix the
//! cost no longer depends on the number of tokens).

use ndarray::{Array2, ArrayView2, linalg::general_mat_mul};

/// Rows per matrix product: bounds the evaluator's buffers (two `ROW_BLOCK × cols` f32 matrices)
/// whatever the layer's height, e.g. for a 49,152-row `lm_head`.
const ROW_BLOCK: usize = 512;

/// Evaluates `tr(E G Eᵀ)` for one layer, reusing its buffers across candidates.
pub struct OutputError<'a> {
    gram: ArrayView2<'a, f32>,
    cols: usize,
    error: Array2<f32>,
    product: Array2<f32>,
}

impl<'a> OutputError<'a> {
    /// For a `rows × cols` weight; `gram` is `cols × cols`, row-major (checked by the caller).
    pub fn new(gram: &'a [f32], rows: usize, cols: usize) -> Self {
        let gram = ArrayView2::from_shape((cols, cols), gram).expect("gram is cols x cols");
        let block = rows.min(ROW_BLOCK);
        Self {
            gram,
            cols,
            error: Array2::zeros((block, cols)),
            product: Array2::zeros((block, cols)),
        }
    }

    /// `tr((W − Ŵ) G (W − Ŵ)ᵀ)`: per block of rows, `P = E·G` in f32 (one matrix product), then
    /// `Σ P ∘ E` row by row, each row's sum in f64.
    pub fn error(&mut self, weight: &[f32], reconstruction: &[f32]) -> f64 {
        self.quadratic_form(weight, Some(reconstruction))
    }

    /// `tr(W G Wᵀ)`: the output's energy, what [`OutputError::error`] is relative to.
    pub fn energy(&mut self, weight: &[f32]) -> f64 {
        self.quadratic_form(weight, None)
    }

    /// `tr(E G Eᵀ)` with `E = weight − reconstruction` (or `weight`).
    fn quadratic_form(&mut self, weight: &[f32], reconstruction: Option<&[f32]>) -> f64 {
        let cols = self.cols;
        if cols == 0 || weight.is_empty() {
            return 0.0;
        }
        let block = self.error.nrows() * cols;
        let mut total = 0f64;
        for (start, w) in (0..weight.len()).step_by(block).zip(weight.chunks(block)) {
            let rows = w.len() / cols;
            let mut e = self.error.slice_mut(ndarray::s![..rows, ..]);
            let e_flat = e
                .as_slice_mut()
                .expect("a row range of a standard-layout matrix");
            match reconstruction {
                Some(r) => {
                    for ((d, &w), &r) in e_flat.iter_mut().zip(w).zip(&r[start..start + w.len()]) {
                        *d = w - r;
                    }
                }
                None => e_flat.copy_from_slice(w),
            }
            let mut p = self.product.slice_mut(ndarray::s![..rows, ..]);
            general_mat_mul(1.0, &e, &self.gram, 0.0, &mut p);
            let (e, p) = (
                e.as_slice().expect("standard layout"),
                p.as_slice().expect("standard layout"),
            );
            total += e
                .chunks_exact(cols)
                .zip(p.chunks_exact(cols))
                .map(|(e, p)| row_dot(e, p))
                .sum::<f64>();
        }
        total
    }
}

/// `Σ e_k p_k` of one row: eight f32 lanes (the products are of similar size, a row has at most
/// a few thousand), then in f64.
fn row_dot(e: &[f32], p: &[f32]) -> f64 {
    let mut acc = [0f32; 8];
    let (ec, pc) = (e.chunks_exact(8), p.chunks_exact(8));
    let tail: f64 = ec
        .remainder()
        .iter()
        .zip(pc.remainder())
        .map(|(&a, &b)| f64::from(a) * f64::from(b))
        .sum();
    for (e, p) in ec.zip(pc) {
        for k in 0..8 {
            acc[k] += e[k] * p[k];
        }
    }
    acc.iter().map(|&v| f64::from(v)).sum::<f64>() + tail
}

/// `tr(E G Eᵀ)` by the definition, `Σ_r Σ_i Σ_j e_ri G_ij e_rj` in f64: the reference the fast
/// evaluator is tested against.
pub fn output_error_reference(
    weight: &[f32],
    reconstruction: &[f32],
    gram: &[f32],
    cols: usize,
) -> f64 {
    let mut total = 0f64;
    if cols == 0 {
        return 0.0;
    }
    for (w, r) in weight
        .chunks_exact(cols)
        .zip(reconstruction.chunks_exact(cols))
    {
        let e: Vec<f64> = w
            .iter()
            .zip(r)
            .map(|(&a, &b)| f64::from(a) - f64::from(b))
            .collect();
        for i in 0..cols {
            let row = &gram[i * cols..(i + 1) * cols];
            let ge: f64 = row.iter().zip(&e).map(|(&g, &x)| f64::from(g) * x).sum();
            total += e[i] * ge;
        }
    }
    total
}
