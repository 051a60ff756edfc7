//! The hot loops of the fitters and the fast paths.
//!
//! Each is written once in plain Rust with a fixed lane structure (which LLVM vectorizes for the
//! baseline target). The hottest, [`assign_sums`], which runs once per search candidate, also has
//! an AVX2 version in [`avx2`], chosen at run time; it performs the same IEEE operations on the
//! same lanes in the same order (Rust never fuses a multiply and an add on its own), so both give
//! bit-identical results, and a test checks that they do.

use crate::grid::{GridF32, dequantize_value, quantize_index, quantize_value};

#[cfg(target_arch = "x86_64")]
mod avx2;

/// The sums of one assignment of codes `l` to weights `x`: Σl, Σl², Σx·l.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Sums {
    pub sum_l: u64,
    pub sum_l2: u64,
    pub sum_xl: f64,
}

/// Lanes of the assignment sums; the AVX2 version holds one lane per 32-bit element of a register.
const LANES: usize = 8;

/// Weights per block of [`assign_sums`]: a lane then sees at most 8192 codes of at most 255,
/// and 8192 · 255² < 2^31, so its 32-bit integer sums are exact.
const BLOCK: usize = 1 << 16;

/// Code every weight from `min` with `inv_scale` (as [`quantize_value`]) and sum the assignment.
///
/// Σx·l is accumulated in f32 lanes: its rounding (~1e-7 relative) only perturbs how search
/// candidates are ranked, and the final choice of a header is made on exact errors.
pub(crate) fn assign_sums(values: &[f32], min: f32, inv_scale: f32, nmax: f32) -> Sums {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked on the line above; that is the only
            // precondition of `avx2::assign_sums`.
            return unsafe { avx2::assign_sums(values, min, inv_scale, nmax) };
        }
    }
    assign_sums_generic(values, min, inv_scale, nmax)
}

/// The portable [`assign_sums`].
pub(crate) fn assign_sums_generic(values: &[f32], min: f32, inv_scale: f32, nmax: f32) -> Sums {
    let mut total = Sums {
        sum_l: 0,
        sum_l2: 0,
        sum_xl: 0.0,
    };
    for block in values.chunks(BLOCK) {
        let (mut sum_l, mut sum_l2, mut sum_xl) = ([0i32; LANES], [0i32; LANES], [0f32; LANES]);
        let chunks = block.chunks_exact(LANES);
        let tail = chunks.remainder();
        for chunk in chunks {
            for k in 0..LANES {
                let l = quantize_index(chunk[k], min, inv_scale, nmax);
                sum_l[k] += l;
                sum_l2[k] += l * l;
                sum_xl[k] += chunk[k] * l as f32;
            }
        }
        add_lanes(&mut total, &sum_l, &sum_l2, &sum_xl);
        add_tail(&mut total, tail, min, inv_scale, nmax);
    }
    total
}

/// Fold one block's lanes into the total, in lane order.
fn add_lanes(total: &mut Sums, sum_l: &[i32; LANES], sum_l2: &[i32; LANES], sum_xl: &[f32; LANES]) {
    total.sum_l += sum_l.iter().map(|&v| v as u64).sum::<u64>();
    total.sum_l2 += sum_l2.iter().map(|&v| v as u64).sum::<u64>();
    total.sum_xl += sum_xl.iter().map(|&v| f64::from(v)).sum::<f64>();
}

/// The last `< LANES` weights of a block, one at a time.
fn add_tail(total: &mut Sums, tail: &[f32], min: f32, inv_scale: f32, nmax: f32) {
    for &w in tail {
        let l = quantize_value(w, min, inv_scale, nmax);
        total.sum_l += u64::from(l);
        total.sum_l2 += u64::from(l) * u64::from(l);
        total.sum_xl += f64::from(w) * f64::from(l);
    }
}

/// The sums of one assignment of codes `l` to weights `x` under per-weight importance `h`:
/// Σh·l, Σh·l², Σh·x·l.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct WeightedSums {
    pub sum_hl: f64,
    pub sum_hl2: f64,
    pub sum_hxl: f64,
}

