//! Dense f64 linear algebra for the sweep: Cholesky factorization, inversion of a triangular
//! factor, and from them the upper Cholesky factor of the inverse Hessian; each a blocked fast
//! path (the bulk of the work in matrix products) beside a plain reference.
//!
//! GPTQ needs `U`, upper triangular with `H⁻¹ = Uᵀ U` (Frantar et al. 2022, §3 "Cholesky
//! reformulation"). The reference computes it as `chol(chol_inverse(chol(H)), upper)`: three
//! cubic steps. Here two suffice. With `P` the reversal permutation, let `L` be the lower
//! Cholesky factor of `P H P`; then `H = V Vᵀ` with `V = P L P` upper triangular, so
//! `H⁻¹ = V⁻ᵀ V⁻¹ = Uᵀ U` with `U = V⁻¹ = P L⁻¹ P`, upper triangular with a positive diagonal:
//! by uniqueness it is the factor wanted. Cost: one Cholesky and one triangular inverse,
//! `n³/3` multiply-adds in all.
//!
//! All matrices are `n × n`, row-major, in plain slices.

use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayView2, ArrayViewMut2, Axis, s};

/// Panel width of the blocked Cholesky factorization. Narrow panels keep the column-by-column
/// part (`n² · width / 4` multiply-adds) small; measured fastest of 32, 64, 128 at n = 1536.
const CHOLESKY_BLOCK: usize = 32;
/// Tile of the blocked triangular inverse, whose work is all in `tile × k × tile` products;
/// measured fastest of 32, 64, 128 at n = 1536.
const INVERSE_BLOCK: usize = 64;

/// A factorization met a pivot that is not positive (or not finite): the matrix is not
/// (numerically) positive definite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotPositiveDefinite {
    /// The column of the failing pivot, in the caller's numbering.
    pub column: usize,
}

/// `Σ a_i b_i` with four independent accumulators, so the loop vectorizes.
#[inline]
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0f64; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..4 {
            acc[k] += x[k] * y[k];
        }
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// In place: the lower Cholesky factor `L` (`A = L Lᵀ`) of the symmetric positive-definite `a`,
/// of which only the lower triangle is read; the strict upper triangle is set to zero.
///
/// Left-looking and blocked: each panel of 32 columns is first updated with everything to
/// its left in one matrix product, then factored column by column.
pub fn cholesky_lower(a: &mut [f64], n: usize) -> Result<(), NotPositiveDefinite> {
    assert_eq!(a.len(), n * n, "cholesky_lower: matrix must be n x n");
    for k0 in (0..n).step_by(CHOLESKY_BLOCK) {
        let k1 = (k0 + CHOLESKY_BLOCK).min(n);
        if k0 > 0 {
            // A[k0.., k0..k1] −= L[k0.., ..k0] · L[k0..k1, ..k0]ᵀ
            let mut view = ArrayViewMut2::from_shape((n, n), &mut *a).expect("n x n");
            let (left, mut right) = view.view_mut().split_at(Axis(1), k0);
            general_mat_mul(
                -1.0,
                &left.slice(s![k0.., ..]),
                &left.slice(s![k0..k1, ..]).t(),
                1.0,
                &mut right.slice_mut(s![k0.., ..k1 - k0]),
            );
        }
        for j in k0..k1 {
            let (head, tail) = a.split_at_mut((j + 1) * n);
            let row_j = &mut head[j * n..];
            let d = row_j[j] - dot(&row_j[k0..j], &row_j[k0..j]);
            if !(d > 0.0 && d.is_finite()) {
                return Err(NotPositiveDefinite { column: j });
            }
            let ljj = d.sqrt();
            row_j[j] = ljj;
            let row_j = &head[j * n..];
            for row_i in tail.chunks_exact_mut(n) {
                row_i[j] = (row_i[j] - dot(&row_i[k0..j], &row_j[k0..j])) / ljj;
            }
        }
    }
    zero_upper(a, n);
    Ok(())
}

