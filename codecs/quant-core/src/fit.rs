//! Choosing a group's scale and min.
//!
//! Every method ends the same way: the candidate `(scale, min)` is rounded to the f16 values that
//! will be stored, each weight is coded to its nearest level under *those* values, and the
//! resulting squared error ([`group_sq_error`]) decides. The min/max (round-to-nearest) header is
//! always among the candidates and ties keep it, so a refined group is never worse than the
//! `int4_rtn` group on the same weights.

use crate::f16round;
use crate::grid::{GridF32, GroupHeader, dequantize_value, quantize_value};
use crate::kernels;

pub mod params;
pub mod weighted;

/// Σ (w − ŵ)² over `values` for the stored `header`, each weight coded to its nearest level.
///
/// Accumulated in f64 in a fixed order, so two headers are ranked by the error the decoder will
/// really produce, not by float noise.
pub fn group_sq_error(values: &[f32], header: GroupHeader, nmax: u8) -> f64 {
    kernels::sq_error(values, header.unpack(), f32::from(nmax))
}

/// How a group's `(scale, min)` are chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Refine {
    /// Min/max of the group, min rounded down and scale rounded up to f16 so the grid covers the
    /// whole range: plain round-to-nearest, with `|w − ŵ| ≤ scale / 2` for every weight.
    None,
    /// The TenPak prototype's heuristic: quantize with the current `[min, max]`, then move `min`
    /// by half the most negative error and `max` by half the most positive one; repeat.
    MinMaxIter {
        /// Number of updates (the prototype used 5).
        iterations: usize,
    },
    /// Alternating least squares (Lloyd's algorithm on a uniform grid): code every weight to its
    /// nearest level, then fit `scale` and `min` by least squares to that assignment; repeat
    /// until the assignment stops improving or `iterations` is reached.
    LsqIter {
        /// Maximum number of assign-and-fit rounds.
        iterations: usize,
    },
    /// Search over candidate ranges as llama.cpp's k-quants do (`make_qkx2_quants` in
    /// `ggml-quants.c`): for each candidate inverse scale `(nmax + rmin + rdelta·k) / (max − min)`,
    /// code the weights from `min`, fit `scale` and `min` by least squares to that assignment, and
    /// keep the best; then polish the winner with up to `polish` [`Refine::LsqIter`] rounds.
    ///
    /// Unlike `make_qkx2_quants`, `min` is not clamped to ≤ 0: k-quants store `−min` unsigned,
    /// TenPak stores `min` as a signed f16, so a group of all-positive weights keeps its offset.
    /// [`fit_group`]'s error is unweighted (without calibration there is no importance to
    /// weight by); [`weighted::fit_group_weighted`] runs the same search on an importance-weighted
    /// error, as llama.cpp does with an importance matrix.
    Search {
        /// Candidate inverse scales.
        grid: SearchGrid,
        /// Least-squares rounds after the search.
        polish: usize,
    },
}

/// The candidate inverse scales of [`Refine::Search`]: `(nmax + rmin + rdelta·k) / (max − min)`
/// for `k = 0..=steps`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SearchGrid {
    /// Offset of the first candidate from `nmax` (negative: start from a wider step).
    pub rmin: f32,
    /// Increment between candidates.
    pub rdelta: f32,
    /// Number of increments (candidates = `steps + 1`).
    pub steps: usize,
}

impl SearchGrid {
    /// llama.cpp's Q4_K setting: `rmin = −1, rdelta = 0.1, steps = 20`, i.e. `nmax ± 1`.
    pub const K_QUANTS: SearchGrid = SearchGrid {
        rmin: -1.0,
        rdelta: 0.1,
        steps: 20,
    };
}

/// Everything [`fit_group`] needs besides the weights.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FitOptions {
    /// The method.
    pub refine: Refine,
    /// Also consider [`GroupHeader::ZERO`] (decode the group to zeros). A residual stage wants
    /// this: with very few levels, a group of near-zero residuals is better left alone than
    /// pushed onto a grid spanning its two extremes.
    pub allow_zero: bool,
}

impl FitOptions {
    /// Plain min/max round-to-nearest.
    pub const RTN: FitOptions = FitOptions {
        refine: Refine::None,
        allow_zero: false,
    };
}

