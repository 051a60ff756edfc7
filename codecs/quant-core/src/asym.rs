//! Whole matrices on asymmetric b-bit group grids: quantize, dequantize, and the stored parts.

use rayon::prelude::*;
use tenpak_api::{DType, Error, Part, Result};

use crate::fit::weighted::fit_group_weighted;
use crate::fit::{FitOptions, fit_group};
use crate::grid::{GROUP_HEADER_BYTES, GroupHeader, dequantize_value, quantize_value};
use crate::kernels;
use crate::layout::GroupLayout;
use crate::pack::{
    pack_row, pack_row_reference, packed_row_bytes, unpack_row, unpack_row_reference,
};

/// The stored format of an asymmetric b-bit matrix: its group layout and code width.
///
/// Two parts, with exact sizes:
///
/// | part | dtype | shape | bytes |
/// |---|---|---|---|
/// | codes | u8 | `[rows, ceil(cols·bits/8)]` | `rows · ceil(cols·bits/8)` |
/// | headers | f16 | `[rows, groups_per_row, 2]` | `rows · ceil(cols/group_size) · 4` |
///
/// Codes are packed per row as [`crate::pack`] describes; headers are [`GroupHeader`]s
/// (`scale`, `min`), row-major. So the stored bits are
/// `8 · rows · ceil(cols·bits/8) + 32 · rows · ceil(cols/group_size)`; for 4-bit codes and an
/// even `cols` that is `4 · rows · cols + 32 · rows · ceil(cols/group_size)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AsymFormat {
    layout: GroupLayout,
    bits: u32,
}

impl AsymFormat {
    /// `bits`-bit codes (1..=8) on `layout`.
    pub fn new(layout: GroupLayout, bits: u32) -> Result<Self> {
        if !(1..=8).contains(&bits) {
            return Err(Error::invalid_param(format!(
                "code width must be 1..=8 bits, got {bits}"
            )));
        }
        Ok(Self { layout, bits })
    }
    /// The group layout.
    pub fn layout(&self) -> GroupLayout {
        self.layout
    }
    /// Bits per code.
    pub fn bits(&self) -> u32 {
        self.bits
    }
    /// The largest code, `2^bits − 1`.
    pub fn nmax(&self) -> u8 {
        ((1u32 << self.bits) - 1) as u8
    }
    /// Bytes of one packed row of codes.
    pub fn row_code_bytes(&self) -> usize {
        packed_row_bytes(self.layout.cols(), self.bits)
    }
    /// Bytes of the codes part.
    pub fn code_bytes(&self) -> usize {
        self.layout.rows() * self.row_code_bytes()
    }
    /// Bytes of the headers part.
    pub fn header_bytes(&self) -> usize {
        self.layout.num_groups() * GROUP_HEADER_BYTES
    }
    /// Exact stored bits: `8 · (code_bytes + header_bytes)`.
    pub fn stored_bits(&self) -> u64 {
        8 * (self.code_bytes() as u64 + self.header_bytes() as u64)
    }
    /// The codes `packed` per row in this format (exactly [`AsymFormat::code_bytes`] long), one
    /// per weight, row-major.
    pub fn unpack_codes(&self, packed: &[u8]) -> Vec<u8> {
        assert_eq!(
            packed.len(),
            self.code_bytes(),
            "codes must be rows x row_code_bytes"
        );
        let (cols, stride) = (self.layout.cols(), self.row_code_bytes());
        let mut out = vec![0u8; self.layout.numel()];
        if cols > 0 {
            for (row, codes) in out.chunks_exact_mut(cols).enumerate() {
                unpack_row(&packed[row * stride..(row + 1) * stride], self.bits, codes);
            }
        }
        out
    }
}

/// A matrix quantized on an [`AsymFormat`]: one header per group and the packed codes.
#[derive(Clone, Debug, PartialEq)]
pub struct AsymQuantized {
    format: AsymFormat,
    headers: Vec<GroupHeader>,
    codes: Vec<u8>,
}

