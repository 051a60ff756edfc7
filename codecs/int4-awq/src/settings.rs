//! The codec's parameters: what a preset may set, their defaults and ranges, and what is recorded
//! with each encoded tensor.

use tenpak_api::{Error, ParamSpec, ParamType, Params, Result, validate_params, validate_recorded};
use tenpak_quant::fit::FitOptions;
use tenpak_quant::fit::params::{
    self as range_fit, ITERATIONS_SPEC, REFINE_SPEC, SEARCH_STEPS_SPEC,
};

use crate::ID;

/// Group size when the parameter is absent.
pub const DEFAULT_GROUP_SIZE: usize = 128;
/// Smallest accepted group size: below 8 weights the 32-bit header costs more than the codes.
pub const MIN_GROUP_SIZE: usize = 8;
/// Steps of the α grid when `alpha_grid` is absent: α ∈ {0, 0.05, …, 1}, which holds AWQ's 0.5.
pub const DEFAULT_ALPHA_GRID: usize = 20;
/// Largest accepted `alpha_grid`.
pub const MAX_ALPHA_GRID: usize = 100;
/// Fraction of weights kept as fp16 outliers when `outlier_fraction` is absent (0.5 %).
pub const DEFAULT_OUTLIER_FRACTION: f64 = 0.005;
/// Largest accepted `outlier_fraction`.
pub const MAX_OUTLIER_FRACTION: f64 = 0.1;
pub use tenpak_quant::fit::params::{
    DEFAULT_ITERATIONS, DEFAULT_SEARCH_STEPS, MAX_ITERATIONS, MAX_SEARCH_STEPS, REFINE_METHODS,
};
/// Rows the α ranking runs on when `alpha_search_rows` is absent (0 = every row).
pub const DEFAULT_ALPHA_SEARCH_ROWS: usize = 128;
/// Hessian dampening of the error feedback when `percdamp` is absent (GPTQ's 1 %).
pub const DEFAULT_PERCDAMP: f64 = 0.01;
/// The accepted `zero_point` values.
pub const ZERO_POINTS: &[&str] = &["float", "integer"];
/// The accepted `alpha_search_fit` values.
pub const ALPHA_SEARCH_FITS: &[&str] = &["rtn", "full"];

/// Code width when `bits` is absent.
pub const DEFAULT_BITS: u32 = 4;

