//! Rounding `f32` to `f16` in a chosen direction.
//!
//! Round-to-nearest is what `half` gives; a min/max grid needs directed rounding so that the
//! stored grid still covers the group's range (min rounded down, scale rounded up): then no weight
//! is clipped by more than half a step, and the round-to-nearest error bound stays exact.

use half::f16;

/// The next `f16` towards −∞ (`h` must not be NaN or −∞).
fn next_down(h: f16) -> f16 {
    let bits = h.to_bits();
    if bits & 0x7fff == 0 {
        f16::from_bits(0x8001) // ±0 -> the negative subnormal closest to zero
    } else if bits & 0x8000 == 0 {
        f16::from_bits(bits - 1)
    } else {
        f16::from_bits(bits + 1)
    }
}

/// The next `f16` towards +∞ (`h` must not be NaN or +∞).
fn next_up(h: f16) -> f16 {
    let bits = h.to_bits();
    if bits & 0x7fff == 0 {
        f16::from_bits(0x0001)
    } else if bits & 0x8000 == 0 {
        f16::from_bits(bits + 1)
    } else {
        f16::from_bits(bits - 1)
    }
}

/// The largest `f16` that is `<= x`; −∞ when `x < -65504` (the caller must treat that as overflow).
pub fn round_down(x: f32) -> f16 {
    let h = f16::from_f32(x);
    if h.to_f32() > x { next_down(h) } else { h }
}

/// The smallest `f16` that is `>= x`; +∞ when `x > 65504` (the caller must treat that as overflow).
pub fn round_up(x: f32) -> f16 {
    let h = f16::from_f32(x);
    if h.to_f32() < x { next_up(h) } else { h }
}

/// The nearest `f16`, or `None` if it is not finite (`|x|` beyond 65504 or `x` NaN).
pub fn nearest_finite(x: f32) -> Option<f16> {
    let h = f16::from_f32(x);
    h.is_finite().then_some(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directed_rounding_brackets_the_value() {
        let samples = [
            0.0f32, -0.0, 1e-30, -1e-30, 1e-45, 5.9e-8, 6.1e-5, 0.1, -0.1, 1.0, 3.3333, -2.7777,
            65504.0, 65519.0, -65504.0, 1234.567, -0.000123,
        ];
        for x in samples {
            let (lo, hi) = (round_down(x), round_up(x));
            assert!(lo.to_f32() <= x && x <= hi.to_f32(), "{x}: {lo} {hi}");
            // Adjacent or equal: nothing representable strictly between them.
            if lo != hi {
                assert_eq!(next_up(lo).to_f32(), hi.to_f32(), "{x}");
            }
        }
        assert!(round_up(65520.0).is_infinite());
        assert!(round_down(-65520.0).is_infinite());
        assert_eq!(round_down(70000.0).to_f32(), 65504.0);
        assert!(nearest_finite(1e6).is_none() && nearest_finite(f32::NAN).is_none());
    }
}
