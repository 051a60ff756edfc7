//! GGML's block types that TenPak's grids can be stored in exactly, and the functions that build
//! them from those grids (the native forms a codec hands to the GGUF exporter).
//!
//! Each block type is the `#[repr(C)]` struct of llama.cpp's `ggml-common.h`, followed by a
//! compile-time check of its size, as candle's `k_quants.rs` does; blocks are written out field
//! by field, little-endian ([`GgmlBlock::write_le`]), so no byte depends on the host's layout.
//!
//! | TenPak grid | GGML type | llama.cpp's dequantization |
//! |---|---|---|
//! | 4-bit codes, f16 `(scale, min)` per group of a multiple of 32 ([`AsymQuantized`]) | Q4_1 ([`BlockQ4_1`], [`q4_1_blocks`]) | `d·q + m` |
//! | int8 codes, f16 scale per group of a multiple of 32 ([`SymQuantized`]) | Q8_0 ([`BlockQ8_0`], [`q8_0_blocks`]) | `d·q` |
//! | 4-bit codes in groups of 32, 6-bit double-quantized headers in super-groups of 8 ([`DqHeaders`]) | Q4_K ([`BlockQ4K`], [`q4_k_blocks`]) | `d·sc·q − dmin·m` |
//!
//! A builder returns `None` where the grid is not one the type holds (rows not whole blocks,
//! groups that straddle blocks, header codes the type cannot store); it is never wrong to store
//! such a tensor some other way. The 4-bit codes are recomputed from the decoded values and the
//! block's header (`round((ŵ − min) / scale)`, clamped to 0..=15), as TenPak's GGUF exporter
//! always computed them: they are the stored codes unless the f32 rounding of `scale·q + min`
//! moved a value by half a step (a min far larger than its scale). The exporter checks every
//! block against the runtime's dequantization before it trusts it ([`decodes_to`] is that check
//! with llama.cpp's formulas).
//!
//! [`types`] holds every llama.cpp type the `ggml` codec writes (legacy, k-quants, IQ4), with its
//! block layout and a port of its reference dequantization: the codec encodes with it, the
//! allocator `gguf_recipe` takes block sizes and fallbacks from it, and the GGUF exporter checks
//! the types candle-core cannot read with it.

pub mod types;

use half::{bf16, f16};
use tenpak_api::NativeForm;

use crate::asym::AsymQuantized;
use crate::dq::DqHeaders;
use crate::grid::GridF32;
use crate::layout::GroupLayout;
use crate::sym::SymQuantized;

/// ggml.h's `GGML_TYPE_F32`.
pub const TYPE_F32: u32 = 0;
/// ggml.h's `GGML_TYPE_F16`.
pub const TYPE_F16: u32 = 1;
/// ggml.h's `GGML_TYPE_Q4_1`.
pub const TYPE_Q4_1: u32 = 3;
/// ggml.h's `GGML_TYPE_Q8_0`.
pub const TYPE_Q8_0: u32 = 8;
/// ggml.h's `GGML_TYPE_Q4_K`.
pub const TYPE_Q4_K: u32 = 12;
/// ggml.h's `GGML_TYPE_BF16`.
pub const TYPE_BF16: u32 = 30;

/// Weights per block of the legacy types (`QK4_1`, `QK8_0`).
pub const QK: usize = 32;
/// Weights per k-quant super-block (`QK_K`).
pub const QK_K: usize = 256;
/// Bytes of a k-quant block's packed 6-bit scales and mins (`K_SCALE_SIZE`).
pub const K_SCALE_SIZE: usize = 12;

/// A GGML block: its type id, the weights it holds, and its bytes as a GGUF file stores them.
pub trait GgmlBlock {
    /// ggml.h's `enum ggml_type` id.
    const GGML_TYPE: u32;
    /// Weights per block.
    const WEIGHTS: usize;
    /// Bytes per block (the struct's size, checked at compile time).
    const BYTES: usize;
    /// Append the block's bytes, field by field, little-endian.
    fn write_le(&self, out: &mut Vec<u8>);
    /// The block's [`GgmlBlock::WEIGHTS`] values by llama.cpp's reference dequantization
    /// (`dequantize_row_*` in `ggml-quants.c`), in f32 as it computes them.
    fn dequantize(&self, out: &mut [f32]);
}