/// Smallest and largest value (`(+∞, −∞)` for an empty slice). Eight independent lanes so the
/// loop vectorizes; min and max are exact, so the result does not depend on the lane count.
pub fn min_max(values: &[f32]) -> (f32, f32) {
    let mut lo = [f32::INFINITY; 8];
    let mut hi = [f32::NEG_INFINITY; 8];
    let chunks = values.chunks_exact(8);
    let tail = chunks.remainder();
    for chunk in chunks {
        for k in 0..8 {
            lo[k] = if chunk[k] < lo[k] { chunk[k] } else { lo[k] };
            hi[k] = if chunk[k] > hi[k] { chunk[k] } else { hi[k] };
        }
    }
    for &v in tail {
        lo[0] = if v < lo[0] { v } else { lo[0] };
        hi[0] = if v > hi[0] { v } else { hi[0] };
    }
    let lo = lo
        .iter()
        .fold(f32::INFINITY, |a, &b| if b < a { b } else { a });
    let hi = hi
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    (lo, hi)
}

/// The covering min/max header for a group whose range is `[lo, hi]`: `min` rounded down and
/// `scale = (hi − min) / nmax` rounded up, so `min + nmax · scale ≥ hi`. `None` if either does
/// not fit in f16.
pub fn rtn_header(lo: f32, hi: f32, nmax: u8) -> Option<GroupHeader> {
    let min = f16round::round_down(lo);
    if !min.is_finite() {
        return None;
    }
    let scale = f16round::round_up((hi - min.to_f32()) / f32::from(nmax));
    scale.is_finite().then_some(GroupHeader { scale, min })
}

/// Choose the stored header of one group of finite weights. `None` only if the group's range
/// cannot be stored in f16 at all (`|min| > 65504` or `(max − min) / nmax > 65504`).
///
/// Candidates are ranked cheaply (for the least-squares methods, by the closed-form error of
/// their assignment under the f16-rounded header, an upper bound of the error after recoding);
/// the winner is then compared with the min/max header (and [`GroupHeader::ZERO`] if allowed)
/// by the exact error [`group_sq_error`], so the result is never worse than either.
pub fn fit_group(values: &[f32], nmax: u8, options: &FitOptions) -> Option<GroupHeader> {
    let (lo, hi) = min_max(values);
    let rtn = rtn_header(lo, hi, nmax)?;
    if options.refine == Refine::None && !options.allow_zero {
        return Some(rtn);
    }
    Some(refine(&Group::new(values, nmax), rtn, lo, hi, options))
}

/// Run `options`' method on `group` from the min/max header `rtn` of its range `[lo, hi]`, and
/// return the best of its result, `rtn` and (if allowed) [`GroupHeader::ZERO`] by the group's
/// exact error. Shared by the plain and the importance-weighted fit.
pub(crate) fn refine<G: FitGroup>(
    group: &G,
    rtn: GroupHeader,
    lo: f32,
    hi: f32,
    options: &FitOptions,
) -> GroupHeader {
    let mut chosen = rtn;
    let mut chosen_error = group.exact_error(rtn);
    let mut offer = |header: GroupHeader| {
        if header != chosen {
            let error = group.exact_error(header);
            if error < chosen_error {
                chosen = header;
                chosen_error = error;
            }
        }
    };
    if options.allow_zero {
        offer(GroupHeader::ZERO);
    }
    if hi > lo {
        let refined = match options.refine {
            Refine::None => None,
            Refine::MinMaxIter { iterations } => Some(minmax_iter(group, rtn, lo, hi, iterations)),
            Refine::LsqIter { iterations } => {
                Some(lsq_iter(group, group.start(rtn), iterations).header)
            }
            Refine::Search { grid, polish } => {
                let best = search(group, rtn, lo, hi, grid);
                Some(lsq_iter(group, best, polish).header)
            }
        };
        if let Some(header) = refined {
            offer(header);
        }
    }
    chosen
}

/// A group as the fitting methods see it: its exact stored error under a header, the sums of
/// an assignment of codes, and the least-squares header for an assignment. [`Group`] is the
/// plain squared error; [`weighted::WeightedGroup`] weighs each weight by an importance.
pub(crate) trait FitGroup {
    /// The sums of one assignment of codes.
    type Assignment;
    /// Largest code.
    fn nmax(&self) -> u8;
    /// The error the decoder will produce under `header`, each weight at its nearest level.
    fn exact_error(&self, header: GroupHeader) -> f64;
    /// Code every weight from `min` with `inv_scale` and sum the assignment.
    fn assign(&self, min: f32, inv_scale: f32) -> Self::Assignment;
    /// The error of assignment `a` under `header`, in closed form.
    fn assignment_error(&self, a: &Self::Assignment, header: GroupHeader) -> f64;
    /// The least-squares header for assignment `a`, rounded to f16, with its error on `a`.
    fn fit(&self, a: &Self::Assignment) -> Option<Candidate>;
    /// The most negative and most positive error `w − ŵ` under `grid` among the weights that
    /// count (what [`Refine::MinMaxIter`] moves the range by).
    fn error_range(&self, grid: GridF32) -> (f32, f32);
    /// `header` with the error of its own nearest-level assignment.
    fn start(&self, header: GroupHeader) -> Candidate {
        let grid = header.unpack();
        Candidate {
            header,
            error: self.assignment_error(&self.assign(grid.min, grid.inv_scale), header),
        }
    }
}

