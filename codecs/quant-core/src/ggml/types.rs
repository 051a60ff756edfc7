//! llama.cpp's weight types: their block layouts, their reference dequantization, and the grid
//! each sub-block of a block decodes on.
//!
//! A block is a [`Header`] (the f16 scales and the small integer sub-block scales and mins) and
//! one code per weight. [`GgmlType::write`] lays both out exactly as `ggml-common.h`'s
//! `block_*` structs, little-endian; [`GgmlType::dequantize`] is a line-by-line port of
//! `ggml-quants.c`'s `dequantize_row_*`, with every f32 operation in the same order, so it
//! produces the same bits as llama.cpp's reference and gguf-py's numpy port (the tests check
//! the latter). [`GgmlType::read`] is the inverse of `write`.
//!
//! [`Grid`] is the arithmetic of one sub-block: code → value, computed exactly as `dequantize`
//! computes it, and value → nearest code. The encoders (the `ggml` codec's fit and sweep) only
//! ever see grids, so what they measure is what the file decodes to.

use half::f16;
use tenpak_api::{Error, Result};

/// Weights per block of the legacy types (`QK4_0` … `QK8_0`).
pub const QK: usize = 32;
/// Weights per k-quant super-block (`QK_K`).
pub const QK_K: usize = 256;

/// `kvalues_iq4nl`: the 16 levels of IQ4_NL and IQ4_XS (a non-uniform grid, one more level
/// below zero than above, denser near zero).
pub const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// The llama.cpp weight types this codec writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// 32 weights `d·(q − 8)`, 4-bit `q`: 4.5 bits per weight.
    Q4_0,
    /// 32 weights `d·q + m`: 5.0 bits.
    Q4_1,
    /// 32 weights `d·(q − 16)`, 5-bit `q`: 5.5 bits.
    Q5_0,
    /// 32 weights `d·q + m`, 5-bit `q`: 6.0 bits.
    Q5_1,
    /// 32 weights `d·q`, `q` a signed byte: 8.5 bits.
    Q8_0,
    /// 256 weights in 16 groups: `d·sc·q − dmin·m`, 2-bit `q`, 4-bit `sc`, `m`: 2.625 bits.
    Q2K,
    /// 256 weights in 16 groups: `d·(sc − 32)·(q − 4)`, 3-bit `q`, 6-bit `sc`: 3.4375 bits.
    Q3K,
    /// 256 weights in 8 groups: `d·sc·q − dmin·m`, 4-bit `q`, 6-bit `sc`, `m`: 4.5 bits.
    Q4K,
    /// 256 weights in 8 groups: `d·sc·q − dmin·m`, 5-bit `q`, 6-bit `sc`, `m`: 5.5 bits.
    Q5K,
    /// 256 weights in 16 groups: `d·sc·(q − 32)`, 6-bit `q`, 8-bit signed `sc`: 6.5625 bits.
    Q6K,
    /// 32 weights `d·kvalues[q]`, 4-bit `q` into [`KVALUES_IQ4NL`]: 4.5 bits.
    Iq4Nl,
    /// 256 weights in 8 groups: `d·(sc − 32)·kvalues[q]`, 4-bit `q`, 6-bit `sc`: 4.25 bits.
    Iq4Xs,
}

/// Every type, in ggml.h's order.
pub const ALL: [GgmlType; 12] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
    GgmlType::Iq4Nl,
    GgmlType::Iq4Xs,
];

/// A block's header: its f16 scale(s) and the integer scales and mins of its sub-blocks.
/// Unused fields are zero (a legacy type has no sub-blocks; only the K-quants with mins use
/// `mn`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Header {
    /// The block's (super-block's) scale.
    pub d: f16,
    /// Q4_1/Q5_1: the value of code 0 (`m`); Q2_K/Q4_K/Q5_K: the scale of the mins (`dmin`).
    pub dmin: f16,
    /// Sub-block scales (Q6_K: the signed byte's bits; Q3_K: 6-bit, `sc − 32` decoded).
    pub sc: [u8; 16],
    /// Sub-block mins (Q2_K, Q4_K, Q5_K).
    pub mn: [u8; 16],
}