/// llama.cpp's `block_q4_1`: 32 weights `d·q + m`, `q` in 0..=15, two per byte (weight `j` in
/// the low nibble of byte `j`, weight `j + 16` in the high one).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ4_1 {
    /// Step.
    pub d: f16,
    /// Value of code 0.
    pub m: f16,
    /// The 32 codes.
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);

/// llama.cpp's `block_q8_0`: 32 weights `d·q`, `q` a signed byte.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8_0 {
    /// Step.
    pub d: f16,
    /// The 32 codes.
    pub qs: [i8; QK],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);

/// llama.cpp's `block_q4_K`: 256 weights in 8 groups of 32; group `j` decodes as
/// `d·sc_j·q − dmin·m_j` with 6-bit `sc_j`, `m_j` packed into `scales` (see
/// [`pack_scale_min_k4`]); codes two per byte, in four chunks of 64 weights (weight `l` of a
/// chunk in the low nibble of byte `l`, weight `32 + l` in the high one).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ4K {
    /// Super-block scale of the group scales.
    pub d: f16,
    /// Super-block scale of the group mins.
    pub dmin: f16,
    /// Eight 6-bit scales and eight 6-bit mins.
    pub scales: [u8; K_SCALE_SIZE],
    /// The 256 codes.
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 144);

impl GgmlBlock for BlockQ4_1 {
    const GGML_TYPE: u32 = TYPE_Q4_1;
    const WEIGHTS: usize = QK;
    const BYTES: usize = std::mem::size_of::<Self>();
    fn write_le(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.d.to_le_bytes());
        out.extend_from_slice(&self.m.to_le_bytes());
        out.extend_from_slice(&self.qs);
    }
    fn dequantize(&self, out: &mut [f32]) {
        let (d, m) = (self.d.to_f32(), self.m.to_f32());
        for (j, &q) in self.qs.iter().enumerate() {
            out[j] = f32::from(q & 0xF) * d + m;
            out[j + QK / 2] = f32::from(q >> 4) * d + m;
        }
    }
}

impl GgmlBlock for BlockQ8_0 {
    const GGML_TYPE: u32 = TYPE_Q8_0;
    const WEIGHTS: usize = QK;
    const BYTES: usize = std::mem::size_of::<Self>();
    fn write_le(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.d.to_le_bytes());
        out.extend(self.qs.iter().map(|&q| q as u8));
    }
    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        for (o, &q) in out.iter_mut().zip(&self.qs) {
            *o = f32::from(q) * d;
        }
    }
}

impl GgmlBlock for BlockQ4K {
    const GGML_TYPE: u32 = TYPE_Q4_K;
    const WEIGHTS: usize = QK_K;
    const BYTES: usize = std::mem::size_of::<Self>();
    fn write_le(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.d.to_le_bytes());
        out.extend_from_slice(&self.dmin.to_le_bytes());
        out.extend_from_slice(&self.scales);
        out.extend_from_slice(&self.qs);
    }
    fn dequantize(&self, out: &mut [f32]) {
        let (d, dmin) = (self.d.to_f32(), self.dmin.to_f32());
        for chunk in 0..4 {
            let (sc0, m0) = scale_min_k4(2 * chunk, &self.scales);
            let (sc1, m1) = scale_min_k4(2 * chunk + 1, &self.scales);
            let (d0, min0) = (d * f32::from(sc0), dmin * f32::from(m0));
            let (d1, min1) = (d * f32::from(sc1), dmin * f32::from(m1));
            for l in 0..32 {
                let q = self.qs[32 * chunk + l];
                out[64 * chunk + l] = d0 * f32::from(q & 0xF) - min0;
                out[64 * chunk + 32 + l] = d1 * f32::from(q >> 4) - min1;
            }
        }
    }
}

/// Scale and min of group `j` of a Q4_K block's packed `scales` (llama.cpp's
/// `get_scale_min_k4`; the inverse of [`pack_scale_min_k4`]).
pub fn scale_min_k4(j: usize, scales: &[u8; K_SCALE_SIZE]) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        (
            (scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4),
            (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
        )
    }
}

