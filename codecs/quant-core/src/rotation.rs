//! Incoherence processing: a seeded random orthogonal transform of a layer's input dimension
//! (QuIP, QuIP#, HIGGS), so that the rotated weights look Gaussian and have no outliers for a
//! grid to waste its range on.
//!
//! A linear layer `y = W x` is unchanged by `W' = W Tᵀ`, `x' = T x` for any orthogonal `T`. A
//! codec quantizes `W'` (each row `w` becomes `T w`) with the rotated statistics
//! `G' = T G Tᵀ` (and `diag G'` for per-channel ones), and decodes `Ŵ = Ŵ' T` (each row
//! `Tᵀ ŵ'`). The output error is the same in both domains, `tr(E' G' E'ᵀ) = tr(E G Eᵀ)`, so every
//! figure a codec records still means what it meant.
//!
//! # The transform
//!
//! `T = (H_p ⊗ Q_m) · diag(σ)` for `n = p · m` with `p` the largest power of two dividing `n`:
//! `σ` random signs, `H_p` the normalized Walsh–Hadamard matrix, `Q_m` a random orthogonal
//! `m × m` matrix (Gram–Schmidt on a Gaussian matrix, in f64). Applying it costs
//! `n · (log₂ p + m)` multiply-adds per vector.
//!
//! Why a Kronecker product and not a block-diagonal Hadamard (QuIP#'s choice for dimensions that
//! are not powers of two): SmolLM2's 576 = 64 · 9 would split into nine independent 64-wide
//! blocks, and an outlier channel would be spread over 64 entries only; with `H_64 ⊗ Q_9` every
//! output entry mixes all 576 inputs. 1536 = 512 · 3, 8960 = 256 · 35 and 11008 = 256 · 43 work
//! the same way; an odd `n` is a dense random rotation (`p = 1`), which stays cheap only for the
//! small dimensions it occurs at.
//!
//! Everything is deterministic in the seed (its own xorshift generator, no platform-dependent
//! library, [`crate::rng`]), so the decoder rebuilds `T` from the `(n, seed)` recorded with the tensor.

use crate::rng::Xorshift;

/// A seeded random orthogonal transform of dimension `n` (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct Rotation {
    n: usize,
    /// The power-of-two Hadamard factor `p`.
    p: usize,
    /// The dense factor's side `m = n / p`.
    m: usize,
    /// `Q_m`, row-major, in f32 (what is applied).
    q: Vec<f32>,
    /// Random signs `σ`, ±1.
    signs: Vec<f32>,
    seed: u64,
}

/// A random orthogonal `m × m` matrix, row-major: modified Gram–Schmidt (twice, for orthogonality
/// to f64 precision) on the rows of a Gaussian matrix.
fn random_orthogonal(m: usize, rng: &mut Xorshift) -> Vec<f64> {
    let mut a: Vec<f64> = (0..m * m).map(|_| rng.normal()).collect();
    for i in 0..m {
        for _pass in 0..2 {
            for k in 0..i {
                let dot: f64 = (0..m).map(|j| a[i * m + j] * a[k * m + j]).sum();
                for j in 0..m {
                    a[i * m + j] -= dot * a[k * m + j];
                }
            }
        }
        let norm = (0..m).map(|j| a[i * m + j] * a[i * m + j]).sum::<f64>().sqrt();
        for j in 0..m {
            a[i * m + j] /= norm;
        }
    }
    a
}

/// In-place unnormalized fast Walsh–Hadamard transform of `x` (length a power of two):
/// `x ← H x` with `H` the Sylvester Hadamard matrix of ±1 entries, `log₂ n` butterfly passes.
pub fn fwht(x: &mut [f32]) {
    let n = x.len();
    assert!(n.is_power_of_two() || n == 0, "fwht: length {n} is not a power of two");
    let mut h = 1;
    while h < n {
        for block in x.chunks_exact_mut(2 * h) {
            let (lo, hi) = block.split_at_mut(h);
            for (a, b) in lo.iter_mut().zip(hi.iter_mut()) {
                let (u, v) = (*a, *b);
                *a = u + v;
                *b = u - v;
            }
        }
        h *= 2;
    }
}

