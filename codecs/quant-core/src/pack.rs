//! Bit packing of b-bit codes, one row at a time: grid codes of 1 to 8 bits held in bytes
//! ([`pack_row`]), and indices of 1 to 16 bits held in `u16`s ([`pack_row_u16`]; a codebook's
//! indices, as `vq` stores them). Both write the same stream.
//!
//! Layout: each row is its own little-endian bit stream of `ceil(cols * bits / 8)` bytes. Code
//! `j` occupies stream bits `[j * bits, (j + 1) * bits)`, and stream bit `k` is bit `k % 8` of
//! byte `k / 8`. For 4-bit codes this is the familiar "two per byte, even column in the low
//! nibble, odd column in the high nibble". Rows start on a byte boundary (at most 7 padding bits
//! per row, always zero), so any row can be decoded without touching the others, which is what a
//! row-parallel decoder and a matrix-vector product want. The padding is stored and counted.

/// Bytes one packed row of `cols` codes of `bits` bits takes: `ceil(cols * bits / 8)`.
pub const fn packed_row_bytes(cols: usize, bits: u32) -> usize {
    (cols * bits as usize).div_ceil(8)
}

/// Reference packer: writes `codes` (each `< 2^bits`) bit by bit into `out`, which must be
/// exactly [`packed_row_bytes`] long. Padding bits are zero.
pub fn pack_row_reference(codes: &[u8], bits: u32, out: &mut [u8]) {
    assert!((1..=8).contains(&bits), "bits must be 1..=8, got {bits}");
    pack_bits_reference(codes.iter().map(|&c| u32::from(c)), codes.len(), bits, out);
}

/// Reference unpacker: the inverse of [`pack_row_reference`]; fills all of `out` (one code per
/// column) from `packed`, which must be exactly [`packed_row_bytes`] long.
pub fn unpack_row_reference(packed: &[u8], bits: u32, out: &mut [u8]) {
    assert!((1..=8).contains(&bits), "bits must be 1..=8, got {bits}");
    let n = out.len();
    unpack_bits_reference(packed, bits, n, |j, value| out[j] = value as u8);
}

/// Fast packer, same output as [`pack_row_reference`]: byte-at-a-time loops for widths that
/// divide 8 (the common 4-bit case compiles to a vectorized pair-combine), a 64-bit accumulator
/// for the others.
pub fn pack_row(codes: &[u8], bits: u32, out: &mut [u8]) {
    assert!((1..=8).contains(&bits), "bits must be 1..=8, got {bits}");
    assert_eq!(
        out.len(),
        packed_row_bytes(codes.len(), bits),
        "packed row length"
    );
    match bits {
        8 => out.copy_from_slice(codes),
        4 => {
            let pairs = codes.chunks_exact(2);
            let tail = pairs.remainder();
            for (byte, pair) in out.iter_mut().zip(pairs) {
                *byte = pair[0] | (pair[1] << 4);
            }
            if let [last] = tail {
                out[out.len() - 1] = *last;
            }
        }
        1 => pack_fixed::<8>(codes, 1, out),
        2 => pack_fixed::<4>(codes, 2, out),
        _ => pack_stream(codes.iter().map(|&c| u32::from(c)), bits, out),
    }
}

/// Fast unpacker, same output as [`unpack_row_reference`].
pub fn unpack_row(packed: &[u8], bits: u32, out: &mut [u8]) {
    assert!((1..=8).contains(&bits), "bits must be 1..=8, got {bits}");
    assert_eq!(
        packed.len(),
        packed_row_bytes(out.len(), bits),
        "packed row length"
    );
    match bits {
        8 => out.copy_from_slice(packed),
        4 => {
            let mut pairs = out.chunks_exact_mut(2);
            for (pair, &byte) in (&mut pairs).zip(packed) {
                pair[0] = byte & 0x0f;
                pair[1] = byte >> 4;
            }
            if let [last] = pairs.into_remainder() {
                *last = packed[packed.len() - 1] & 0x0f;
            }
        }
        1 => unpack_fixed::<8>(packed, 1, out),
        2 => unpack_fixed::<4>(packed, 2, out),
        _ => unpack_stream(packed, bits, out.iter_mut().map(|code| move |value: u32| *code = value as u8)),
    }
}

/// Reference packer of wide codes: [`pack_row_reference`] for `codes` of `1 ≤ bits ≤ 16` bits
/// held in `u16`s (each `< 2^bits`), bit by bit into `out`, which must be exactly
/// [`packed_row_bytes`] long. Padding bits are zero.
pub fn pack_row_u16_reference(codes: &[u16], bits: u32, out: &mut [u8]) {
    assert!((1..=16).contains(&bits), "bits must be 1..=16, got {bits}");
    pack_bits_reference(codes.iter().map(|&c| u32::from(c)), codes.len(), bits, out);
}

