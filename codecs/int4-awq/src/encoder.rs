//! Encoding one layer: the candidate for one α, and the search over α.

use std::borrow::Cow;

use half::f16;
use tenpak_api::{DType, ErrorKind, Part, Result};
use tenpak_quant::dq::{DqHeaders, DqLayout, code_on_grids, dequantize_on_grids};
use tenpak_quant::gptq::hessian::Hessian;
use tenpak_quant::gptq::sweep::{self, Groups, InverseFactor};
use tenpak_quant::grid::GridF32;
use tenpak_quant::quadratic::{difference, quadratic_form_rows};
use tenpak_quant::zp::ZpHeaders;
use tenpak_quant::{AsymFormat, AsymQuantized, FitOptions, GroupLayout};

use crate::ID;
use crate::calibration::Calibration;
use crate::outliers;
use crate::output_error::OutputError;
use crate::scaling::{column_scales, scale_columns};
use crate::settings::{AlphaSearchFit, Settings};

/// What the codec stores for one α, with the reconstruction the decoder will compute from it and
/// that reconstruction's output error.
pub struct Stored {
    /// The exponent used.
    pub alpha: f64,
    /// The column scales (`None` when α = 0: all ones, not stored).
    pub col_scale: Option<Vec<f16>>,
    /// The INT4 codes and group headers of `W·diag(s)` (with double-quantized headers or integer
    /// zero points, the f16 headers they were fitted from; the codes follow the stored grids).
    pub quantized: AsymQuantized,
    /// How the group headers are stored.
    pub headers: Headers,
    /// Flat indices of the outliers, increasing.
    pub outlier_index: Vec<u32>,
    /// Their f16 residuals.
    pub outlier_value: Vec<f16>,
    /// What [`crate::Int4Awq`]'s `decode` returns for these parts, bit for bit.
    pub reconstruction: Vec<f32>,
    /// `tr(E G Eᵀ)` of that reconstruction.
    pub output_error: f64,
    /// Rows stored from the error-feedback sweep (0 without error feedback).
    pub feedback_rows: usize,
}

/// Columns per lazy batch of the error-feedback sweep (speed only; `int4_gptq`'s default).
const FEEDBACK_BLOCK: usize = 128;

/// `Ŵ = deq(W') / s` (in f32, column by column), the dense part of the decoding; the encoder and
/// the decoder both go through this function, then [`outliers::apply`].
pub fn unscale(mut dense: Vec<f32>, col_scale: Option<&[f16]>) -> Vec<f32> {
    if let Some(scales) = col_scale
        && !scales.is_empty()
    {
        let scales: Vec<f32> = scales.iter().map(|s| s.to_f32()).collect();
        for row in dense.chunks_exact_mut(scales.len()) {
            for (w, s) in row.iter_mut().zip(&scales) {
                *w /= s;
            }
        }
    }
    dense
}

/// `quantized` with its packed codes replaced by `codes` (same format, same headers).
fn with_codes(quantized: &AsymQuantized, codes: Vec<u8>) -> Result<AsymQuantized> {
    let format = quantized.format();
    let [_, headers] = quantized.to_parts("codes", "scale_min");
    let codes = Part {
        name: "codes".to_owned(),
        dtype: DType::U8,
        shape: vec![format.layout().rows(), format.row_code_bytes()],
        data: codes,
    };
    AsymQuantized::from_parts(format, &codes, &headers)
}

/// How an encoding's group headers are stored.
#[derive(Clone, Debug, PartialEq)]
pub enum Headers {
    /// f16 `(scale, min)` per group, in the [`AsymQuantized`] itself.
    F16,
    /// Double-quantized (`header_bits > 0`).
    Dq(DqHeaders),
    /// f16 scale and integer zero point (`zero_point = "integer"`).
    Zp(ZpHeaders),
}

impl Headers {
    /// The decoded grid of every group, unless the f16 headers are the grids.
    pub fn grids(&self) -> Option<Vec<GridF32>> {
        match self {
            Headers::F16 => None,
            Headers::Dq(dq) => Some(dq.grids()),
            Headers::Zp(zp) => Some(zp.grids()),
        }
    }
}

