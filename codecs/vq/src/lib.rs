//! TenPak codec `vq`: vector quantization of short sub-vectors of each row against a codebook
//! learned for the layer (GPTVQ: van Baalen et al. 2024, "GPTVQ: The Blessing of
//! Dimensionality for LLM Quantization").
//!
//! # Method
//!
//! A row is cut into groups of `group_size` columns, each with an f16 scale (the group's RMS),
//! and every group into sub-vectors of `dim` consecutive weights (the last one of a group
//! zero-padded if `dim` does not divide it). All normalized sub-vectors of the layer share one
//! codebook of `2^(bits·dim)` entries, so a sub-vector costs `bits·dim` bits: `bits` per weight,
//! with the codebook learned where the weights are instead of on a fixed grid.
//!
//! 1. **Codebook** ([`kmeans`]): k-means on (a seeded sample of at most 65,536 of) the
//!    normalized sub-vectors, with the distance of the output error: each coordinate weighted by
//!    its column's `hessian_diag` (mean x² of that input) and each sub-vector by its group's
//!    scale², as GPTVQ weights by the Hessian. Seeded from distinct sample points; empty clusters
//!    re-seeded with the worst-served point. Rounded to f16, as stored.
//! 2. **Assignment with error feedback** ([`sweep`]): the columns are visited in order, one
//!    sub-vector's columns at a time; each row's sub-vector gets its nearest codeword (same
//!    weighted distance), and each column's error is then spread over the later columns through
//!    the upper Cholesky factor `U` of `(G + percdamp·mean(diag G)·I)⁻¹`, exactly GPTQ's update
//!    with the sub-vector's codes fixed. With `error_feedback = false` every sub-vector simply
//!    gets its nearest codeword. Per row, the encoding with the lower `e G eᵀ` of the two is
//!    stored (recorded as `feedback_rows`), so feedback never loses on the calibration objective.
//!
//! Decoding: `ŵ = scale · codebook[index][k]` in f32. The output error `tr(E G Eᵀ) / tr(W G Wᵀ)`
//! is recorded as `output_error`.
//!
//! Measured on SmolLM2-135M-Instruct (64 held-out windows; BENCHMARKS.md), 4 bits, dim 2,
//! group 32 (4.52 bits per weight on the linears): +11.84 % PPL on the real model, whose Q4_1
//! source grid scalar groups rediscover better; +10.47 % on its grid-free variant, where
//! `int4_awq` at 4.54 bits costs +6.53 % and llama.cpp's Q4_0 + imatrix +40.7 %.
//!
//! # Storage
//!
//! | part | dtype | shape |
//! |---|---|---|
//! | `codes` | u8 | `[rows, ceil(subvectors_per_row · bits · dim / 8)]`, indices packed LSB-first per row ([`tenpak_quant::pack`]) |
//! | `codebook` | f16 | `[2^(bits·dim), dim]` |
//! | `scale` | f16 | `[rows, ceil(cols / group_size)]` |
//!
//! Exact size ([`stored_bits`]): `rows · (8·ceil(n_sub·bits·dim/8) + 16·groups_per_row) +
//! 16 · dim · 2^(bits·dim)`, with `n_sub = Σ_groups ceil(len/dim)`.
//!
//! # Statistics
//!
//! [`Codec::needs`] asks for `hessian_diag` and `gram`; without them `encode` fails naming the
//! missing one. NaN/Inf weights or statistics are refused with the position.
#![deny(missing_docs)]

pub mod kmeans;
mod settings;
pub mod sweep;

pub use settings::{MAX_INDEX_BITS, Settings};

use half::f16;
use tenpak_api::{
    Codec, DType, Encoded, Error, ErrorKind, LayerStats, ParamSpec, Params, Part, Result, StatsNeeds,
    WeightView,
};
use tenpak_quant::encoded;
use tenpak_quant::pack::{pack_row_u16, packed_row_bytes, unpack_row_u16};
use tenpak_quant::rotation::{Rotated, Rotation};
use tenpak_quant::quadratic::{difference, quadratic_form, quadratic_form_rows};

/// The registry id.
pub const ID: &str = "vq";

/// Names of the stored parts.
pub mod parts {
    /// Packed codeword indices, u8 `[rows, row_bytes]`.
    pub const CODES: &str = "codes";
    /// The codebook, f16 `[entries, dim]`.
    pub const CODEBOOK: &str = "codebook";
    /// Group scales, f16 `[rows, groups_per_row]`.
    pub const SCALE: &str = "scale";
}