/// Reference for [`fwht`]: the product with the explicit Sylvester matrix,
/// `H[i][j] = (−1)^popcount(i & j)`, summed in f64.
pub fn fwht_reference(x: &[f32]) -> Vec<f32> {
    let n = x.len();
    assert!(n.is_power_of_two() || n == 0, "fwht_reference: length {n} is not a power of two");
    (0..n)
        .map(|i| {
            (0..n)
                .map(|j| {
                    let sign = if (i & j).count_ones() % 2 == 0 { 1.0 } else { -1.0 };
                    sign * f64::from(x[j])
                })
                .sum::<f64>() as f32
        })
        .collect()
}

impl Rotation {
    /// The transform of dimension `n` for `seed`.
    pub fn new(n: usize, seed: u64) -> Self {
        let p = if n == 0 { 1 } else { 1usize << n.trailing_zeros() };
        let m = n / p.max(1);
        let mut rng = Xorshift::new(seed);
        let signs = (0..n).map(|_| if rng.next_u64() >> 63 == 0 { 1.0 } else { -1.0 }).collect();
        let q = random_orthogonal(m, &mut rng).into_iter().map(|v| v as f32).collect();
        Self { n, p, m, q, signs, seed }
    }

    /// The dimension.
    pub fn dim(&self) -> usize {
        self.n
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The factors `(p, m)`: Hadamard side and dense side, `p · m = n`.
    pub fn factors(&self) -> (usize, usize) {
        (self.p, self.m)
    }

    /// `x ← T x` for one vector of length `n`. `scratch` must hold `n` values.
    ///
    /// With `x` viewed as a `p × m` row-major matrix `X` (index `a·m + b`), `(H_p ⊗ Q_m) x` is
    /// `H_p X Q_mᵀ`: first each row of `X` times `Q_mᵀ`, then the Hadamard transform down each
    /// column (done on the transposed layout in `scratch`, so every butterfly runs on contiguous
    /// memory).
    pub fn apply(&self, x: &mut [f32], scratch: &mut [f32]) {
        let (n, p, m) = (self.n, self.p, self.m);
        assert_eq!(x.len(), n, "rotation of dimension {n} applied to {} values", x.len());
        for (v, s) in x.iter_mut().zip(&self.signs) {
            *v *= s;
        }
        let t = &mut scratch[..n];
        // t[b·p + a] = Σ_c Q[b][c] · X[a][c]
        for a in 0..p {
            let row = &x[a * m..(a + 1) * m];
            for b in 0..m {
                let q = &self.q[b * m..(b + 1) * m];
                t[b * p + a] = q.iter().zip(row).map(|(q, v)| q * v).sum();
            }
        }
        let norm = 1.0 / (p as f32).sqrt();
        for column in t.chunks_exact_mut(p) {
            fwht(column);
        }
        for a in 0..p {
            for b in 0..m {
                x[a * m + b] = t[b * p + a] * norm;
            }
        }
    }

    /// `x ← Tᵀ x` (the inverse): the steps of [`Rotation::apply`] transposed, in reverse order.
    pub fn apply_inverse(&self, x: &mut [f32], scratch: &mut [f32]) {
        let (n, p, m) = (self.n, self.p, self.m);
        assert_eq!(x.len(), n, "rotation of dimension {n} applied to {} values", x.len());
        let t = &mut scratch[..n];
        for a in 0..p {
            for b in 0..m {
                t[b * p + a] = x[a * m + b];
            }
        }
        let norm = 1.0 / (p as f32).sqrt();
        for column in t.chunks_exact_mut(p) {
            fwht(column);
        }
        // X[a][c] = Σ_b Q[b][c] · t[b][a]
        for a in 0..p {
            for c in 0..m {
                let mut acc = 0f32;
                for b in 0..m {
                    acc += self.q[b * m + c] * t[b * p + a];
                }
                x[a * m + c] = acc * norm;
            }
        }
        for (v, s) in x.iter_mut().zip(&self.signs) {
            *v *= s;
        }
    }

    /// The dense matrix `T` (row-major, f64 arithmetic from the same factors): the reference
    /// the fast [`Rotation::apply`] is tested against.
    pub fn matrix_reference(&self) -> Vec<f64> {
        let (n, p, m) = (self.n, self.p, self.m);
        let norm = 1.0 / (p as f64).sqrt();
        let mut t = vec![0f64; n * n];
        for i in 0..n {
            let (a, b) = (i / m, i % m);
            for j in 0..n {
                let (c, d) = (j / m, j % m);
                let h = if (a & c).count_ones() % 2 == 0 { norm } else { -norm };
                t[i * n + j] = h * f64::from(self.q[b * m + d]) * f64::from(self.signs[j]);
            }
        }
        t
    }

    /// Rotate every row of a row-major `rows × n` matrix: `W' = W Tᵀ`.
    pub fn rotate_rows(&self, data: &mut [f32]) {
        let mut scratch = vec![0f32; self.n];
        if self.n == 0 {
            return;
        }
        for row in data.chunks_exact_mut(self.n) {
            self.apply(row, &mut scratch);
        }
    }

    /// Undo [`Rotation::rotate_rows`]: `W = W' T`.
    pub fn unrotate_rows(&self, data: &mut [f32]) {
        let mut scratch = vec![0f32; self.n];
        if self.n == 0 {
            return;
        }
        for row in data.chunks_exact_mut(self.n) {
            self.apply_inverse(row, &mut scratch);
        }
    }

    /// `G' = T G Tᵀ` for a symmetric row-major `n × n` matrix (rotate the rows, then the
    /// columns, which for a symmetric result are the rows of the transpose), symmetrized.
    pub fn rotate_gram(&self, gram: &[f32]) -> Vec<f32> {
        let n = self.n;
        assert_eq!(gram.len(), n * n, "gram must be {n} x {n}");
        // Rows: A = G Tᵀ (each row g_i → T g_i).
        let mut a = gram.to_vec();
        self.rotate_rows(&mut a);
        // Columns: G' = T A, i.e. G'ᵀ = Aᵀ Tᵀ: rotate the rows of Aᵀ.
        let mut at = vec![0f32; n * n];
        for i in 0..n {
            for j in 0..n {
                at[j * n + i] = a[i * n + j];
            }
        }
        self.rotate_rows(&mut at);
        let mut out = vec![0f32; n * n];
        for i in 0..n {
            for j in 0..n {
                out[i * n + j] = 0.5 * (at[j * n + i] + at[i * n + j]);
            }
        }
        out
    }

    /// The statistics of the rotated inputs `x' = T x`: `G' = T G Tᵀ`, `hessian_diag' = diag G'`,
    /// and for `act_scale'` (mean |x'|, which the Gram matrix does not determine) the RMS
    /// `sqrt(diag G')`: after the rotation every channel is a mix of all, near Gaussian, and mean
    /// |x| is then a fixed fraction of the RMS, which column scales' normalization cancels.
    /// Panics without a Gram matrix of this dimension (codecs check their statistics first).
    pub fn rotate_stats(&self, stats: &tenpak_api::LayerStats) -> tenpak_api::LayerStats {
        let gram = stats.gram.as_ref().expect("a Gram matrix to rotate");
        let n = gram.dim;
        let data = self.rotate_gram(&gram.data);
        let diag: Vec<f32> = (0..n).map(|j| data[j * n + j].max(0.0)).collect();
        tenpak_api::LayerStats {
            act_scale: Some(diag.iter().map(|v| v.sqrt()).collect()),
            hessian_diag: Some(diag),
            gram: Some(tenpak_api::Gram { dim: n, data }),
            fisher_diag: None,
            samples: stats.samples,
        }
    }
}

/// A layer prepared for incoherence processing: `W·Tᵀ` and the statistics of `T x`, with the
/// rotation kept to turn the reconstruction back. Codecs encode [`Rotated::data`] with
/// [`Rotated::stats`] (the output error is the same in both bases) and call
/// [`Rotation::unrotate_rows`] on what they decode.
pub struct Rotated {
    /// The seeded rotation `T` of the input dimension.
    pub rotation: Rotation,
    /// `W·Tᵀ`, row-major.
    pub data: Vec<f32>,
    /// [`Rotation::rotate_stats`] of the layer's statistics.
    pub stats: tenpak_api::LayerStats,
}

impl Rotated {
    /// Rotate `weight` (row-major, `cols` wide) and `stats` (which must hold a Gram matrix) by
    /// the rotation of `cols` seeded with `seed`.
    pub fn new(weight: &[f32], cols: usize, stats: &tenpak_api::LayerStats, seed: u64) -> Self {
        let rotation = Rotation::new(cols, seed);
        let mut data = weight.to_vec();
        rotation.rotate_rows(&mut data);
        let stats = rotation.rotate_stats(stats);
        Self { rotation, data, stats }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dimensions that occur in practice and the awkward ones: powers of two, SmolLM2's
    /// 576 and 1536, Qwen2-1.5B's 8960, odd primes, 1.
    const DIMS: &[usize] = &[1, 2, 3, 8, 12, 64, 96, 576, 1536, 8960, 7, 13];

    fn test_vector(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = Xorshift::new(seed);
        // Gaussian with one huge outlier: the case incoherence processing is for.
        let mut v: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
        if n > 2 {
            v[n / 3] = 1000.0;
        }
        v
    }

    #[test]
    fn fwht_matches_the_explicit_matrix() {
        for n in [0usize, 1, 2, 4, 16, 64, 512] {
            let x = test_vector(n, n as u64);
            let mut fast = x.clone();
            fwht(&mut fast);
            let reference = fwht_reference(&x);
            for (i, (a, b)) in fast.iter().zip(&reference).enumerate() {
                assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "n {n} [{i}]: {a} vs {b}");
            }
        }
    }

