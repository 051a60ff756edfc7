//! The codec's parameters: what a preset may set, their defaults and ranges, and what the encoder
//! records beside them.

use tenpak_api::{Error, ParamSpec, ParamType, Params, Result, validate_params, validate_recorded};
use tenpak_quant::fit::FitOptions;
use tenpak_quant::fit::params::{self as range_fit, ITERATIONS_SPEC, REFINE_SPEC};

use crate::ID;

/// Group size when the parameter is absent (as `int4_rtn`).
pub const DEFAULT_GROUP_SIZE: usize = 128;
/// Smallest accepted group size: below 8 weights the 32-bit header costs more than the codes.
pub const MIN_GROUP_SIZE: usize = 8;
/// Dampening when `percdamp` is absent: the reference's 1 % of the mean diagonal.
pub const DEFAULT_PERCDAMP: f64 = 0.01;
/// Columns per lazy batch when `block_size` is absent (the reference's 128).
pub const DEFAULT_BLOCK_SIZE: usize = 128;
/// Largest accepted `block_size`.
pub const MAX_BLOCK_SIZE: usize = 4096;
pub use tenpak_quant::fit::params::{DEFAULT_ITERATIONS, MAX_ITERATIONS, REFINE_METHODS};
/// The accepted `groups` values.
pub const GROUPS: &[&str] = &["best", "dynamic", "static"];
/// Candidate steps of the `search` range fit: k-quants' 20, as `int4_residual`'s default.
pub const SEARCH_STEPS: usize = range_fit::DEFAULT_SEARCH_STEPS;

/// What a preset may set.
pub(crate) const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "group_size",
        ty: ParamType::Int,
        default: "128",
        doc: "weights per (scale, min) pair along a row; >= 8; >= the row length means one group per row",
    },
    ParamSpec {
        name: "percdamp",
        ty: ParamType::Float,
        default: "0.01",
        doc: "dampening: add percdamp * mean(diag H) to H's diagonal; in (0, 1]; raised x10 (up to 4 times) if H is still not positive definite",
    },
    ParamSpec {
        name: "block_size",
        ty: ParamType::Int,
        default: "128",
        doc: "columns per lazy batch of the error update (speed only; 1..=4096)",
    },
    REFINE_SPEC,
    ITERATIONS_SPEC,
    ParamSpec {
        name: "groups",
        ty: ParamType::Str,
        default: "\"best\"",
        doc: "group headers: dynamic (fitted on the error-updated weights when reached) | static (fitted on the original weights first) | best (both sweeps, per row the lower output error)",
    },
    ParamSpec {
        name: "rtn_fallback",
        ty: ParamType::Bool,
        default: "true",
        doc: "per row, store the same range fit without compensation where its output error on the calibration Gram matrix is lower",
    },
];

/// Written by the encoder beside the settings, so the manifest shows them; accepted (and
/// ignored) when the recorded parameters are read back, refused in a preset.
pub(crate) const RECORDED: &[ParamSpec] = &[
    ParamSpec {
        name: "output_error",
        ty: ParamType::Float,
        default: "recorded",
        doc: "recorded: tr(E G Eᵀ) / tr(W G Wᵀ) of the stored tensor on the calibration Gram matrix G",
    },
    ParamSpec {
        name: "rtn_output_error",
        ty: ParamType::Float,
        default: "recorded",
        doc: "recorded: the same for the same group fit without error compensation (int4_residual's stage 1)",
    },
    ParamSpec {
        name: "static_rows",
        ty: ParamType::Int,
        default: "recorded",
        doc: "recorded: rows stored from the static-groups sweep",
    },
    ParamSpec {
        name: "rtn_rows",
        ty: ParamType::Int,
        default: "recorded",
        doc: "recorded: rows stored with the uncompensated fit by rtn_fallback",
    },
    ParamSpec {
        name: "percdamp_applied",
        ty: ParamType::Float,
        default: "recorded",
        doc: "recorded: the dampening the factorization succeeded with (percdamp unless raised)",
    },
];

/// Parameters after defaults and checks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Settings {
    /// Group size.
    pub group_size: usize,
    /// Relative dampening of the Hessian diagonal.
    pub percdamp: f64,
    /// Columns per lazy batch.
    pub block_size: usize,
    /// Range-fit method, one of [`REFINE_METHODS`].
    pub refine: &'static str,
    /// Rounds (see the `iterations` parameter).
    pub iterations: usize,
    /// Which sweeps run, one of [`GROUPS`].
    pub groups: &'static str,
    /// Per row, keep the uncompensated fit where it has the lower output error.
    pub rtn_fallback: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            group_size: DEFAULT_GROUP_SIZE,
            percdamp: DEFAULT_PERCDAMP,
            block_size: DEFAULT_BLOCK_SIZE,
            refine: range_fit::DEFAULT_REFINE,
            iterations: DEFAULT_ITERATIONS,
            groups: "best",
            rtn_fallback: true,
        }
    }
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
    /// recorded.
    pub fn from_recorded(params: &Params) -> Result<Self> {
        validate_recorded(ID, PARAMS, RECORDED, params)?;
        Self::read(params)
    }

    fn read(params: &Params) -> Result<Self> {
        let group_size = params.usize_or("group_size", DEFAULT_GROUP_SIZE)?;
        if group_size < MIN_GROUP_SIZE {
            return Err(Error::invalid_param(format!(
                "{ID}: parameter `group_size` must be at least {MIN_GROUP_SIZE}, got {group_size}"
            )));
        }
        let percdamp = params.float_or("percdamp", DEFAULT_PERCDAMP)?;
        if !(percdamp > 0.0 && percdamp <= 1.0) {
            return Err(Error::invalid_param(format!(
                "{ID}: parameter `percdamp` must be in (0, 1], got {percdamp}"
            )));
        }
        let block_size = params.usize_or("block_size", DEFAULT_BLOCK_SIZE)?;
        in_range("block_size", block_size, 1, MAX_BLOCK_SIZE)?;
        let refine = range_fit::refine_method(ID, params)?;
        let groups = one_of("groups", params.str_or("groups", "best")?, GROUPS)?;
        let iterations = params.usize_or("iterations", DEFAULT_ITERATIONS)?;
        in_range("iterations", iterations, 0, MAX_ITERATIONS)?;
        let rtn_fallback = params.bool_or("rtn_fallback", true)?;
        Ok(Self {
            group_size,
            percdamp,
            block_size,
            refine,
            iterations,
            groups,
            rtn_fallback,
        })
    }

    /// Every setting (defaults included), as recorded with each encoded tensor.
    pub fn to_params(&self) -> Params {
        Params::new()
            .with("group_size", self.group_size)
            .with("percdamp", self.percdamp)
            .with("block_size", self.block_size)
            .with("refine", self.refine)
            .with("iterations", self.iterations)
            .with("groups", self.groups)
            .with("rtn_fallback", self.rtn_fallback)
    }

    /// The range fit these settings ask for (as `int4_residual`'s, with its default search
    /// steps).
    pub fn fit_options(&self) -> FitOptions {
        FitOptions {
            refine: range_fit::refine(self.refine, self.iterations, SEARCH_STEPS),
            allow_zero: false,
        }
    }
}