/// How the headers are to be stored: f16, double-quantized `(header_bits, super_group)`, or with
/// integer zero points.
#[derive(Clone, Copy, Debug, PartialEq)]
enum HeaderForm {
    F16,
    Dq(u32, usize),
    IntegerZero,
}

/// `deq(W')`: the codes on the f16 headers, or on the stored grids. The decoder goes through the
/// same two functions.
pub fn dense(quantized: &AsymQuantized, headers: &Headers) -> Vec<f32> {
    match headers.grids() {
        None => quantized.dequantize(),
        Some(grids) => dequantize_on_grids(quantized.codes(), &grids, quantized.format()),
    }
}

/// One layer's encoding state: the weight, its statistics, the outliers (which do not depend on
/// α) and the output-error evaluator.
pub struct Encoder<'a> {
    weight: Cow<'a, [f32]>,
    cols: usize,
    calibration: &'a Calibration<'a>,
    format: AsymFormat,
    weighted_fit: bool,
    outlier_index: Vec<u32>,
    evaluator: OutputError<'a>,
    /// Error feedback: the dampening asked for, and the factor once computed.
    feedback: Option<(f64, Option<InverseFactor>)>,
    /// How the headers are stored.
    header_form: HeaderForm,
}

impl<'a> Encoder<'a> {
    /// Prepare to encode `weight` (`format`'s shape, finite) with `calibration`.
    pub fn new(
        weight: &'a [f32],
        format: AsymFormat,
        calibration: &'a Calibration<'a>,
        settings: &Settings,
    ) -> Result<Self> {
        let outlier_index =
            outliers::select(weight, &calibration.act_scale, settings.outlier_fraction)?;
        let mut encoder = Self::with_outliers(
            Cow::Borrowed(weight),
            format,
            calibration,
            settings.weighted_fit,
            outlier_index,
        );
        if settings.error_feedback {
            encoder.feedback = Some((settings.percdamp, None));
        }
        if settings.header_bits > 0 {
            encoder.header_form = HeaderForm::Dq(settings.header_bits, settings.super_group);
        } else if settings.integer_zero {
            encoder.header_form = HeaderForm::IntegerZero;
        }
        Ok(encoder)
    }

    fn with_outliers(
        weight: Cow<'a, [f32]>,
        format: AsymFormat,
        calibration: &'a Calibration<'a>,
        weighted_fit: bool,
        outlier_index: Vec<u32>,
    ) -> Self {
        let layout = format.layout();
        Self {
            weight,
            cols: layout.cols(),
            calibration,
            format,
            weighted_fit,
            outlier_index,
            evaluator: OutputError::new(calibration.gram, layout.rows(), layout.cols()),
            feedback: None,
            header_form: HeaderForm::F16,
        }
    }

