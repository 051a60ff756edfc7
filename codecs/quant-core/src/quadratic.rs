//! Quadratic forms `a G aᵀ` of the rows of a matrix with a Gram matrix `G = XᵀX / n`: a layer's
//! output error `tr(E G Eᵀ)` (`E = W − Ŵ`) on its calibration activations, per row or in total,
//! with one f32 matrix product (and a plain f64 reference).

use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayView2};

/// `tr(A G Aᵀ)` for a row-major `rows × cols` matrix `a` and the `cols × cols` `gram`: the sum
/// of [`quadratic_form_rows`].
pub fn quadratic_form(a: &[f32], gram: &[f32], cols: usize) -> f64 {
    if cols == 0 {
        return 0.0;
    }
    quadratic_form_rows(a, gram, a.len() / cols, cols)
        .iter()
        .sum()
}

/// `a_r G a_rᵀ` for every row `a_r` of a row-major `rows × cols` matrix `a` and the
/// `cols × cols` `gram`: `P = A·G` in f32 (one matrix product), then each row of `P ∘ A` summed
/// in f64.
pub fn quadratic_form_rows(a: &[f32], gram: &[f32], rows: usize, cols: usize) -> Vec<f64> {
    assert_eq!(
        a.len(),
        rows * cols,
        "quadratic_form_rows: a must be rows x cols"
    );
    if cols == 0 || rows == 0 {
        return vec![0.0; rows];
    }
    let a_view = ArrayView2::from_shape((rows, cols), a).expect("rows x cols");
    let g_view = ArrayView2::from_shape((cols, cols), gram).expect("cols x cols");
    let mut product = Array2::<f32>::zeros((rows, cols));
    general_mat_mul(1.0, &a_view, &g_view, 0.0, &mut product);
    let p = product.as_slice().expect("standard layout");
    a.chunks_exact(cols)
        .zip(p.chunks_exact(cols))
        .map(|(a, p)| {
            let mut acc = [0f32; 8];
            let (ac, pc) = (a.chunks_exact(8), p.chunks_exact(8));
            let tail: f64 = ac
                .remainder()
                .iter()
                .zip(pc.remainder())
                .map(|(&x, &y)| f64::from(x) * f64::from(y))
                .sum();
            for (x, y) in ac.zip(pc) {
                for k in 0..8 {
                    acc[k] += x[k] * y[k];
                }
            }
            acc.iter().map(|&v| f64::from(v)).sum::<f64>() + tail
        })
        .collect()
}

/// `tr(A G Aᵀ)` by the definition, `Σ_r Σ_i Σ_j a_ri G_ij a_rj` in f64: the reference.
pub fn quadratic_form_reference(a: &[f32], gram: &[f32], cols: usize) -> f64 {
    if cols == 0 {
        return 0.0;
    }
    let mut total = 0f64;
    for row in a.chunks_exact(cols) {
        for i in 0..cols {
            let g = &gram[i * cols..(i + 1) * cols];
            let ga: f64 = g
                .iter()
                .zip(row)
                .map(|(&g, &x)| f64::from(g) * f64::from(x))
                .sum();
            total += f64::from(row[i]) * ga;
        }
    }
    total
}

/// `W − Ŵ`, element by element in f32 (exact whenever the two are within a factor of two, as a
/// weight and its reconstruction nearly always are; otherwise one rounding).
pub fn difference(weight: &[f32], reconstruction: &[f32]) -> Vec<f32> {
    weight
        .iter()
        .zip(reconstruction)
        .map(|(w, r)| w - r)
        .collect()
}