/// A group's weights with the sums every least-squares fit needs.
struct Group<'a> {
    values: &'a [f32],
    nmax: u8,
    sum_x: f64,
    sum_x2: f64,
}

/// The sums of one assignment of codes `l` to the weights `x`.
struct Assignment {
    sum_l: u64,
    sum_l2: u64,
    sum_xl: f64,
}

/// A candidate header and its ranking error.
#[derive(Clone, Copy)]
pub(crate) struct Candidate {
    pub(crate) header: GroupHeader,
    pub(crate) error: f64,
}

impl<'a> Group<'a> {
    fn new(values: &'a [f32], nmax: u8) -> Self {
        let (mut sum_x, mut sum_x2) = (0f64, 0f64);
        for &v in values {
            sum_x += f64::from(v);
            sum_x2 += f64::from(v) * f64::from(v);
        }
        Self {
            values,
            nmax,
            sum_x,
            sum_x2,
        }
    }

    /// Minimize Σ (x − scale·l − min)² over `(scale, min)` for assignment `a`. `None` when every
    /// weight got the same code (the system is singular).
    fn least_squares(&self, a: &Assignment) -> Option<(f64, f64)> {
        let n = self.values.len() as u64;
        let det = u128::from(n) * u128::from(a.sum_l2) - u128::from(a.sum_l) * u128::from(a.sum_l);
        if det == 0 {
            return None;
        }
        let (n, sum_l, sum_l2, det) = (n as f64, a.sum_l as f64, a.sum_l2 as f64, det as f64);
        let scale = (n * a.sum_xl - self.sum_x * sum_l) / det;
        let min = (sum_l2 * self.sum_x - sum_l * a.sum_xl) / det;
        Some((scale, min))
    }
}

impl FitGroup for Group<'_> {
    type Assignment = Assignment;

    fn nmax(&self) -> u8 {
        self.nmax
    }

    fn exact_error(&self, header: GroupHeader) -> f64 {
        group_sq_error(self.values, header, self.nmax)
    }

    fn assign(&self, min: f32, inv_scale: f32) -> Assignment {
        let sums = crate::kernels::assign_sums(self.values, min, inv_scale, f32::from(self.nmax));
        Assignment {
            sum_l: sums.sum_l,
            sum_l2: sums.sum_l2,
            sum_xl: sums.sum_xl,
        }
    }

    /// Σ (x − scale·l − min)² for assignment `a` under `header`, in closed form.
    fn assignment_error(&self, a: &Assignment, header: GroupHeader) -> f64 {
        let (s, m) = (
            f64::from(header.scale.to_f32()),
            f64::from(header.min.to_f32()),
        );
        let n = self.values.len() as f64;
        let e = self.sum_x2 - 2.0 * s * a.sum_xl - 2.0 * m * self.sum_x
            + s * s * a.sum_l2 as f64
            + 2.0 * s * m * a.sum_l as f64
            + n * m * m;
        e.max(0.0)
    }

    fn fit(&self, a: &Assignment) -> Option<Candidate> {
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
        for &w in self.values {
            let q = quantize_value(w, grid.min, grid.inv_scale, nmax);
            let err = w - dequantize_value(q, grid.scale, grid.min);
            err_lo = err_lo.min(err);
            err_hi = err_hi.max(err);
        }
        (err_lo, err_hi)
    }
}

/// A least-squares `(scale, min)` rounded to the f16 header that would be stored; `None` if
/// either is not finite in f16 or the scale is negative.
pub(crate) fn f16_header(scale: f64, min: f64) -> Option<GroupHeader> {
    match (
        f16round::nearest_finite(scale as f32),
        f16round::nearest_finite(min as f32),
    ) {
        (Some(scale), Some(min)) if scale.to_f32() >= 0.0 => Some(GroupHeader { scale, min }),
        _ => None,
    }
}