/// The bytes of `blocks`, in order: a GGUF tensor's data.
pub fn to_bytes<B: GgmlBlock>(blocks: &[B]) -> Vec<u8> {
    let mut out = Vec::with_capacity(blocks.len() * B::BYTES);
    for block in blocks {
        block.write_le(&mut out);
    }
    debug_assert_eq!(out.len(), blocks.len() * B::BYTES);
    out
}

/// The values of `blocks`, in order, by llama.cpp's reference dequantization.
pub fn dequantize<B: GgmlBlock>(blocks: &[B]) -> Vec<f32> {
    let mut out = vec![0f32; blocks.len() * B::WEIGHTS];
    for (block, values) in blocks.iter().zip(out.chunks_exact_mut(B::WEIGHTS)) {
        block.dequantize(values);
    }
    out
}

/// Whether `blocks` dequantize to `values` bit for bit.
pub fn decodes_to<B: GgmlBlock>(blocks: &[B], values: &[f32]) -> bool {
    let decoded = dequantize(blocks);
    decoded.len() == values.len()
        && decoded
            .iter()
            .zip(values)
            .all(|(a, b)| a.to_bits() == b.to_bits())
}

/// `blocks` as the native form of a GGUF tensor.
pub fn native_form<B: GgmlBlock>(blocks: &[B]) -> NativeForm {
    NativeForm::Ggml {
        ggml_type: B::GGML_TYPE,
        data: to_bytes(blocks),
    }
}

/// GGML F32 data: every value, little-endian.
pub fn f32_data(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// GGML F16 data: every value rounded to f16, little-endian.
pub fn f16_data(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|v| f16::from_f32(*v).to_le_bytes())
        .collect()
}

/// GGML BF16 data: every value rounded to bf16, little-endian.
pub fn bf16_data(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
        .collect()
}

/// Whether `layout`'s rows are whole 32-weight blocks and no group straddles a block (groups of
/// a multiple of 32, or one per row).
fn blocks_fit(layout: GroupLayout) -> bool {
    let (cols, group_size) = (layout.cols(), layout.group_size());
    cols > 0 && cols.is_multiple_of(QK) && (group_size >= cols || group_size.is_multiple_of(QK))
}

/// The 4-bit code of the decoded value `value` under `scale` and `min`: `round((value − min) /
/// scale)` clamped to 0..=15, or 0 for a group of one level (`scale ≤ 0`).
#[inline]
fn recode_4bit(value: f32, scale: f32, min: f32) -> u8 {
    if scale > 0.0 {
        ((value - min) / scale).round().clamp(0.0, 15.0) as u8
    } else {
        0
    }
}

/// Q4_1 blocks of a 4-bit grid with f16 `(scale, min)` headers, row by row: each block's header
/// is its group's, bit for bit, and its codes are recomputed from `values`, the matrix the codec
/// decodes to (`quantized.dequantize()` unless it adds to it; see the module docs). `None`
/// unless the codes are 4-bit, the rows whole blocks of 32 and the groups multiples of 32 (or
/// one per row).
pub fn q4_1_blocks(quantized: &AsymQuantized, values: &[f32]) -> Option<Vec<BlockQ4_1>> {
    let format = quantized.format();
    let layout = format.layout();
    assert_eq!(values.len(), layout.numel(), "one value per weight");
    if format.bits() != 4 || !blocks_fit(layout) {
        return None;
    }
    let headers = quantized.headers();
    let (cols, gpr, group_size) = (layout.cols(), layout.groups_per_row(), layout.group_size());
    let mut out = Vec::with_capacity(layout.rows() * cols / QK);
    for (r, row) in values.chunks_exact(cols).enumerate() {
        for (b, block) in row.chunks_exact(QK).enumerate() {
            let header = headers[r * gpr + b * QK / group_size];
            let (scale, min) = (header.scale.to_f32(), header.min.to_f32());
            let q: Vec<u8> = block.iter().map(|&v| recode_4bit(v, scale, min)).collect();
            out.push(BlockQ4_1 {
                d: header.scale,
                m: header.min,
                qs: std::array::from_fn(|j| q[j] | (q[j + QK / 2] << 4)),
            });
        }
    }
    Some(out)
}