/// What a preset may set.
pub(crate) const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "bits",
        ty: ParamType::Int,
        default: "4",
        doc: "bits per code, 2..=8 (the codec is named for its default width)",
    },
    ParamSpec {
        name: "group_size",
        ty: ParamType::Int,
        default: "128",
        doc: "weights per (scale, min) pair along a row; >= 8; >= the row length means one group per row",
    },
    ParamSpec {
        name: "alpha",
        ty: ParamType::Float,
        default: "(searched)",
        doc: "fixed AWQ exponent in [0, 1] (column scale = act_scale^alpha); absent: searched on the output error",
    },
    ParamSpec {
        name: "alpha_grid",
        ty: ParamType::Int,
        default: "20",
        doc: "alpha search: candidates k/alpha_grid for k = 0..=alpha_grid (1..=100); 0.5 is always tried",
    },
    ParamSpec {
        name: "alpha_search_fit",
        ty: ParamType::Str,
        default: "\"full\"",
        doc: "range fit while ranking alpha candidates: rtn (min/max) | full; the finalists (the best, 0 and 0.5) always get the full fit",
    },
    ParamSpec {
        name: "alpha_search_rows",
        ty: ParamType::Int,
        default: "128",
        doc: "rank alpha candidates on this many evenly spaced rows (0 = all rows); the finalists are always scored on all rows",
    },
    ParamSpec {
        name: "outlier_fraction",
        ty: ParamType::Float,
        default: "0.005",
        doc: "fraction of weights (largest |w|) corrected by an fp16 residual; in [0, 0.1]; indices and values are stored and counted",
    },
    ParamSpec {
        name: "weighted_fit",
        ty: ParamType::Bool,
        default: "true",
        doc: "choose each group's scale and min to minimize the output error (hessian_diag-weighted) instead of the weight error",
    },
    ParamSpec {
        name: "error_feedback",
        ty: ParamType::Bool,
        default: "false",
        doc: "GPTQ error feedback: code the columns in turn, each one's output error compensated by the later columns through the Cholesky factor of the damped Gram matrix (headers from the weighted fit); per row the better of with and without",
    },
    ParamSpec {
        name: "header_bits",
        ty: ParamType::Int,
        default: "0",
        doc: "0: f16 (scale, min) per group; 3..=8: double-quantized, each group's scale and min as header_bits-bit integers against an f16 pair per super-group (k-quants; 6 with groups of 32 and super_group 8 is 4.5 bits per weight)",
    },
    ParamSpec {
        name: "zero_point",
        ty: ParamType::Str,
        default: "\"float\"",
        doc: "float: f16 (scale, min) per group; integer: an f16 scale and an integer zero point (bits wide) per group, grid s·(q − z), 16 + bits bits per group: the form GPTQ checkpoints and compressed-tensors store, so `tenpak export --format compressed-tensors` carries the codes over exactly (with alpha = 0, outlier_fraction = 0, no incoherence); not with header_bits",
    },
    ParamSpec {
        name: "super_group",
        ty: ParamType::Int,
        default: "8",
        doc: "header_bits > 0: groups per super-group (consecutive within a row; the last may be shorter)",
    },
    ParamSpec {
        name: "incoherence",
        ty: ParamType::Bool,
        default: "false",
        doc: "incoherence processing: quantize W·Tᵀ for a seeded random orthogonal T on the input dimension (fast Hadamard ⊗ small random rotation), statistics rotated with it; decode multiplies by T",
    },
    ParamSpec {
        name: "rotation_seed",
        ty: ParamType::Int,
        default: "0",
        doc: "incoherence: the seed of T (recorded, so the decoder rebuilds T)",
    },
    ParamSpec {
        name: "percdamp",
        ty: ParamType::Float,
        default: "0.01",
        doc: "error feedback: add percdamp * mean(diag G) to the Gram matrix's diagonal; in (0, 1]",
    },
    REFINE_SPEC,
    ITERATIONS_SPEC,
    SEARCH_STEPS_SPEC,
];

/// Written by the encoder beside the settings, so the manifest shows them; accepted (and
/// ignored) when the recorded parameters are read back, refused in a preset.
pub(crate) const RECORDED: &[ParamSpec] = &[
    ParamSpec {
        name: "output_error",
        ty: ParamType::Float,
        default: "recorded",
        doc: "recorded: tr(E G Eᵀ) / tr(W G Wᵀ) of the stored tensor on the calibration activations",
    },
    ParamSpec {
        name: "feedback_rows",
        ty: ParamType::Int,
        default: "recorded",
        doc: "recorded (error_feedback): rows stored from the error-feedback sweep; the others from the plain fit",
    },
];

/// How α candidates are ranked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlphaSearchFit {
    /// Rank the candidates with the min/max (round-to-nearest) range fit.
    Rtn,
    /// Rank the candidates with the full range fit.
    Full,
}

impl AlphaSearchFit {
    /// The parameter value.
    pub fn name(self) -> &'static str {
        match self {
            AlphaSearchFit::Rtn => "rtn",
            AlphaSearchFit::Full => "full",
        }
    }
}

