//! Double-quantized group headers: each group's `(scale, min)` stored as two small integers
//! against the f16 `(d, m)` of its super-group, as llama.cpp's k-quants do (Q4_K: 6-bit scales
//! and mins, 8 groups of 32 per super-block, 4.5 bits per weight).
//!
//! An f16 header costs 32 bits per group: 1 bit per weight at groups of 32. With `header_bits`
//! = 6 and super-groups of 8 groups it costs `2·6/32 + 32/256 = 0.5` bits per weight, so 4-bit
//! codes in groups of 32 fit in 4.5 bits, the size of groups of 64 with f16 headers.
//!
//! For a super-group with largest scale `s_max` and largest `|min|` `m_max`, with
//! `Q = 2^header_bits − 1` and `R = 2^(header_bits−1) − 1`:
//! `d = f16(s_max / Q)`, `m = f16(m_max / R)`; each group stores `q_s = round(scale / d)` in
//! `0..=Q` and `q_m = round(min / m)` in `−R..=R` (stored offset by `R`, so unsigned). The
//! decoded grid is `scale = d·q_s`, `min = m·q_m` in f32. Signed mins (not k-quants' `−dmin·q`
//! with `q ≥ 0`) keep groups that lie entirely above zero exact in sign.
//!
//! Super-groups are consecutive groups within one row; the last of a row may be shorter.
//!
//! Stored parts: the header codes, u8 `[rows, ceil(2·groups_per_row·header_bits / 8)]`
//! (per row `q_s, q_m + R` for each group in order, packed with [`crate::pack`]); the super
//! headers, f16 `[rows, supers_per_row, 2]` (`d, m`). Exact bits: [`DqLayout::stored_bits`].

use half::f16;
use tenpak_api::{DType, Error, Part, Result};

use crate::asym::AsymFormat;
use crate::grid::{GridF32, GroupHeader, dequantize_value, inverse_scale, quantize_value};
use crate::layout::GroupLayout;
use crate::pack::{pack_row, packed_row_bytes, unpack_row};

/// Where the headers of a double-quantized matrix go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DqLayout {
    layout: GroupLayout,
    header_bits: u32,
    super_groups: usize,
}

impl DqLayout {
    /// `header_bits` in 3..=8, `super_groups` (groups per super-group) at least 1.
    pub fn new(layout: GroupLayout, header_bits: u32, super_groups: usize) -> Result<Self> {
        if !(3..=8).contains(&header_bits) {
            return Err(Error::invalid_param(format!(
                "double-quantized header width must be 3..=8 bits, got {header_bits}"
            )));
        }
        if super_groups == 0 {
            return Err(Error::invalid_param("super-groups must hold at least one group"));
        }
        Ok(Self { layout, header_bits, super_groups })
    }

    /// The group layout.
    pub fn layout(&self) -> GroupLayout {
        self.layout
    }

    /// Bits of each group's scale and min code.
    pub fn header_bits(&self) -> u32 {
        self.header_bits
    }

    /// Groups per super-group.
    pub fn super_groups(&self) -> usize {
        self.super_groups
    }

    /// Super-groups in one row.
    pub fn supers_per_row(&self) -> usize {
        self.layout.groups_per_row().div_ceil(self.super_groups)
    }

    /// Bytes of one row of packed header codes.
    pub fn row_code_bytes(&self) -> usize {
        packed_row_bytes(2 * self.layout.groups_per_row(), self.header_bits)
    }

    /// Exact stored bits of the headers (codes and super headers; not the weight codes).
    pub fn stored_bits(&self) -> u64 {
        let rows = self.layout.rows() as u64;
        rows * (8 * self.row_code_bytes() as u64 + 32 * self.supers_per_row() as u64)
    }

    fn q_max(&self) -> f32 {
        ((1u32 << self.header_bits) - 1) as f32
    }

    fn m_max(&self) -> f32 {
        ((1u32 << (self.header_bits - 1)) - 1) as f32
    }
}

/// The double-quantized headers of a matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct DqHeaders {
    dq: DqLayout,
    /// Per group `(q_s, q_m + R)`, row-major, unpacked.
    codes: Vec<[u8; 2]>,
    /// Per super-group `(d, m)`, row-major.
    supers: Vec<[f16; 2]>,
}

