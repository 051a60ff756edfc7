//! AVX2 versions of the kernels: the same arithmetic as the portable ones, eight lanes at a time.

use std::arch::x86_64::*;

use super::{
    BLOCK, LANES, Sums, WeightedSums, add_lanes, add_tail, add_weighted_lanes, add_weighted_tail,
};

/// [`super::assign_sums_generic`] on 256-bit registers: lane `k` of each register accumulates
/// exactly what lane `k` of the portable version's arrays does, with the same operations
/// (`max(·, 0)` before `min(·, nmax)`, so a NaN lane becomes 0 as `f32::max` makes it; truncating
/// conversion after `+ 0.5`; separate multiply and add).
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn assign_sums(values: &[f32], min: f32, inv_scale: f32, nmax: f32) -> Sums {
    let mut total = Sums {
        sum_l: 0,
        sum_l2: 0,
        sum_xl: 0.0,
    };
    let nmax = nmax.clamp(0.0, 255.0);
    let (vmin, vinv, vnmax) = (
        _mm256_set1_ps(min),
        _mm256_set1_ps(inv_scale),
        _mm256_set1_ps(nmax),
    );
    let (zero, half) = (_mm256_setzero_ps(), _mm256_set1_ps(0.5));
    for block in values.chunks(BLOCK) {
        let (mut sum_l, mut sum_l2, mut sum_xl) = (
            _mm256_setzero_si256(),
            _mm256_setzero_si256(),
            _mm256_setzero_ps(),
        );
        let chunks = block.chunks_exact(LANES);
        let tail = chunks.remainder();
        for chunk in chunks {
            // SAFETY: `chunk` holds exactly 8 f32s; `loadu` has no alignment requirement.
            let w = unsafe { _mm256_loadu_ps(chunk.as_ptr()) };
            let x = _mm256_mul_ps(_mm256_sub_ps(w, vmin), vinv);
            // `max_ps(a, b)` returns `b` when `a` is NaN: NaN -> 0, as `f32::max(NaN, 0)`.
            let x = _mm256_min_ps(_mm256_max_ps(x, zero), vnmax);
            let l = _mm256_cvttps_epi32(_mm256_add_ps(x, half));
            sum_l = _mm256_add_epi32(sum_l, l);
            sum_l2 = _mm256_add_epi32(sum_l2, _mm256_mullo_epi32(l, l));
            sum_xl = _mm256_add_ps(sum_xl, _mm256_mul_ps(w, _mm256_cvtepi32_ps(l)));
        }
        let (mut l, mut l2, mut xl) = ([0i32; LANES], [0i32; LANES], [0f32; LANES]);
        // SAFETY: each array holds exactly 32 bytes, what one unaligned 256-bit store writes.
        unsafe {
            _mm256_storeu_si256(l.as_mut_ptr().cast(), sum_l);
            _mm256_storeu_si256(l2.as_mut_ptr().cast(), sum_l2);
            _mm256_storeu_ps(xl.as_mut_ptr(), sum_xl);
        }
        add_lanes(&mut total, &l, &l2, &xl);
        add_tail(&mut total, tail, min, inv_scale, nmax);
    }
    total
}

/// [`super::weighted_assign_sums_generic`] on 256-bit registers: lane `k` of each register
/// accumulates exactly what lane `k` of the portable version's arrays does, with the same
/// operations in the same order (`h·l`, `(h·l)·l`, `(h·x)·l`, each a separate multiply and add;
/// the code `l` as the portable version computes it, converted back to f32).
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn weighted_assign_sums(
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
    let nmax = nmax.clamp(0.0, 255.0);
    let (vmin, vinv, vnmax) = (
        _mm256_set1_ps(min),
        _mm256_set1_ps(inv_scale),
        _mm256_set1_ps(nmax),
    );
    let (zero, half) = (_mm256_setzero_ps(), _mm256_set1_ps(0.5));
    for (block, block_h) in values.chunks(BLOCK).zip(importance.chunks(BLOCK)) {
        let (mut sum_hl, mut sum_hl2, mut sum_hxl) = (
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
        );
        let chunks = block.chunks_exact(LANES);
        let chunks_h = block_h.chunks_exact(LANES);
        let (tail, tail_h) = (chunks.remainder(), chunks_h.remainder());
        for (chunk, chunk_h) in chunks.zip(chunks_h) {
            // SAFETY: `chunk` and `chunk_h` hold exactly 8 f32s each; `loadu` has no alignment
            // requirement.
            let (w, h) = unsafe {
                (
                    _mm256_loadu_ps(chunk.as_ptr()),
                    _mm256_loadu_ps(chunk_h.as_ptr()),
                )
            };
            let x = _mm256_mul_ps(_mm256_sub_ps(w, vmin), vinv);
            // `max_ps(a, b)` returns `b` when `a` is NaN: NaN -> 0, as `f32::max(NaN, 0)`.
            let x = _mm256_min_ps(_mm256_max_ps(x, zero), vnmax);
            let l = _mm256_cvtepi32_ps(_mm256_cvttps_epi32(_mm256_add_ps(x, half)));
            let hl = _mm256_mul_ps(h, l);
            sum_hl = _mm256_add_ps(sum_hl, hl);
            sum_hl2 = _mm256_add_ps(sum_hl2, _mm256_mul_ps(hl, l));
            sum_hxl = _mm256_add_ps(sum_hxl, _mm256_mul_ps(_mm256_mul_ps(h, w), l));
        }
        let (mut hl, mut hl2, mut hxl) = ([0f32; LANES], [0f32; LANES], [0f32; LANES]);
        // SAFETY: each array holds exactly 32 bytes, what one unaligned 256-bit store writes.
        unsafe {
            _mm256_storeu_ps(hl.as_mut_ptr(), sum_hl);
            _mm256_storeu_ps(hl2.as_mut_ptr(), sum_hl2);
            _mm256_storeu_ps(hxl.as_mut_ptr(), sum_hxl);
        }
        add_weighted_lanes(&mut total, &hl, &hl2, &hxl);
        add_weighted_tail(&mut total, tail, tail_h, min, inv_scale, nmax);
    }
    total
}