/// Parameters after defaults and checks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Settings {
    /// Bits per code.
    pub bits: u32,
    /// Group size.
    pub group_size: usize,
    /// A fixed α, or `None` to search.
    pub alpha: Option<f64>,
    /// Steps of the α grid.
    pub alpha_grid: usize,
    /// How α candidates are ranked.
    pub alpha_search_fit: AlphaSearchFit,
    /// Rows the ranking runs on (0 = all).
    pub alpha_search_rows: usize,
    /// Fraction of weights stored as fp16 residuals.
    pub outlier_fraction: f64,
    /// Importance-weighted range fit.
    pub weighted_fit: bool,
    /// GPTQ error feedback through the Gram matrix.
    pub error_feedback: bool,
    /// Dampening of the Gram matrix for the error feedback.
    pub percdamp: f64,
    /// Double-quantized header width (0: f16 headers).
    pub header_bits: u32,
    /// Groups per super-group of double-quantized headers.
    pub super_group: usize,
    /// Integer zero points (`zero_point = "integer"`) instead of f16 minima.
    pub integer_zero: bool,
    /// Incoherence processing of the input dimension.
    pub incoherence: bool,
    /// Seed of the rotation.
    pub rotation_seed: u64,
    /// Range-fit method, one of [`REFINE_METHODS`].
    pub refine: &'static str,
    /// Rounds (see the `iterations` parameter).
    pub iterations: usize,
    /// Range-search steps.
    pub search_steps: usize,
}