impl DqHeaders {
    /// Quantize `headers` (one per group of `dq.layout()`, row-major) to `dq`'s widths.
    pub fn quantize(headers: &[GroupHeader], dq: DqLayout) -> Self {
        let layout = dq.layout;
        assert_eq!(headers.len(), layout.num_groups(), "one header per group");
        let gpr = layout.groups_per_row();
        let (q_max, r) = (dq.q_max(), dq.m_max());
        let mut codes = Vec::with_capacity(headers.len());
        let mut supers = Vec::with_capacity(layout.rows() * dq.supers_per_row());
        for row in 0..layout.rows() {
            for chunk in headers[row * gpr..(row + 1) * gpr].chunks(dq.super_groups) {
                let grids: Vec<GridF32> = chunk.iter().map(|h| h.unpack()).collect();
                let s_max = grids.iter().map(|g| g.scale).fold(0f32, f32::max);
                let m_abs = grids.iter().map(|g| g.min.abs()).fold(0f32, f32::max);
                let d = f16::from_f32(s_max / q_max);
                let m = f16::from_f32(m_abs / r);
                let (df, mf) = (d.to_f32(), m.to_f32());
                for g in &grids {
                    let q_s = if df > 0.0 { (g.scale / df).round().clamp(0.0, q_max) } else { 0.0 };
                    let q_m = if mf > 0.0 { (g.min / mf).round().clamp(-r, r) } else { 0.0 };
                    codes.push([q_s as u8, (q_m + r) as u8]);
                }
                supers.push([d, m]);
            }
        }
        Self { dq, codes, supers }
    }

    /// The layout.
    pub fn layout(&self) -> DqLayout {
        self.dq
    }

    /// Per super-group `(d, m)` as stored, row-major over `[rows, supers_per_row]`.
    pub fn supers(&self) -> &[[f16; 2]] {
        &self.supers
    }

    /// The decoded grid of every group, row-major: `scale = d·q_s`, `min = m·q_m` in f32.
    pub fn grids(&self) -> Vec<GridF32> {
        let layout = self.dq.layout;
        let (gpr, spr) = (layout.groups_per_row(), self.dq.supers_per_row());
        let r = self.dq.m_max();
        let mut out = Vec::with_capacity(self.codes.len());
        for row in 0..layout.rows() {
            for g in 0..gpr {
                let [d, m] = self.supers[row * spr + g / self.dq.super_groups];
                let [q_s, q_m] = self.codes[row * gpr + g];
                let scale = d.to_f32() * f32::from(q_s);
                let min = m.to_f32() * (f32::from(q_m) - r);
                out.push(GridF32 { scale, min, inv_scale: inverse_scale(scale) });
            }
        }
        out
    }

    /// The stored parts, named `codes_name` (u8, packed header codes) and `supers_name` (f16).
    pub fn to_parts(&self, codes_name: &str, supers_name: &str) -> [Part; 2] {
        let layout = self.dq.layout;
        let (gpr, stride) = (layout.groups_per_row(), self.dq.row_code_bytes());
        let mut packed = vec![0u8; layout.rows() * stride];
        let mut row_codes = Vec::with_capacity(2 * gpr);
        for row in 0..layout.rows() {
            row_codes.clear();
            row_codes.extend(self.codes[row * gpr..(row + 1) * gpr].iter().flatten());
            pack_row(&row_codes, self.dq.header_bits, &mut packed[row * stride..(row + 1) * stride]);
        }
        let codes = Part {
            name: codes_name.to_owned(),
            dtype: DType::U8,
            shape: vec![layout.rows(), stride],
            data: packed,
        };
        let supers = Part {
            name: supers_name.to_owned(),
            dtype: DType::F16,
            shape: vec![layout.rows(), self.dq.supers_per_row(), 2],
            data: self.supers.iter().flatten().flat_map(|v| v.to_le_bytes()).collect(),
        };
        [codes, supers]
    }

    /// Read the parts back, checking dtypes, shapes, code ranges and that every super header is
    /// finite and non-negative.
    pub fn from_parts(dq: DqLayout, codes: &Part, supers: &Part) -> Result<Self> {
        let layout = dq.layout;
        let (rows, gpr, stride, spr) =
            (layout.rows(), layout.groups_per_row(), dq.row_code_bytes(), dq.supers_per_row());
        if codes.dtype != DType::U8 || codes.shape != [rows, stride] {
            return Err(Error::corrupt(format!(
                "part `{}`: expected u8 [{rows}, {stride}], got {:?} {:?}",
                codes.name, codes.dtype, codes.shape
            )));
        }
        if supers.dtype != DType::F16 || supers.shape != [rows, spr, 2] {
            return Err(Error::corrupt(format!(
                "part `{}`: expected f16 [{rows}, {spr}, 2], got {:?} {:?}",
                supers.name, supers.dtype, supers.shape
            )));
        }
        let mut unpacked = vec![0u8; 2 * gpr];
        let mut out = Vec::with_capacity(rows * gpr);
        let limit = 2 * dq.m_max() as u8;
        for row in 0..rows {
            unpack_row(&codes.data[row * stride..(row + 1) * stride], dq.header_bits, &mut unpacked);
            for pair in unpacked.chunks_exact(2) {
                if pair[1] > limit {
                    return Err(Error::corrupt(format!(
                        "part `{}`: row {row}: min code {} is above {limit}",
                        codes.name, pair[1]
                    )));
                }
                out.push([pair[0], pair[1]]);
            }
        }
        let values: Vec<f16> = supers
            .data
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]))
            .collect();
        if let Some(i) = values.iter().position(|v| !(v.is_finite() && v.to_f32() >= 0.0)) {
            return Err(Error::corrupt(format!(
                "part `{}`: super header {} at entry {i} is not a finite non-negative f16",
                supers.name, values[i]
            )));
        }
        let supers = values.chunks_exact(2).map(|p| [p[0], p[1]]).collect();
        Ok(Self { dq, codes: out, supers })
    }
}

