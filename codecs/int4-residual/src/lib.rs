//! TenPak codec `int4_residual`: asymmetric INT4 per group with an error-minimizing choice of
//! each group's scale and min, and an optional residual stage. Needs no calibration.
//!
//! **Stage 1** stores exactly what `int4_rtn` stores at the same group size (same parts, same
//! bytes per part), so "equal bits" comparisons are exact. Only the choice of `(scale, min)`
//! differs: instead of the group's min/max, the codec picks the pair that minimizes the squared
//! error *as stored* (f16-rounded values, each weight recoded to its nearest level). The min/max
//! pair is always a candidate and wins ties, so no group is ever worse than under `int4_rtn`.
//! Methods (`refine`):
//!
//! - `"search"` (default): llama.cpp's k-quants search (`make_qkx2_quants`, `ggml-quants.c`):
//!   21 candidate steps `(max − min) / (15 ± 1)`, each followed by a least-squares fit of scale
//!   and min to its assignment, then up to `iterations` rounds of alternating least squares.
//! - `"lsq_iter"`: alternating least squares from the min/max grid, up to `iterations` rounds.
//! - `"minmax_iter"`: the TenPak prototype's heuristic (move min and max by half the extreme
//!   errors, `iterations` times), each iterate judged by its stored error.
//! - `"none"`: the `int4_rtn` grid.
//!
//! Measured on SmolLM2-135M-Instruct's 210 linear layers (relative MSE ‖W−Ŵ‖²/‖W‖², 4 bits):
//!
//! | group | none (= int4_rtn) | minmax_iter (5) | lsq_iter (5) | search |
//! |---|---|---|---|---|
//! | 64 | 6.431e-3 | 6.242e-3 | 5.094e-3 | 4.463e-3 (−30.6 %) |
//! | 128 | 9.878e-3 | 9.786e-3 | 8.387e-3 | 7.537e-3 (−23.7 %) |
//! | 256 | 1.2584e-2 | 1.2545e-2 | 1.0948e-2 | 1.0012e-2 (−20.4 %) |
//!
//! `search` beats `int4_rtn` on all 210 layers at each of these group sizes, so it is the default.
//!
//! **Residual stage** (`residual_bits` > 0): the remaining error `R = W − Ŵ₁` is quantized again
//! on an asymmetric `residual_bits`-bit grid with its own groups (`residual_group_size`), and
//! decoding adds it: `Ŵ = Ŵ₁ + R̂` (in f32, in that order). Its parts are stored and counted like
//! the first stage's. On the model above it gains about 4–4.7 dB of SNR per extra bit per weight,
//! less than the ~6 dB per bit of simply using 5- or 6-bit codes and less than smaller groups;
//! it is therefore off by default, and there for experiments.
//!
//! Stored parts:
//!
//! | part | dtype | shape |
//! |---|---|---|
//! | `codes` | u8 | `[rows, ceil(cols/2)]` (two codes per byte, even column low) |
//! | `scale_min` | f16 | `[rows, ceil(cols/group_size), 2]` |
//! | `residual_codes` (if residual) | u8 | `[rows, ceil(cols·residual_bits/8)]` (LSB-first per row) |
//! | `residual_scale_min` (if residual) | f16 | `[rows, ceil(cols/residual_group_size), 2]` |
//!
//! Size ([`stored_bits`]): `rows · (8·ceil(cols/2) + 32·ceil(cols/group_size))`, plus, with a
//! residual stage, `rows · (8·ceil(cols·residual_bits/8) + 32·ceil(cols/residual_group_size))`.
//!
//! Native form ([`Codec::native`]): without a residual stage, GGUF's Q4_1 (`d·q + m`, the same
//! grid) when rows are whole blocks of 32 and groups a multiple of 32 or the whole row.
#![deny(missing_docs)]

use tenpak_api::{
    Codec, Encoded, Error, LayerStats, NativeForm, NativeTarget, ParamSpec, ParamType, Params,
    Result, WeightView, validate_params,
};
use tenpak_quant::fit::FitOptions;
use tenpak_quant::fit::params::{
    self as range_fit, ITERATIONS_SPEC, REFINE_SPEC, SEARCH_STEPS_SPEC,
};
use tenpak_quant::{AsymFormat, AsymQuantized, GroupLayout, encoded, ggml};

