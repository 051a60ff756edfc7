//! Symmetric 8-bit absmax grids: `ŵ = scale · q`, `q ∈ [−127, 127]`, one f16 scale per group.
//!
//! Symmetric because the layers this serves (embeddings, `lm_head`) are centred on zero and
//! 8 bits leave no room worth spending a min on; −128 is not used so the grid is symmetric and
//! `scale = absmax / 127` covers the group exactly.

use half::f16;
use rayon::prelude::*;
use tenpak_api::{DType, Error, Part, Result};

use crate::asym::check_part;
use crate::f16round;
use crate::layout::GroupLayout;

/// Largest code magnitude.
pub const QMAX: f32 = 127.0;

/// Stored format of a symmetric int8 matrix:
///
/// | part | dtype | shape | bytes |
/// |---|---|---|---|
/// | codes | i8 | `[rows, cols]` | `rows · cols` |
/// | scales | f16 | `[rows, groups_per_row]` | `2 · rows · ceil(cols/group_size)` |
///
/// Stored bits: `8 · rows · cols + 16 · rows · ceil(cols/group_size)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SymFormat {
    layout: GroupLayout,
}

impl SymFormat {
    /// Int8 codes on `layout`.
    pub fn new(layout: GroupLayout) -> Self {
        Self { layout }
    }
    /// The group layout.
    pub fn layout(&self) -> GroupLayout {
        self.layout
    }
    /// Bytes of the codes part.
    pub fn code_bytes(&self) -> usize {
        self.layout.numel()
    }
    /// Bytes of the scales part.
    pub fn scale_bytes(&self) -> usize {
        self.layout.num_groups() * 2
    }
    /// Exact stored bits.
    pub fn stored_bits(&self) -> u64 {
        8 * (self.code_bytes() as u64 + self.scale_bytes() as u64)
    }
}

/// The code of `w`: `trunc(clamp(w · inv_scale, −127, 127) ± 0.5)` (round half away from zero,
/// written so it vectorizes and every path agrees bit for bit).
#[inline(always)]
pub fn quantize_value(w: f32, inv_scale: f32) -> i8 {
    let x = (w * inv_scale).clamp(-QMAX, QMAX);
    (x + 0.5f32.copysign(x)) as i32 as i8
}

/// The decoded value of code `q`.
#[inline(always)]
pub fn dequantize_value(q: i8, scale: f32) -> f32 {
    scale * f32::from(q)
}

/// The group scale: `absmax / 127` rounded up to f16 (so no weight clips), or `None` if that
/// overflows f16 (`absmax > 127 · 65504`).
pub fn group_scale(values: &[f32]) -> Option<f16> {
    let mut lanes = [0f32; 8];
    let chunks = values.chunks_exact(8);
    let tail = chunks.remainder();
    for chunk in chunks {
        for k in 0..8 {
            let a = chunk[k].abs();
            lanes[k] = if a > lanes[k] { a } else { lanes[k] };
        }
    }
    let mut absmax = lanes.iter().fold(0f32, |a, &b| if b > a { b } else { a });
    for &v in tail {
        absmax = if v.abs() > absmax { v.abs() } else { absmax };
    }
    let scale = f16round::round_up(absmax / QMAX);
    scale.is_finite().then_some(scale)
}

/// A matrix quantized on a [`SymFormat`].
#[derive(Clone, Debug, PartialEq)]
pub struct SymQuantized {
    format: SymFormat,
    scales: Vec<f16>,
    codes: Vec<i8>,
}

fn range_error(layout: &GroupLayout, row: usize, group: usize) -> Error {
    let cols = layout.group_columns(group);
    Error::invalid_input(format!(
        "row {row}, columns {}..{}: |weight| exceeds what an f16 scale can reach on an int8 grid \
         (127 * 65504); store this tensor unquantized",
        cols.start, cols.end
    ))
}

fn inverse(scale: f32) -> f32 {
    crate::grid::inverse_scale(scale)
}

impl SymQuantized {
    /// Reference quantizer (finite `data`, row-major, of the format's shape).
    pub fn quantize_reference(data: &[f32], format: SymFormat) -> Result<Self> {
        let layout = format.layout();
        layout.check_data(data)?;
        let mut scales = Vec::with_capacity(layout.num_groups());
        let mut codes = vec![0i8; layout.numel()];
        for row in 0..layout.rows() {
            for group in 0..layout.groups_per_row() {
                let cols = layout.group_columns(group);
                let start = row * layout.cols();
                let values = &data[start + cols.start..start + cols.end];
                let scale = group_scale(values).ok_or_else(|| range_error(&layout, row, group))?;
                let inv = inverse(scale.to_f32());
                for (j, &w) in values.iter().enumerate() {
                    codes[start + cols.start + j] = quantize_value(w, inv);
                }
                scales.push(scale);
            }
        }
        Ok(Self {
            format,
            scales,
            codes,
        })
    }

