//! TenPak codec `int4_awq`: activation-aware INT4 for calibrated layers.
//!
//! A linear layer's quantization error matters only through the layer's output `(W − Ŵ)·x` on
//! the inputs it really sees. This codec takes the statistics of those inputs (mean |x|, mean x²
//! and the Gram matrix `G = XᵀX / n` of the calibration activations) and spends the INT4 grid
//! where the output needs it. It stores exactly `int4_residual`'s INT4 parts plus two small
//! extras, and decodes with one division per weight and a sparse add.
//!
//! # Method
//!
//! For `W` (`rows` = out_features × `cols` = in_features, groups along each row):
//!
//! 1. **Outliers** ([`outliers`]): the `outlier_fraction` most salient weights, salience
//!    `|w_ij|·sqrt(act_scale_j)`, are kept out of their groups' range fit; at their positions the
//!    codec stores the f16 of what the grid missed, `w − ŵ_dense`.
//! 2. **AWQ scaling** ([`scaling`]; Lin et al., *AWQ*, MLSys 2024): `s_j = act_scale_j^α`,
//!    normalized by `sqrt(max s · min s)` as AutoAWQ does and rounded to f16; the codec quantizes
//!    `W' = W·diag(s)` and decodes `Ŵ = deq(W') / s` (+ outliers). Channels with large activations
//!    get finer steps.
//! 3. **Importance-weighted range fit** ([`tenpak_quant::fit::weighted`]): each group's
//!    `(scale, min)` minimizes `Σ_j h_j (w'_j − ŵ'_j)²` with `h_j = hessian_diag_j / s_j²`, the
//!    diagonal of the output error in the scaled domain, using `int4_residual`'s k-quants search
//!    (llama.cpp does the same with its importance matrix, `make_qkx3_quants`).
//! 4. **α search** ([`encoder`]): `err(α) = tr(E G Eᵀ)`, `E = W − Ŵ_α`, the mean squared output
//!    error on the calibration tokens ([`output_error`]). Every α of the grid `k / alpha_grid`
//!    (α = 0.5 always included) is ranked on `alpha_search_rows` evenly spaced rows; the best,
//!    α = 0 and α = 0.5 are then encoded on every row and the least output error wins. So each
//!    layer is never worse than with no scaling or with AWQ's fixed square-root rule. The chosen
//!    α and the relative output error `tr(E G Eᵀ) / tr(W G Wᵀ)` are recorded in the tensor's
//!    parameters (`alpha`, `output_error`), so the manifest shows them.
//!
//! 5. **Error feedback** (`error_feedback = true`; [`encoder`]): GPTQ's sweep (Frantar et al.
//!    2022; quant-core's [`tenpak_quant::gptq`], which `int4_gptq` runs too) inside the codec.
//!    With the headers of step 3 and the column scales of step 2 fixed, the columns are coded
//!    in turn and each one's error is compensated by the columns not yet coded, through the
//!    upper Cholesky factor of
//!    `(G + percdamp·mean(diag G)·I)⁻¹`; the grid of column `j` is the stored grid divided by
//!    `s_j`, so the sweep runs on `W` with one factorization per layer for every α. Per row, the
//!    encoding with the lower `e_r G e_rᵀ` is kept (recorded as `feedback_rows`), so feedback
//!    never loses to the plain fit on the calibration objective. The α search ranks candidates
//!    without feedback on its row sample; the finalists get it. Outliers are chosen before the
//!    sweep and corrected after it, which wastes some compensation on them: with feedback,
//!    smaller groups pay better than outliers.
//! 6. **Incoherence processing** (`incoherence = true`, `rotation_seed`): everything above runs
//!    on `W·Tᵀ` with `G' = T G Tᵀ` for the seeded orthogonal `T` of
//!    [`tenpak_quant::rotation`] (fast Walsh–Hadamard ⊗ a small random rotation, any
//!    dimension); the decoder rebuilds `T` from the recorded seed and multiplies back. It
//!    spreads weight outliers over the row; it also spreads the loud input channels that the
//!    column scales and the weighted fit would otherwise protect, so it pays with error
//!    feedback and on weights without a grid of their own (measurements in BENCHMARKS.md).
//!
//! Any code width from 2 to 8 bits (`bits`, default 4) works the same way.
//!
//! Decoding is exact for the stored representation: the encoder scores the f16-rounded scales
//! and the f16 residuals through the very functions `decode` uses, so the output error it
//! records is the one the decoded weights have, and a test checks it bit for bit.
//!
//! # Measured (SmolLM2-135M-Instruct)
//!
//! Statistics from the unquantized model on the first 16,384 tokens of the calibration text
//! (32 windows of 512), for the 49 linear layers of blocks 0, 5, 10, 15, 20, 25 and 29, with the
//! dev-only tool in `tools/awq-measure` (`awq-capture`, then `awq-measure`; its crate docs
//! say how; not a workspace member, since it runs tenpak-model's runtime). Figures
//! are the mean relative output error `tr(E G Eᵀ) / tr(W G Wᵀ)`, and in brackets the geometric
//! mean of each layer's ratio to `int4_rtn` at the same group size. Each row adds one ingredient
//! to the row above, at 4 bits:
//!
//! | configuration | g = 128 | g = 512 | g = 2048 |
//! |---|---|---|---|
//! | `int4_rtn` (min/max) | 1.126e-2 | 1.720e-2 | 1.892e-2 |
//! | `int4_residual` (k-quants search on the weight error) | 8.48e-3 (0.80) | 1.466e-2 (0.91) | 1.622e-2 (0.91) |
//! | + AWQ, α = 0.5 fixed | 6.33e-3 (0.70) | 1.452e-2 (1.07) | 1.728e-2 (1.12) |
//! | + α searched | 5.59e-3 (0.60) | 1.031e-2 (0.73) | 1.171e-2 (0.74) |
//! | + weighted range fit (`outlier_fraction = 0`) | 4.42e-3 (0.40) | 7.48e-3 (0.46) | 8.48e-3 (0.46) |
//! | + 0.5 % outliers: **the defaults** | **3.45e-3 (0.305)** | **4.85e-3 (0.284)** | **5.25e-3 (0.278)** |
//! | defaults with α = 0 | 3.80e-3 (0.33) | 6.44e-3 (0.37) | 7.11e-3 (0.37) |
//! | defaults with α = 0.5 | 3.66e-3 (0.34) | 5.06e-3 (0.30) | 5.46e-3 (0.30) |
//! | weighted fit alone (α = 0, no outliers) | 4.68e-3 (0.42) | 8.61e-3 (0.51) | 9.70e-3 (0.52) |
//!
//! The defaults beat `int4_rtn` on 49/49 layers at each group size. Plain AWQ (α = 0.5 on the
//! weight-error fit) is *worse* than `int4_rtn` on 26–28 of the 49 layers at groups of 512 and
//! 2048; searching α fixes that, and the weighted fit is the largest single gain. With the
//! weighted fit the best α is small (mean 0.09–0.18 without outliers, 0.25–0.38 with them).
//!
//! **The α search's shortcuts**, measured the same way (geometric-mean ratio; time per layer,
//! one core, averaged over the 49 layers on a busy machine):
//!
//! | ranking | g = 128 | g = 512 | g = 2048 | time |
//! |---|---|---|---|---|
//! | every row, full fit (`alpha_search_rows = 0`) | 0.3036 | 0.2812 | 0.2749 | 0.9–1.0 s |
//! | 128 rows, full fit (**default**) | 0.3050 | 0.2835 | 0.2776 | 0.33–0.38 s |
//! | 128 rows, min/max fit (`alpha_search_fit = "rtn"`) | 0.3111 | 0.2874 | 0.2811 | 0.24–0.27 s |
//!
//! Ranking with the cheap min/max fit loses more (1–2 %) than ranking on a row sample with the
//! full fit (0.5–1 %) and saves little, because the weighted fit moves the best α; so the default
//! ranks with the full fit on 128 rows. (64 rows: 0.3065 at g = 128; a 0.1-step grid: 0.3054.)
//!
//! **Outliers cost bits**: 48 per outlier, 0.24 bits per weight at 0.5 %. At equal bits a
//! smaller group without outliers did better on this model: g = 128 with outliers (4.49 bits per
//! weight) 3.45e-3 against g = 64 without (4.50) 2.64e-3; g = 2048 with outliers (4.26) 5.25e-3
//! against g = 128 without (4.25) 4.42e-3. (The source weights are Q4_1 in blocks of 32, which
//! flatters small 32-aligned groups.) Presets that count bits should compare both.
//!
//! Encode time on one core (`examples/awq_timing.rs`, synthetic statistics, defaults): about
//! 0.32 s for a 1536 × 576 layer (SmolLM2's gate/up), 0.77 s for 576 × 1536 (down), 0.12 s for
//! 192 × 576 (k/v); one candidate at a fixed α costs 0.10 / 0.13 / 0.01 s.
//!
//! **Error feedback, double-quantized headers and the rotation on the whole model**
//! (perplexity on 64 held-out windows, baseline 26.4279; every linear at the same settings; the
//! full table with llama.cpp beside it is in BENCHMARKS.md, "Quality per bit"):
//!
//! | linears | bits/weight | real model (Q4_1 source grid) | grid-free variant |
//! |---|---|---|---|
//! | g64, α searched, weighted fit | 4.50 | +6.74 % | +32.6 % |
//! | + error feedback | 4.50 | +4.96 % | +8.14 % |
//! | + error feedback + incoherence | 4.50 | +7.05 % | see BENCHMARKS.md |
//! | g32, 6-bit headers (super-groups of 8) + error feedback | 4.53–4.54 | +2.15 % (flattered) | +6.53 % |
//! | g32, 6-bit headers (super-groups of 18) + error feedback | 4.43 | +3.30 % (flattered) | – |
//!
//! # Storage
//!
//! | part | dtype | shape | present |
//! |---|---|---|---|
//! | `codes` | u8 | `[rows, ceil(cols/2)]` (two codes per byte, even column low) | always |
//! | `scale_min` | f16 | `[rows, ceil(cols/group_size), 2]` | always |
//! | `col_scale` | f16 | `[cols]` | α ≠ 0 |
//! | `outlier_index` | u32 | `[k]`, flat row-major, increasing | `outlier_fraction` > 0 |
//! | `outlier_value` | f16 | `[k]` | `outlier_fraction` > 0 |
//!
//! With `header_bits > 0` the headers are double-quantized ([`tenpak_quant::dq`]): `header_q`
//! and `header_super` replace `scale_min`. With `zero_point = "integer"` each group stores an f16
//! scale `s` and an integer zero point `z` ([`tenpak_quant::zp`]): `scale` (f16
//! `[rows, groups_per_row]`) and `zero` (u8 `[rows, ceil(groups_per_row·bits/8)]`, packed)
//! replace `scale_min`, the grid is `s·(q − z)` (16 + bits header bits per group instead of 32),
//! fitted from the weighted fit's header on the same objective, and error feedback runs on it.
//! That is the form GPTQ checkpoints and compressed-tensors store: with `alpha = 0`, no outliers
//! and no incoherence, `tenpak export --format compressed-tensors` copies the codes, scales and
//! zero points as they are.
//!
//! with `k = round(outlier_fraction · rows · cols)`. Size ([`stored_bits`]):
//! `rows · (8·ceil(cols/2) + 32·ceil(cols/group_size)) + 16·cols·[α ≠ 0] + 48·k` bits.
//! With α = 0, `outlier_fraction = 0` and `weighted_fit = false` the parts are exactly
//! `int4_residual`'s, byte for byte.
//!
//! # Native forms
//!
//! [`Codec::native`] hands the stored grid to an exporter when nothing is added to it (4-bit
//! codes, α = 0, no outliers) and it is not a rotated matrix's (no incoherence): with f16
//! `(scale, min)` headers, GGUF's Q4_1 (groups a multiple of 32 or the whole row, rows whole
//! blocks of 32); with 6-bit double-quantized headers in groups of 32 and super-groups of 8,
//! GGUF's Q4_K (rows whole super-blocks of 256, each super-group's mins of one sign); with
//! integer zero points, the compressed-tensors integer groups of the export's group size. (With
//! incoherence, GGUF gets the blocks only where they happen to reproduce the decode exactly, as
//! a tensor that decodes to zeros does.)
//!
//! # Statistics
//!
//! With `incoherence`, the parts hold the rotated matrix's encoding (outlier positions
//! included); the size is the same formula. With `bits ≠ 4`, `codes` is
//! `[rows, ceil(cols·bits/8)]` ([`stored_bits_with`]).
//!
//! [`Codec::needs`] asks for `act_scale`, `hessian_diag` and `gram`; without them `encode` fails
//! with [`tenpak_api::ErrorKind::MissingStats`] naming the missing ones. NaN/Inf or negative
//! statistics and wrong lengths are [`tenpak_api::ErrorKind::InvalidInput`] errors naming the
//! statistic and position; `act_scale` entries below `1e-6` of the largest are raised to it
//! ([`calibration::ACT_SCALE_FLOOR`]).
#![deny(missing_docs)]