/// The registry id.
pub const ID: &str = "int4_residual";
/// Group size when the parameter is absent (as `int4_rtn`).
pub const DEFAULT_GROUP_SIZE: usize = 128;
/// Smallest accepted group size (also for the residual stage).
pub const MIN_GROUP_SIZE: usize = 8;
pub use tenpak_quant::fit::params::{
    DEFAULT_ITERATIONS, DEFAULT_SEARCH_STEPS, MAX_ITERATIONS, MAX_SEARCH_STEPS, REFINE_METHODS,
};
/// Residual group size when the parameter is absent.
pub const DEFAULT_RESIDUAL_GROUP_SIZE: usize = 128;

const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "group_size",
        ty: ParamType::Int,
        default: "128",
        doc: "weights per (scale, min) pair along a row; >= 8; >= the row length means one group per row",
    },
    REFINE_SPEC,
    ITERATIONS_SPEC,
    SEARCH_STEPS_SPEC,
    ParamSpec {
        name: "residual_bits",
        ty: ParamType::Int,
        default: "0",
        doc: "bits per weight of the residual stage (0 = off, 1..=8); its parts are stored and counted",
    },
    ParamSpec {
        name: "residual_group_size",
        ty: ParamType::Int,
        default: "128",
        doc: "group size of the residual stage (>= 8)",
    },
];

/// Exact stored bits of an `int4_residual` tensor (`residual_bits` 0 for none).
pub fn stored_bits(
    rows: usize,
    cols: usize,
    group_size: usize,
    residual_bits: u32,
    residual_group_size: usize,
) -> u64 {
    let stage1 = 8 * cols.div_ceil(2) as u64 + 32 * cols.div_ceil(group_size) as u64;
    let residual = if residual_bits == 0 {
        0
    } else {
        8 * (cols * residual_bits as usize).div_ceil(8) as u64
            + 32 * cols.div_ceil(residual_group_size) as u64
    };
    rows as u64 * (stage1 + residual)
}

/// Parameters after defaults and checks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Settings {
    /// Stage-1 group size.
    pub group_size: usize,
    /// Method name, one of [`REFINE_METHODS`].
    pub refine: &'static str,
    /// Rounds (see the `iterations` parameter).
    pub iterations: usize,
    /// Search steps.
    pub search_steps: usize,
    /// Residual bits (0 = no residual stage).
    pub residual_bits: u32,
    /// Residual group size.
    pub residual_group_size: usize,
}

impl Settings {
    /// Read and check `params` (unknown keys, wrong types and out-of-range values are
    /// [`tenpak_api::ErrorKind::InvalidParam`] errors naming the key).
    pub fn from_params(params: &Params) -> Result<Self> {
        validate_params(ID, PARAMS, params)?;
        let group_size = params.usize_or("group_size", DEFAULT_GROUP_SIZE)?;
        let refine = range_fit::refine_method(ID, params)?;
        let iterations = params.usize_or("iterations", DEFAULT_ITERATIONS)?;
        let search_steps = params.usize_or("search_steps", DEFAULT_SEARCH_STEPS)?;
        let residual_bits = params.usize_or("residual_bits", 0)?;
        let residual_group_size =
            params.usize_or("residual_group_size", DEFAULT_RESIDUAL_GROUP_SIZE)?;
        let range = |key: &str, value: usize, lo: usize, hi: usize| {
            if (lo..=hi).contains(&value) {
                Ok(())
            } else if hi == usize::MAX {
                Err(Error::invalid_param(format!(
                    "{ID}: parameter `{key}` must be at least {lo}, got {value}"
                )))
            } else {
                Err(Error::invalid_param(format!(
                    "{ID}: parameter `{key}` must be in {lo}..={hi}, got {value}"
                )))
            }
        };
        range("group_size", group_size, MIN_GROUP_SIZE, usize::MAX)?;
        range("iterations", iterations, 0, MAX_ITERATIONS)?;
        range("search_steps", search_steps, 1, MAX_SEARCH_STEPS)?;
        range("residual_bits", residual_bits, 0, 8)?;
        range(
            "residual_group_size",
            residual_group_size,
            MIN_GROUP_SIZE,
            usize::MAX,
        )?;
        Ok(Self {
            group_size,
            refine,
            iterations,
            search_steps,
            residual_bits: residual_bits as u32,
            residual_group_size,
        })
    }

    /// The parameters that reproduce these settings (every key, defaults included), as stored
    /// with each encoded tensor.
    pub fn to_params(&self) -> Params {
        Params::new()
            .with("group_size", self.group_size)
            .with("refine", self.refine)
            .with("iterations", self.iterations)
            .with("search_steps", self.search_steps)
            .with("residual_bits", self.residual_bits as usize)
            .with("residual_group_size", self.residual_group_size)
    }

