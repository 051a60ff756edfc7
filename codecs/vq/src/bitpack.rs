//! Indices of 1 to 16 bits packed LSB-first into bytes: index `i` occupies bits
//! `i·width .. (i+1)·width` of the row's bit stream, bit `b` of the stream being bit `b % 8` of
//! byte `b / 8`.

/// Pack `indices` (each below `2^width`) into `out` (`ceil(len·width/8)` bytes, zeroed here).
pub fn pack(indices: &[u16], width: u32, out: &mut [u8]) {
    assert!((1..=16).contains(&width), "index width {width} is not in 1..=16");
    assert_eq!(out.len(), (indices.len() * width as usize).div_ceil(8), "output length");
    out.fill(0);
    let mut acc = 0u32;
    let mut filled = 0u32;
    let mut pos = 0;
    for &v in indices {
        debug_assert!(u32::from(v) < 1 << width, "index {v} does not fit {width} bits");
        acc |= u32::from(v) << filled;
        filled += width;
        while filled >= 8 {
            out[pos] = acc as u8;
            pos += 1;
            acc >>= 8;
            filled -= 8;
        }
    }
    if filled > 0 {
        out[pos] = acc as u8;
    }
}

/// Unpack `out.len()` indices of `width` bits from `packed`.
pub fn unpack(packed: &[u8], width: u32, out: &mut [u16]) {
    assert!((1..=16).contains(&width), "index width {width} is not in 1..=16");
    assert_eq!(packed.len(), (out.len() * width as usize).div_ceil(8), "input length");
    let mask = (1u32 << width) - 1;
    let mut acc = 0u32;
    let mut filled = 0u32;
    let mut bytes = packed.iter();
    for o in out.iter_mut() {
        while filled < width {
            acc |= u32::from(*bytes.next().expect("length checked")) << filled;
            filled += 8;
        }
        *o = (acc & mask) as u16;
        acc >>= width;
        filled -= width;
    }
}

/// Reference for [`pack`]/[`unpack`]: bit `b` of index `i`, one bit at a time.
pub fn bit_reference(packed: &[u8], width: u32, i: usize) -> u16 {
    let mut v = 0u16;
    for b in 0..width as usize {
        let bit = i * width as usize + b;
        v |= u16::from((packed[bit / 8] >> (bit % 8)) & 1) << b;
    }
    v
}