    /// The same layer restricted to `count` evenly spaced rows (the centres of `count` equal
    /// bands), with the same outliers where they fall in those rows; `None` if that is every row.
    /// The sample has no error feedback: it ranks α candidates on the plain fit, which is cheap,
    /// and the finalists are then encoded with feedback on every row.
    ///
    /// Rows are quantized independently and the output error is a sum over rows, so a candidate
    /// scored on these rows is scored exactly as on the whole layer, only on fewer rows: an
    /// unbiased estimate whose ranking of α candidates (which all scale the same columns) is
    /// what the search needs.
    fn row_sample(&self, count: usize) -> Result<Option<Encoder<'a>>> {
        let layout = self.format.layout();
        let rows = layout.rows();
        if count == 0 || count >= rows {
            return Ok(None);
        }
        let sampled: Vec<usize> = (0..count)
            .map(|i| (2 * i + 1) * rows / (2 * count))
            .collect();
        let mut weight = Vec::with_capacity(count * self.cols);
        let mut position = vec![None; rows];
        for (p, &r) in sampled.iter().enumerate() {
            weight.extend_from_slice(&self.weight[r * self.cols..(r + 1) * self.cols]);
            position[r] = Some(p);
        }
        let outlier_index = self
            .outlier_index
            .iter()
            .filter_map(|&i| {
                let (r, c) = (i as usize / self.cols, i as usize % self.cols);
                position[r].map(|p| (p * self.cols + c) as u32)
            })
            .collect();
        let format = AsymFormat::new(GroupLayout::new(count, self.cols, layout.group_size())?, self.format.bits())?;
        let mut sample = Encoder::with_outliers(
            Cow::Owned(weight),
            format,
            self.calibration,
            self.weighted_fit,
            outlier_index,
        );
        sample.header_form = self.header_form;
        Ok(Some(sample))
    }

    /// `tr(W G Wᵀ)`.
    pub fn energy(&mut self) -> f64 {
        self.evaluator.energy(&self.weight)
    }

    /// Per-weight importance of the range fit in the scaled domain, or `None` for the plain fit.
    ///
    /// The error `e'_j` of a scaled weight `w_j·s_j` is `e'_j / s_j` in `W`, and costs
    /// `hessian_diag_j · (e'_j / s_j)²` at the output, so the weighted fit's importance is
    /// `hessian_diag_j / s_j²` (normalized by the largest `hessian_diag`, which changes no choice
    /// and keeps it finite). Without the weighted fit every weight counts 1. Outliers count 0 in
    /// both, so they stay out of their groups' ranges.
    fn importance(&self, scales: Option<&[f32]>) -> Option<Vec<f32>> {
        if !self.weighted_fit && self.outlier_index.is_empty() {
            return None;
        }
        let per_column: Vec<f32> = if self.weighted_fit {
            let h = self.calibration.hessian_diag;
            let h_max = f64::from(h.iter().copied().fold(0f32, f32::max));
            (0..self.cols)
                .map(|j| {
                    let s = scales.map_or(1.0, |s| f64::from(s[j]));
                    if h_max > 0.0 {
                        (f64::from(h[j]) / h_max / (s * s)) as f32
                    } else {
                        0.0
                    }
                })
                .collect()
        } else {
            vec![1.0; self.cols]
        };
        let mut importance = Vec::with_capacity(self.weight.len());
        for _ in 0..self.weight.len() / self.cols.max(1) {
            importance.extend_from_slice(&per_column);
        }
        for &i in &self.outlier_index {
            importance[i as usize] = 0.0;
        }
        Some(importance)
    }

    /// Encode with exponent `alpha` and range fit `fit`, and measure the result.
    pub fn candidate(&mut self, alpha: f64, fit: &FitOptions) -> Result<Stored> {
        let col_scale = (alpha != 0.0).then(|| column_scales(&self.calibration.act_scale, alpha));
        let scales: Option<Vec<f32>> = col_scale
            .as_ref()
            .map(|s| s.iter().map(|v| v.to_f32()).collect());
        let scaled = match &scales {
            Some(s) => Cow::Owned(scale_columns(&self.weight, s)),
            None => Cow::Borrowed(&*self.weight),
        };
        let importance = self.importance(scales.as_deref());
        let quantized = match &importance {
            None => AsymQuantized::quantize(&scaled, self.format, fit),
            Some(importance) => {
                AsymQuantized::quantize_weighted(&scaled, importance, self.format, fit)
            }
        }
        .map_err(|e| {
            if scales.is_some() {
                e.context(format!("int4_awq (weights scaled by act_scale^{alpha})"))
            } else {
                e.context("int4_awq")
            }
        })?;
        let headers = match self.header_form {
            HeaderForm::F16 => Headers::F16,
            HeaderForm::Dq(header_bits, super_group) => Headers::Dq(DqHeaders::quantize(
                quantized.headers(),
                DqLayout::new(self.format.layout(), header_bits, super_group)?,
            )),
            HeaderForm::IntegerZero => Headers::Zp(
                ZpHeaders::fit(&scaled, importance.as_deref(), quantized.headers(), self.format)
                    .map_err(|e| e.context("int4_awq (integer zero points)"))?,
            ),
        };
        let quantized = match headers.grids() {
            None => quantized,
            Some(grids) => with_codes(&quantized, code_on_grids(&scaled, &grids, self.format)?)?,
        };
        let mut reconstruction = unscale(dense(&quantized, &headers), col_scale.as_deref());
        let outlier_value = outliers::residuals(
            &self.weight,
            &reconstruction,
            &self.outlier_index,
            self.cols,
        )?;
        outliers::apply(&mut reconstruction, &self.outlier_index, &outlier_value);
        let mut plain = Stored {
            alpha,
            col_scale,
            quantized,
            headers,
            outlier_index: self.outlier_index.clone(),
            outlier_value,
            reconstruction,
            output_error: 0.0,
            feedback_rows: 0,
        };
        if self.feedback.is_some() {
            // Measures both encodings row by row itself.
            return self.with_feedback(plain, scales.as_deref());
        }
        plain.output_error = self.evaluator.error(&self.weight, &plain.reconstruction);
        Ok(plain)
    }

    /// The factor `U` (`(G + damp·I)⁻¹ = UᵀU`) of the error feedback, computed on first use.
    fn feedback_factor(&mut self) -> Result<&InverseFactor> {
        let (percdamp, factor) = self.feedback.as_mut().expect("error feedback is on");
        if factor.is_none() {
            let hessian =
                Hessian::from_gram(self.calibration.gram, self.cols).map_err(|e| e.context(ID))?;
            *factor = Some(InverseFactor::new(&hessian, *percdamp).map_err(|e| e.context(ID))?);
        }
        Ok(factor.as_ref().expect("just computed"))
    }

    /// Error feedback on top of the plain candidate `plain`: with the same headers (the weighted
    /// fit's), column scales and outliers, the GPTQ sweep re-chooses every code so that each
    /// column's output error is compensated by the columns after it (quant-core's
    /// [`sweep::quantize_scaled`], the sweep `int4_gptq` runs, on the column-scaled grid). Per row, the encoding with the lower `e_r G e_rᵀ` is kept: rows are
    /// independent in storage and in `tr(E G Eᵀ) = Σ_r e_r G e_rᵀ`, so the result is never worse
    /// than the plain fit on the calibration objective. The stored format is unchanged.
    fn with_feedback(&mut self, plain: Stored, scales: Option<&[f32]>) -> Result<Stored> {
        let format = self.format;
        let layout = format.layout();
        let (rows, cols) = (layout.rows(), layout.cols());
        let weight = self.weight.clone();
        let factor = self.feedback_factor()?;
        let grids = plain.headers.grids();
        let groups = match &grids {
            Some(grids) => Groups::Grids(grids),
            None => Groups::Static(plain.quantized.headers()),
        };
        let [swept_codes, _] =
            sweep::quantize_scaled(&weight, format, factor, groups, scales, FEEDBACK_BLOCK)
                .map_err(|e| e.context(ID))?
                .to_parts(format);
        let swept = with_codes(&plain.quantized, swept_codes.data)?;
        let mut fed = unscale(dense(&swept, &plain.headers), plain.col_scale.as_deref());
        let fed_outliers = outliers::residuals(&weight, &fed, &self.outlier_index, cols)?;
        outliers::apply(&mut fed, &self.outlier_index, &fed_outliers);
        let gram = self.calibration.gram;
        let fed_rows = quadratic_form_rows(&difference(&weight, &fed), gram, rows, cols);
        let plain_rows =
            quadratic_form_rows(&difference(&weight, &plain.reconstruction), gram, rows, cols);
        let use_fed: Vec<bool> = fed_rows.iter().zip(&plain_rows).map(|(f, p)| f < p).collect();
        let output_error = (0..rows)
            .map(|r| if use_fed[r] { fed_rows[r] } else { plain_rows[r] })
            .sum();
        // Assemble row by row: same headers, codes and reconstruction from the chosen encoding.
        let stride = format.row_code_bytes();
        let mut codes = plain.quantized.codes().to_vec();
        let mut reconstruction = plain.reconstruction;
        for r in (0..rows).filter(|&r| use_fed[r]) {
            codes[r * stride..(r + 1) * stride]
                .copy_from_slice(&swept.codes()[r * stride..(r + 1) * stride]);
            reconstruction[r * cols..(r + 1) * cols].copy_from_slice(&fed[r * cols..(r + 1) * cols]);
        }
        let mut outlier_value = plain.outlier_value;
        for (k, &i) in self.outlier_index.iter().enumerate() {
            if use_fed[i as usize / cols] {
                outlier_value[k] = fed_outliers[k];
            }
        }
        let quantized = with_codes(&plain.quantized, codes)?;
        Ok(Stored {
            alpha: plain.alpha,
            col_scale: plain.col_scale,
            quantized,
            headers: plain.headers,
            outlier_index: plain.outlier_index,
            outlier_value,
            reconstruction,
            output_error,
            feedback_rows: use_fed.iter().filter(|&&f| f).count(),
        })
    }

    /// [`Encoder::candidate`], or `None` if `alpha ≠ 0` scales some group beyond what f16 headers
    /// or residuals can hold (that α is simply not a candidate). α = 0's errors are the weight's
    /// own and are returned.
    fn try_candidate(&mut self, alpha: f64, fit: &FitOptions) -> Result<Option<Stored>> {
        match self.candidate(alpha, fit) {
            Ok(stored) => Ok(Some(stored)),
            Err(e) if alpha != 0.0 && e.kind() == ErrorKind::InvalidInput => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The best of `alphas` (which hold 0) under `fit` by output error (the earliest on a tie).
    fn best_of(&mut self, alphas: &[f64], fit: &FitOptions) -> Result<Stored> {
        debug_assert!(alphas.contains(&0.0));
        let mut best: Option<Stored> = None;
        for &alpha in alphas {
            if let Some(c) = self.try_candidate(alpha, fit)?
                && best
                    .as_ref()
                    .is_none_or(|b| c.output_error < b.output_error)
            {
                best = Some(c);
            }
        }
        Ok(best.expect("alpha = 0 either succeeds or returns its error"))
    }

    /// Encode as `settings` say: with the fixed α, or the α of least output error.
    ///
    /// The search ranks every candidate of [`Settings::alpha_candidates`] (on a row sample, with
    /// the ranking fit), then encodes three finalists on every row with the full fit: the best
    /// ranked, α = 0 (no scaling) and α = 0.5 (AWQ's square-root rule), and keeps the one of least
    /// output error. So the result is never worse than either fixed rule on the layer, whatever
    /// the ranking's shortcuts cost.
    pub fn encode(&mut self, settings: &Settings) -> Result<Stored> {
        let full = settings.fit_options();
        if let Some(alpha) = settings.alpha {
            return self.candidate(alpha, &full);
        }
        let ranking_fit = match settings.alpha_search_fit {
            AlphaSearchFit::Full => full,
            AlphaSearchFit::Rtn => FitOptions::RTN,
        };
        let candidates = settings.alpha_candidates();
        let mut sample = self.row_sample(settings.alpha_search_rows)?;
        if sample.is_none() && ranking_fit == full {
            // Every candidate is already scored exactly as a finalist would be.
            return self.best_of(&candidates, &full);
        }
        let ranker = sample.as_mut().unwrap_or(self);
        let mut best = (f64::INFINITY, 0.0);
        for &alpha in &candidates {
            if let Some(c) = ranker.try_candidate(alpha, &ranking_fit)?
                && c.output_error < best.0
            {
                best = (c.output_error, alpha);
            }
        }
        let mut finalists = vec![0.0, 0.5];
        if !finalists.contains(&best.1) {
            finalists.push(best.1);
        }
        self.best_of(&finalists, &full)
    }
}
