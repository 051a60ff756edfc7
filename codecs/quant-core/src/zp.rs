//! Integer zero points: each group's grid is `s·(q − z)`, an f16 scale `s` and an integer zero
//! point `z ∈ 0..=nmax` (the code that decodes to exactly 0), the form GPTQ checkpoints,
//! AutoGPTQ and the `compressed-tensors` "pack-quantized" layout store. An f16 `(scale, min)`
//! header (the default elsewhere in TenPak) places the grid anywhere; this one always holds 0 and
//! costs `16 + bits` bits per group instead of 32, and it is what a runtime with integer zero
//! points can load without re-quantizing.
//!
//! Decoding is `s·q + (−z·s)` in f32, which is exactly `(q − z)·s`: an f16 scale has 11
//! significant bits and `z` at most 8, so both products and their sum are exact in f32.
//!
//! The headers are fitted from a float header per group (the range fit's `(scale, min)`): around
//! that scale and the group's own `(max − min)/nmax` (nine steps of 1.5 % each, rounded to f16),
//! and its largest magnitude as one step (so a constant group is exact), with the zero points next
//! to `−min/s`, the pair of least (importance-weighted) squared error with every
//! weight coded to its nearest level wins.
//!
//! Stored parts: the scales, f16 `[rows, groups_per_row]`; the zero points, u8
//! `[rows, ceil(groups_per_row·bits/8)]`, packed per row with [`crate::pack`]. Exact bits:
//! [`stored_bits`].

use half::f16;
use rayon::prelude::*;
use tenpak_api::{DType, Error, NativeForm, Part, Result};

use crate::asym::AsymFormat;
use crate::grid::{GridF32, GroupHeader, dequantize_value, inverse_scale, quantize_value};
use crate::pack::{pack_row, packed_row_bytes, unpack_row};

/// Relative steps tried around a group's fitted scale.
const SCALE_STEPS: [f32; 9] = [0.94, 0.955, 0.97, 0.985, 1.0, 1.015, 1.03, 1.045, 1.06];

/// Exact stored bits of the headers of `format` (scales and zero points; not the codes):
/// `rows · (16·groups_per_row + 8·ceil(groups_per_row·bits/8))`.
pub fn stored_bits(format: AsymFormat) -> u64 {
    let layout = format.layout();
    let gpr = layout.groups_per_row() as u64;
    layout.rows() as u64 * (16 * gpr + 8 * packed_row_bytes(layout.groups_per_row(), format.bits()) as u64)
}

/// The integer-zero-point headers of a matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct ZpHeaders {
    format: AsymFormat,
    /// Per group, row-major.
    scales: Vec<f16>,
    /// Per group, row-major, each in `0..=nmax`.
    zeros: Vec<u8>,
}

/// Σ h·(w − ŵ)² of `values` coded to their nearest levels of `(s, z)`.
fn group_error(values: &[f32], importance: Option<&[f32]>, s: f32, z: u8, nmax: u8) -> f64 {
    let grid = grid_of(s, z);
    let nmax = f32::from(nmax);
    let mut sum = 0f64;
    for (i, &w) in values.iter().enumerate() {
        let q = quantize_value(w, grid.min, grid.inv_scale, nmax);
        let e = f64::from(w - dequantize_value(q, grid.scale, grid.min));
        sum += importance.map_or(1.0, |h| f64::from(h[i])) * e * e;
    }
    sum
}

fn grid_of(s: f32, z: u8) -> GridF32 {
    GridF32 { scale: s, min: -f32::from(z) * s, inv_scale: inverse_scale(s) }
}

