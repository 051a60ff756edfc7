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
}
