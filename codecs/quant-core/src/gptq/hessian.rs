//! The layer Hessian GPTQ works with: the calibration Gram matrix, checked, symmetrized, in f64,
//! with dead input channels neutralized and the diagonal dampened.
//!
//! For a linear layer `y = W x`, the output error of a weight error `E` averaged over the
//! calibration tokens is `tr(E G Eᵀ)` with `G = XᵀX / n`, so `G` is (half) the Hessian of that
//! error in each row of `W` (Frantar et al. 2022, §3). Two repairs make it invertible, both from
//! the reference implementation (IST-DASLab/gptq, `fasterquant`):
//!
//! - a *dead* channel (`G_jj = 0`: the input was zero on every calibration token) gets
//!   `H_jj = 1`, so it is coded on its own, like round-to-nearest, and spreads no error;
//! - `percdamp · mean(diag H)` is added to the diagonal. A Gram matrix from fewer tokens than
//!   columns is singular, and one from f32 sums can be slightly indefinite; dampening also keeps
//!   the error updates from growing without bound along directions the calibration data barely
//!   saw.
//!
//! Unlike the reference, the weights of a dead channel are not zeroed: on the calibration data
//! that makes no difference (the channel is zero there), and a channel silent on the
//! calibration text need not be silent on every text, so its weights are kept and coded to their
//! nearest level.
//!
//! Errors name the statistic and the position but not the codec: a codec puts its id in front
//! ([`tenpak_api::Error::context`]).

use tenpak_api::{Error, ErrorKind, LayerStats, Result};

use crate::linalg::NotPositiveDefinite;

/// How many times the dampening is raised ×10 after a failed factorization before giving up
/// (so the largest tried is `percdamp · 10⁴`).
pub const MAX_DAMPING_RETRIES: usize = 4;

/// A layer's Gram matrix, checked and prepared, before dampening.
#[derive(Clone, Debug)]
pub struct Hessian {
    dim: usize,
    /// `G` as given (f32, row-major). `(G + Gᵀ) / 2` in f64 with the dead channels' diagonal set
    /// to 1 is rebuilt from it by [`Hessian::damped`], so that f64 matrix (0.64 GB for an
    /// 8960-wide input) exists only while it is being factored.
    gram: Vec<f32>,
    dead: Vec<bool>,
    mean_diag: f64,
}

impl Hessian {
    /// The Hessian of a layer with `cols` input columns from its statistics. A missing `gram`
    /// is an [`ErrorKind::MissingStats`] error naming it; a wrong size, a NaN/Inf or a negative
    /// diagonal entry (no Gram matrix has one) is [`ErrorKind::InvalidInput`] naming the
    /// position.
    pub fn from_stats(stats: &LayerStats, cols: usize) -> Result<Self> {
        let gram = stats.gram.as_ref().ok_or_else(|| {
            Error::new(
                ErrorKind::MissingStats,
                "the calibration statistic `gram` (XᵀX / n of the layer's inputs) is needed and was \
                 not provided",
            )
        })?;
        if gram.dim != cols || gram.data.len() != cols * cols {
            return Err(Error::invalid_input(format!(
                "statistic `gram` must be {cols} x {cols} ({} values) for a layer with {cols} input \
                 columns, got dim {} with {} values",
                cols * cols,
                gram.dim,
                gram.data.len()
            )));
        }
        Self::from_gram(&gram.data, cols)
    }

    /// The Hessian from a `cols × cols` row-major Gram matrix (checked as
    /// [`Hessian::from_stats`] does; panics if the length is wrong, a caller bug).
    pub fn from_gram(gram: &[f32], cols: usize) -> Result<Self> {
        assert_eq!(gram.len(), cols * cols, "gram must be cols x cols");
        if let Some(i) = gram.iter().position(|v| !v.is_finite()) {
            return Err(Error::invalid_input(format!(
                "statistic `gram` has non-finite value {} at [{}, {}]",
                gram[i],
                i / cols,
                i % cols
            )));
        }
        if let Some(j) = (0..cols).find(|&j| gram[j * cols + j] < 0.0) {
            return Err(Error::invalid_input(format!(
                "statistic `gram` has negative diagonal entry {} at [{j}, {j}]; a Gram matrix XᵀX / n \
                 has none",
                gram[j * cols + j]
            )));
        }
        // (G + Gᵀ) / 2, tile by tile so the transposed reads stay in cache.
        let dead: Vec<bool> = (0..cols).map(|j| gram[j * cols + j] == 0.0).collect();
        let diagonal = |j: usize| {
            if dead[j] {
                1.0
            } else {
                f64::from(gram[j * cols + j])
            }
        };
        let mean_diag = if cols == 0 {
            0.0
        } else {
            (0..cols).map(diagonal).sum::<f64>() / cols as f64
        };
        Ok(Self {
            dim: cols,
            gram: gram.to_vec(),
            dead,
            mean_diag,
        })
    }