/// How a grid turns a code into a value (each exactly as `dequantize_row_*` computes it).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Form {
    /// `((q − bias) as f32) · step` (Q4_0, Q5_0, Q8_0; Q3_K and Q6_K with `step` the sub-block's
    /// `d·sc` computed first).
    Mul,
    /// `(q as f32) · step + offset` (Q4_1, Q5_1).
    MulAdd,
    /// `step · (q as f32) − offset` (Q2_K, Q4_K, Q5_K with `step = d·sc`, `offset = dmin·m`).
    MulSub,
    /// `step · (kvalues[q] as f32)` (IQ4_NL with `step = d`; IQ4_XS with `step = d·(sc − 32)`).
    Table,
}

/// One sub-block's grid: codes `0..levels`, each decoding to one value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Grid {
    form: Form,
    step: f32,
    offset: f32,
    bias: i32,
    levels: u16,
}

impl Grid {
    /// The value of code `q`, exactly as the type's dequantization computes it.
    #[inline]
    pub fn value(&self, q: u8) -> f32 {
        let v = (i32::from(q) - self.bias) as f32;
        match self.form {
            Form::Mul => v * self.step,
            Form::MulAdd => v * self.step + self.offset,
            Form::MulSub => self.step * v - self.offset,
            Form::Table => self.step * f32::from(KVALUES_IQ4NL[usize::from(q & 0xF)]),
        }
    }

    /// Number of codes.
    pub fn levels(&self) -> u16 {
        self.levels
    }

    /// The code whose value is nearest `w` (ties to the smaller code). A non-finite `w` (which
    /// the encoders never pass) codes to the middle of the range.
    #[inline]
    pub fn nearest(&self, w: f32) -> u8 {
        if self.form == Form::Table {
            return self.nearest_in_table(w);
        }
        let top = i32::from(self.levels) - 1;
        let guess = if self.step != 0.0 && self.step.is_finite() {
            let offset = match self.form {
                Form::Mul | Form::Table => 0.0,
                Form::MulAdd => self.offset,
                Form::MulSub => -self.offset,
            };
            let t = ((w - offset) / self.step).round();
            if t.is_finite() {
                (t.clamp(-1e6, 1e6) as i32 + self.bias).clamp(0, top)
            } else {
                top / 2
            }
        } else {
            self.bias.clamp(0, top)
        };
        let mut best = guess as u8;
        let mut best_err = (w - self.value(best)).abs();
        for q in [guess - 1, guess + 1] {
            if (0..=top).contains(&q) {
                let err = (w - self.value(q as u8)).abs();
                if err < best_err || (err == best_err && (q as u8) < best) {
                    best = q as u8;
                    best_err = err;
                }
            }
        }
        best
    }

    /// [`Grid::nearest`] on a table grid: [`table_index`]'s guess at `w / step` and its two
    /// neighbours, judged by the values themselves (the guess is the nearest level to the
    /// rounded ratio, so the nearest level to `w` is at most one away: levels are 11 or more
    /// apart).
    fn nearest_in_table(&self, w: f32) -> u8 {
        let t = w / self.step;
        let guess = if t.is_finite() {
            table_index(t)
        } else if self.step == 0.0 || !self.step.is_finite() {
            0
        } else {
            8
        };
        let mut best = guess;
        let mut best_err = f32::INFINITY;
        for q in guess.saturating_sub(1)..=(guess + 1).min(15) {
            let err = (w - self.value(q)).abs();
            if err < best_err {
                best = q;
                best_err = err;
            }
        }
        best
    }
}

/// The index of the [`KVALUES_IQ4NL`] level nearest `round(t)` (ties to the lower level), from a
/// table over the integers −127..=113 (values beyond clamp to the ends).
#[inline]
pub fn table_index(t: f32) -> u8 {
    const LOW: i32 = KVALUES_IQ4NL[0] as i32;
    const SPAN: usize = (KVALUES_IQ4NL[15] as i32 - LOW + 1) as usize;
    const LUT: [u8; SPAN] = {
        let mut lut = [0u8; SPAN];
        let mut i = 0;
        while i < SPAN {
            let v = LOW + i as i32;
            let mut best = 0;
            let mut q = 1;
            while q < 16 {
                let d_best = (KVALUES_IQ4NL[best] as i32 - v).abs();
                let d_q = (KVALUES_IQ4NL[q] as i32 - v).abs();
                if d_q < d_best {
                    best = q;
                }
                q += 1;
            }
            lut[i] = best as u8;
            i += 1;
        }
        lut
    };
    let i = (t.round().clamp(LOW as f32, KVALUES_IQ4NL[15] as f32) as i32 - LOW) as usize;
    LUT[i]
}