/// How a matrix is cut: groups of columns, and sub-vectors within groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Columns per scale group.
    pub group_size: usize,
    /// Sub-vector length.
    pub dim: usize,
}

impl Shape {
    /// Groups in a row.
    pub fn groups_per_row(&self) -> usize {
        self.cols.div_ceil(self.group_size)
    }

    /// Sub-vectors in a row: `Σ_groups ceil(len / dim)`.
    pub fn subvectors_per_row(&self) -> usize {
        let full = self.cols / self.group_size;
        let last = self.cols % self.group_size;
        full * self.group_size.div_ceil(self.dim) + last.div_ceil(self.dim)
    }

    /// The columns of every sub-vector of a row, in order (each within one group).
    pub fn subvectors(&self) -> Vec<std::ops::Range<usize>> {
        let mut out = Vec::with_capacity(self.subvectors_per_row());
        for g0 in (0..self.cols).step_by(self.group_size.max(1)) {
            let g1 = (g0 + self.group_size).min(self.cols);
            for s in (g0..g1).step_by(self.dim) {
                out.push(s..(s + self.dim).min(g1));
            }
        }
        out
    }
}

/// Exact stored bits of a `vq` tensor with `index_bits = bits · dim` (see the crate docs).
pub fn stored_bits(shape: Shape, index_bits: u32) -> u64 {
    let index_bits = index_bits as usize;
    let entries = 1u64 << index_bits;
    shape.rows as u64
        * (8 * (shape.subvectors_per_row() * index_bits).div_ceil(8) as u64
            + 16 * shape.groups_per_row() as u64)
        + 16 * shape.dim as u64 * entries
}

/// What an encoding produced, for tests and measurements.
#[derive(Clone, Debug)]
pub struct Report {
    /// The encoded tensor.
    pub encoded: Encoded,
    /// What `decode` returns, bit for bit.
    pub decoded: Vec<f32>,
    /// `tr(E G Eᵀ)` of the stored tensor.
    pub output_error: f64,
    /// `tr(E G Eᵀ)` of nearest-codeword assignment (no feedback).
    pub nearest_output_error: f64,
    /// `tr(W G Wᵀ)`.
    pub energy: f64,
}

/// The `vq` codec.
#[derive(Clone, Copy, Debug, Default)]
pub struct Vq;

fn check_stats(stats: &LayerStats, cols: usize) -> Result<(&[f32], &[f32])> {
    let missing: Vec<&str> = [("hessian_diag", stats.hessian_diag.is_none()), ("gram", stats.gram.is_none())]
        .into_iter()
        .filter_map(|(n, absent)| absent.then_some(n))
        .collect();
    let (Some(h), Some(g)) = (&stats.hessian_diag, &stats.gram) else {
        return Err(Error::new(
            ErrorKind::MissingStats,
            format!("{ID} needs calibration statistics hessian_diag and gram; missing: {}", missing.join(", ")),
        ));
    };
    if h.len() != cols {
        return Err(Error::invalid_input(format!(
            "{ID}: statistic `hessian_diag` has {} values for a layer with {cols} input columns",
            h.len()
        )));
    }
    if g.dim != cols || g.data.len() != cols * cols {
        return Err(Error::invalid_input(format!(
            "{ID}: statistic `gram` must be {cols} x {cols}, got dim {} with {} values",
            g.dim,
            g.data.len()
        )));
    }
    if let Some(j) = h.iter().position(|v| !(v.is_finite() && *v >= 0.0)) {
        return Err(Error::invalid_input(format!(
            "{ID}: statistic `hessian_diag` is {} at column {j} (must be finite and >= 0)",
            h[j]
        )));
    }
    if let Some(i) = g.data.iter().position(|v| !v.is_finite()) {
        return Err(Error::invalid_input(format!(
            "{ID}: statistic `gram` is {} at [{}, {}]",
            g.data[i],
            i / cols,
            i % cols
        )));
    }
    Ok((h, &g.data))
}