/// [`assign_sums`] under importance: code every weight from `min` with `inv_scale` and sum
/// Σh·l, Σh·l², Σh·x·l (`importance` as long as `values`).
///
/// The lane and block structure is [`assign_sums`]'s, and each lane computes `h·l`, `(h·l)·l`
/// and `(h·x)·l` in f32; the AVX2 version in [`avx2`] performs the same operations per lane. With `h ≡ 1` every one of these products is exact and, while a lane's
/// sums stay below 2²⁴ (codes of at most 5 bits), so is every lane sum, so the result equals
/// [`assign_sums`]'s bit for bit: the weighted fit reduces to the unweighted one exactly.
pub(crate) fn weighted_assign_sums(
    values: &[f32],
    importance: &[f32],
    min: f32,
    inv_scale: f32,
    nmax: f32,
) -> WeightedSums {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked on the line above; that is the only
            // precondition of `avx2::weighted_assign_sums`.
            return unsafe { avx2::weighted_assign_sums(values, importance, min, inv_scale, nmax) };
        }
    }
    weighted_assign_sums_generic(values, importance, min, inv_scale, nmax)
}

/// The portable [`weighted_assign_sums`]: 8 independent f32 lanes per block (as
/// [`assign_sums_generic`]), folded into the f64 total block by block.
pub(crate) fn weighted_assign_sums_generic(
    values: &[f32],
    importance: &[f32],
    min: f32,
    inv_scale: f32,
    nmax: f32,
) -> WeightedSums {
    assert_eq!(
        values.len(),
        importance.len(),
        "weighted_assign_sums: lengths differ"
    );
    let mut total = WeightedSums {
        sum_hl: 0.0,
        sum_hl2: 0.0,
        sum_hxl: 0.0,
    };
    for (block, block_h) in values.chunks(BLOCK).zip(importance.chunks(BLOCK)) {
        let (mut sum_hl, mut sum_hl2, mut sum_hxl) = ([0f32; LANES], [0f32; LANES], [0f32; LANES]);
        let chunks = block.chunks_exact(LANES);
        let chunks_h = block_h.chunks_exact(LANES);
        let (tail, tail_h) = (chunks.remainder(), chunks_h.remainder());
        for (chunk, h) in chunks.zip(chunks_h) {
            for k in 0..LANES {
                let l = quantize_index(chunk[k], min, inv_scale, nmax) as f32;
                let hl = h[k] * l;
                sum_hl[k] += hl;
                sum_hl2[k] += hl * l;
                sum_hxl[k] += (h[k] * chunk[k]) * l;
            }
        }
        add_weighted_lanes(&mut total, &sum_hl, &sum_hl2, &sum_hxl);
        add_weighted_tail(&mut total, tail, tail_h, min, inv_scale, nmax);
    }
    total
}

/// Fold one block's weighted lanes into the total: lanes summed in lane order first, then added
/// (as [`add_lanes`] does for Σx·l).
#[inline]
fn add_weighted_lanes(
    total: &mut WeightedSums,
    sum_hl: &[f32; LANES],
    sum_hl2: &[f32; LANES],
    sum_hxl: &[f32; LANES],
) {
    let fold = |lanes: &[f32; LANES]| lanes.iter().map(|&v| f64::from(v)).sum::<f64>();
    total.sum_hl += fold(sum_hl);
    total.sum_hl2 += fold(sum_hl2);
    total.sum_hxl += fold(sum_hxl);
}

/// The last `< LANES` weights of a block, one at a time, in f64.
fn add_weighted_tail(
    total: &mut WeightedSums,
    tail: &[f32],
    tail_h: &[f32],
    min: f32,
    inv_scale: f32,
    nmax: f32,
) {
    for (&w, &h) in tail.iter().zip(tail_h) {
        let l = quantize_value(w, min, inv_scale, nmax);
        let hl = f64::from(h * f32::from(l));
        total.sum_hl += hl;
        total.sum_hl2 += hl * f64::from(l);
        total.sum_hxl += f64::from(h * w) * f64::from(l);
    }
}

/// Σ h·(w − ŵ)² in f64 for `grid`, each weight coded to its nearest level (`importance` as long
/// as `values`). With `h ≡ 1` it equals [`sq_error`] bit for bit.
pub(crate) fn weighted_sq_error(
    values: &[f32],
    importance: &[f32],
    grid: GridF32,
    nmax: f32,
) -> f64 {
    assert_eq!(
        values.len(),
        importance.len(),
        "weighted_sq_error: lengths differ"
    );
    let mut acc = [0f64; 4];
    let chunks = values.chunks_exact(4);
    let chunks_h = importance.chunks_exact(4);
    let (tail, tail_h) = (chunks.remainder(), chunks_h.remainder());
    for (chunk, h) in chunks.zip(chunks_h) {
        for k in 0..4 {
            let w = chunk[k];
            let q = quantize_value(w, grid.min, grid.inv_scale, nmax);
            let d = f64::from(w) - f64::from(dequantize_value(q, grid.scale, grid.min));
            acc[k] += f64::from(h[k]) * (d * d);
        }
    }
    let mut total = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for (&w, &h) in tail.iter().zip(tail_h) {
        let q = quantize_value(w, grid.min, grid.inv_scale, nmax);
        let d = f64::from(w) - f64::from(dequantize_value(q, grid.scale, grid.min));
        total += f64::from(h) * (d * d);
    }
    total
}