pub mod calibration;
pub mod encoder;
pub mod outliers;
pub mod output_error;
pub mod scaling;
pub mod settings;

use half::f16;
use tenpak_api::{
    Codec, Encoded, Error, LayerStats, NativeForm, NativeTarget, ParamSpec, Params, Result,
    StatsNeeds, WeightView,
};
use tenpak_quant::dq::{DqHeaders, DqLayout, dequantize_on_grids};
use tenpak_quant::zp::ZpHeaders;
use tenpak_quant::rotation::{Rotated, Rotation};
use tenpak_quant::{AsymFormat, AsymQuantized, GroupLayout, encoded, ggml};

use calibration::Calibration;
use encoder::{Encoder, Headers, unscale};
pub use outliers::outlier_count;
pub use settings::{AlphaSearchFit, Settings};

/// The registry id.
pub const ID: &str = "int4_awq";

/// Names of the stored parts.
pub mod parts {
    /// Packed INT4 codes of `W·diag(s)`, u8 `[rows, ceil(cols/2)]`.
    pub const CODES: &str = "codes";
    /// Group headers `(scale, min)`, f16 `[rows, ceil(cols/group_size), 2]`.
    pub const SCALE_MIN: &str = "scale_min";
    /// Column scales `s`, f16 `[cols]` (absent when α = 0).
    pub const COL_SCALE: &str = "col_scale";
    /// Outlier positions, u32 `[k]`, flat row-major, increasing (absent when outlier_fraction = 0).
    pub const OUTLIER_INDEX: &str = "outlier_index";
    /// Outlier residuals, f16 `[k]` (absent when outlier_fraction = 0).
    pub const OUTLIER_VALUE: &str = "outlier_value";
    /// Double-quantized headers (`header_bits > 0`, instead of `scale_min`): per group the scale
    /// and min codes, u8 `[rows, ceil(2·groups_per_row·header_bits/8)]`, packed.
    pub const HEADER_Q: &str = "header_q";
    /// Double-quantized headers: per super-group `(d, m)`, f16 `[rows, supers_per_row, 2]`.
    pub const HEADER_SUPER: &str = "header_super";
    /// Integer zero points (`zero_point = "integer"`, instead of `scale_min`): the group scales,
    /// f16 `[rows, groups_per_row]`.
    pub const SCALE: &str = "scale";
    /// Integer zero points: per group `z` in `0..2^bits`, u8 `[rows, ceil(groups_per_row·bits/8)]`,
    /// packed.
    pub const ZERO: &str = "zero";
}