fn range_error(layout: &GroupLayout, row: usize, group: usize, values: &[f32], bits: u32) -> Error {
    let cols = layout.group_columns(group);
    let (lo, hi) = crate::fit::min_max(values);
    Error::invalid_input(format!(
        "row {row}, columns {}..{}: weight range [{lo}, {hi}] cannot be stored on a {bits}-bit grid with \
         f16 scale and min (needs |min| <= 65504 and (max - min) / {} <= 65504); store this tensor unquantized",
        cols.start,
        cols.end,
        (1u32 << bits) - 1
    ))
}

/// Which error a quantizer minimizes per group: the plain squared error, or the squared error
/// weighted by a per-weight importance (row-major, as long as the data).
#[derive(Clone, Copy)]
enum Objective<'a> {
    Plain,
    Weighted(&'a [f32]),
}

impl Objective<'_> {
    /// The header of the group `values` (part of one row), whose first weight is at flat index
    /// `offset` of the matrix.
    fn fit(self, values: &[f32], offset: usize, nmax: u8, fit: &FitOptions) -> Option<GroupHeader> {
        match self {
            Objective::Plain => fit_group(values, nmax, fit),
            Objective::Weighted(importance) => fit_group_weighted(
                values,
                &importance[offset..offset + values.len()],
                nmax,
                fit,
            ),
        }
    }

    /// Fails unless every importance is finite and ≥ 0, naming the first bad one's position.
    fn check(self, layout: &GroupLayout) -> Result<()> {
        let Objective::Weighted(importance) = self else {
            return Ok(());
        };
        if importance.len() != layout.numel() {
            return Err(Error::invalid_input(format!(
                "importance of a [{}, {}] matrix needs {} values, got {}",
                layout.rows(),
                layout.cols(),
                layout.numel(),
                importance.len()
            )));
        }
        match importance
            .iter()
            .position(|h| !(h.is_finite() && *h >= 0.0))
        {
            None => Ok(()),
            Some(i) => Err(Error::invalid_input(format!(
                "importance {} at row {}, column {} is not a finite non-negative number",
                importance[i],
                i / layout.cols().max(1),
                i % layout.cols().max(1)
            ))),
        }
    }
}

impl AsymQuantized {
    /// Reference quantizer: one group at a time, codes packed bit by bit. `data` is row-major,
    /// `rows × cols` of `format`, and must be finite (codecs check this first; non-finite values
    /// give unspecified codes, never a panic).
    pub fn quantize_reference(data: &[f32], format: AsymFormat, fit: &FitOptions) -> Result<Self> {
        Self::quantize_reference_with(data, format, fit, Objective::Plain)
    }

    /// Fast quantizer, bit-identical to [`AsymQuantized::quantize_reference`]: rows in parallel
    /// on the current rayon pool, tight per-group loops, word-wise packing.
    pub fn quantize(data: &[f32], format: AsymFormat, fit: &FitOptions) -> Result<Self> {
        Self::quantize_with(data, format, fit, Objective::Plain)
    }

    /// Reference quantizer that chooses each group's header to minimize Σ h·(w − ŵ)² with the
    /// per-weight `importance` h (row-major, as long as `data`, finite and ≥ 0; else an
    /// [`tenpak_api::ErrorKind::InvalidInput`] error naming the first bad position). Weights of
    /// importance 0 are left out of each group's range and error (see [`crate::fit::weighted`]).
    /// Codes are still each weight's nearest level, so decoding is unchanged.
    pub fn quantize_weighted_reference(
        data: &[f32],
        importance: &[f32],
        format: AsymFormat,
        fit: &FitOptions,
    ) -> Result<Self> {
        Self::quantize_reference_with(data, format, fit, Objective::Weighted(importance))
    }

    /// Fast [`AsymQuantized::quantize_weighted_reference`], bit-identical to it: rows in parallel.
    pub fn quantize_weighted(
        data: &[f32],
        importance: &[f32],
        format: AsymFormat,
        fit: &FitOptions,
    ) -> Result<Self> {
        Self::quantize_with(data, format, fit, Objective::Weighted(importance))
    }