/// Σ (w − ŵ)² in f64 for `grid`, each weight coded to its nearest level.
pub(crate) fn sq_error(values: &[f32], grid: GridF32, nmax: f32) -> f64 {
    let mut acc = [0f64; 4];
    let chunks = values.chunks_exact(4);
    let tail = chunks.remainder();
    for chunk in chunks {
        for k in 0..4 {
            let w = chunk[k];
            let q = quantize_value(w, grid.min, grid.inv_scale, nmax);
            let d = f64::from(w) - f64::from(dequantize_value(q, grid.scale, grid.min));
            acc[k] += d * d;
        }
    }
    let mut total = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for &w in tail {
        let q = quantize_value(w, grid.min, grid.inv_scale, nmax);
        let d = f64::from(w) - f64::from(dequantize_value(q, grid.scale, grid.min));
        total += d * d;
    }
    total
}

/// `codes[i] = quantize_value(values[i])` under `grid`.
pub(crate) fn quantize_group(values: &[f32], grid: GridF32, nmax: f32, codes: &mut [u8]) {
    for (code, &w) in codes.iter_mut().zip(values) {
        *code = quantize_value(w, grid.min, grid.inv_scale, nmax);
    }
}

/// `out[i] = ŵ(codes[i])` under `grid`, or `out[i] += ŵ(codes[i])` when `add`.
pub(crate) fn dequantize_group(codes: &[u8], grid: GridF32, out: &mut [f32], add: bool) {
    if add {
        for (o, &q) in out.iter_mut().zip(codes) {
            *o += dequantize_value(q, grid.scale, grid.min);
        }
    } else {
        for (o, &q) in out.iter_mut().zip(codes) {
            *o = dequantize_value(q, grid.scale, grid.min);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever `assign_sums` dispatches to equals the portable version bit for bit.
    #[test]
    fn dispatched_assign_sums_equal_generic() {
        let mut rng = crate::testing::Rng::new(7);
        for n in [0usize, 1, 7, 8, 9, 63, 64, 65, 257, BLOCK + 13] {
            let mut values = rng.student_t_vec(n, 3.0, 0.02);
            if n > 3 {
                values[1] = 1e-30;
                values[2] = -5.0;
                values[3] = 7.5;
            }
            for (min, inv_scale, nmax) in [
                (-0.05f32, 150.0f32, 15.0f32),
                (0.0, 0.0, 15.0),
                (-0.1, 1000.0, 255.0),
                (0.01, 30.0, 1.0),
            ] {
                let a = assign_sums(&values, min, inv_scale, nmax);
                let b = assign_sums_generic(&values, min, inv_scale, nmax);
                assert_eq!(
                    (a.sum_l, a.sum_l2, a.sum_xl.to_bits()),
                    (b.sum_l, b.sum_l2, b.sum_xl.to_bits()),
                    "n {n}"
                );
            }
        }
    }

    /// Σh·l, Σh·l², Σh·x·l one weight at a time in f64: what the lanes approximate.
    fn weighted_sums_scalar(
        values: &[f32],
        importance: &[f32],
        min: f32,
        inv_scale: f32,
        nmax: f32,
    ) -> (f64, f64, f64) {
        let (mut hl, mut hl2, mut hxl) = (0f64, 0f64, 0f64);
        for (&w, &h) in values.iter().zip(importance) {
            let l = f64::from(quantize_value(w, min, inv_scale, nmax));
            let h = f64::from(h);
            hl += h * l;
            hl2 += h * l * l;
            hxl += h * f64::from(w) * l;
        }
        (hl, hl2, hxl)
    }

    /// The weighted sums: dispatched = portable bit for bit, both within f32 rounding of a plain
    /// f64 loop, and equal to the unweighted sums when every importance is 1.
    #[test]
    fn weighted_assign_sums_agree_with_generic_scalar_and_unweighted() {
        let mut rng = crate::testing::Rng::new(11);
        for n in [0usize, 1, 7, 8, 9, 63, 64, 65, 257, 4096, BLOCK + 13] {
            let mut values = rng.student_t_vec(n, 3.0, 0.02);
            let mut importance: Vec<f32> =
                (0..n).map(|_| (rng.normal() * 2.0).exp() as f32).collect();
            if n > 5 {
                values[1] = 1e-30;
                values[2] = -5.0;
                values[3] = 7.5;
                importance[4] = 0.0;
                importance[5] = 1e-30;
            }
            let ones = vec![1f32; n];
            for (min, inv_scale, nmax) in [
                (-0.05f32, 150.0f32, 15.0f32),
                (0.0, 0.0, 15.0),
                (-0.1, 1000.0, 255.0),
                (0.01, 30.0, 1.0),
                (-0.06, 240.0, 31.0),
            ] {
                let ctx = format!("n {n} min {min} inv {inv_scale} nmax {nmax}");
                let a = weighted_assign_sums(&values, &importance, min, inv_scale, nmax);
                let b = weighted_assign_sums_generic(&values, &importance, min, inv_scale, nmax);
                assert_eq!(
                    (a.sum_hl.to_bits(), a.sum_hl2.to_bits(), a.sum_hxl.to_bits()),
                    (b.sum_hl.to_bits(), b.sum_hl2.to_bits(), b.sum_hxl.to_bits()),
                    "{ctx}"
                );
                let (hl, hl2, hxl) =
                    weighted_sums_scalar(&values, &importance, min, inv_scale, nmax);
                let scale_hl: f64 = importance
                    .iter()
                    .map(|&h| f64::from(h) * f64::from(nmax))
                    .sum();
                let scale_hxl: f64 = values
                    .iter()
                    .zip(&importance)
                    .map(|(&w, &h)| (f64::from(h) * f64::from(w)).abs() * f64::from(nmax))
                    .sum();
                let close = |x: f64, y: f64, scale: f64| (x - y).abs() <= 1e-5 * scale + 1e-30;
                assert!(close(a.sum_hl, hl, scale_hl), "{ctx}: {} vs {hl}", a.sum_hl);
                assert!(close(a.sum_hl2, hl2, scale_hl * f64::from(nmax)), "{ctx}");
                assert!(
                    close(a.sum_hxl, hxl, scale_hxl),
                    "{ctx}: {} vs {hxl}",
                    a.sum_hxl
                );
                if nmax <= 31.0 {
                    let w = weighted_assign_sums(&values, &ones, min, inv_scale, nmax);
                    let u = assign_sums(&values, min, inv_scale, nmax);
                    assert_eq!(
                        (w.sum_hl.to_bits(), w.sum_hl2.to_bits(), w.sum_hxl.to_bits()),
                        (
                            (u.sum_l as f64).to_bits(),
                            (u.sum_l2 as f64).to_bits(),
                            u.sum_xl.to_bits()
                        ),
                        "{ctx}"
                    );
                }
            }
        }
    }

    #[test]
    fn weighted_sq_error_matches_a_plain_loop_and_the_unweighted_error() {
        let mut rng = crate::testing::Rng::new(12);
        for n in [0usize, 1, 3, 4, 5, 100, 1001] {
            let values = rng.student_t_vec(n, 3.0, 0.02);
            let importance: Vec<f32> = (0..n).map(|_| rng.uniform() as f32 * 3.0).collect();
            let grid = crate::grid::GroupHeader {
                scale: half::f16::from_f32(0.004),
                min: half::f16::from_f32(-0.03),
            }
            .unpack();
            let fast = weighted_sq_error(&values, &importance, grid, 15.0);
            let plain: f64 = values
                .iter()
                .zip(&importance)
                .map(|(&w, &h)| {
                    let q = quantize_value(w, grid.min, grid.inv_scale, 15.0);
                    let d = f64::from(w) - f64::from(dequantize_value(q, grid.scale, grid.min));
                    f64::from(h) * d * d
                })
                .sum();
            assert!(
                (fast - plain).abs() <= 1e-12 * plain + 1e-300,
                "n {n}: {fast} vs {plain}"
            );
            let ones = vec![1f32; n];
            assert_eq!(
                weighted_sq_error(&values, &ones, grid, 15.0).to_bits(),
                sq_error(&values, grid, 15.0).to_bits(),
                "n {n}"
            );
        }
    }
}
