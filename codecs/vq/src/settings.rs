//! The codec's parameters.

use tenpak_api::{Error, ParamSpec, ParamType, Params, Result, validate_params, validate_recorded};

use crate::ID;

/// Largest index width `bits · dim`: 4096 codewords (assignment costs one distance per codeword).
pub const MAX_INDEX_BITS: u32 = 12;

/// What a preset may set.
pub(crate) const PARAMS: &[ParamSpec] = &[
    ParamSpec { name: "dim", ty: ParamType::Int, default: "2", doc: "sub-vector length, 1..=8 (1: a learned non-uniform scalar grid of 2^bits levels per layer)" },
    ParamSpec {
        name: "bits",
        ty: ParamType::Float,
        default: "4",
        doc: "bits per weight of the indices: the codebook has 2^(bits*dim) entries; bits*dim must be an integer in 1..=12",
    },
    ParamSpec { name: "group_size", ty: ParamType::Int, default: "128", doc: "columns per f16 scale (the group's RMS); a multiple of dim" },
    ParamSpec { name: "iterations", ty: ParamType::Int, default: "15", doc: "k-means iterations (1..=200)" },
    ParamSpec { name: "seed", ty: ParamType::Int, default: "0", doc: "seed of the codebook's initialization and training sample" },
    ParamSpec { name: "error_feedback", ty: ParamType::Bool, default: "true", doc: "GPTQ-style error feedback across columns (per row the better of with and without)" },
    ParamSpec { name: "percdamp", ty: ParamType::Float, default: "0.01", doc: "error feedback: add percdamp * mean(diag G) to G's diagonal; in (0, 1]" },
    ParamSpec {
        name: "incoherence",
        ty: ParamType::Bool,
        default: "false",
        doc: "incoherence processing: quantize W·Tᵀ for int4_awq's seeded random orthogonal T on the input dimension (Gram matrix rotated with it; near-Gaussian weights, where a learned grid is close to Lloyd-Max's); decode multiplies by T",
    },
    ParamSpec { name: "rotation_seed", ty: ParamType::Int, default: "0", doc: "incoherence: the seed of T (recorded)" },
];

/// Written by the encoder beside the settings.
pub(crate) const RECORDED: &[ParamSpec] = &[
    ParamSpec { name: "output_error", ty: ParamType::Float, default: "recorded", doc: "recorded: tr(E G Eᵀ) / tr(W G Wᵀ)" },
    ParamSpec { name: "feedback_rows", ty: ParamType::Int, default: "recorded", doc: "recorded: rows stored from the error-feedback sweep" },
];

/// Parameters after defaults and checks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Settings {
    /// Sub-vector length.
    pub dim: usize,
    /// Bits per weight (`bits · dim` is an integer).
    pub bits: f64,
    /// Columns per scale.
    pub group_size: usize,
    /// k-means iterations.
    pub iterations: usize,
    /// Seed.
    pub seed: u64,
    /// Error feedback.
    pub error_feedback: bool,
    /// Dampening.
    pub percdamp: f64,
    /// Incoherence processing of the input dimension.
    pub incoherence: bool,
    /// Seed of the rotation.
    pub rotation_seed: u64,
}

impl Settings {
    /// Read and check a preset's parameters.
    pub fn from_params(params: &Params) -> Result<Self> {
        validate_params(ID, PARAMS, params)?;
        Self::read(params)
    }

    /// Read the parameters recorded with an encoded tensor.
    pub fn from_recorded(params: &Params) -> Result<Self> {
        validate_recorded(ID, PARAMS, RECORDED, params)?;
        Self::read(params)
    }

    fn read(params: &Params) -> Result<Self> {
        let dim = params.usize_or("dim", 2)?;
        tenpak_api::param_in_range(ID, "dim", dim, 1, 8)?;
        let bits = params.float_or("bits", 4.0)?;
        let index = bits * dim as f64;
        if !(index.fract() == 0.0 && (1.0..=f64::from(MAX_INDEX_BITS)).contains(&index)) {
            return Err(Error::invalid_param(format!(
                "{ID}: bits * dim must be an integer in 1..={MAX_INDEX_BITS} (the index width), got {bits} * {dim} = {index}"
            )));
        }
        let group_size = params.usize_or("group_size", 128)?;
        if group_size == 0 || group_size % dim != 0 {
            return Err(Error::invalid_param(format!(
                "{ID}: parameter `group_size` must be a positive multiple of dim = {dim}, got {group_size}"
            )));
        }
        let iterations = params.usize_or("iterations", 15)?;
        tenpak_api::param_in_range(ID, "iterations", iterations, 1, 200)?;
        let seed = params.usize_or("seed", 0)? as u64;
        let error_feedback = params.bool_or("error_feedback", true)?;
        let percdamp = params.float_or("percdamp", 0.01)?;
        if !(percdamp > 0.0 && percdamp <= 1.0) {
            return Err(Error::invalid_param(format!("{ID}: parameter `percdamp` must be in (0, 1], got {percdamp}")));
        }
        let incoherence = params.bool_or("incoherence", false)?;
        let rotation_seed = params.usize_or("rotation_seed", 0)? as u64;
        Ok(Self { dim, bits, group_size, iterations, seed, error_feedback, percdamp, incoherence, rotation_seed })
    }

    /// Bits per codeword index, `bits · dim`.
    pub fn index_bits(&self) -> u32 {
        (self.bits * self.dim as f64) as u32
    }

    /// Every setting, as recorded with each tensor.
    pub fn to_params(&self) -> Params {
        Params::new()
            .with("dim", self.dim)
            .with("bits", self.bits)
            .with("group_size", self.group_size)
            .with("iterations", self.iterations)
            .with("seed", self.seed as usize)
            .with("error_feedback", self.error_feedback)
            .with("percdamp", self.percdamp)
            .with("incoherence", self.incoherence)
            .with("rotation_seed", self.rotation_seed as usize)
    }
}