/// Code every value of a row-major matrix to its nearest level on its group's grid, and pack
/// the codes per row as [`crate::AsymFormat`] lays them out (the codes part of an encoding whose
/// headers are stored some other way).
pub fn code_on_grids(data: &[f32], grids: &[GridF32], format: AsymFormat) -> Result<Vec<u8>> {
    let layout = format.layout();
    layout.check_data(data)?;
    assert_eq!(grids.len(), layout.num_groups(), "one grid per group");
    let (cols, g, gpr, stride) =
        (layout.cols(), layout.group_size(), layout.groups_per_row(), format.row_code_bytes());
    let nmax = f32::from(format.nmax());
    let mut packed = vec![0u8; format.code_bytes()];
    let mut codes = vec![0u8; cols];
    for (row, values) in data.chunks_exact(cols.max(1)).enumerate().take(layout.rows()) {
        for (j, (&w, c)) in values.iter().zip(codes.iter_mut()).enumerate() {
            let grid = grids[row * gpr + j / g];
            *c = quantize_value(w, grid.min, grid.inv_scale, nmax);
        }
        pack_row(&codes, format.bits(), &mut packed[row * stride..(row + 1) * stride]);
    }
    Ok(packed)
}

/// The matrix that packed `codes` (as [`code_on_grids`] writes them) decode to on `grids`.
pub fn dequantize_on_grids(codes: &[u8], grids: &[GridF32], format: AsymFormat) -> Vec<f32> {
    let layout = format.layout();
    assert_eq!(codes.len(), format.code_bytes(), "codes must be rows x row_code_bytes");
    assert_eq!(grids.len(), layout.num_groups(), "one grid per group");
    let (cols, g, gpr, stride) =
        (layout.cols(), layout.group_size(), layout.groups_per_row(), format.row_code_bytes());
    let mut out = vec![0f32; layout.numel()];
    let mut row_codes = vec![0u8; cols];
    for row in 0..layout.rows() {
        unpack_row(&codes[row * stride..(row + 1) * stride], format.bits(), &mut row_codes);
        for (j, (o, &c)) in out[row * cols..(row + 1) * cols].iter_mut().zip(&row_codes).enumerate() {
            let grid = grids[row * gpr + j / g];
            *o = dequantize_value(c, grid.scale, grid.min);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::gaussian;

    #[test]
    fn grids_are_close_to_the_headers_and_parts_round_trip() {
        for (rows, cols, g, hb, sg) in [(7, 576, 32, 6, 8), (3, 100, 32, 8, 3), (5, 1536, 64, 4, 9), (2, 31, 8, 3, 1)] {
            let layout = GroupLayout::new(rows, cols, g).unwrap();
            let m = gaussian(rows, cols, 3);
            let q = crate::AsymQuantized::quantize(&m.data, crate::AsymFormat::new(layout, 4).unwrap(), &crate::FitOptions::RTN).unwrap();
            let dq = DqLayout::new(layout, hb, sg).unwrap();
            let headers = DqHeaders::quantize(q.headers(), dq);
            let grids = headers.grids();
            for (h, grid) in q.headers().iter().zip(&grids) {
                let f = h.unpack();
                // Within half a step of the super-group's largest value.
                let step = 2f32.powi(-(hb as i32 - 1));
                assert!((f.scale - grid.scale).abs() <= step * 4.0 * f.scale.max(1e-3), "{hb}: scale {} vs {}", f.scale, grid.scale);
                assert!((f.min - grid.min).abs() <= step * 8.0 * f.min.abs().max(1e-3), "{hb}: min {} vs {}", f.min, grid.min);
            }
            let [codes, supers] = headers.to_parts("header_q", "header_super");
            assert_eq!((codes.data.len() + supers.data.len()) as u64 * 8, dq.stored_bits());
            let back = DqHeaders::from_parts(dq, &codes, &supers).unwrap();
            assert_eq!(back, headers);
            // Damage is named.
            let mut bad = supers.clone();
            bad.data[1] = 0xFC; // a negative f16
            assert!(DqHeaders::from_parts(dq, &codes, &bad).unwrap_err().to_string().contains("header_super"));
        }
        assert!(DqLayout::new(GroupLayout::new(1, 8, 8).unwrap(), 2, 8).is_err());
        assert!(DqLayout::new(GroupLayout::new(1, 8, 8).unwrap(), 6, 0).is_err());
    }
}