/// Each group's scale: its RMS rounded to f16 (0 for an all-zero group). Fails if it overflows
/// f16.
fn group_scales(weight: &[f32], shape: Shape) -> Result<Vec<f16>> {
    let gpr = shape.groups_per_row();
    let mut out = Vec::with_capacity(shape.rows * gpr);
    for (r, row) in weight.chunks_exact(shape.cols.max(1)).enumerate().take(shape.rows) {
        for (g, group) in row.chunks(shape.group_size).enumerate() {
            let ms = group.iter().map(|&w| f64::from(w) * f64::from(w)).sum::<f64>() / group.len() as f64;
            let s = f16::from_f64(ms.sqrt());
            if !s.is_finite() {
                return Err(Error::invalid_input(format!(
                    "{ID}: row {r}, group {g}: RMS {} does not fit an f16 scale; store this tensor unquantized",
                    ms.sqrt()
                )));
            }
            out.push(s);
        }
    }
    Ok(out)
}

/// Decode indices on the codebook with the group scales: `ŵ = scale · codebook[index][k]`.
fn reconstruct(indices: &[u16], codebook: &[f16], scales: &[f16], shape: Shape) -> Vec<f32> {
    let subs = shape.subvectors();
    let (nsub, gpr) = (subs.len(), shape.groups_per_row());
    let book: Vec<f32> = codebook.iter().map(|v| v.to_f32()).collect();
    let mut out = vec![0f32; shape.rows * shape.cols];
    for r in 0..shape.rows {
        for (s, cols) in subs.iter().enumerate() {
            let scale = scales[r * gpr + cols.start / shape.group_size].to_f32();
            let code = &book[indices[r * nsub + s] as usize * shape.dim..][..shape.dim];
            for (k, c) in cols.clone().enumerate() {
                out[r * shape.cols + c] = scale * code[k];
            }
        }
    }
    out
}

impl Vq {
    /// Encode, and also return the reconstruction and output errors (see [`Report`]).
    pub fn encode_report(&self, weight: WeightView<'_>, stats: &LayerStats, params: &Params) -> Result<Report> {
        let settings = Settings::from_recorded(params)?;
        weight.check_finite()?;
        let (rows, cols) = (weight.rows(), weight.cols());
        check_stats(stats, cols)?;
        // Incoherence processing: everything below runs on W·Tᵀ with the rotated statistics
        // (the output error is the same in both bases); only the reconstruction is rotated back.
        let rotated = settings.incoherence.then(|| Rotated::new(weight.data(), cols, stats, settings.rotation_seed));
        let (w, stats) = rotated.as_ref().map_or((weight.data(), stats), |r| (&r.data[..], &r.stats));
        let (hdiag, gram) = check_stats(stats, cols)?;
        let shape = Shape { rows, cols, group_size: settings.group_size, dim: settings.dim };
        let scales = group_scales(w, shape)?;
        let codebook = kmeans::learn(w, &scales, hdiag, shape, &settings);
        let nearest = sweep::assign_nearest(w, &scales, &codebook, hdiag, shape);
        let nearest_decoded = reconstruct(&nearest, &codebook, &scales, shape);
        let nearest_rows = quadratic_form_rows(&difference(w, &nearest_decoded), gram, rows, cols);
        let (indices, decoded, row_errors, feedback_rows) = if settings.error_feedback && rows * cols > 0 {
            let fed = sweep::assign_with_feedback(w, &scales, &codebook, hdiag, gram, shape, settings.percdamp)?;
            let fed_decoded = reconstruct(&fed, &codebook, &scales, shape);
            let fed_rows = quadratic_form_rows(&difference(w, &fed_decoded), gram, rows, cols);
            let nsub = shape.subvectors_per_row();
            let (mut indices, mut decoded, mut errors, mut count) = (nearest, nearest_decoded, nearest_rows.clone(), 0usize);
            for r in (0..rows).filter(|&r| fed_rows[r] < nearest_rows[r]) {
                indices[r * nsub..(r + 1) * nsub].copy_from_slice(&fed[r * nsub..(r + 1) * nsub]);
                decoded[r * cols..(r + 1) * cols].copy_from_slice(&fed_decoded[r * cols..(r + 1) * cols]);
                errors[r] = fed_rows[r];
                count += 1;
            }
            (indices, decoded, errors, count)
        } else {
            (nearest, nearest_decoded, nearest_rows.clone(), 0usize)
        };
        let energy = quadratic_form(w, gram, cols);
        let output_error: f64 = row_errors.iter().sum();
        let index_bits = settings.index_bits();
        let nsub = shape.subvectors_per_row();
        let row_bytes = packed_row_bytes(nsub, index_bits);
        let mut packed = vec![0u8; rows * row_bytes];
        for r in 0..rows {
            pack_row_u16(&indices[r * nsub..(r + 1) * nsub], index_bits, &mut packed[r * row_bytes..(r + 1) * row_bytes]);
        }
        let mut params = settings.to_params();
        if energy > 0.0 {
            params.set("output_error", output_error / energy);
        }
        if settings.error_feedback {
            params.set("feedback_rows", feedback_rows);
        }
        let encoded = Encoded {
            codec: ID.to_owned(),
            params,
            shape: [rows, cols],
            parts: vec![
                Part::new(parts::CODES, DType::U8, vec![rows, row_bytes], packed)?,
                Part::from_f16(parts::CODEBOOK, vec![1 << index_bits, shape.dim], &codebook),
                Part::from_f16(parts::SCALE, vec![rows, shape.groups_per_row()], &scales),
            ],
        };
        let mut decoded = decoded;
        if let Some(r) = &rotated {
            r.rotation.unrotate_rows(&mut decoded);
        }
        Ok(Report {
            encoded,
            decoded,
            output_error,
            nearest_output_error: nearest_rows.iter().sum(),
            energy,
        })
    }
}