    /// Fast quantizer, bit-identical to the reference: rows in parallel on the current rayon pool.
    pub fn quantize(data: &[f32], format: SymFormat) -> Result<Self> {
        let layout = format.layout();
        layout.check_data(data)?;
        let mut scales = vec![f16::ZERO; layout.num_groups()];
        let mut codes = vec![0i8; layout.numel()];
        if layout.numel() == 0 {
            return Ok(Self {
                format,
                scales,
                codes,
            });
        }
        let failures: Vec<Option<Error>> = data
            .par_chunks(layout.cols())
            .zip(scales.par_chunks_mut(layout.groups_per_row()))
            .zip(codes.par_chunks_mut(layout.cols()))
            .enumerate()
            .map(|(row, ((values, row_scales), row_codes))| {
                for (group, slot) in row_scales.iter_mut().enumerate() {
                    let range = layout.group_columns(group);
                    let Some(scale) = group_scale(&values[range.clone()]) else {
                        return Some(range_error(&layout, row, group));
                    };
                    *slot = scale;
                    let inv = inverse(scale.to_f32());
                    for (code, &w) in row_codes[range.clone()].iter_mut().zip(&values[range]) {
                        *code = quantize_value(w, inv);
                    }
                }
                None
            })
            .collect();
        if let Some(err) = failures.into_iter().flatten().next() {
            return Err(err);
        }
        Ok(Self {
            format,
            scales,
            codes,
        })
    }

    /// The format.
    pub fn format(&self) -> SymFormat {
        self.format
    }
    /// One scale per group, row-major.
    pub fn scales(&self) -> &[f16] {
        &self.scales
    }
    /// The codes, row-major.
    pub fn codes(&self) -> &[i8] {
        &self.codes
    }

    /// Reference dequantizer.
    pub fn dequantize_reference(&self) -> Vec<f32> {
        let layout = self.format.layout();
        let mut out = vec![0f32; layout.numel()];
        for (i, o) in out.iter_mut().enumerate() {
            let (row, col) = (i / layout.cols(), i % layout.cols());
            let scale =
                self.scales[row * layout.groups_per_row() + col / layout.group_size()].to_f32();
            *o = dequantize_value(self.codes[i], scale);
        }
        out
    }

    /// Fast dequantizer, bit-identical to the reference.
    pub fn dequantize(&self) -> Vec<f32> {
        let layout = self.format.layout();
        let mut out = vec![0f32; layout.numel()];
        if layout.numel() == 0 {
            return out;
        }
        out.par_chunks_mut(layout.cols())
            .zip(self.scales.par_chunks(layout.groups_per_row()))
            .zip(self.codes.par_chunks(layout.cols()))
            .for_each(|((out_row, row_scales), row_codes)| {
                for (group, scale) in row_scales.iter().enumerate() {
                    let range = layout.group_columns(group);
                    let scale = scale.to_f32();
                    for (o, &q) in out_row[range.clone()].iter_mut().zip(&row_codes[range]) {
                        *o = dequantize_value(q, scale);
                    }
                }
            });
        out
    }

    /// The two stored parts: `codes_name` (i8 `[rows, cols]`) and `scales_name`
    /// (f16 `[rows, groups_per_row]`).
    pub fn to_parts(&self, codes_name: &str, scales_name: &str) -> [Part; 2] {
        let layout = self.format.layout();
        let codes = Part {
            name: codes_name.to_owned(),
            dtype: DType::I8,
            shape: vec![layout.rows(), layout.cols()],
            data: self.codes.iter().map(|&c| c as u8).collect(),
        };
        let scales = Part::from_f16(
            scales_name,
            vec![layout.rows(), layout.groups_per_row()],
            &self.scales,
        );
        [codes, scales]
    }

    /// Read the parts back, checking dtypes and exact byte counts ([`tenpak_api::ErrorKind::Corrupt`]
    /// on mismatch).
    pub fn from_parts(format: SymFormat, codes: &Part, scales: &Part) -> Result<Self> {
        let layout = format.layout();
        let describe = || {
            format!(
                "[{}, {}] int8 matrix, group size {}",
                layout.rows(),
                layout.cols(),
                layout.group_size()
            )
        };
        check_part(codes, DType::I8, format.code_bytes(), &describe)?;
        check_part(scales, DType::F16, format.scale_bytes(), &describe)?;
        Ok(Self {
            format,
            scales: scales.to_f16()?,
            codes: codes.data.iter().map(|&b| b as i8).collect(),
        })
    }
}
