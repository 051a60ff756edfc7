//! Choosing a group's header under per-weight importance: minimize Σ h_j (w_j − ŵ_j)² instead
//! of Σ (w_j − ŵ_j)².
//!
//! With calibration, not every weight's error costs the same: the error of weight `j` in a row
//! reaches the layer's output through input channel `j`, so it costs about `E[x_j²] · e_j²`
//! (the diagonal of the Hessian of the output error). llama.cpp's importance matrix does the
//! same (`make_qkx3_quants` in `ggml-quants.c`, with `quant_weights`): every method of
//! [`super::Refine`] runs unchanged, but each least-squares fit, each ranking and the final
//! choice use the weighted error.
//!
//! Two more things follow from weights of zero. A weight of importance 0 does not count at all:
//! not in the error, and not in the group's range, so the min/max header spans only the weights
//! that count. That is how a codec keeps a few outliers out of a group's range (it stores them
//! elsewhere and gives them importance 0). And a group in which nothing counts falls back to the
//! plain fit, so its codes are still sensible.
//!
//! With `h ≡ 1` (and codes of at most 5 bits) every sum here equals the plain fit's bit for bit,
//! so [`fit_group_weighted`] returns exactly what [`super::fit_group`] returns; a test checks it.

use super::{Candidate, FitGroup, FitOptions, Refine, f16_header, fit_group, refine, rtn_header};
use crate::grid::{GridF32, GroupHeader, dequantize_value, quantize_value};
use crate::kernels;

/// Choose the stored header of one group of finite weights, minimizing Σ h·(w − ŵ)² with
/// `importance` h (finite, ≥ 0, one per weight). `None` only if the range of the weights that
/// count cannot be stored in f16.
///
/// The method is `options.refine`, as for [`fit_group`]; the min/max header of the weights with
/// `h > 0` is always a candidate and wins ties, so the weighted error is never worse than that
/// header's. If no weight has `h > 0`, this is [`fit_group`] on the plain error.
///
/// Panics if the lengths differ (a caller bug).
pub fn fit_group_weighted(
    values: &[f32],
    importance: &[f32],
    nmax: u8,
    options: &FitOptions,
) -> Option<GroupHeader> {
    assert_eq!(
        values.len(),
        importance.len(),
        "fit_group_weighted: lengths differ"
    );
    let (lo, hi) = min_max_weighted(values, importance);
    if lo > hi {
        return fit_group(values, nmax, options);
    }
    let rtn = rtn_header(lo, hi, nmax)?;
    if options.refine == Refine::None && !options.allow_zero {
        return Some(rtn);
    }
    Some(refine(
        &WeightedGroup::new(values, importance, nmax),
        rtn,
        lo,
        hi,
        options,
    ))
}

/// Σ h·(w − ŵ)² over a group for the stored `header`, each weight at its nearest level, in f64.
pub fn group_weighted_sq_error(
    values: &[f32],
    importance: &[f32],
    header: GroupHeader,
    nmax: u8,
) -> f64 {
    kernels::weighted_sq_error(values, importance, header.unpack(), f32::from(nmax))
}

/// Smallest and largest value among those with importance `> 0` (`(+∞, −∞)` if none). The lane
/// structure is [`super::min_max`]'s, so with every importance positive the result is the same,
/// down to the sign of a zero.
pub fn min_max_weighted(values: &[f32], importance: &[f32]) -> (f32, f32) {
    let mut lo = [f32::INFINITY; 8];
    let mut hi = [f32::NEG_INFINITY; 8];
    let chunks = values.chunks_exact(8);
    let chunks_h = importance.chunks_exact(8);
    let (tail, tail_h) = (chunks.remainder(), chunks_h.remainder());
    // A weight that does not count is replaced by ±∞, which never wins (a select the loop
    // vectorizes, where a short-circuit `&&` would not).
    for (chunk, h) in chunks.zip(chunks_h) {
        for k in 0..8 {
            let counts = h[k] > 0.0;
            let (low, high) = if counts {
                (chunk[k], chunk[k])
            } else {
                (f32::INFINITY, f32::NEG_INFINITY)
            };
            lo[k] = if low < lo[k] { low } else { lo[k] };
            hi[k] = if high > hi[k] { high } else { hi[k] };
        }
    }
    for (&v, &h) in tail.iter().zip(tail_h) {
        let (low, high) = if h > 0.0 {
            (v, v)
        } else {
            (f32::INFINITY, f32::NEG_INFINITY)
        };
        lo[0] = if low < lo[0] { low } else { lo[0] };
        hi[0] = if high > hi[0] { high } else { hi[0] };
    }
    let lo = lo
        .iter()
        .fold(f32::INFINITY, |a, &b| if b < a { b } else { a });
    let hi = hi
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    (lo, hi)
}