/// The best `(s, z)` for one group, or `None` when no finite f16 scale covers it.
fn fit_group(values: &[f32], importance: Option<&[f32]>, header: GroupHeader, nmax: u8) -> Option<(f16, u8)> {
    let (lo, hi) = crate::fit::min_max(values);
    // The grid always holds 0, so it must reach from min(lo, 0) to max(hi, 0).
    let (lo0, hi0) = (lo.min(0.0), hi.max(0.0));
    let span = f64::from(hi0) - f64::from(lo0);
    if span == 0.0 {
        return Some((f16::ZERO, 0));
    }
    let fitted = header.unpack();
    let top = f64::from(nmax);
    let mut best: Option<(f64, f16, u8)> = None;
    // Score `s` with the zero points next to `centre` (and `centre` itself).
    let try_scale = |s: f16, centre: f64, best: &mut Option<(f64, f16, u8)>| {
        let sf = s.to_f32();
        if !(sf.is_finite() && sf > 0.0) {
            return;
        }
        let centre = centre.round().clamp(0.0, top);
        for z in [centre - 1.0, centre, centre + 1.0] {
            if !(0.0..=top).contains(&z) {
                continue;
            }
            let err = group_error(values, importance, sf, z as u8, nmax);
            if best.is_none_or(|(e, ..)| err < e) {
                *best = Some((err, s, z as u8));
            }
        }
    };
    let low = f64::from(fitted.min.min(lo0));
    let range = (span / top) as f32;
    let mut bases = vec![range];
    if fitted.scale > 0.0 {
        bases.insert(0, fitted.scale);
    }
    for &base in &bases {
        for step in SCALE_STEPS {
            let s = f16::from_f32(base * step);
            try_scale(s, -low / f64::from(s.to_f32()), &mut best);
        }
    }
    // The largest magnitude as one step: a constant group is then exact.
    let extreme = f16::from_f32(hi0.max(-lo0));
    try_scale(extreme, -f64::from(lo0) / f64::from(extreme.to_f32()), &mut best);
    // With an importance, the grid through the most important weight: s = w*/m for the
    // integers m near w*/base (one continuous degree of freedom where a float header has two).
    if let Some(h) = importance {
        let star = (0..values.len()).fold(0, |b, i| if h[i] > h[b] { i } else { b });
        let w = f64::from(values[star]).abs();
        let base = f64::from(bases[0]);
        if w > 0.0 && h[star] > 0.0 {
            let m0 = w / base;
            for m in (m0 * 0.8).floor().max(1.0) as u32..=(m0 * 1.25).ceil().min(top) as u32 {
                let s = f16::from_f64(w / f64::from(m));
                try_scale(s, -low / f64::from(s.to_f32()), &mut best);
            }
        }
    }
    // Least-squares polish: with the codes fixed, the scale of least (weighted) error, rounded
    // to f16, while it helps.
    for _ in 0..3 {
        let Some((err, s, z)) = best else { break };
        let grid = grid_of(s.to_f32(), z);
        let (mut num, mut den) = (0f64, 0f64);
        for (i, &w) in values.iter().enumerate() {
            let q = quantize_value(w, grid.min, grid.inv_scale, f32::from(nmax));
            let k = f64::from(q) - f64::from(z);
            let h = importance.map_or(1.0, |h| f64::from(h[i]));
            num += h * f64::from(w) * k;
            den += h * k * k;
        }
        if den <= 0.0 {
            break;
        }
        try_scale(f16::from_f64(num / den), f64::from(z), &mut best);
        if best.is_some_and(|(e, ..)| e >= err) {
            break;
        }
    }
    best.map(|(_, s, z)| (s, z))
}