    /// `(G + Gᵀ) / 2` in f64, row-major, with the diagonal of dead channels set to 1.
    fn symmetrized(&self) -> Vec<f64> {
        const TILE: usize = 32;
        let (cols, gram) = (self.dim, &self.gram);
        let mut data = vec![0f64; cols * cols];
        for i0 in (0..cols).step_by(TILE) {
            for j0 in (0..cols).step_by(TILE) {
                for i in i0..(i0 + TILE).min(cols) {
                    for j in j0..(j0 + TILE).min(cols) {
                        data[i * cols + j] =
                            0.5 * (f64::from(gram[i * cols + j]) + f64::from(gram[j * cols + i]));
                    }
                }
            }
        }
        for j in (0..cols).filter(|&j| self.dead[j]) {
            data[j * cols + j] = 1.0;
        }
        data
    }

    /// Side length (the layer's input columns).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Which input channels are dead (zero on every calibration token).
    pub fn dead(&self) -> &[bool] {
        &self.dead
    }

    /// Mean of the diagonal after the dead-channel repair: the unit of `percdamp`.
    pub fn mean_diag(&self) -> f64 {
        self.mean_diag
    }

    /// `H + percdamp · mean(diag H) · I`, row-major.
    pub fn damped(&self, percdamp: f64) -> Vec<f64> {
        let mut h = self.symmetrized();
        let damp = percdamp * self.mean_diag;
        for j in 0..self.dim {
            h[j * self.dim + j] += damp;
        }
        h
    }

    /// Run `factor` on the dampened Hessian, raising `percdamp` ×10 after each failure, at most
    /// [`MAX_DAMPING_RETRIES`] times. Returns the result and the `percdamp` it succeeded with,
    /// or an [`ErrorKind::InvalidInput`] error: a Gram matrix that stays indefinite under that
    /// much dampening is not a Gram matrix of any activations.
    pub fn factor_dampened<T>(
        &self,
        percdamp: f64,
        mut factor: impl FnMut(Vec<f64>) -> std::result::Result<T, NotPositiveDefinite>,
    ) -> Result<(T, f64)> {
        let mut p = percdamp;
        let mut failure = NotPositiveDefinite { column: 0 };
        for _ in 0..=MAX_DAMPING_RETRIES {
            match factor(self.damped(p)) {
                Ok(t) => return Ok((t, p)),
                Err(e) => failure = e,
            }
            p *= 10.0;
        }
        Err(Error::invalid_input(format!(
            "statistic `gram` is not positive semi-definite: the dampened Hessian H + p·mean(diag H)·I \
             has no Cholesky factor (pivot at column {}) even with p = {}; the calibration statistics are broken",
            failure.column,
            p / 10.0
        )))
    }
}

/// GPTQ's output error per row, `δ G δᵀ` (`δ = w − ŵ`), from what the sweep measured for free on
/// the dampened Hessian: `H_d = G + Σ_dead e_j e_jᵀ + damp · I`, so
/// `δ G δᵀ = δ H_d δᵀ − damp · ‖δ‖² − Σ_dead δ_j²` with `damp = percdamp_applied · mean(diag H)`.
/// One pass over `Δ` instead of a matrix product; clamped at 0 against rounding.
pub fn from_damped_rows(
    row_damped_errors: &[f64],
    weight: &[f32],
    reconstruction: &[f32],
    hessian: &Hessian,
    percdamp_applied: f64,
) -> Vec<f64> {
    let cols = hessian.dim();
    if cols == 0 {
        return vec![0.0; row_damped_errors.len()];
    }
    let damp = percdamp_applied * hessian.mean_diag();
    let dead = hessian.dead();
    weight
        .chunks_exact(cols)
        .zip(reconstruction.chunks_exact(cols))
        .zip(row_damped_errors)
        .map(|((w, r), &damped)| {
            let mut penalty = 0f64;
            for j in 0..cols {
                let delta = f64::from(w[j]) - f64::from(r[j]);
                penalty += delta * delta * (damp + if dead[j] { 1.0 } else { 0.0 });
            }
            (damped - penalty).max(0.0)
        })
        .collect()
}