/// A group's weights and importances with the sums every weighted least-squares fit needs.
pub(crate) struct WeightedGroup<'a> {
    values: &'a [f32],
    importance: &'a [f32],
    nmax: u8,
    sum_h: f64,
    sum_hx: f64,
    sum_hx2: f64,
}

/// The sums of one assignment of codes `l`: Σh·l, Σh·l², Σh·x·l.
pub(crate) struct WeightedAssignment {
    sum_hl: f64,
    sum_hl2: f64,
    sum_hxl: f64,
}

impl<'a> WeightedGroup<'a> {
    pub(crate) fn new(values: &'a [f32], importance: &'a [f32], nmax: u8) -> Self {
        let (mut sum_h, mut sum_hx, mut sum_hx2) = (0f64, 0f64, 0f64);
        for (&v, &h) in values.iter().zip(importance) {
            sum_h += f64::from(h);
            sum_hx += f64::from(h) * f64::from(v);
            sum_hx2 += f64::from(h) * f64::from(v) * f64::from(v);
        }
        Self {
            values,
            importance,
            nmax,
            sum_h,
            sum_hx,
            sum_hx2,
        }
    }

    /// Minimize Σ h·(x − scale·l − min)² over `(scale, min)` for assignment `a`: the 2×2 normal
    /// equations `[Σhl² Σhl; Σhl Σh]·[scale; min] = [Σhxl; Σhx]`. `None` when the system is
    /// singular (every weight that counts got the same code).
    fn least_squares(&self, a: &WeightedAssignment) -> Option<(f64, f64)> {
        let det = self.sum_h * a.sum_hl2 - a.sum_hl * a.sum_hl;
        // With rounded sums a singular system can leave a tiny `det` of either sign; a bogus
        // candidate from it is harmless (every candidate is judged by its error), a NaN is not.
        if det.is_nan() || det <= 0.0 {
            return None;
        }
        let scale = (self.sum_h * a.sum_hxl - self.sum_hx * a.sum_hl) / det;
        let min = (a.sum_hl2 * self.sum_hx - a.sum_hl * a.sum_hxl) / det;
        (scale.is_finite() && min.is_finite()).then_some((scale, min))
    }
}

impl FitGroup for WeightedGroup<'_> {
    type Assignment = WeightedAssignment;

    fn nmax(&self) -> u8 {
        self.nmax
    }

    fn exact_error(&self, header: GroupHeader) -> f64 {
        group_weighted_sq_error(self.values, self.importance, header, self.nmax)
    }

    fn assign(&self, min: f32, inv_scale: f32) -> WeightedAssignment {
        let sums = kernels::weighted_assign_sums(
            self.values,
            self.importance,
            min,
            inv_scale,
            f32::from(self.nmax),
        );
        WeightedAssignment {
            sum_hl: sums.sum_hl,
            sum_hl2: sums.sum_hl2,
            sum_hxl: sums.sum_hxl,
        }
    }

    /// Σ h·(x − scale·l − min)² for assignment `a` under `header`, in closed form (the same
    /// expression, term for term, as the plain fit's).
    fn assignment_error(&self, a: &WeightedAssignment, header: GroupHeader) -> f64 {
        let (s, m) = (
            f64::from(header.scale.to_f32()),
            f64::from(header.min.to_f32()),
        );
        let e = self.sum_hx2 - 2.0 * s * a.sum_hxl - 2.0 * m * self.sum_hx
            + s * s * a.sum_hl2
            + 2.0 * s * m * a.sum_hl
            + self.sum_h * m * m;
        e.max(0.0)
    }

    fn fit(&self, a: &WeightedAssignment) -> Option<Candidate> {
        let (scale, min) = self.least_squares(a)?;
        let header = f16_header(scale, min)?;
        Some(Candidate {
            header,
            error: self.assignment_error(a, header),
        })
    }

    fn error_range(&self, grid: GridF32) -> (f32, f32) {
        let nmax = f32::from(self.nmax);
        let (mut err_lo, mut err_hi) = (f32::INFINITY, f32::NEG_INFINITY);
        for (&w, &h) in self.values.iter().zip(self.importance) {
            if h > 0.0 {
                let q = quantize_value(w, grid.min, grid.inv_scale, nmax);
                let err = w - dequantize_value(q, grid.scale, grid.min);
                err_lo = err_lo.min(err);
                err_hi = err_hi.max(err);
            }
        }
        (err_lo, err_hi)
    }
}