impl ZpHeaders {
    /// Fit one header per group of `format` to `data` (row-major, finite), starting from the
    /// float headers `headers` (one per group, e.g. a range fit's), minimizing Σ h·(w − ŵ)² with
    /// the per-weight `importance` h (as long as `data`) or the plain squared error. Fails,
    /// naming the row and columns, for a group no finite f16 scale can hold.
    pub fn fit(data: &[f32], importance: Option<&[f32]>, headers: &[GroupHeader], format: AsymFormat) -> Result<Self> {
        let layout = format.layout();
        layout.check_data(data)?;
        assert_eq!(headers.len(), layout.num_groups(), "one header per group");
        if let Some(h) = importance {
            assert_eq!(h.len(), data.len(), "one importance per weight");
        }
        let (cols, gpr, nmax) = (layout.cols(), layout.groups_per_row(), format.nmax());
        let mut scales = vec![f16::ZERO; layout.num_groups()];
        let mut zeros = vec![0u8; layout.num_groups()];
        if layout.numel() == 0 {
            return Ok(Self { format, scales, zeros });
        }
        let failures: Vec<Option<Error>> = data
            .par_chunks(cols)
            .zip(scales.par_chunks_mut(gpr).zip(zeros.par_chunks_mut(gpr)))
            .enumerate()
            .map(|(row, (values, (row_scales, row_zeros)))| {
                for g in 0..gpr {
                    let range = layout.group_columns(g);
                    let h = importance.map(|h| &h[row * cols + range.start..row * cols + range.end]);
                    match fit_group(&values[range.clone()], h, headers[row * gpr + g], nmax) {
                        Some((s, z)) => (row_scales[g], row_zeros[g]) = (s, z),
                        None => {
                            let (lo, hi) = crate::fit::min_max(&values[range.clone()]);
                            return Some(Error::invalid_input(format!(
                                "row {row}, columns {}..{}: weight range [{lo}, {hi}] cannot be stored on a {}-bit grid \
                                 with an integer zero point and an f16 scale; store this tensor unquantized",
                                range.start,
                                range.end,
                                format.bits()
                            )));
                        }
                    }
                }
                None
            })
            .collect();
        if let Some(err) = failures.into_iter().flatten().next() {
            return Err(err);
        }
        Ok(Self { format, scales, zeros })
    }

    /// The format.
    pub fn format(&self) -> AsymFormat {
        self.format
    }

    /// The scales, one per group, row-major.
    pub fn scales(&self) -> &[f16] {
        &self.scales
    }

    /// The zero points, one per group, row-major.
    pub fn zeros(&self) -> &[u8] {
        &self.zeros
    }

    /// The decoded grid of every group, row-major: `scale = s`, `min = −z·s` in f32 (exact).
    pub fn grids(&self) -> Vec<GridF32> {
        self.scales.iter().zip(&self.zeros).map(|(s, &z)| grid_of(s.to_f32(), z)).collect()
    }

    /// The matrix with these headers and the `bits`-bit `codes` (packed per row as
    /// [`AsymFormat`] lays them out) as a runtime's integer groups, `(code − zero_point)·scale`:
    /// codes, scales and zero points unpacked, one per weight and one per group, row-major.
    pub fn int_groups(&self, codes: &[u8]) -> NativeForm {
        let layout = self.format.layout();
        NativeForm::IntGroups {
            bits: self.format.bits(),
            group_size: layout.group_size(),
            codes: self.format.unpack_codes(codes),
            scales: self.scales.clone(),
            zero_points: self.zeros.clone(),
        }
    }

    /// The stored parts, named `scales_name` (f16 `[rows, groups_per_row]`) and `zeros_name` (u8,
    /// packed per row at the code width).
    pub fn to_parts(&self, scales_name: &str, zeros_name: &str) -> [Part; 2] {
        let layout = self.format.layout();
        let (gpr, bits) = (layout.groups_per_row(), self.format.bits());
        let stride = packed_row_bytes(gpr, bits);
        let mut packed = vec![0u8; layout.rows() * stride];
        if gpr > 0 {
            for (row, zeros) in self.zeros.chunks_exact(gpr).enumerate() {
                pack_row(zeros, bits, &mut packed[row * stride..(row + 1) * stride]);
            }
        }
        let scales = Part::from_f16(scales_name, vec![layout.rows(), gpr], &self.scales);
        let zeros = Part {
            name: zeros_name.to_owned(),
            dtype: DType::U8,
            shape: vec![layout.rows(), stride],
            data: packed,
        };
        [scales, zeros]
    }