    #[test]
    fn rotation_is_orthogonal_and_matches_its_matrix() {
        for &n in DIMS.iter().filter(|&&n| n <= 1536) {
            let r = Rotation::new(n, 42);
            let t = r.matrix_reference();
            // T Tᵀ = I.
            for i in (0..n).step_by((n / 16).max(1)) {
                for j in 0..n {
                    let dot: f64 = (0..n).map(|k| t[i * n + k] * t[j * n + k]).sum();
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!((dot - want).abs() < 1e-6, "n {n}: (T Tᵀ)[{i}][{j}] = {dot}");
                }
            }
            let x = test_vector(n, 7);
            let mut fast = x.clone();
            let mut scratch = vec![0f32; n];
            r.apply(&mut fast, &mut scratch);
            let scale = x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
            for i in 0..n {
                let want: f64 = (0..n).map(|j| t[i * n + j] * f64::from(x[j])).sum();
                assert!((f64::from(fast[i]) - want).abs() <= 1e-5 * scale, "n {n} [{i}]: {} vs {want}", fast[i]);
            }
        }
    }

    #[test]
    fn inverse_undoes_the_rotation_and_spreads_an_outlier() {
        for &n in DIMS {
            let r = Rotation::new(n, 3);
            let x = test_vector(n, 11);
            let mut y = x.clone();
            let mut scratch = vec![0f32; n];
            r.apply(&mut y, &mut scratch);
            let norm_x: f64 = x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
            let norm_y: f64 = y.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
            assert!((norm_x - norm_y).abs() <= 1e-5 * norm_x, "n {n}: norm {norm_x} -> {norm_y}");
            if n >= 64 {
                // The outlier (1000 among unit Gaussians) is spread: no entry keeps a large share.
                let max = y.iter().fold(0f32, |m, v| m.max(v.abs()));
                assert!(f64::from(max) < 0.5 * norm_y, "n {n}: max {max} of norm {norm_y}");
            }
            r.apply_inverse(&mut y, &mut scratch);
            for (i, (a, b)) in y.iter().zip(&x).enumerate() {
                assert!((a - b).abs() <= 1e-5 * (norm_x as f32), "n {n} [{i}]: {a} vs {b}");
            }
        }
    }