/// Exact stored bits of an `int4_awq` tensor with 4-bit codes: the codes and headers,
/// `rows · (8·ceil(cols/2) + 32·ceil(cols/group_size))`, plus `16·cols` for the column scales
/// when α ≠ 0, plus 48 per outlier.
pub fn stored_bits(
    rows: usize,
    cols: usize,
    group_size: usize,
    col_scale: bool,
    outliers: usize,
) -> u64 {
    stored_bits_with(4, rows, cols, group_size, col_scale, outliers)
}

/// [`stored_bits`] for `bits`-bit codes: `rows · (8·ceil(cols·bits/8) + 32·ceil(cols/group_size))`
/// plus the column scales and outliers.
pub fn stored_bits_with(
    bits: u32,
    rows: usize,
    cols: usize,
    group_size: usize,
    col_scale: bool,
    outliers: usize,
) -> u64 {
    rows as u64 * (8 * (cols * bits as usize).div_ceil(8) as u64 + 32 * cols.div_ceil(group_size) as u64)
        + if col_scale { 16 * cols as u64 } else { 0 }
        + 48 * outliers as u64
}

/// The `int4_awq` codec.
#[derive(Clone, Copy, Debug, Default)]
pub struct Int4Awq;

fn format(rows: usize, cols: usize, settings: &Settings) -> Result<AsymFormat> {
    AsymFormat::new(GroupLayout::new(rows, cols, settings.group_size)?, settings.bits)
}