/// Reference for [`cholesky_lower`]: the textbook column-by-column algorithm with plain
/// sequential sums.
pub fn cholesky_lower_reference(a: &mut [f64], n: usize) -> Result<(), NotPositiveDefinite> {
    assert_eq!(
        a.len(),
        n * n,
        "cholesky_lower_reference: matrix must be n x n"
    );
    for j in 0..n {
        let mut d = a[j * n + j];
        for m in 0..j {
            d -= a[j * n + m] * a[j * n + m];
        }
        if !(d > 0.0 && d.is_finite()) {
            return Err(NotPositiveDefinite { column: j });
        }
        let ljj = d.sqrt();
        a[j * n + j] = ljj;
        for i in j + 1..n {
            let mut v = a[i * n + j];
            for m in 0..j {
                v -= a[i * n + m] * a[j * n + m];
            }
            a[i * n + j] = v / ljj;
        }
    }
    zero_upper(a, n);
    Ok(())
}

fn zero_upper(a: &mut [f64], n: usize) {
    for (i, row) in a.chunks_exact_mut(n.max(1)).enumerate().take(n) {
        row[i + 1..].fill(0.0);
    }
}

/// Invert the lower-triangular block `l[b0..b1, b0..b1]` into `x[b0..b1, b0..b1]` by forward
/// substitution, one column at a time.
fn invert_lower_block(l: &[f64], x: &mut [f64], n: usize, b0: usize, b1: usize) {
    for j in b0..b1 {
        x[j * n + j] = 1.0 / l[j * n + j];
        for i in j + 1..b1 {
            let mut sum = 0f64;
            for m in j..i {
                sum += l[i * n + m] * x[m * n + j];
            }
            x[i * n + j] = -sum / l[i * n + i];
        }
    }
}

/// `L⁻¹` of a lower-triangular `l` with a positive diagonal (as [`cholesky_lower`] returns).
///
/// Blocked: the diagonal tiles are inverted directly; then, tile column by tile column and
/// downwards, `X[I,J] = −X[I,I] · (L[I, J..I] · X[J..I, J])`, two matrix products per tile.
pub fn invert_lower(l: &[f64], n: usize) -> Vec<f64> {
    assert_eq!(l.len(), n * n, "invert_lower: matrix must be n x n");
    let mut x = vec![0f64; n * n];
    for b0 in (0..n).step_by(INVERSE_BLOCK) {
        invert_lower_block(l, &mut x, n, b0, (b0 + INVERSE_BLOCK).min(n));
    }
    let lv = ArrayView2::from_shape((n, n), l).expect("n x n");
    for j0 in (0..n).step_by(INVERSE_BLOCK) {
        let j1 = (j0 + INVERSE_BLOCK).min(n);
        for i0 in (j1..n).step_by(INVERSE_BLOCK) {
            let i1 = (i0 + INVERSE_BLOCK).min(n);
            let mut t = Array2::<f64>::zeros((i1 - i0, j1 - j0));
            {
                let xv = ArrayView2::from_shape((n, n), &x[..]).expect("n x n");
                general_mat_mul(
                    1.0,
                    &lv.slice(s![i0..i1, j0..i0]),
                    &xv.slice(s![j0..i0, j0..j1]),
                    0.0,
                    &mut t,
                );
            }
            let mut xv = ArrayViewMut2::from_shape((n, n), &mut x[..]).expect("n x n");
            let (mut left, right) = xv.view_mut().split_at(Axis(1), i0);
            general_mat_mul(
                -1.0,
                &right.slice(s![i0..i1, ..i1 - i0]),
                &t,
                0.0,
                &mut left.slice_mut(s![i0..i1, j0..j1]),
            );
        }
    }
    x
}

