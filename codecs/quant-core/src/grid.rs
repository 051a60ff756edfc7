//! One group's asymmetric grid: the stored header and the per-weight arithmetic.
//!
//! A group of weights `w` is stored as b-bit codes `q ∈ [0, 2^b − 1]` plus one [`GroupHeader`]
//! (`scale`, `min`, both f16), and decodes to `ŵ = scale · q + min` (Q4_1-style). Every path in
//! this crate — reference, fast, and the error the fitters minimize — goes through
//! [`quantize_value`] and [`dequantize_value`], so what a fitter measured is exactly what the
//! decoder produces.

use half::f16;

/// The stored parameters of one group: `ŵ = scale · q + min`.
///
/// Stored in the `scale_min` part as little-endian `[scale, min]` pairs, row-major over
/// `[rows, groups_per_row]`.
///
/// Why an f16 `min` rather than an integer zero point: a zero point ties the offset to a multiple
/// of `scale`, so the grid cannot sit where least squares wants it, and an f16 offset costs only
/// a relative error of 2⁻¹¹ of `|min|` (about 0.004 of a step for a group centred near zero,
/// against a rounding error of 0.29 of a step). The measured effect is in the crate docs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GroupHeader {
    /// Step between adjacent codes (≥ 0; 0 means every weight of the group decodes to `min`).
    pub scale: f16,
    /// Value of code 0.
    pub min: f16,
}

/// Bytes of one stored [`GroupHeader`].
pub const GROUP_HEADER_BYTES: usize = 4;
const _: () = assert!(std::mem::size_of::<GroupHeader>() == GROUP_HEADER_BYTES);

impl GroupHeader {
    /// The header that decodes every weight to exactly 0.
    pub const ZERO: GroupHeader = GroupHeader {
        scale: f16::ZERO,
        min: f16::ZERO,
    };

    /// Little-endian bytes: scale, then min.
    pub fn to_le_bytes(self) -> [u8; GROUP_HEADER_BYTES] {
        let [a, b] = self.scale.to_le_bytes();
        let [c, d] = self.min.to_le_bytes();
        [a, b, c, d]
    }

    /// The inverse of [`GroupHeader::to_le_bytes`].
    pub fn from_le_bytes(bytes: [u8; GROUP_HEADER_BYTES]) -> Self {
        Self {
            scale: f16::from_le_bytes([bytes[0], bytes[1]]),
            min: f16::from_le_bytes([bytes[2], bytes[3]]),
        }
    }

    /// The header as the `f32` values the arithmetic uses.
    pub fn unpack(self) -> GridF32 {
        let scale = self.scale.to_f32();
        GridF32 {
            scale,
            min: self.min.to_f32(),
            inv_scale: inverse_scale(scale),
        }
    }
}

/// A header widened to `f32`, with the inverse scale precomputed for encoding.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GridF32 {
    /// `scale` as f32.
    pub scale: f32,
    /// `min` as f32.
    pub min: f32,
    /// `1 / scale`, or 0 when `scale` is 0 (so a constant group codes to 0 instead of NaN).
    pub inv_scale: f32,
}

/// `1 / scale`, or 0 for a zero (or negative, or non-finite) scale.
#[inline]
pub fn inverse_scale(scale: f32) -> f32 {
    if scale > 0.0 && scale.is_finite() {
        1.0 / scale
    } else {
        0.0
    }
}

/// The code of `w`: `floor(clamp((w − min) · inv_scale, 0, nmax) + 0.5)`, for `nmax ≤ 255`.
///
/// Round-half-up after clamping, written so it vectorizes (a truncating conversion of a value
/// known to be in range) and so every path computes the same code bit for bit. A NaN (which
/// finite weights never produce) codes to 0.
#[inline(always)]
pub fn quantize_value(w: f32, min: f32, inv_scale: f32, nmax: f32) -> u8 {
    quantize_index(w, min, inv_scale, nmax) as u8
}

/// [`quantize_value`] as an `i32` in `[0, nmax]`, for loops that go on computing with the code
/// (an `i32` lane stays in a vector register where a `u8` would not).
#[inline(always)]
pub fn quantize_index(w: f32, min: f32, inv_scale: f32, nmax: f32) -> i32 {
    debug_assert!((0.0..=255.0).contains(&nmax));
    // `max`/`min` rather than `clamp`: they return the non-NaN operand, so `x` is never NaN.
    let x = ((w - min) * inv_scale).max(0.0).min(nmax.clamp(0.0, 255.0));
    // SAFETY: `x` is in [0, 255] and not NaN, so `x + 0.5` is finite and within i32's range.
    // (The checked `as` conversion would add per-lane NaN and saturation fix-ups that keep
    // this, the hottest loop of every encoder, from vectorizing.)
    unsafe { (x + 0.5).to_int_unchecked::<i32>() }
}

/// The decoded value of code `q`: `scale · q + min`, in f32 (no fused multiply-add, so it is
/// the same on every target).
#[inline(always)]
pub fn dequantize_value(q: u8, scale: f32, min: f32) -> f32 {
    scale * f32::from(q) + min
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_bytes_round_trip() {
        let h = GroupHeader {
            scale: f16::from_f32(0.0123),
            min: f16::from_f32(-0.5),
        };
        assert_eq!(GroupHeader::from_le_bytes(h.to_le_bytes()), h);
        assert_eq!(h.to_le_bytes()[..2], f16::from_f32(0.0123).to_le_bytes());
    }

    #[test]
    fn codes_are_nearest_and_clamped() {
        let (min, scale) = (-1.0f32, 0.25f32);
        let inv = inverse_scale(scale);
        assert_eq!(quantize_value(-1.0, min, inv, 15.0), 0);
        assert_eq!(quantize_value(-0.876, min, inv, 15.0), 0);
        assert_eq!(quantize_value(-0.874, min, inv, 15.0), 1);
        assert_eq!(quantize_value(100.0, min, inv, 15.0), 15);
        assert_eq!(quantize_value(-100.0, min, inv, 15.0), 0);
        assert_eq!(quantize_value(3.0, 3.0, inverse_scale(0.0), 15.0), 0);
        assert_eq!(dequantize_value(4, scale, min), 0.0);
    }
}