fn one_of(key: &str, value: &str, allowed: &[&'static str]) -> Result<&'static str> {
    tenpak_api::param_one_of(ID, key, value, allowed)
}

fn in_range<T: PartialOrd + std::fmt::Display>(key: &str, value: T, lo: T, hi: T) -> Result<()> {
    tenpak_api::param_in_range(ID, key, value, lo, hi)
}

impl Settings {
    /// Read and check the parameters of a preset or request (unknown keys, wrong types and
    /// out-of-range values are [`tenpak_api::ErrorKind::InvalidParam`] errors naming the key).
    pub fn from_params(params: &Params) -> Result<Self> {
        validate_params(ID, PARAMS, params)?;
        Self::read(params)
    }

    /// Read the parameters recorded with an encoded tensor: the settings plus what the encoder
    /// recorded (`output_error`).
    pub fn from_recorded(params: &Params) -> Result<Self> {
        validate_recorded(ID, PARAMS, RECORDED, params)?;
        Self::read(params)
    }

    fn read(params: &Params) -> Result<Self> {
        let bits = params.usize_or("bits", DEFAULT_BITS as usize)?;
        in_range("bits", bits, 2, 8)?;
        let bits = bits as u32;
        let group_size = params.usize_or("group_size", DEFAULT_GROUP_SIZE)?;
        if group_size < MIN_GROUP_SIZE {
            return Err(Error::invalid_param(format!(
                "{ID}: parameter `group_size` must be at least {MIN_GROUP_SIZE}, got {group_size}"
            )));
        }
        let alpha = match params.get("alpha") {
            None => None,
            Some(_) => Some(params.float_or("alpha", 0.0)?),
        };
        if let Some(alpha) = alpha {
            in_range("alpha", alpha, 0.0, 1.0)?;
        }
        let alpha_grid = params.usize_or("alpha_grid", DEFAULT_ALPHA_GRID)?;
        in_range("alpha_grid", alpha_grid, 1, MAX_ALPHA_GRID)?;
        let alpha_search_fit = match one_of(
            "alpha_search_fit",
            params.str_or("alpha_search_fit", "full")?,
            ALPHA_SEARCH_FITS,
        )? {
            "full" => AlphaSearchFit::Full,
            _ => AlphaSearchFit::Rtn,
        };
        let alpha_search_rows = params.usize_or("alpha_search_rows", DEFAULT_ALPHA_SEARCH_ROWS)?;
        let outlier_fraction = params.float_or("outlier_fraction", DEFAULT_OUTLIER_FRACTION)?;
        in_range(
            "outlier_fraction",
            outlier_fraction,
            0.0,
            MAX_OUTLIER_FRACTION,
        )?;
        let weighted_fit = params.bool_or("weighted_fit", true)?;
        let error_feedback = params.bool_or("error_feedback", false)?;
        let header_bits = params.usize_or("header_bits", 0)?;
        if header_bits != 0 {
            in_range("header_bits", header_bits, 3, 8)?;
        }
        let header_bits = header_bits as u32;
        let super_group = params.usize_or("super_group", 8)?;
        in_range("super_group", super_group, 1, 1 << 20)?;
        let integer_zero = one_of("zero_point", params.str_or("zero_point", "float")?, ZERO_POINTS)? == "integer";
        if integer_zero && header_bits != 0 {
            return Err(Error::invalid_param(format!(
                "{ID}: `zero_point = \"integer\"` stores its own headers (f16 scale, integer zero point); it does not combine with `header_bits = {header_bits}`"
            )));
        }
        let incoherence = params.bool_or("incoherence", false)?;
        let rotation_seed = params.usize_or("rotation_seed", 0)? as u64;
        let percdamp = params.float_or("percdamp", DEFAULT_PERCDAMP)?;
        if !(percdamp > 0.0 && percdamp <= 1.0) {
            return Err(Error::invalid_param(format!(
                "{ID}: parameter `percdamp` must be in (0, 1], got {percdamp}"
            )));
        }
        let refine = range_fit::refine_method(ID, params)?;
        let iterations = params.usize_or("iterations", DEFAULT_ITERATIONS)?;
        in_range("iterations", iterations, 0, MAX_ITERATIONS)?;
        let search_steps = params.usize_or("search_steps", DEFAULT_SEARCH_STEPS)?;
        in_range("search_steps", search_steps, 1, MAX_SEARCH_STEPS)?;
        Ok(Self {
            bits,
            group_size,
            alpha,
            alpha_grid,
            alpha_search_fit,
            alpha_search_rows,
            outlier_fraction,
            weighted_fit,
            error_feedback,
            percdamp,
            header_bits,
            super_group,
            integer_zero,
            incoherence,
            rotation_seed,
            refine,
            iterations,
            search_steps,
        })
    }

    /// The parameters recorded with a tensor encoded with α = `alpha`: every setting (defaults
    /// included) with `alpha` fixed to the one used, so they reproduce the encoding.
    pub fn to_params(&self, alpha: f64) -> Params {
        Params::new()
            .with("bits", self.bits as usize)
            .with("group_size", self.group_size)
            .with("alpha", alpha)
            .with("alpha_grid", self.alpha_grid)
            .with("alpha_search_fit", self.alpha_search_fit.name())
            .with("alpha_search_rows", self.alpha_search_rows)
            .with("outlier_fraction", self.outlier_fraction)
            .with("weighted_fit", self.weighted_fit)
            .with("error_feedback", self.error_feedback)
            .with("percdamp", self.percdamp)
            .with("header_bits", self.header_bits as usize)
            .with("super_group", self.super_group)
            .with("zero_point", if self.integer_zero { "integer" } else { "float" })
            .with("incoherence", self.incoherence)
            .with("rotation_seed", self.rotation_seed as usize)
            .with("refine", self.refine)
            .with("iterations", self.iterations)
            .with("search_steps", self.search_steps)
    }

    /// The range fit these settings ask for (as `int4_residual`'s).
    pub fn fit_options(&self) -> FitOptions {
        FitOptions {
            refine: range_fit::refine(self.refine, self.iterations, self.search_steps),
            allow_zero: false,
        }
    }

    /// The α candidates of the search: `k / alpha_grid` for `k = 0..=alpha_grid`, plus 0.5 if
    /// the grid does not hold it.
    pub fn alpha_candidates(&self) -> Vec<f64> {
        let mut grid: Vec<f64> = (0..=self.alpha_grid)
            .map(|k| k as f64 / self.alpha_grid as f64)
            .collect();
        if !grid.contains(&0.5) {
            grid.push(0.5);
            grid.sort_by(f64::total_cmp);
        }
        grid
    }
}