/// The GGUF form of a bare 4-bit grid with f16 `(scale, min)` headers (`int4_rtn`'s storage,
/// shared by `int4_gptq` and `int4_residual`'s first stage): its Q4_1 blocks, codes recomputed
/// from its own decode. `None` where [`q4_1_blocks`] is.
pub fn q4_1_form(quantized: &AsymQuantized) -> Option<NativeForm> {
    q4_1_blocks(quantized, &quantized.dequantize()).map(|blocks| native_form(&blocks))
}

/// Q8_0 blocks of a symmetric int8 grid, row by row: each block's step is its group's f16
/// scale and its codes the stored codes. `None` unless the rows are whole blocks of 32 and the
/// groups multiples of 32 (or one per row).
pub fn q8_0_blocks(quantized: &SymQuantized) -> Option<Vec<BlockQ8_0>> {
    let layout = quantized.format().layout();
    if !blocks_fit(layout) {
        return None;
    }
    let (cols, gpr, group_size) = (layout.cols(), layout.groups_per_row(), layout.group_size());
    let (codes, scales) = (quantized.codes(), quantized.scales());
    let mut out = Vec::with_capacity(layout.rows() * cols / QK);
    for (r, row) in codes.chunks_exact(cols).enumerate() {
        for (b, block) in row.chunks_exact(QK).enumerate() {
            out.push(BlockQ8_0 {
                d: scales[r * gpr + b * QK / group_size],
                qs: block.try_into().expect("a block is 32 codes"),
            });
        }
    }
    Some(out)
}

/// Pack eight 6-bit scales and eight 6-bit mins as llama.cpp's `quantize_row_q4_K_ref` does
/// (the inverse of its `get_scale_min_k4`): pairs 0..4 in the low six bits of bytes 0..4 and
/// 4..8, pairs 4..8 in the nibbles of bytes 8..12 with their top two bits in the top bits of
/// bytes 0..8.
pub fn pack_scale_min_k4(sc: &[u8; 8], m: &[u8; 8]) -> [u8; K_SCALE_SIZE] {
    let mut scales = [0u8; K_SCALE_SIZE];
    for j in 0..8 {
        if j < 4 {
            scales[j] = sc[j];
            scales[j + 4] = m[j];
        } else {
            scales[j + 4] = (sc[j] & 0xF) | ((m[j] & 0xF) << 4);
            scales[j - 4] |= (sc[j] >> 4) << 6;
            scales[j] |= (m[j] >> 4) << 6;
        }
    }
    scales
}