impl GgmlType {
    /// The name llama.cpp gives the type (`ggml_type_name`), lower case as in the codec's
    /// `type` parameter.
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::Q4_0 => "q4_0",
            GgmlType::Q4_1 => "q4_1",
            GgmlType::Q5_0 => "q5_0",
            GgmlType::Q5_1 => "q5_1",
            GgmlType::Q8_0 => "q8_0",
            GgmlType::Q2K => "q2_k",
            GgmlType::Q3K => "q3_k",
            GgmlType::Q4K => "q4_k",
            GgmlType::Q5K => "q5_k",
            GgmlType::Q6K => "q6_k",
            GgmlType::Iq4Nl => "iq4_nl",
            GgmlType::Iq4Xs => "iq4_xs",
        }
    }

    /// The type named `name` (case-insensitive).
    pub fn from_name(name: &str) -> Option<GgmlType> {
        ALL.into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// ggml.h's `enum ggml_type` id.
    pub fn type_id(self) -> u32 {
        match self {
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q2K => 10,
            GgmlType::Q3K => 11,
            GgmlType::Q4K => 12,
            GgmlType::Q5K => 13,
            GgmlType::Q6K => 14,
            GgmlType::Iq4Nl => 20,
            GgmlType::Iq4Xs => 23,
        }
    }

    /// Weights per block.
    pub fn block_weights(self) -> usize {
        if self.is_k_quant() || self == GgmlType::Iq4Xs {
            QK_K
        } else {
            QK
        }
    }

    /// Bytes per block (`sizeof(block_*)`).
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q5_0 => 22,
            GgmlType::Q5_1 => 24,
            GgmlType::Q8_0 => 34,
            GgmlType::Q2K => 84,
            GgmlType::Q3K => 110,
            GgmlType::Q4K => 144,
            GgmlType::Q5K => 176,
            GgmlType::Q6K => 210,
            GgmlType::Iq4Nl => 18,
            GgmlType::Iq4Xs => 136,
        }
    }

    /// Whether the type is one of the 256-weight k-quants.
    pub fn is_k_quant(self) -> bool {
        matches!(
            self,
            GgmlType::Q2K | GgmlType::Q3K | GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K
        )
    }

    /// Bits per weight: `8 · block_bytes / block_weights`.
    pub fn bits_per_weight(self) -> f64 {
        8.0 * self.block_bytes() as f64 / self.block_weights() as f64
    }

    /// Weights per sub-block (one grid each): the block itself for the legacy types.
    pub fn sub_len(self) -> usize {
        match self {
            GgmlType::Q4K | GgmlType::Q5K | GgmlType::Iq4Xs => 32,
            GgmlType::Q2K | GgmlType::Q3K | GgmlType::Q6K => 16,
            _ => QK,
        }
    }

    /// Sub-blocks per block.
    pub fn subs(self) -> usize {
        self.block_weights() / self.sub_len()
    }

    /// Codes per weight.
    pub fn levels(self) -> u16 {
        match self {
            GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q4K
            | GgmlType::Iq4Nl
            | GgmlType::Iq4Xs => 16,
            GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q5K => 32,
            GgmlType::Q8_0 => 256,
            GgmlType::Q2K => 4,
            GgmlType::Q3K => 8,
            GgmlType::Q6K => 64,
        }
    }

    /// Largest integer sub-block scale (and min) a header can hold: 63 for 6-bit, 15 for 4-bit,
    /// 127 for Q6_K's signed bytes (which also go down to −128); 0 for the legacy types.
    pub fn max_sub_code(self) -> u8 {
        match self {
            GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q3K | GgmlType::Iq4Xs => 63,
            GgmlType::Q2K => 15,
            GgmlType::Q6K => 127,
            _ => 0,
        }
    }

    /// Whether sub-blocks have mins (`d·sc·q − dmin·m`) besides scales.
    pub fn has_mins(self) -> bool {
        matches!(self, GgmlType::Q2K | GgmlType::Q4K | GgmlType::Q5K)
    }

    /// The grid of sub-block `j` of a block with `header`.
    pub fn grid(self, header: &Header, j: usize) -> Grid {
        let d = header.d.to_f32();
        let dmin = header.dmin.to_f32();
        let levels = self.levels();
        let plain = |form, step, offset, bias| Grid {
            form,
            step,
            offset,
            bias,
            levels,
        };
        match self {
            GgmlType::Q4_0 => plain(Form::Mul, d, 0.0, 8),
            GgmlType::Q5_0 => plain(Form::Mul, d, 0.0, 16),
            GgmlType::Q8_0 => plain(Form::Mul, d, 0.0, 128),
            GgmlType::Q4_1 | GgmlType::Q5_1 => plain(Form::MulAdd, d, dmin, 0),
            GgmlType::Q2K | GgmlType::Q4K | GgmlType::Q5K => plain(
                Form::MulSub,
                d * f32::from(header.sc[j]),
                dmin * f32::from(header.mn[j]),
                0,
            ),
            GgmlType::Q3K => plain(Form::Mul, d * (i32::from(header.sc[j]) - 32) as f32, 0.0, 4),
            GgmlType::Q6K => plain(Form::Mul, d * f32::from(header.sc[j] as i8), 0.0, 32),
            GgmlType::Iq4Nl => plain(Form::Table, d, 0.0, 0),
            GgmlType::Iq4Xs => plain(
                Form::Table,
                d * (i32::from(header.sc[j]) - 32) as f32,
                0.0,
                0,
            ),
        }
    }

    /// Append one block, laid out as `ggml-common.h`'s struct, little-endian. `codes` holds the
    /// block's [`GgmlType::block_weights`] codes in weight order, each below
    /// [`GgmlType::levels`].
    pub fn write(self, header: &Header, codes: &[u8], out: &mut Vec<u8>) {
        debug_assert_eq!(codes.len(), self.block_weights());
        let d = header.d.to_le_bytes();
        let dmin = header.dmin.to_le_bytes();
        match self {
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Iq4Nl => {
                out.extend_from_slice(&d);
                if self == GgmlType::Q4_1 {
                    out.extend_from_slice(&dmin);
                }
                out.extend((0..16).map(|j| codes[j] | (codes[j + 16] << 4)));
            }
            GgmlType::Q5_0 | GgmlType::Q5_1 => {
                out.extend_from_slice(&d);
                if self == GgmlType::Q5_1 {
                    out.extend_from_slice(&dmin);
                }
                let mut qh = 0u32;
                for (j, &q) in codes.iter().enumerate() {
                    qh |= u32::from(q >> 4) << j;
                }
                out.extend_from_slice(&qh.to_le_bytes());
                out.extend((0..16).map(|j| (codes[j] & 0xF) | ((codes[j + 16] & 0xF) << 4)));
            }
            GgmlType::Q8_0 => {
                out.extend_from_slice(&d);
                out.extend(codes.iter().map(|&q| q.wrapping_sub(128)));
            }
            GgmlType::Q2K => {
                out.extend((0..16).map(|j| header.sc[j] | (header.mn[j] << 4)));
                let mut qs = [0u8; 64];
                for (i, &q) in codes.iter().enumerate() {
                    let (n, j, h, l) = (i / 128, (i / 32) % 4, (i / 16) % 2, i % 16);
                    qs[32 * n + 16 * h + l] |= q << (2 * j);
                }
                out.extend_from_slice(&qs);
                out.extend_from_slice(&d);
                out.extend_from_slice(&dmin);
            }
            GgmlType::Q3K => {
                let mut hmask = [0u8; 32];
                let mut qs = [0u8; 64];
                for (i, &q) in codes.iter().enumerate() {
                    let (n, j, h, l) = (i / 128, (i / 32) % 4, (i / 16) % 2, i % 16);
                    qs[32 * n + 16 * h + l] |= (q & 3) << (2 * j);
                    hmask[16 * h + l] |= (q >> 2) << (4 * n + j);
                }
                out.extend_from_slice(&hmask);
                out.extend_from_slice(&qs);
                let mut scales = [0u8; 12];
                for (i, &s) in header.sc.iter().enumerate() {
                    if i < 8 {
                        scales[i] |= s & 0xF;
                    } else {
                        scales[i - 8] |= (s & 0xF) << 4;
                    }
                    scales[8 + i % 4] |= (s >> 4) << (2 * (i / 4));
                }
                out.extend_from_slice(&scales);
                out.extend_from_slice(&d);
            }
            GgmlType::Q4K | GgmlType::Q5K => {
                out.extend_from_slice(&d);
                out.extend_from_slice(&dmin);
                let mut sc = [0u8; 8];
                let mut mn = [0u8; 8];
                sc.copy_from_slice(&header.sc[..8]);
                mn.copy_from_slice(&header.mn[..8]);
                out.extend_from_slice(&super::pack_scale_min_k4(&sc, &mn));
                if self == GgmlType::Q5K {
                    let mut qh = [0u8; 32];
                    for (i, &q) in codes.iter().enumerate() {
                        let (sub, l) = (i / 32, i % 32);
                        qh[l] |= (q >> 4) << sub;
                    }
                    out.extend_from_slice(&qh);
                }
                let mut qs = [0u8; 128];
                for (i, &q) in codes.iter().enumerate() {
                    let (c, hi, l) = (i / 64, (i / 32) % 2, i % 32);
                    qs[32 * c + l] |= (q & 0xF) << (4 * hi);
                }
                out.extend_from_slice(&qs);
            }
            GgmlType::Q6K => {
                let mut ql = [0u8; 128];
                let mut qh = [0u8; 64];
                for (i, &q) in codes.iter().enumerate() {
                    let (n, quarter, l) = (i / 128, (i / 32) % 4, i % 32);
                    // Quarters 0..4 of a half: low nibbles of ql[l], ql[l+32], high nibbles of
                    // ql[l], ql[l+32]; the top two bits at qh[l] >> 2·quarter.
                    let byte = 64 * n + l + 32 * (quarter % 2);
                    ql[byte] |= (q & 0xF) << (4 * (quarter / 2));
                    qh[32 * n + l] |= (q >> 4) << (2 * quarter);
                }
                out.extend_from_slice(&ql);
                out.extend_from_slice(&qh);
                out.extend_from_slice(&header.sc);
                out.extend_from_slice(&d);
            }
            GgmlType::Iq4Xs => {
                out.extend_from_slice(&d);
                let mut scales_h = 0u16;
                let mut scales_l = [0u8; 4];
                for (ib, &ls) in header.sc[..8].iter().enumerate() {
                    scales_l[ib / 2] |= (ls & 0xF) << (4 * (ib % 2));
                    scales_h |= u16::from((ls >> 4) & 3) << (2 * ib);
                }
                out.extend_from_slice(&scales_h.to_le_bytes());
                out.extend_from_slice(&scales_l);
                for sub in codes.chunks_exact(32) {
                    out.extend((0..16).map(|j| sub[j] | (sub[j + 16] << 4)));
                }
            }
        }
    }

    /// The header and codes of one block's bytes: the inverse of [`GgmlType::write`].
    pub fn read(self, bytes: &[u8], codes: &mut [u8]) -> Header {
        debug_assert_eq!(bytes.len(), self.block_bytes());
        debug_assert_eq!(codes.len(), self.block_weights());
        let f16_at = |at: usize| f16::from_le_bytes([bytes[at], bytes[at + 1]]);
        let mut header = Header::default();
        match self {
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Iq4Nl => {
                header.d = f16_at(0);
                let qs = if self == GgmlType::Q4_1 {
                    header.dmin = f16_at(2);
                    &bytes[4..20]
                } else {
                    &bytes[2..18]
                };
                for j in 0..16 {
                    codes[j] = qs[j] & 0xF;
                    codes[j + 16] = qs[j] >> 4;
                }
            }
            GgmlType::Q5_0 | GgmlType::Q5_1 => {
                header.d = f16_at(0);
                let at = if self == GgmlType::Q5_1 {
                    header.dmin = f16_at(2);
                    4
                } else {
                    2
                };
                let qh = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
                let qs = &bytes[at + 4..at + 20];
                for j in 0..16 {
                    codes[j] = (qs[j] & 0xF) | ((((qh >> j) & 1) as u8) << 4);
                    codes[j + 16] = (qs[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
                }
            }
            GgmlType::Q8_0 => {
                header.d = f16_at(0);
                for (c, &b) in codes.iter_mut().zip(&bytes[2..34]) {
                    *c = b.wrapping_add(128);
                }
            }
            GgmlType::Q2K => {
                for j in 0..16 {
                    header.sc[j] = bytes[j] & 0xF;
                    header.mn[j] = bytes[j] >> 4;
                }
                let qs = &bytes[16..80];
                for (i, c) in codes.iter_mut().enumerate() {
                    let (n, j, h, l) = (i / 128, (i / 32) % 4, (i / 16) % 2, i % 16);
                    *c = (qs[32 * n + 16 * h + l] >> (2 * j)) & 3;
                }
                header.d = f16_at(80);
                header.dmin = f16_at(82);
            }
            GgmlType::Q3K => {
                let (hmask, qs, scales) = (&bytes[0..32], &bytes[32..96], &bytes[96..108]);
                for (i, c) in codes.iter_mut().enumerate() {
                    let (n, j, h, l) = (i / 128, (i / 32) % 4, (i / 16) % 2, i % 16);
                    let low = (qs[32 * n + 16 * h + l] >> (2 * j)) & 3;
                    let high = (hmask[16 * h + l] >> (4 * n + j)) & 1;
                    *c = low | (high << 2);
                }
                for i in 0..16 {
                    let low = if i < 8 {
                        scales[i] & 0xF
                    } else {
                        scales[i - 8] >> 4
                    };
                    let high = (scales[8 + i % 4] >> (2 * (i / 4))) & 3;
                    header.sc[i] = low | (high << 4);
                }
                header.d = f16_at(108);
            }
            GgmlType::Q4K | GgmlType::Q5K => {
                header.d = f16_at(0);
                header.dmin = f16_at(2);
                let scales: &[u8; 12] = bytes[4..16].try_into().expect("12 bytes");
                for j in 0..8 {
                    (header.sc[j], header.mn[j]) = super::scale_min_k4(j, scales);
                }
                let (qh, qs) = if self == GgmlType::Q5K {
                    (Some(&bytes[16..48]), &bytes[48..176])
                } else {
                    (None, &bytes[16..144])
                };
                for (i, c) in codes.iter_mut().enumerate() {
                    let (chunk, hi, l) = (i / 64, (i / 32) % 2, i % 32);
                    *c = (qs[32 * chunk + l] >> (4 * hi)) & 0xF;
                    if let Some(qh) = qh {
                        *c |= ((qh[l] >> (i / 32)) & 1) << 4;
                    }
                }
            }
            GgmlType::Q6K => {
                let (ql, qh) = (&bytes[0..128], &bytes[128..192]);
                header.sc.copy_from_slice(&bytes[192..208]);
                header.d = f16_at(208);
                for (i, c) in codes.iter_mut().enumerate() {
                    let (n, quarter, l) = (i / 128, (i / 32) % 4, i % 32);
                    let low = (ql[64 * n + l + 32 * (quarter % 2)] >> (4 * (quarter / 2))) & 0xF;
                    let high = (qh[32 * n + l] >> (2 * quarter)) & 3;
                    *c = low | (high << 4);
                }
            }
            GgmlType::Iq4Xs => {
                header.d = f16_at(0);
                let scales_h = u16::from_le_bytes([bytes[2], bytes[3]]);
                for ib in 0..8 {
                    let low = (bytes[4 + ib / 2] >> (4 * (ib % 2))) & 0xF;
                    let high = ((scales_h >> (2 * ib)) & 3) as u8;
                    header.sc[ib] = low | (high << 4);
                }
                for (ib, sub) in codes.chunks_exact_mut(32).enumerate() {
                    let qs = &bytes[8 + 16 * ib..8 + 16 * ib + 16];
                    for j in 0..16 {
                        sub[j] = qs[j] & 0xF;
                        sub[j + 16] = qs[j] >> 4;
                    }
                }
            }
        }
        header
    }

    /// One block's values by llama.cpp's reference dequantization (`dequantize_row_*` of
    /// `ggml-quants.c`, ported line by line with its f32 operations in the same order).
    pub fn dequantize(self, bytes: &[u8], y: &mut [f32]) {
        debug_assert_eq!(bytes.len(), self.block_bytes());
        let f16_at = |at: usize| f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32();
        match self {
            GgmlType::Q4_0 => {
                let d = f16_at(0);
                for j in 0..16 {
                    let x0 = i32::from(bytes[2 + j] & 0x0F) - 8;
                    let x1 = i32::from(bytes[2 + j] >> 4) - 8;
                    y[j] = x0 as f32 * d;
                    y[j + 16] = x1 as f32 * d;
                }
            }
            GgmlType::Q4_1 => {
                let (d, m) = (f16_at(0), f16_at(2));
                for j in 0..16 {
                    let x0 = i32::from(bytes[4 + j] & 0x0F);
                    let x1 = i32::from(bytes[4 + j] >> 4);
                    y[j] = x0 as f32 * d + m;
                    y[j + 16] = x1 as f32 * d + m;
                }
            }
            GgmlType::Q5_0 | GgmlType::Q5_1 => {
                let d = f16_at(0);
                let (m, at) = if self == GgmlType::Q5_1 {
                    (Some(f16_at(2)), 4)
                } else {
                    (None, 2)
                };
                let qh = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
                let qs = &bytes[at + 4..at + 20];
                for j in 0..16 {
                    let xh_0 = (((qh >> j) << 4) & 0x10) as u8;
                    let xh_1 = ((qh >> (j + 12)) & 0x10) as u8;
                    let (x0, x1) = (
                        i32::from((qs[j] & 0x0F) | xh_0),
                        i32::from((qs[j] >> 4) | xh_1),
                    );
                    match m {
                        Some(m) => {
                            y[j] = x0 as f32 * d + m;
                            y[j + 16] = x1 as f32 * d + m;
                        }
                        None => {
                            y[j] = (x0 - 16) as f32 * d;
                            y[j + 16] = (x1 - 16) as f32 * d;
                        }
                    }
                }
            }
            GgmlType::Q8_0 => {
                let d = f16_at(0);
                for (o, &q) in y.iter_mut().zip(&bytes[2..34]) {
                    *o = f32::from(q as i8) * d;
                }
            }
            GgmlType::Q2K => {
                let (d, min) = (f16_at(80), f16_at(82));
                let mut is = 0;
                let mut out = 0;
                for n in 0..2 {
                    let q = &bytes[16 + 32 * n..16 + 32 * n + 32];
                    for j in 0..4 {
                        let shift = 2 * j;
                        for half in 0..2 {
                            let sc = bytes[is];
                            is += 1;
                            let dl = d * f32::from(sc & 0xF);
                            let ml = min * f32::from(sc >> 4);
                            for l in 0..16 {
                                y[out] = dl * f32::from((q[16 * half + l] >> shift) & 3) - ml;
                                out += 1;
                            }
                        }
                    }
                }
            }
            GgmlType::Q3K => {
                let d_all = f16_at(108);
                let (hm, qs, raw) = (&bytes[0..32], &bytes[32..96], &bytes[96..108]);
                let mut scales = [0i8; 16];
                for (i, s) in scales.iter_mut().enumerate() {
                    let low = if i < 8 { raw[i] & 0xF } else { raw[i - 8] >> 4 };
                    let high = (raw[8 + i % 4] >> (2 * (i / 4))) & 3;
                    *s = (low | (high << 4)) as i8;
                }
                let mut is = 0;
                let mut out = 0;
                let mut m = 1u8;
                for n in 0..2 {
                    let q = &qs[32 * n..32 * n + 32];
                    for j in 0..4 {
                        let shift = 2 * j;
                        for half in 0..2 {
                            let dl = d_all * (i32::from(scales[is]) - 32) as f32;
                            is += 1;
                            for l in 0..16 {
                                let low = i32::from(((q[16 * half + l] >> shift) & 3) as i8);
                                let high = if hm[16 * half + l] & m != 0 { 0 } else { 4 };
                                y[out] = dl * (low - high) as f32;
                                out += 1;
                            }
                        }
                        m <<= 1;
                    }
                }
            }
            GgmlType::Q4K | GgmlType::Q5K => {
                let (d, min) = (f16_at(0), f16_at(2));
                let scales: &[u8; 12] = bytes[4..16].try_into().expect("12 bytes");
                let (qh, ql) = if self == GgmlType::Q5K {
                    (Some(&bytes[16..48]), &bytes[48..176])
                } else {
                    (None, &bytes[16..144])
                };
                let (mut u1, mut u2) = (1u8, 2u8);
                for chunk in 0..4 {
                    let (sc, m) = super::scale_min_k4(2 * chunk, scales);
                    let (d1, m1) = (d * f32::from(sc), min * f32::from(m));
                    let (sc, m) = super::scale_min_k4(2 * chunk + 1, scales);
                    let (d2, m2) = (d * f32::from(sc), min * f32::from(m));
                    let q = &ql[32 * chunk..32 * chunk + 32];
                    for l in 0..32 {
                        let (hi1, hi2) = match qh {
                            Some(qh) => (
                                if qh[l] & u1 != 0 { 16 } else { 0 },
                                if qh[l] & u2 != 0 { 16 } else { 0 },
                            ),
                            None => (0, 0),
                        };
                        y[64 * chunk + l] = d1 * f32::from((q[l] & 0xF) + hi1) - m1;
                        y[64 * chunk + 32 + l] = d2 * f32::from((q[l] >> 4) + hi2) - m2;
                    }
                    u1 <<= 2;
                    u2 <<= 2;
                }
            }
            GgmlType::Q6K => {
                let d = f16_at(208);
                for n in 0..2 {
                    let ql = &bytes[64 * n..64 * n + 64];
                    let qh = &bytes[128 + 32 * n..128 + 32 * n + 32];
                    let sc = &bytes[192 + 8 * n..192 + 8 * n + 8];
                    let y = &mut y[128 * n..128 * n + 128];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
                        let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
                        let s = |k: usize| d * f32::from(sc[k] as i8);
                        y[l] = s(is) * f32::from(q1);
                        y[l + 32] = s(is + 2) * f32::from(q2);
                        y[l + 64] = s(is + 4) * f32::from(q3);
                        y[l + 96] = s(is + 6) * f32::from(q4);
                    }
                }
            }
            GgmlType::Iq4Nl => {
                let d = f16_at(0);
                let qs = &bytes[2..18];
                for j in 0..16 {
                    y[j] = d * f32::from(KVALUES_IQ4NL[usize::from(qs[j] & 0xF)]);
                    y[j + 16] = d * f32::from(KVALUES_IQ4NL[usize::from(qs[j] >> 4)]);
                }
            }
            GgmlType::Iq4Xs => {
                let d = f16_at(0);
                let scales_h = u16::from_le_bytes([bytes[2], bytes[3]]);
                for ib in 0..8 {
                    let ls = i32::from((bytes[4 + ib / 2] >> (4 * (ib % 2))) & 0xF)
                        | (i32::from((scales_h >> (2 * ib)) & 3) << 4);
                    let dl = d * (ls - 32) as f32;
                    let qs = &bytes[8 + 16 * ib..8 + 16 * ib + 16];
                    let y = &mut y[32 * ib..32 * ib + 32];
                    for j in 0..16 {
                        y[j] = dl * f32::from(KVALUES_IQ4NL[usize::from(qs[j] & 0xF)]);
                        y[j + 16] = dl * f32::from(KVALUES_IQ4NL[usize::from(qs[j] >> 4)]);
                    }
                }
            }
        }
    }

    /// Bytes of one row of `cols` weights, or an error naming the type when `cols` is not a
    /// whole number of blocks.
    pub fn row_bytes(self, cols: usize) -> Result<usize> {
        if !cols.is_multiple_of(self.block_weights()) {
            return Err(Error::invalid_input(format!(
                "ggml: {} needs rows of a multiple of {} weights, got {cols} (llama.cpp falls back to {} for such rows)",
                self.name(),
                self.block_weights(),
                self.fallback().map_or("F16", GgmlType::name)
            )));
        }
        Ok(cols / self.block_weights() * self.block_bytes())
    }

    /// llama.cpp's type for rows that are not whole blocks of this type
    /// (`tensor_type_fallback` in `llama-quant.cpp`): k-quants and IQ4_XS fall back to a
    /// 32-weight type;
    /// `None` for the legacy types (llama.cpp then stores F16).
    pub fn fallback(self) -> Option<GgmlType> {
        match self {
            GgmlType::Q2K | GgmlType::Q3K => Some(GgmlType::Q4_0),
            GgmlType::Q4K => Some(GgmlType::Q5_0),
            GgmlType::Q5K => Some(GgmlType::Q5_1),
            GgmlType::Q6K => Some(GgmlType::Q8_0),
            GgmlType::Iq4Xs => Some(GgmlType::Iq4Nl),
            _ => None,
        }
    }
}