/// The parts an encoding with these settings and α has, in storage order.
fn part_names(alpha: f64, settings: &Settings) -> Vec<&'static str> {
    let outlier_fraction = settings.outlier_fraction;
    let mut names = if settings.header_bits > 0 {
        vec![parts::CODES, parts::HEADER_Q, parts::HEADER_SUPER]
    } else if settings.integer_zero {
        vec![parts::CODES, parts::SCALE, parts::ZERO]
    } else {
        vec![parts::CODES, parts::SCALE_MIN]
    };
    if alpha != 0.0 {
        names.push(parts::COL_SCALE);
    }
    if outlier_fraction > 0.0 {
        names.extend([parts::OUTLIER_INDEX, parts::OUTLIER_VALUE]);
    }
    names
}

impl Int4Awq {
    /// Encode and also return what was stored, with the reconstruction and output error the
    /// encoder scored (what `decode` returns, bit for bit). For tests and measurements.
    pub fn encode_stored(
        &self,
        weight: WeightView<'_>,
        stats: &LayerStats,
        params: &Params,
    ) -> Result<(Encoded, encoder::Stored)> {
        let settings = Settings::from_recorded(params)?;
        weight.check_finite()?;
        let (rows, cols) = (weight.rows(), weight.cols());
        Calibration::new(stats, cols)?;
        // Incoherence processing: everything below runs on W·Tᵀ with the rotated statistics;
        // only the reconstruction is rotated back.
        let rotated = settings.incoherence.then(|| Rotated::new(weight.data(), cols, stats, settings.rotation_seed));
        let (data, stats) = rotated.as_ref().map_or((weight.data(), stats), |r| (&r.data[..], &r.stats));
        let calibration = Calibration::new(stats, cols)?;
        let format = format(rows, cols, &settings)?;
        let mut encoder = Encoder::new(data, format, &calibration, &settings)?;
        let energy = encoder.energy();
        let mut stored = if data.is_empty() {
            encoder.candidate(settings.alpha.unwrap_or(0.0), &settings.fit_options())?
        } else {
            encoder.encode(&settings)?
        };
        if let Some(r) = &rotated {
            r.rotation.unrotate_rows(&mut stored.reconstruction);
        }
        let mut params = settings.to_params(stored.alpha);
        if settings.error_feedback {
            params.set("feedback_rows", stored.feedback_rows);
        }
        if energy > 0.0 {
            params.set("output_error", stored.output_error / energy);
        } else if stored.output_error == 0.0 {
            params.set("output_error", 0.0);
        }
        let [codes, scale_min] = stored.quantized.to_parts(parts::CODES, parts::SCALE_MIN);
        let mut out = vec![codes];
        match &stored.headers {
            Headers::Dq(dq) => out.extend(dq.to_parts(parts::HEADER_Q, parts::HEADER_SUPER)),
            Headers::Zp(zp) => out.extend(zp.to_parts(parts::SCALE, parts::ZERO)),
            Headers::F16 => out.push(scale_min),
        }
        if let Some(col_scale) = &stored.col_scale {
            out.push(tenpak_api::Part::from_f16(
                parts::COL_SCALE,
                vec![cols],
                col_scale,
            ));
        }
        if settings.outlier_fraction > 0.0 {
            let k = stored.outlier_index.len();
            out.push(tenpak_api::Part::from_u32(
                parts::OUTLIER_INDEX,
                vec![k],
                &stored.outlier_index,
            ));
            out.push(tenpak_api::Part::from_f16(
                parts::OUTLIER_VALUE,
                vec![k],
                &stored.outlier_value,
            ));
        }
        let encoded = Encoded {
            codec: ID.to_owned(),
            params,
            shape: [rows, cols],
            parts: out,
        };
        Ok((encoded, stored))
    }
}