/// Q4_K blocks of 4-bit codes on double-quantized `headers` with 6-bit header codes in groups
/// of 32 and super-groups of 8: each super-group is one block, its `(d, m)` the block's
/// `(d, ±dmin)`, its groups' integer scales and mins the block's 6-bit ones. The codes are
/// recomputed from `values`, the matrix the codec decodes to (the codes dequantized on the
/// headers' grids unless it adds to them; see the module docs).
///
/// `None` unless the rows are whole 256-weight super-blocks, and for a super-group whose integer
/// mins are of both signs (Q4_K's mins are one f16 times unsigned integers, TenPak's are signed)
/// or whose header codes do not fit 6 bits.
pub fn q4_k_blocks(headers: &DqHeaders, values: &[f32]) -> Option<Vec<BlockQ4K>> {
    let dq = headers.layout();
    let layout = dq.layout();
    assert_eq!(values.len(), layout.numel(), "one value per weight");
    let cols = layout.cols();
    if layout.group_size() != QK
        || dq.header_bits() != 6
        || dq.super_groups() != QK_K / QK
        || cols == 0
        || !cols.is_multiple_of(QK_K)
    {
        return None;
    }
    let grids = headers.grids();
    let supers = headers.supers();
    let (groups, blocks) = (cols / QK, cols / QK_K);
    let mut out = Vec::with_capacity(layout.rows() * blocks);
    for r in 0..layout.rows() {
        for b in 0..blocks {
            let [d, m] = supers[r * dq.supers_per_row() + b];
            let group = |j: usize| -> GridF32 { grids[r * groups + b * 8 + j] };
            let (df, mf) = (d.to_f32(), m.to_f32());
            let sc: [u8; 8] = std::array::from_fn(|j| {
                if df > 0.0 {
                    (group(j).scale / df).round() as u8
                } else {
                    0
                }
            });
            let k: [i32; 8] = std::array::from_fn(|j| {
                if mf > 0.0 {
                    (group(j).min / mf).round() as i32
                } else {
                    0
                }
            });
            // min = m·k = −dmin·|k|: dmin = m when every k ≤ 0, −m when every k ≥ 0.
            let dmin = if k.iter().all(|&k| k <= 0) {
                m
            } else if k.iter().all(|&k| k >= 0) {
                -m
            } else {
                return None;
            };
            let mq: [u8; 8] = std::array::from_fn(|j| k[j].unsigned_abs() as u8);
            if sc.iter().chain(&mq).any(|&v| v > 63) {
                return None;
            }
            let base = r * cols + b * QK_K;
            let code = |i: usize| -> u8 {
                let g = group(i / QK);
                recode_4bit(values[base + i], g.scale, g.min)
            };
            out.push(BlockQ4K {
                d,
                dmin,
                scales: pack_scale_min_k4(&sc, &mq),
                qs: std::array::from_fn(|i| {
                    let (chunk, l) = (i / 32, i % 32);
                    code(64 * chunk + l) | (code(64 * chunk + 32 + l) << 4)
                }),
            });
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dq::{DqLayout, code_on_grids, dequantize_on_grids};
    use crate::fit::{FitOptions, Refine, SearchGrid};
    use crate::testing::{TestMatrix, gaussian, ggml_reference_dequantize, native_matrices};
    use crate::{AsymFormat, GroupLayout, SymFormat};

    const SEARCH: FitOptions = FitOptions {
        refine: Refine::Search {
            grid: SearchGrid::K_QUANTS,
            polish: 2,
        },
        allow_zero: false,
    };

    fn assert_bits_eq(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        if let Some(i) = (0..a.len()).find(|&i| a[i].to_bits() != b[i].to_bits()) {
            panic!("{what}: weight {i}: {} vs {}", a[i], b[i]);
        }
    }

    fn asym(m: &TestMatrix, group_size: usize, bits: u32, fit: &FitOptions) -> AsymQuantized {
        let format =
            AsymFormat::new(GroupLayout::new(m.rows, m.cols, group_size).unwrap(), bits).unwrap();
        AsymQuantized::quantize(&m.data, format, fit).unwrap()
    }

    #[test]
    fn scale_min_packing_round_trips() {
        for seed in 0..64u8 {
            let sc: [u8; 8] = std::array::from_fn(|j| (seed + 7 * j as u8) % 64);
            let m: [u8; 8] = std::array::from_fn(|j| (63 - seed + 13 * j as u8) % 64);
            let packed = pack_scale_min_k4(&sc, &m);
            for j in 0..8 {
                assert_eq!(
                    scale_min_k4(j, &packed),
                    (sc[j], m[j]),
                    "seed {seed}, group {j}"
                );
            }
        }
    }

    #[test]
    fn blocks_are_written_field_by_field_little_endian() {
        let q4_1 = BlockQ4_1 {
            d: f16::ONE,
            m: f16::from_f32(-2.0),
            qs: [0x21; 16],
        };
        let mut bytes = vec![0x00, 0x3c, 0x00, 0xc0];
        bytes.extend([0x21; 16]);
        assert_eq!(to_bytes(&[q4_1]), bytes);
        let q8_0 = BlockQ8_0 {
            d: f16::from_f32(0.5),
            qs: std::array::from_fn(|j| j as i8 - 16),
        };
        let out = to_bytes(&[q8_0, q8_0]);
        assert_eq!(out.len(), 2 * BlockQ8_0::BYTES);
        assert_eq!(&out[..3], &[0x00, 0x38, 0xf0]);
        let q4_k = BlockQ4K {
            d: f16::ONE,
            dmin: f16::ZERO,
            scales: [7; 12],
            qs: [0xab; 128],
        };
        let out = to_bytes(&[q4_k]);
        assert_eq!(out.len(), 144);
        assert_eq!(&out[..6], &[0x00, 0x3c, 0x00, 0x00, 7, 7]);
        assert_eq!(out[16], 0xab);
        assert_eq!(
            (BlockQ4_1::BYTES, BlockQ8_0::BYTES, BlockQ4K::BYTES),
            (20, 34, 144)
        );
    }

    /// Q4_1 from f16 `(scale, min)` grids: llama.cpp's dequantization is the TenPak decode, bit
    /// for bit, on random and adversarial matrices (zero row, constant row, huge outlier, tiny
    /// values, denormals), for groups of 32, multiples of 32 and whole rows; each block keeps its
    /// group's header as stored. The library's own dequantization is llama.cpp's.
    #[test]
    fn q4_1_blocks_decode_as_llama_cpp_does() {
        for m in native_matrices() {
            for group_size in [32, 64, 128, 512, 1000] {
                for fit in [FitOptions::RTN, SEARCH] {
                    let what = format!("{} g{group_size} {:?}", m.name, fit.refine);
                    let q = asym(&m, group_size, 4, &fit);
                    let values = q.dequantize();
                    let blocks =
                        q4_1_blocks(&q, &values).unwrap_or_else(|| panic!("{what}: no Q4_1"));
                    assert_eq!(blocks.len(), m.rows * m.cols / QK);
                    let reference = ggml_reference_dequantize(TYPE_Q4_1, &to_bytes(&blocks));
                    assert_bits_eq(&reference, &values, &what);
                    assert_bits_eq(&dequantize(&blocks), &reference, &what);
                    assert!(decodes_to(&blocks, &values));
                    let gpr = m.cols.div_ceil(group_size);
                    for (i, block) in blocks.iter().enumerate() {
                        let (r, b) = (i / (m.cols / QK), i % (m.cols / QK));
                        let header = q.headers()[r * gpr + b * QK / group_size];
                        assert_eq!(
                            (block.d.to_bits(), block.m.to_bits()),
                            (header.scale.to_bits(), header.min.to_bits())
                        );
                    }
                }
            }
        }
        // Not whole blocks, groups across blocks, other widths: none.
        let m = gaussian(4, 100, 1);
        let q = asym(&m, 32, 4, &FitOptions::RTN);
        assert!(q4_1_blocks(&q, &q.dequantize()).is_none());
        let m = gaussian(4, 512, 2);
        for (group_size, bits) in [(48, 4), (16, 4), (32, 3), (32, 8)] {
            let q = asym(&m, group_size, bits, &FitOptions::RTN);
            assert!(
                q4_1_blocks(&q, &q.dequantize()).is_none(),
                "g{group_size} {bits}-bit"
            );
        }
        let empty = TestMatrix {
            name: "empty".into(),
            rows: 0,
            cols: 64,
            data: vec![],
        };
        let q = asym(&empty, 32, 4, &FitOptions::RTN);
        assert_eq!(q4_1_blocks(&q, &[]), Some(vec![]));
    }

    /// Q8_0 from int8 grids, per row and per group of a multiple of 32.
    #[test]
    fn q8_0_blocks_decode_as_llama_cpp_does() {
        for m in native_matrices() {
            for group_size in [32, 64, 96, 512, 4096] {
                let what = format!("{} g{group_size}", m.name);
                let format = SymFormat::new(GroupLayout::new(m.rows, m.cols, group_size).unwrap());
                let Ok(q) = SymQuantized::quantize(&m.data, format) else {
                    continue;
                };
                let blocks = q8_0_blocks(&q).unwrap_or_else(|| panic!("{what}: no Q8_0"));
                let reference = ggml_reference_dequantize(TYPE_Q8_0, &to_bytes(&blocks));
                assert_bits_eq(&reference, &q.dequantize(), &what);
                assert_bits_eq(&dequantize(&blocks), &reference, &what);
            }
        }
        let m = gaussian(4, 100, 3);
        let q = SymQuantized::quantize(
            &m.data,
            SymFormat::new(GroupLayout::new(4, 100, 100).unwrap()),
        )
        .unwrap();
        assert!(q8_0_blocks(&q).is_none());
        let m = gaussian(4, 512, 4);
        for group_size in [8, 48] {
            let q = SymQuantized::quantize(
                &m.data,
                SymFormat::new(GroupLayout::new(4, 512, group_size).unwrap()),
            )
            .unwrap();
            assert!(q8_0_blocks(&q).is_none(), "g{group_size}");
        }
    }

    fn dq_encoding(
        m: &TestMatrix,
        group_size: usize,
        header_bits: u32,
        super_groups: usize,
    ) -> (DqHeaders, Vec<f32>) {
        let q = asym(m, group_size, 4, &SEARCH);
        let format = q.format();
        let headers = DqHeaders::quantize(
            q.headers(),
            DqLayout::new(format.layout(), header_bits, super_groups).unwrap(),
        );
        let grids = headers.grids();
        let codes = code_on_grids(&m.data, &grids, format).unwrap();
        let values = dequantize_on_grids(&codes, &grids, format);
        (headers, values)
    }

    /// Q4_K from 6-bit double-quantized headers in super-groups of 8 groups of 32: llama.cpp's
    /// dequantization is the TenPak decode where every super-group's mins have one sign, and the
    /// builder refuses the others.
    #[test]
    fn q4_k_blocks_decode_as_llama_cpp_does() {
        let mut built = 0;
        for m in native_matrices() {
            let (headers, values) = dq_encoding(&m, 32, 6, 8);
            let Some(blocks) = q4_k_blocks(&headers, &values) else {
                // Only a super-group with mins of both signs is refused.
                let mixed = headers
                    .grids()
                    .chunks(8)
                    .any(|g| g.iter().any(|g| g.min > 0.0) && g.iter().any(|g| g.min < 0.0));
                assert!(mixed, "{}: refused without mixed-sign mins", m.name);
                continue;
            };
            built += 1;
            assert_eq!(blocks.len(), m.rows * m.cols / QK_K);
            let reference = ggml_reference_dequantize(TYPE_Q4_K, &to_bytes(&blocks));
            assert_bits_eq(&reference, &values, &m.name);
            assert_bits_eq(&dequantize(&blocks), &reference, &m.name);
        }
        assert!(built >= 6, "only {built} matrices had a Q4_K form");
        // All-positive groups: dmin is −m, the mins come back positive.
        let positive = TestMatrix {
            name: "positive".into(),
            rows: 2,
            cols: 256,
            data: (0..512).map(|i| 1.0 + (i % 37) as f32 * 0.01).collect(),
        };
        let (headers, values) = dq_encoding(&positive, 32, 6, 8);
        let blocks = q4_k_blocks(&headers, &values).expect("one-signed mins");
        assert!(blocks.iter().all(|b| b.dmin.to_f32() < 0.0));
        assert_bits_eq(
            &ggml_reference_dequantize(TYPE_Q4_K, &to_bytes(&blocks)),
            &values,
            "positive",
        );
        // Mins of both signs in one super-group.
        let mut mixed = positive.clone();
        for v in &mut mixed.data[32..64] {
            *v = -*v;
        }
        let (headers, values) = dq_encoding(&mixed, 32, 6, 8);
        assert!(q4_k_blocks(&headers, &values).is_none());
        // Other layouts.
        let m = gaussian(4, 512, 5);
        for (group_size, header_bits, super_groups) in
            [(64, 6, 8), (32, 5, 8), (32, 6, 9), (32, 8, 8)]
        {
            let (headers, values) = dq_encoding(&m, group_size, header_bits, super_groups);
            assert!(
                q4_k_blocks(&headers, &values).is_none(),
                "g{group_size} {header_bits}-bit headers x{super_groups}"
            );
        }
        let (headers, values) = dq_encoding(&gaussian(4, 288, 6), 32, 6, 8);
        assert!(q4_k_blocks(&headers, &values).is_none(), "rows of 288");
    }
}