fn corrupt(encoded: &Encoded, what: impl std::fmt::Display) -> Error {
    Error::corrupt(format!("{ID} tensor {:?}: {what}", encoded.shape))
}

impl Codec for Vq {
    fn id(&self) -> &str {
        ID
    }

    fn description(&self) -> &str {
        "vector quantization: sub-vectors of dim weights against a per-layer codebook (Hessian-weighted k-means), with GPTQ-style error feedback"
    }

    fn params(&self) -> &[ParamSpec] {
        settings::PARAMS
    }

    fn needs(&self) -> StatsNeeds {
        StatsNeeds { hessian_diag: true, gram: true, ..StatsNeeds::NONE }
    }

    fn validate(&self, params: &Params) -> Result<()> {
        Settings::from_params(params).map(|_| ())
    }

    fn encode(&self, weight: WeightView<'_>, stats: &LayerStats, params: &Params) -> Result<Encoded> {
        self.encode_report(weight, stats, params).map(|r| r.encoded)
    }

    fn decode(&self, encoded: &Encoded) -> Result<Vec<f32>> {
        encoded::expect_codec(encoded, ID)?;
        let settings = encoded::read_params(encoded, Settings::from_recorded)?;
        encoded::expect_parts(encoded, &[parts::CODES, parts::CODEBOOK, parts::SCALE])?;
        let [rows, cols] = encoded.shape;
        let shape = Shape { rows, cols, group_size: settings.group_size, dim: settings.dim };
        let index_bits = settings.index_bits();
        let nsub = shape.subvectors_per_row();
        let row_bytes = packed_row_bytes(nsub, index_bits);
        let codes = encoded.part(parts::CODES)?;
        if codes.dtype != DType::U8 || codes.shape != [rows, row_bytes] {
            return Err(corrupt(encoded, format!("`codes` must be u8 [{rows}, {row_bytes}], got {:?} {:?}", codes.dtype, codes.shape)));
        }
        let codebook = encoded.part(parts::CODEBOOK)?;
        let entries = 1usize << index_bits;
        if codebook.shape != [entries, shape.dim] {
            return Err(corrupt(encoded, format!("`codebook` must be [{entries}, {}], got {:?}", shape.dim, codebook.shape)));
        }
        let codebook = codebook.to_f16()?;
        if let Some(i) = codebook.iter().position(|v| !v.is_finite()) {
            return Err(corrupt(encoded, format!("codebook value {} at entry {i}", codebook[i])));
        }
        let scale = encoded.part(parts::SCALE)?;
        if scale.shape != [rows, shape.groups_per_row()] {
            return Err(corrupt(encoded, format!("`scale` must be [{rows}, {}], got {:?}", shape.groups_per_row(), scale.shape)));
        }
        let scales = scale.to_f16()?;
        if let Some(i) = scales.iter().position(|v| !(v.is_finite() && v.to_f32() >= 0.0)) {
            return Err(corrupt(encoded, format!("scale {} at entry {i}", scales[i])));
        }
        let mut indices = vec![0u16; rows * nsub];
        for r in 0..rows {
            unpack_row_u16(&codes.data[r * row_bytes..(r + 1) * row_bytes], index_bits, &mut indices[r * nsub..(r + 1) * nsub]);
        }
        let mut out = reconstruct(&indices, &codebook, &scales, shape);
        if settings.incoherence {
            Rotation::new(cols, settings.rotation_seed).unrotate_rows(&mut out);
        }
        Ok(out)
    }
}

tenpak_api::register_codec!("vq", Vq);