    #[test]
    fn rotated_gram_preserves_quadratic_forms() {
        let n = 96;
        let r = Rotation::new(n, 5);
        let mut rng = Xorshift::new(9);
        // G = XᵀX / k for random X.
        let k = 200;
        let x: Vec<f64> = (0..k * n).map(|_| rng.normal()).collect();
        let mut g = vec![0f32; n * n];
        for i in 0..n {
            for j in 0..n {
                g[i * n + j] = ((0..k).map(|t| x[t * n + i] * x[t * n + j]).sum::<f64>() / k as f64) as f32;
            }
        }
        let g_rot = r.rotate_gram(&g);
        let w = test_vector(n, 1);
        let mut w_rot = w.clone();
        r.rotate_rows(&mut w_rot);
        let form = |v: &[f32], m: &[f32]| -> f64 {
            (0..n).map(|i| (0..n).map(|j| f64::from(v[i]) * f64::from(m[i * n + j]) * f64::from(v[j])).sum::<f64>()).sum()
        };
        let (a, b) = (form(&w, &g), form(&w_rot, &g_rot));
        assert!((a - b).abs() <= 1e-4 * a, "w G wᵀ = {a}, rotated {b}");
        // Deterministic in the seed, different across seeds.
        assert_eq!(Rotation::new(n, 5), r);
        assert_ne!(Rotation::new(n, 6).matrix_reference(), r.matrix_reference());
    }
}