fn corrupt(encoded: &Encoded, what: impl std::fmt::Display) -> Error {
    Error::corrupt(format!("{ID} tensor {:?}: {what}", encoded.shape))
}

impl Codec for Int4Awq {
    fn id(&self) -> &str {
        ID
    }

    fn description(&self) -> &str {
        "activation-aware INT4: AWQ column scales searched on the output error, importance-weighted ranges, fp16 outliers"
    }

    fn params(&self) -> &[ParamSpec] {
        settings::PARAMS
    }

    fn needs(&self) -> StatsNeeds {
        StatsNeeds {
            act_scale: true,
            hessian_diag: true,
            gram: true,
            fisher_diag: false,
        }
    }

    fn validate(&self, params: &Params) -> Result<()> {
        Settings::from_params(params).map(|_| ())
    }

    fn encode(
        &self,
        weight: WeightView<'_>,
        stats: &LayerStats,
        params: &Params,
    ) -> Result<Encoded> {
        self.encode_stored(weight, stats, params)
            .map(|(encoded, _)| encoded)
    }

    fn decode(&self, encoded: &Encoded) -> Result<Vec<f32>> {
        encoded::expect_codec(encoded, ID)?;
        let settings = encoded::read_params(encoded, Settings::from_recorded)?;
        let alpha = settings
            .alpha
            .ok_or_else(|| corrupt(encoded, "no `alpha` recorded"))?;
        let [rows, cols] = encoded.shape;
        let format = format(rows, cols, &settings).map_err(|e| corrupt(encoded, e))?;
        encoded::expect_parts(encoded, &part_names(alpha, &settings))?;
        let grids = if settings.header_bits > 0 {
            let dq = DqLayout::new(format.layout(), settings.header_bits, settings.super_group)
                .map_err(|e| corrupt(encoded, e))?;
            let headers = DqHeaders::from_parts(
                dq,
                encoded.part(parts::HEADER_Q)?,
                encoded.part(parts::HEADER_SUPER)?,
            )?;
            Some(headers.grids())
        } else if settings.integer_zero {
            let headers =
                ZpHeaders::from_parts(format, encoded.part(parts::SCALE)?, encoded.part(parts::ZERO)?)?;
            Some(headers.grids())
        } else {
            None
        };
        let dense = if let Some(grids) = grids {
            let codes = encoded.part(parts::CODES)?;
            let want = [rows, format.row_code_bytes()];
            if codes.dtype != tenpak_api::DType::U8 || codes.shape != want {
                return Err(corrupt(
                    encoded,
                    format!("`codes` must be u8 {want:?}, got {:?} {:?}", codes.dtype, codes.shape),
                ));
            }
            dequantize_on_grids(&codes.data, &grids, format)
        } else {
            AsymQuantized::from_parts(
                format,
                encoded.part(parts::CODES)?,
                encoded.part(parts::SCALE_MIN)?,
            )?
            .dequantize()
        };
        let col_scale = if alpha != 0.0 {
            let scales = encoded.part(parts::COL_SCALE)?.to_f16()?;
            if scales.len() != cols {
                return Err(corrupt(
                    encoded,
                    format!("`col_scale` holds {} values, expected {cols}", scales.len()),
                ));
            }
            if let Some(j) = scales
                .iter()
                .position(|s| !(s.is_finite() && s.to_f32() > 0.0))
            {
                return Err(corrupt(
                    encoded,
                    format!("`col_scale` {} at column {j}", scales[j]),
                ));
            }
            Some(scales)
        } else {
            None
        };
        let (index, value) = if settings.outlier_fraction > 0.0 {
            let index = encoded.part(parts::OUTLIER_INDEX)?.to_u32()?;
            let value = encoded.part(parts::OUTLIER_VALUE)?.to_f16()?;
            let want = outlier_count(rows * cols, settings.outlier_fraction);
            if index.len() != want || value.len() != want {
                return Err(corrupt(
                    encoded,
                    format!(
                        "{} outlier indices and {} values, expected {want}",
                        index.len(),
                        value.len()
                    ),
                ));
            }
            if index.windows(2).any(|w| w[0] >= w[1])
                || index.last().is_some_and(|&i| i as usize >= rows * cols)
            {
                return Err(corrupt(
                    encoded,
                    "outlier indices are not increasing within the matrix",
                ));
            }
            if let Some(k) = value.iter().position(|v| !v.is_finite()) {
                return Err(corrupt(
                    encoded,
                    format!("outlier value {} at entry {k}", value[k]),
                ));
            }
            (index, value)
        } else {
            (Vec::new(), Vec::<f16>::new())
        };
        let mut out = unscale(dense, col_scale.as_deref());
        outliers::apply(&mut out, &index, &value);
        if settings.incoherence {
            Rotation::new(cols, settings.rotation_seed).unrotate_rows(&mut out);
        }
        Ok(out)
    }