/// Reference unpacker of wide codes: the inverse of [`pack_row_u16_reference`]; fills all of
/// `out` from `packed`, which must be exactly [`packed_row_bytes`] long.
pub fn unpack_row_u16_reference(packed: &[u8], bits: u32, out: &mut [u16]) {
    assert!((1..=16).contains(&bits), "bits must be 1..=16, got {bits}");
    let n = out.len();
    unpack_bits_reference(packed, bits, n, |j, value| out[j] = value as u16);
}

/// Fast packer of wide codes, same output as [`pack_row_u16_reference`]: a 64-bit accumulator
/// emptied a byte at a time.
pub fn pack_row_u16(codes: &[u16], bits: u32, out: &mut [u8]) {
    assert!((1..=16).contains(&bits), "bits must be 1..=16, got {bits}");
    assert_eq!(out.len(), packed_row_bytes(codes.len(), bits), "packed row length");
    pack_stream(codes.iter().map(|&c| u32::from(c)), bits, out);
}

/// Fast unpacker of wide codes, same output as [`unpack_row_u16_reference`].
pub fn unpack_row_u16(packed: &[u8], bits: u32, out: &mut [u16]) {
    assert!((1..=16).contains(&bits), "bits must be 1..=16, got {bits}");
    assert_eq!(packed.len(), packed_row_bytes(out.len(), bits), "packed row length");
    unpack_stream(packed, bits, out.iter_mut().map(|code| move |value: u32| *code = value as u16));
}

/// The row's stream bit by bit: code `j`'s bit `b` is stream bit `j·bits + b` (the plain
/// definition the fast paths are held to). `out` must be exactly [`packed_row_bytes`] long.
fn pack_bits_reference(codes: impl Iterator<Item = u32>, count: usize, bits: u32, out: &mut [u8]) {
    assert_eq!(out.len(), packed_row_bytes(count, bits), "packed row length");
    out.fill(0);
    for (j, code) in codes.enumerate() {
        debug_assert!(code < 1 << bits, "code {code} does not fit {bits} bits");
        for b in 0..bits as usize {
            let bit = j * bits as usize + b;
            out[bit / 8] |= (((code >> b) & 1) as u8) << (bit % 8);
        }
    }
}

/// The inverse of [`pack_bits_reference`]: `put(j, code)` for each of the `count` codes.
fn unpack_bits_reference(packed: &[u8], bits: u32, count: usize, mut put: impl FnMut(usize, u32)) {
    assert_eq!(packed.len(), packed_row_bytes(count, bits), "packed row length");
    for j in 0..count {
        let mut value = 0u32;
        for b in 0..bits as usize {
            let bit = j * bits as usize + b;
            value |= u32::from((packed[bit / 8] >> (bit % 8)) & 1) << b;
        }
        put(j, value);
    }
}