/// [`invert_lower`] in place: `a` holds `L` (strict upper triangle zero, as [`cholesky_lower`]
/// leaves it) and becomes `L⁻¹`, bit for bit what [`invert_lower`] returns, without a second
/// `n × n` matrix (for an 8960-wide layer that is 0.64 GB). The tiles are visited in the same
/// order with the same products: a tile `X[I,J]` reads `L[I, J..I]`, which no earlier step has
/// overwritten (columns are done left to right), and overwrites `L[I,J]` only after reading it.
pub fn invert_lower_in_place(a: &mut [f64], n: usize) {
    assert_eq!(a.len(), n * n, "invert_lower_in_place: matrix must be n x n");
    for b0 in (0..n).step_by(INVERSE_BLOCK) {
        let b1 = (b0 + INVERSE_BLOCK).min(n);
        let bs = b1 - b0;
        let mut lt = vec![0f64; bs * bs];
        for i in 0..bs {
            lt[i * bs..(i + 1) * bs].copy_from_slice(&a[(b0 + i) * n + b0..(b0 + i) * n + b1]);
        }
        let mut xt = vec![0f64; bs * bs];
        invert_lower_block(&lt, &mut xt, bs, 0, bs);
        for i in 0..bs {
            a[(b0 + i) * n + b0..(b0 + i) * n + b1].copy_from_slice(&xt[i * bs..(i + 1) * bs]);
        }
    }
    for j0 in (0..n).step_by(INVERSE_BLOCK) {
        let j1 = (j0 + INVERSE_BLOCK).min(n);
        for i0 in (j1..n).step_by(INVERSE_BLOCK) {
            let i1 = (i0 + INVERSE_BLOCK).min(n);
            let mut t = Array2::<f64>::zeros((i1 - i0, j1 - j0));
            {
                let v = ArrayView2::from_shape((n, n), &a[..]).expect("n x n");
                general_mat_mul(1.0, &v.slice(s![i0..i1, j0..i0]), &v.slice(s![j0..i0, j0..j1]), 0.0, &mut t);
            }
            let mut xv = ArrayViewMut2::from_shape((n, n), &mut a[..]).expect("n x n");
            let (mut left, right) = xv.view_mut().split_at(Axis(1), i0);
            general_mat_mul(-1.0, &right.slice(s![i0..i1, ..i1 - i0]), &t, 0.0, &mut left.slice_mut(s![i0..i1, j0..j1]));
        }
    }
}

/// Reference for [`invert_lower`]: forward substitution on the whole matrix.
pub fn invert_lower_reference(l: &[f64], n: usize) -> Vec<f64> {
    assert_eq!(
        l.len(),
        n * n,
        "invert_lower_reference: matrix must be n x n"
    );
    let mut x = vec![0f64; n * n];
    invert_lower_block(l, &mut x, n, 0, n);
    x
}

/// The upper-triangular `U` with `H⁻¹ = Uᵀ U` of a symmetric positive-definite `h`, by the
/// reversal identity of the module docs, reusing `h`'s storage. Of `h` only the upper triangle is
/// read (it becomes the lower triangle of `P h P`, which the factorization reads). On failure,
/// `column` is the column of `h` (not of its reversal) at which the factorization stopped.
pub fn inverse_cholesky_upper(mut h: Vec<f64>, n: usize) -> Result<Vec<f64>, NotPositiveDefinite> {
    assert_eq!(
        h.len(),
        n * n,
        "inverse_cholesky_upper: matrix must be n x n"
    );
    // `P a P` maps entry [i, j] to [n−1−i, n−1−j]: in row-major order, the flat array reversed.
    h.reverse();
    cholesky_lower(&mut h, n).map_err(|e| NotPositiveDefinite {
        column: n - 1 - e.column,
    })?;
    invert_lower_in_place(&mut h, n);
    h.reverse();
    Ok(h)
}

/// `H⁻¹` of a symmetric positive-definite `h` by Gauss–Jordan elimination without pivoting
/// (every pivot of a positive-definite matrix is positive; a pivot that is not is reported as
/// [`NotPositiveDefinite`]). The reference sweep's explicit inverse, independent of the
/// Cholesky code.
pub fn inverse_reference(h: &[f64], n: usize) -> Result<Vec<f64>, NotPositiveDefinite> {
    assert_eq!(h.len(), n * n, "inverse_reference: matrix must be n x n");
    let mut a = h.to_vec();
    let mut inv = vec![0f64; n * n];
    for j in 0..n {
        inv[j * n + j] = 1.0;
    }
    for k in 0..n {
        let pivot = a[k * n + k];
        if !(pivot > 0.0 && pivot.is_finite()) {
            return Err(NotPositiveDefinite { column: k });
        }
        for j in 0..n {
            a[k * n + j] /= pivot;
            inv[k * n + j] /= pivot;
        }
        for i in (0..n).filter(|&i| i != k) {
            let f = a[i * n + k];
            if f != 0.0 {
                for j in 0..n {
                    a[i * n + j] -= f * a[k * n + j];
                    inv[i * n + j] -= f * inv[k * n + j];
                }
            }
        }
    }
    Ok(inv)
}