    fn native(&self, encoded: &Encoded, target: NativeTarget) -> Result<Option<NativeForm>> {
        encoded::expect_codec(encoded, ID)?;
        let settings = encoded::read_params(encoded, Settings::from_recorded)?;
        let [rows, cols] = encoded.shape;
        // Only a grid with nothing added to it (column scales, outliers) is one a runtime holds.
        let bare =
            settings.bits == 4 && settings.alpha == Some(0.0) && settings.outlier_fraction <= 0.0;
        let wanted = bare
            && match target {
                NativeTarget::Gguf => !settings.integer_zero,
                NativeTarget::CompressedTensors { group_size } => {
                    settings.integer_zero
                        && !settings.incoherence
                        && group_size > 0
                        && settings.group_size == group_size
                        && cols.is_multiple_of(group_size)
                }
                _ => false,
            };
        if !wanted {
            return Ok(None);
        }
        // Every part checked as the decoder checks it, and the matrix it decodes to.
        let values = self.decode(encoded)?;
        let format = format(rows, cols, &settings).map_err(|e| corrupt(encoded, e))?;
        let codes = encoded.part(parts::CODES)?;
        if settings.integer_zero {
            let headers = ZpHeaders::from_parts(
                format,
                encoded.part(parts::SCALE)?,
                encoded.part(parts::ZERO)?,
            )?;
            return Ok(Some(headers.int_groups(&codes.data)));
        }
        // With incoherence the stored grid is the rotated matrix's: the blocks built from the
        // decode on it are kept only where they reproduce the decode exactly (a tensor that
        // decodes to zeros), as an exporter checking them would find.
        Ok(if settings.header_bits > 0 {
            let dq = DqLayout::new(format.layout(), settings.header_bits, settings.super_group)
                .map_err(|e| corrupt(encoded, e))?;
            let headers = DqHeaders::from_parts(
                dq,
                encoded.part(parts::HEADER_Q)?,
                encoded.part(parts::HEADER_SUPER)?,
            )?;
            ggml::q4_k_blocks(&headers, &values)
                .filter(|b| !settings.incoherence || ggml::decodes_to(b, &values))
                .map(|b| ggml::native_form(&b))
        } else {
            let quantized =
                AsymQuantized::from_parts(format, codes, encoded.part(parts::SCALE_MIN)?)?;
            ggml::q4_1_blocks(&quantized, &values)
                .filter(|b| !settings.incoherence || ggml::decodes_to(b, &values))
                .map(|b| ggml::native_form(&b))
        })
    }
}

tenpak_api::register_codec!("int4_awq", Int4Awq);