    /// The group fit these settings ask for.
    pub fn fit_options(&self, allow_zero: bool) -> FitOptions {
        FitOptions {
            refine: range_fit::refine(self.refine, self.iterations, self.search_steps),
            allow_zero,
        }
    }

    fn formats(&self, rows: usize, cols: usize) -> Result<(AsymFormat, Option<AsymFormat>)> {
        let stage1 = AsymFormat::new(GroupLayout::new(rows, cols, self.group_size)?, 4)?;
        let residual = if self.residual_bits == 0 {
            None
        } else {
            Some(AsymFormat::new(
                GroupLayout::new(rows, cols, self.residual_group_size)?,
                self.residual_bits,
            )?)
        };
        Ok((stage1, residual))
    }
}

/// The `int4_residual` codec.
#[derive(Clone, Copy, Debug, Default)]
pub struct Int4Residual;

impl Codec for Int4Residual {
    fn id(&self) -> &str {
        ID
    }

    fn description(&self) -> &str {
        "asymmetric INT4 per group, scale/min chosen to minimize stored error (k-quants search), optional residual stage"
    }

    fn params(&self) -> &[ParamSpec] {
        PARAMS
    }

    fn validate(&self, params: &Params) -> Result<()> {
        Settings::from_params(params).map(|_| ())
    }

    fn encode(
        &self,
        weight: WeightView<'_>,
        _stats: &LayerStats,
        params: &Params,
    ) -> Result<Encoded> {
        let settings = Settings::from_params(params)?;
        weight.check_finite()?;
        let (stage1_format, residual_format) = settings.formats(weight.rows(), weight.cols())?;
        let stage1 =
            AsymQuantized::quantize(weight.data(), stage1_format, &settings.fit_options(false))?;
        let mut parts: Vec<_> = stage1.to_parts("codes", "scale_min").into();
        if let Some(format) = residual_format {
            let decoded = stage1.dequantize();
            let residual: Vec<f32> = weight
                .data()
                .iter()
                .zip(&decoded)
                .map(|(w, d)| w - d)
                .collect();
            // Zero is a candidate: with 1 or 2 bits, a group of near-zero residuals is better
            // left alone than spread onto a grid spanning its two extremes.
            let stage2 = AsymQuantized::quantize(&residual, format, &settings.fit_options(true))?;
            parts.extend(stage2.to_parts("residual_codes", "residual_scale_min"));
        }
        Ok(Encoded {
            codec: ID.to_owned(),
            params: settings.to_params(),
            shape: [weight.rows(), weight.cols()],
            parts,
        })
    }

    fn decode(&self, encoded: &Encoded) -> Result<Vec<f32>> {
        let (stage1, stage2) = stored(encoded)?;
        let mut out = stage1.dequantize();
        if let Some(stage2) = stage2 {
            stage2.dequantize_add(&mut out)?;
        }
        Ok(out)
    }

    fn native(&self, encoded: &Encoded, target: NativeTarget) -> Result<Option<NativeForm>> {
        Ok(match (target, stored(encoded)?) {
            // Stage 1 alone is int4_rtn's grid; a residual stage is a sum no runtime stores.
            (NativeTarget::Gguf, (stage1, None)) => ggml::q4_1_form(&stage1),
            _ => None,
        })
    }
}

/// What `encoded` stores, checked: stage 1 and the residual stage if there is one.
fn stored(encoded: &Encoded) -> Result<(AsymQuantized, Option<AsymQuantized>)> {
    encoded::expect_codec(encoded, ID)?;
    let settings = encoded::read_params(encoded, Settings::from_params)?;
    let [rows, cols] = encoded.shape;
    let (stage1_format, residual_format) = settings
        .formats(rows, cols)
        .map_err(|e| Error::corrupt(format!("{ID} tensor: {e}")))?;
    match residual_format {
        None => encoded::expect_parts(encoded, &["codes", "scale_min"])?,
        Some(_) => encoded::expect_parts(
            encoded,
            &["codes", "scale_min", "residual_codes", "residual_scale_min"],
        )?,
    }
    let stage1 = AsymQuantized::from_parts(
        stage1_format,
        encoded.part("codes")?,
        encoded.part("scale_min")?,
    )?;
    let stage2 = match residual_format {
        Some(format) => Some(AsymQuantized::from_parts(
            format,
            encoded.part("residual_codes")?,
            encoded.part("residual_scale_min")?,
        )?),
        None => None,
    };
    Ok((stage1, stage2))
}

tenpak_api::register_codec!("int4_residual", Int4Residual);