    fn quantize_reference_with(
        data: &[f32],
        format: AsymFormat,
        fit: &FitOptions,
        objective: Objective<'_>,
    ) -> Result<Self> {
        let layout = format.layout();
        layout.check_data(data)?;
        objective.check(&layout)?;
        let nmax = format.nmax();
        let mut headers = Vec::with_capacity(layout.num_groups());
        let mut codes = vec![0u8; format.code_bytes()];
        let mut row_codes = vec![0u8; layout.cols()];
        for row in 0..layout.rows() {
            let values = &data[row * layout.cols()..(row + 1) * layout.cols()];
            for group in 0..layout.groups_per_row() {
                let cols = layout.group_columns(group);
                let group_values = &values[cols.clone()];
                let header = objective
                    .fit(group_values, row * layout.cols() + cols.start, nmax, fit)
                    .ok_or_else(|| range_error(&layout, row, group, group_values, format.bits()))?;
                let grid = header.unpack();
                for (code, &w) in row_codes[cols].iter_mut().zip(group_values) {
                    *code = quantize_value(w, grid.min, grid.inv_scale, f32::from(nmax));
                }
                headers.push(header);
            }
            let stride = format.row_code_bytes();
            pack_row_reference(
                &row_codes,
                format.bits(),
                &mut codes[row * stride..(row + 1) * stride],
            );
        }
        Ok(Self {
            format,
            headers,
            codes,
        })
    }

    fn quantize_with(
        data: &[f32],
        format: AsymFormat,
        fit: &FitOptions,
        objective: Objective<'_>,
    ) -> Result<Self> {
        let layout = format.layout();
        layout.check_data(data)?;
        objective.check(&layout)?;
        let (cols, groups, stride) = (
            layout.cols(),
            layout.groups_per_row(),
            format.row_code_bytes(),
        );
        let mut headers = vec![GroupHeader::ZERO; layout.num_groups()];
        let mut codes = vec![0u8; format.code_bytes()];
        if layout.numel() == 0 {
            return Ok(Self {
                format,
                headers,
                codes,
            });
        }
        let nmax = format.nmax();
        let failures: Vec<Option<Error>> = data
            .par_chunks(cols)
            .zip(headers.par_chunks_mut(groups))
            .zip(codes.par_chunks_mut(stride))
            .enumerate()
            .map_init(
                || vec![0u8; cols],
                |row_codes, (row, ((values, row_headers), packed))| {
                    for (group, header_slot) in row_headers.iter_mut().enumerate() {
                        let range = layout.group_columns(group);
                        let group_values = &values[range.clone()];
                        let Some(header) =
                            objective.fit(group_values, row * cols + range.start, nmax, fit)
                        else {
                            return Some(range_error(
                                &layout,
                                row,
                                group,
                                group_values,
                                format.bits(),
                            ));
                        };
                        *header_slot = header;
                        kernels::quantize_group(
                            group_values,
                            header.unpack(),
                            f32::from(nmax),
                            &mut row_codes[range],
                        );
                    }
                    pack_row(row_codes, format.bits(), packed);
                    None
                },
            )
            .collect();
        // The first failing row by index, so the error is the same on every run.
        if let Some(err) = failures.into_iter().flatten().next() {
            return Err(err);
        }
        Ok(Self {
            format,
            headers,
            codes,
        })
    }

    /// The format.
    pub fn format(&self) -> AsymFormat {
        self.format
    }
    /// One header per group, row-major over `[rows, groups_per_row]`.
    pub fn headers(&self) -> &[GroupHeader] {
        &self.headers
    }
    /// The packed codes, `rows × row_code_bytes`.
    pub fn codes(&self) -> &[u8] {
        &self.codes
    }

    /// Reference dequantizer: one weight at a time.
    pub fn dequantize_reference(&self) -> Vec<f32> {
        let layout = self.format.layout();
        let (cols, stride) = (layout.cols(), self.format.row_code_bytes());
        let mut out = vec![0f32; layout.numel()];
        let mut row_codes = vec![0u8; cols];
        for row in 0..layout.rows() {
            unpack_row_reference(
                &self.codes[row * stride..(row + 1) * stride],
                self.format.bits(),
                &mut row_codes,
            );
            for col in 0..cols {
                let header =
                    self.headers[row * layout.groups_per_row() + col / layout.group_size()];
                let grid = header.unpack();
                out[row * cols + col] = dequantize_value(row_codes[col], grid.scale, grid.min);
            }
        }
        out
    }