/// The row's stream through a 64-bit accumulator emptied a byte at a time (codes of up to 16
/// bits; every byte of `out` is written, the last with zero padding).
fn pack_stream(codes: impl Iterator<Item = u32>, bits: u32, out: &mut [u8]) {
    let mut acc = 0u64;
    let mut filled = 0u32;
    let mut pos = 0;
    for code in codes {
        debug_assert!(code < 1 << bits, "code {code} does not fit {bits} bits");
        acc |= u64::from(code) << filled;
        filled += bits;
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

/// The inverse of [`pack_stream`]: each of `slots` is called with its code, in order.
fn unpack_stream<F: FnOnce(u32)>(packed: &[u8], bits: u32, slots: impl Iterator<Item = F>) {
    let mask = (1u64 << bits) - 1;
    let mut acc = 0u64;
    let mut filled = 0u32;
    let mut bytes = packed.iter();
    for slot in slots {
        while filled < bits {
            // The callers' length checks guarantee enough bytes for every code.
            acc |= u64::from(*bytes.next().unwrap_or(&0)) << filled;
            filled += 8;
        }
        slot((acc & mask) as u32);
        acc >>= bits;
        filled -= bits;
    }
}

/// Pack `PER_BYTE` codes of `bits = 8 / PER_BYTE` bits into each byte (fixed-size inner loop,
/// so it unrolls); the last byte takes the leftover codes.
fn pack_fixed<const PER_BYTE: usize>(codes: &[u8], bits: u32, out: &mut [u8]) {
    let chunks = codes.chunks_exact(PER_BYTE);
    let tail = chunks.remainder();
    for (byte, chunk) in out.iter_mut().zip(chunks) {
        let mut v = 0u8;
        for (k, &code) in chunk.iter().enumerate() {
            v |= code << (k as u32 * bits);
        }
        *byte = v;
    }
    if !tail.is_empty() {
        let mut v = 0u8;
        for (k, &code) in tail.iter().enumerate() {
            v |= code << (k as u32 * bits);
        }
        out[out.len() - 1] = v;
    }
}

/// The inverse of [`pack_fixed`].
fn unpack_fixed<const PER_BYTE: usize>(packed: &[u8], bits: u32, out: &mut [u8]) {
    let mask = ((1u16 << bits) - 1) as u8;
    let mut chunks = out.chunks_exact_mut(PER_BYTE);
    for (chunk, &byte) in (&mut chunks).zip(packed) {
        for (k, code) in chunk.iter_mut().enumerate() {
            *code = (byte >> (k as u32 * bits)) & mask;
        }
    }
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        let byte = packed[packed.len() - 1];
        for (k, code) in tail.iter_mut().enumerate() {
            *code = (byte >> (k as u32 * bits)) & mask;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_packing_equals_reference_for_every_width() {
        let mut state = 0x9e3779b97f4a7c15u64;
        for bits in 1..=8u32 {
            for cols in [0usize, 1, 2, 3, 7, 8, 9, 15, 16, 17, 100, 577] {
                let codes: Vec<u8> = (0..cols)
                    .map(|_| {
                        state = state
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        ((state >> 33) as u8) & ((1u16 << bits) - 1) as u8
                    })
                    .collect();
                let n = packed_row_bytes(cols, bits);
                let (mut a, mut b) = (vec![0xAA; n], vec![0x55; n]);
                pack_row_reference(&codes, bits, &mut a);
                pack_row(&codes, bits, &mut b);
                assert_eq!(a, b, "bits {bits} cols {cols}");
                let (mut ua, mut ub) = (vec![0xFF; cols], vec![0xEE; cols]);
                unpack_row_reference(&a, bits, &mut ua);
                unpack_row(&a, bits, &mut ub);
                assert_eq!(ua, codes, "bits {bits} cols {cols}");
                assert_eq!(ub, codes, "bits {bits} cols {cols}");
            }
        }
    }

    /// Wide codes: the fast path is the bit-by-bit reference for every width up to 16, and up to
    /// 8 bits the stream is byte for byte the one [`pack_row`] writes.
    #[test]
    fn wide_packing_equals_reference_and_the_byte_packer() {
        let mut state = 0x2545f4914f6cdd1du64;
        for bits in 1..=16u32 {
            for cols in [0usize, 1, 2, 3, 7, 8, 9, 15, 16, 17, 33, 100, 577] {
                let codes: Vec<u16> = (0..cols)
                    .map(|_| {
                        state = state
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        ((state >> 33) as u32 & ((1u32 << bits) - 1)) as u16
                    })
                    .collect();
                let n = packed_row_bytes(cols, bits);
                let (mut a, mut b) = (vec![0xAA; n], vec![0x55; n]);
                pack_row_u16_reference(&codes, bits, &mut a);
                pack_row_u16(&codes, bits, &mut b);
                assert_eq!(a, b, "bits {bits} cols {cols}");
                let (mut ua, mut ub) = (vec![0xFFFF; cols], vec![0xEEEE; cols]);
                unpack_row_u16_reference(&a, bits, &mut ua);
                unpack_row_u16(&a, bits, &mut ub);
                assert_eq!(ua, codes, "bits {bits} cols {cols}");
                assert_eq!(ub, codes, "bits {bits} cols {cols}");
                if bits <= 8 {
                    let narrow: Vec<u8> = codes.iter().map(|&c| c as u8).collect();
                    let mut c = vec![0u8; n];
                    pack_row(&narrow, bits, &mut c);
                    assert_eq!(a, c, "bits {bits} cols {cols}: u16 and u8 streams differ");
                }
            }
        }
        // All ones in every width: no bit lost at the accumulator's edges.
        for bits in 1..=16u32 {
            let codes = vec![((1u32 << bits) - 1) as u16; 29];
            let mut out = vec![0u8; packed_row_bytes(29, bits)];
            pack_row_u16(&codes, bits, &mut out);
            let ones: u32 = out.iter().map(|b| b.count_ones()).sum();
            assert_eq!(ones, 29 * bits, "bits {bits}");
        }
    }

    #[test]
    fn four_bit_layout_is_low_nibble_first() {
        let mut out = [0u8; 2];
        pack_row(&[0x1, 0x2, 0xf], 4, &mut out);
        assert_eq!(out, [0x21, 0x0f]);
    }
}