/// The prototype's heuristic, each iterate judged by its exact stored error.
fn minmax_iter<G: FitGroup>(
    group: &G,
    rtn: GroupHeader,
    lo: f32,
    hi: f32,
    iterations: usize,
) -> GroupHeader {
    let nmax = f32::from(group.nmax());
    let mut best = (rtn, group.exact_error(rtn));
    let mut consider = |header: GroupHeader| {
        let error = group.exact_error(header);
        if error < best.1 {
            best = (header, error);
        }
    };
    let (mut lo, mut hi) = (lo, hi);
    for step in 0..=iterations {
        let scale = (hi - lo) / nmax;
        let (Some(scale16), Some(min16)) = (
            f16round::nearest_finite(scale),
            f16round::nearest_finite(lo),
        ) else {
            break;
        };
        if scale <= 0.0 {
            break;
        }
        let header = GroupHeader {
            scale: scale16,
            min: min16,
        };
        consider(header);
        if step == iterations {
            break;
        }
        // The prototype's update, on the errors of the grid as stored.
        let (err_lo, err_hi) = group.error_range(header.unpack());
        lo += 0.5 * err_lo;
        hi += 0.5 * err_hi;
    }
    best.0
}

/// Alternating least squares from `start`: recode to the nearest levels, refit; stop when a
/// round does not lower the error.
fn lsq_iter<G: FitGroup>(group: &G, start: Candidate, iterations: usize) -> Candidate {
    let mut best = start;
    for _ in 0..iterations {
        let grid = best.header.unpack();
        let a = group.assign(grid.min, grid.inv_scale);
        // Recoding to the nearest levels can only lower the error of the current header.
        best.error = best.error.min(group.assignment_error(&a, best.header));
        match group.fit(&a) {
            Some(c) if c.error < best.error => best = c,
            _ => break,
        }
    }
    best
}

/// A search candidate whose closed-form error is within this factor of the best is recoded to its
/// nearest levels and judged by that (lower) error. Measured on SmolLM2-135M at groups 64–256:
/// ranking by the closed form alone loses 0.7 % of relative MSE against ranking every candidate
/// exactly; recoding those within 10 % recovers all but 0.1 % of it at a fraction of the cost.
const RECODE_MARGIN: f64 = 1.1;

/// The k-quants search: one least-squares fit per candidate inverse scale, coding from `lo`.
fn search<G: FitGroup>(
    group: &G,
    rtn: GroupHeader,
    lo: f32,
    hi: f32,
    grid: SearchGrid,
) -> Candidate {
    let nmax = f32::from(group.nmax());
    let mut best = group.start(rtn);
    for k in 0..=grid.steps {
        let inv_scale = (nmax + grid.rmin + grid.rdelta * k as f32) / (hi - lo);
        if !(inv_scale > 0.0 && inv_scale.is_finite()) {
            continue;
        }
        let Some(c) = group.fit(&group.assign(lo, inv_scale)) else {
            continue;
        };
        if c.error < best.error * RECODE_MARGIN {
            let c = group.start(c.header);
            if c.error < best.error {
                best = c;
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize, seed: u64) -> Vec<f32> {
        crate::testing::Rng::new(seed).student_t_vec(n, 3.0, 0.02)
    }

    #[test]
    fn every_method_is_at_least_as_good_as_rtn() {
        let methods = [
            Refine::MinMaxIter { iterations: 5 },
            Refine::LsqIter { iterations: 5 },
            Refine::Search {
                grid: SearchGrid::K_QUANTS,
                polish: 0,
            },
            Refine::Search {
                grid: SearchGrid::K_QUANTS,
                polish: 3,
            },
        ];
        for seed in 0..50 {
            let values = sample(64 + seed as usize, seed);
            let (lo, hi) = min_max(&values);
            let rtn = group_sq_error(&values, rtn_header(lo, hi, 15).unwrap(), 15);
            for refine in methods {
                let h = fit_group(
                    &values,
                    15,
                    &FitOptions {
                        refine,
                        allow_zero: false,
                    },
                )
                .unwrap();
                assert!(
                    group_sq_error(&values, h, 15) <= rtn,
                    "{refine:?} seed {seed}"
                );
            }
        }
    }

    #[test]
    fn least_squares_recovers_an_exact_grid() {
        // Weights exactly on a grid: LS on the right assignment finds it.
        let values: Vec<f32> = (0..32).map(|i| 0.125 * (i % 16) as f32 - 0.5).collect();
        let h = fit_group(
            &values,
            15,
            &FitOptions {
                refine: Refine::LsqIter { iterations: 3 },
                allow_zero: false,
            },
        )
        .unwrap();
        assert_eq!(group_sq_error(&values, h, 15), 0.0);
    }

    #[test]
    fn min_max_matches_a_plain_fold() {
        for n in [0, 1, 7, 8, 9, 33] {
            let v = sample(n, n as u64);
            let lo = v.iter().copied().fold(f32::INFINITY, f32::min);
            let hi = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(min_max(&v), (lo, hi));
        }
    }
}