    /// Read the parts back, checking dtypes, shapes and that every scale is a finite
    /// non-negative f16; damage is an [`tenpak_api::ErrorKind::Corrupt`] error naming the part.
    pub fn from_parts(format: AsymFormat, scales: &Part, zeros: &Part) -> Result<Self> {
        let layout = format.layout();
        let (rows, gpr, bits) = (layout.rows(), layout.groups_per_row(), format.bits());
        let stride = packed_row_bytes(gpr, bits);
        if scales.dtype != DType::F16 || scales.shape != [rows, gpr] || scales.data.len() != 2 * rows * gpr {
            return Err(Error::corrupt(format!(
                "part `{}`: expected f16 [{rows}, {gpr}], got {:?} {:?}",
                scales.name, scales.dtype, scales.shape
            )));
        }
        if zeros.dtype != DType::U8 || zeros.shape != [rows, stride] || zeros.data.len() != rows * stride {
            return Err(Error::corrupt(format!(
                "part `{}`: expected u8 [{rows}, {stride}], got {:?} {:?}",
                zeros.name, zeros.dtype, zeros.shape
            )));
        }
        let values = scales.to_f16()?;
        if let Some(i) = values.iter().position(|v| !(v.is_finite() && v.to_f32() >= 0.0)) {
            return Err(Error::corrupt(format!(
                "part `{}`: scale {} at row {}, group {} is not a finite non-negative f16",
                scales.name,
                values[i],
                i / gpr.max(1),
                i % gpr.max(1)
            )));
        }
        let mut unpacked = vec![0u8; rows * gpr];
        if gpr > 0 {
            for (row, out) in unpacked.chunks_exact_mut(gpr).enumerate() {
                unpack_row(&zeros.data[row * stride..(row + 1) * stride], bits, out);
            }
        }
        Ok(Self { format, scales: values, zeros: unpacked })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::GroupLayout;
    use crate::testing::gaussian;
    use crate::{AsymQuantized, FitOptions};

    fn fitted(rows: usize, cols: usize, g: usize, bits: u32, seed: u64) -> (Vec<f32>, AsymFormat, ZpHeaders) {
        let format = AsymFormat::new(GroupLayout::new(rows, cols, g).unwrap(), bits).unwrap();
        let m = gaussian(rows, cols, seed);
        let q = AsymQuantized::quantize(&m.data, format, &FitOptions::RTN).unwrap();
        let zp = ZpHeaders::fit(&m.data, None, q.headers(), format).unwrap();
        (m.data, format, zp)
    }

    /// Decoding is exactly `(q − z)·s`, within half a step of every weight's nearest level, and
    /// no worse than half a float-header RTN step away on average; the parts round-trip and their
    /// bytes are the stored bits.
    #[test]
    fn grids_decode_exactly_and_parts_round_trip() {
        for (rows, cols, g, bits) in [(7, 576, 32, 4), (3, 100, 32, 3), (5, 1536, 128, 4), (2, 31, 8, 2), (4, 64, 64, 8)] {
            let (data, format, zp) = fitted(rows, cols, g, bits, 5);
            let grids = zp.grids();
            for (grid, (&s, &z)) in grids.iter().zip(zp.scales().iter().zip(zp.zeros())) {
                assert!(u32::from(z) < 1 << bits);
                for q in 0..=format.nmax() {
                    let exact = (f64::from(q) - f64::from(z)) * f64::from(s.to_f32());
                    assert_eq!(f64::from(dequantize_value(q, grid.scale, grid.min)), exact);
                }
            }
            let codes = crate::dq::code_on_grids(&data, &grids, format).unwrap();
            let decoded = crate::dq::dequantize_on_grids(&codes, &grids, format);
            let layout = format.layout();
            // The fit may clip a group's extremes (steps down to 0.94x), never by much.
            for (i, (&w, &d)) in data.iter().zip(&decoded).enumerate() {
                let grid = grids[(i / cols) * layout.groups_per_row() + (i % cols) / g];
                assert!((w - d).abs() <= grid.scale * 1.5, "{bits}-bit g{g}: {w} -> {d}");
            }
            // Against the float (scale, min) min/max grid it started from.
            let rtn = AsymQuantized::quantize(&data, format, &FitOptions::RTN).unwrap().dequantize();
            let sse = |d: &[f32]| data.iter().zip(d).map(|(w, d)| f64::from(w - d).powi(2)).sum::<f64>();
            let ratio = sse(&decoded) / sse(&rtn);
            // Measured: 0.93-0.95 at 4 and 8 bits, 1.06 at 3; 1.46 at 2 bits, where a zero point
            // on the code grid is a coarse constraint (levels −z..3−z).
            let bound = if bits >= 3 { 1.1 } else { 1.6 };
            assert!(ratio < bound, "{bits}-bit g{g}: squared error {ratio:.3}x the float-header grid's");
            let [scales, zeros] = zp.to_parts("scale", "zero");
            assert_eq!(8 * (scales.data.len() + zeros.data.len()) as u64, stored_bits(format));
            assert_eq!(ZpHeaders::from_parts(format, &scales, &zeros).unwrap(), zp);
            let mut bad = scales.clone();
            bad.data[1] = 0xFC; // a negative f16
            assert!(ZpHeaders::from_parts(format, &bad, &zeros).unwrap_err().to_string().contains("`scale`"));
            let mut short = zeros.clone();
            short.data.pop();
            assert!(ZpHeaders::from_parts(format, &scales, &short).unwrap_err().to_string().contains("`zero`"));
        }
    }

    /// Constant groups (zero and not), a single huge outlier, groups entirely above zero, and a
    /// short last group: all finite, constants exact.
    #[test]
    fn adversarial_groups() {
        let cols = 40;
        let mut data = vec![0f32; 4 * cols];
        data[cols..2 * cols].fill(0.75);
        for (j, v) in data[2 * cols..3 * cols].iter_mut().enumerate() {
            *v = 1.0 + 0.01 * j as f32;
        }
        data[3 * cols + 7] = 3e4;
        let format = AsymFormat::new(GroupLayout::new(4, cols, 16).unwrap(), 4).unwrap();
        let q = AsymQuantized::quantize(&data, format, &FitOptions::RTN).unwrap();
        let zp = ZpHeaders::fit(&data, None, q.headers(), format).unwrap();
        let grids = zp.grids();
        let decoded = crate::dq::dequantize_on_grids(&crate::dq::code_on_grids(&data, &grids, format).unwrap(), &grids, format);
        assert!(decoded.iter().all(|v| v.is_finite()));
        assert_eq!(&decoded[..cols], &data[..cols]);
        assert_eq!(&decoded[cols..2 * cols], &data[cols..2 * cols]);
        // A weight f16 cannot scale is refused by position.
        let mut huge = vec![0f32; 16];
        huge[3] = 3e6;
        let format = AsymFormat::new(GroupLayout::new(1, 16, 16).unwrap(), 4).unwrap();
        let headers = [GroupHeader::ZERO];
        let err = ZpHeaders::fit(&huge, None, &headers, format).unwrap_err().to_string();
        assert!(err.contains("row 0, columns 0..16"), "{err}");
    }

    /// With an importance, the fit never loses to the unweighted one on the weighted error.
    #[test]
    fn importance_weighted_fit_lowers_the_weighted_error() {
        let (rows, cols, g) = (16, 256, 64);
        let format = AsymFormat::new(GroupLayout::new(rows, cols, g).unwrap(), 3).unwrap();
        let m = gaussian(rows, cols, 9);
        let h: Vec<f32> = (0..rows * cols).map(|i| if i % 7 == 0 { 50.0 } else { 0.1 }).collect();
        let q = AsymQuantized::quantize(&m.data, format, &FitOptions::RTN).unwrap();
        let error = |zp: &ZpHeaders| {
            let grids = zp.grids();
            let d = crate::dq::dequantize_on_grids(&crate::dq::code_on_grids(&m.data, &grids, format).unwrap(), &grids, format);
            m.data.iter().zip(&d).zip(&h).map(|((w, d), h)| f64::from(*h) * f64::from(w - d).powi(2)).sum::<f64>()
        };
        let plain = ZpHeaders::fit(&m.data, None, q.headers(), format).unwrap();
        let weighted = ZpHeaders::fit(&m.data, Some(&h), q.headers(), format).unwrap();
        assert!(error(&weighted) < error(&plain), "{} vs {}", error(&weighted), error(&plain));
    }
}
