//! Dense f64 linear algebra for the sweep: Cholesky factorization, inversion of a triangular
//! factor, and from them the upper Cholesky factor of the inverse Hessian. The fast paths are
//! LAPACK from the system's OpenBLAS (Debian's libopenblas-dev, which carries LAPACK): `dpotrf`
//! through ndarray-linalg's [`CholeskyInplace`], and `dtrtri` through lapack-sys (ndarray-linalg
//! does not wrap a triangular inverse); each beside a plain reference it is tested against.
//!
//! GPTQ needs `U`, upper triangular with `H⁻¹ = Uᵀ U` (Frantar et al. 2022, §3 "Cholesky
//! reformulation"). The reference computes it as `chol(chol_inverse(chol(H)), upper)`: three
//! cubic steps. Here two suffice. With `P` the reversal permutation, let `L` be the lower
//! Cholesky factor of `P H P`; then `H = V Vᵀ` with `V = P L P` upper triangular, so
//! `H⁻¹ = V⁻ᵀ V⁻¹ = Uᵀ U` with `U = V⁻¹ = P L⁻¹ P`, upper triangular with a positive diagonal:
//! by uniqueness it is the factor wanted. Cost: one Cholesky and one triangular inverse,
//! `n³/3` multiply-adds in all, both in place (an 8960-wide layer's second `n × n` matrix
//! would be 0.64 GB).
//!
//! All matrices are `n × n`, row-major, in plain slices. OpenBLAS runs these single-threaded
//! inside the host's encode regions, so their bits do not depend on the thread count.

use ndarray::ArrayViewMut2;
use ndarray_linalg::error::LinalgError;
use ndarray_linalg::{CholeskyInplace, UPLO};

/// A factorization met a pivot that is not positive (or not finite): the matrix is not
/// (numerically) positive definite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotPositiveDefinite {
    /// The column of the failing pivot, in the caller's numbering.
    pub column: usize,
}

/// In place: the lower Cholesky factor `L` (`A = L Lᵀ`) of the symmetric positive-definite `a`,
/// of which only the lower triangle is read; the strict upper triangle is set to zero. LAPACK's
/// `dpotrf` (ndarray-linalg); a pivot that is not positive, or a factor whose diagonal is not
/// finite (NaN input), is reported with its column.
pub fn cholesky_lower(a: &mut [f64], n: usize) -> Result<(), NotPositiveDefinite> {
    assert_eq!(a.len(), n * n, "cholesky_lower: matrix must be n x n");
    if n == 0 {
        return Ok(());
    }
    let factored = ArrayViewMut2::from_shape((n, n), &mut *a).expect("n x n").cholesky_inplace(UPLO::Lower).map(|_| ());
    match factored {
        Ok(()) => {}
        Err(LinalgError::Lapack(lax::error::Error::LapackComputationalFailure { return_code })) => {
            // dpotrf: "the leading minor of order info is not positive".
            return Err(NotPositiveDefinite { column: (return_code.max(1) - 1) as usize });
        }
        Err(e) => panic!("dpotrf on a contiguous {n} x {n} matrix: {e}"),
    }
    if let Some(column) = (0..n).find(|&j| !(a[j * n + j] > 0.0 && a[j * n + j].is_finite())) {
        return Err(NotPositiveDefinite { column });
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

/// Forward substitution for the lower-triangular block `l[b0..b1, b0..b1]` into
/// `x[b0..b1, b0..b1]`, one column at a time (the reference's arithmetic).
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

/// `L⁻¹` of a lower-triangular `l` with a positive diagonal (as [`cholesky_lower`] returns): a
/// copy through [`invert_lower_in_place`].
pub fn invert_lower(l: &[f64], n: usize) -> Vec<f64> {
    assert_eq!(l.len(), n * n, "invert_lower: matrix must be n x n");
    let mut x = l.to_vec();
    invert_lower_in_place(&mut x, n);
    x
}

/// In place: `a` holds a lower-triangular `L` with a positive diagonal and becomes `L⁻¹`, with
/// its strict upper triangle zero. LAPACK's `dtrtri`: a row-major lower triangle is the
/// column-major upper one, so it is called with `uplo = 'U'` on the same storage. Panics on a zero
/// diagonal entry, which a Cholesky factor does not have.
pub fn invert_lower_in_place(a: &mut [f64], n: usize) {
    assert_eq!(a.len(), n * n, "invert_lower_in_place: matrix must be n x n");
    if n == 0 {
        return;
    }
    let order = i32::try_from(n).expect("matrix order fits LAPACK's int");
    let mut info = 0i32;
    // SAFETY: `a` is n × n contiguous f64 with leading dimension n; dtrtri reads and writes only
    // that triangle and reports problems through `info`.
    unsafe {
        lapack_sys::dtrtri_(c"U".as_ptr(), c"N".as_ptr(), &order, a.as_mut_ptr(), &order, &mut info);
    }
    assert!(info == 0, "dtrtri on a {n} x {n} triangular factor returned {info}");
    zero_upper(a, n);
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