    /// Fast dequantizer, bit-identical to [`AsymQuantized::dequantize_reference`].
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.format.layout().numel()];
        self.dequantize_rows(&mut out, false);
        out
    }

    /// Add the dequantized matrix to `out` (`out[i] += ŵ[i]`, in f32): how a residual stage is
    /// decoded on top of the first. Fails if `out` has the wrong length.
    pub fn dequantize_add(&self, out: &mut [f32]) -> Result<()> {
        if out.len() != self.format.layout().numel() {
            return Err(Error::invalid_input(format!(
                "dequantize_add: output holds {} values, the matrix has {}",
                out.len(),
                self.format.layout().numel()
            )));
        }
        self.dequantize_rows(out, true);
        Ok(())
    }

    fn dequantize_rows(&self, out: &mut [f32], add: bool) {
        let layout = self.format.layout();
        let (cols, groups, stride) = (
            layout.cols(),
            layout.groups_per_row(),
            self.format.row_code_bytes(),
        );
        if layout.numel() == 0 {
            return;
        }
        out.par_chunks_mut(cols)
            .zip(self.headers.par_chunks(groups))
            .zip(self.codes.par_chunks(stride))
            .for_each_init(
                || vec![0u8; cols],
                |row_codes, ((out_row, row_headers), packed)| {
                    unpack_row(packed, self.format.bits(), row_codes);
                    for (group, header) in row_headers.iter().enumerate() {
                        let range = layout.group_columns(group);
                        kernels::dequantize_group(
                            &row_codes[range.clone()],
                            header.unpack(),
                            &mut out_row[range],
                            add,
                        );
                    }
                },
            );
    }

    /// The two stored parts, named `codes_name` (u8 `[rows, row_code_bytes]`) and
    /// `headers_name` (f16 `[rows, groups_per_row, 2]`).
    pub fn to_parts(&self, codes_name: &str, headers_name: &str) -> [Part; 2] {
        let layout = self.format.layout();
        let codes = Part {
            name: codes_name.to_owned(),
            dtype: DType::U8,
            shape: vec![layout.rows(), self.format.row_code_bytes()],
            data: self.codes.clone(),
        };
        let headers = Part {
            name: headers_name.to_owned(),
            dtype: DType::F16,
            shape: vec![layout.rows(), layout.groups_per_row(), 2],
            data: self.headers.iter().flat_map(|h| h.to_le_bytes()).collect(),
        };
        [codes, headers]
    }

    /// Read the parts back, checking dtype and exact byte count against `format`; a mismatch is
    /// an [`tenpak_api::ErrorKind::Corrupt`] error naming the part and both sizes.
    pub fn from_parts(format: AsymFormat, codes: &Part, headers: &Part) -> Result<Self> {
        let layout = format.layout();
        let describe = || {
            format!(
                "[{}, {}] matrix, {}-bit codes, group size {}",
                layout.rows(),
                layout.cols(),
                format.bits(),
                layout.group_size()
            )
        };
        check_part(codes, DType::U8, format.code_bytes(), &describe)?;
        check_part(headers, DType::F16, format.header_bytes(), &describe)?;
        let headers = headers
            .data
            .chunks_exact(GROUP_HEADER_BYTES)
            .map(|b| GroupHeader::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok(Self {
            format,
            headers,
            codes: codes.data.clone(),
        })
    }
}

/// Check a part's dtype and byte count (shape is informational; bytes are what decoding reads).
pub(crate) fn check_part(
    part: &Part,
    dtype: DType,
    bytes: usize,
    what: &dyn Fn() -> String,
) -> Result<()> {
    if part.dtype != dtype {
        return Err(Error::corrupt(format!(
            "part `{}`: expected dtype {}, found {} (for a {})",
            part.name,
            dtype.name(),
            part.dtype.name(),
            what()
        )));
    }
    let shape_bytes = part.shape.iter().product::<usize>() * dtype.size();
    if part.data.len() != bytes || shape_bytes != bytes {
        return Err(Error::corrupt(format!(
            "part `{}`: expected {bytes} bytes, found {} (shape {:?}) (for a {})",
            part.name,
            part.data.len(),
            part.shape,
            what()
        )));
    }
    Ok(())
}
