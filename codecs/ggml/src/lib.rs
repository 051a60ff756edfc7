//! TenPak codec `ggml`: llama.cpp's weight types, fitted with TenPak's calibrated machinery and
//! stored as the type's own blocks, so the GGUF export copies them byte for byte.
//!
//! `llama-quantize --imatrix` fits each block on its own, weighting each weight's error by the
//! importance matrix (the diagonal of the layer's Hessian). This codec writes the same types,
//! and chooses their contents better:
//!
//! - **Importance-weighted headers** ([`fit`]): each block's scales (and mins) minimize the
//!   `E[x_j²]`-weighted error with every weight at its nearest level, judged on the values the
//!   file decodes to; the k-quants' integer sub-block scales and mins also try their neighbours.
//! - **GPTQ error feedback** ([`sweep`]): the codes are chosen column by column, each column's
//!   error spread over the columns not yet coded through the inverse of the full Gram matrix
//!   `XᵀX / n`, so correlated inputs cancel each other's error in the layer's output. Headers
//!   are fitted either when the sweep reaches the block, on the error-updated weights
//!   (`dynamic`), or beforehand on the original ones (`static`). By default (`headers = "best"`)
//!   both sweeps run, and each row keeps whichever of them (or the plain round-to-nearest fit)
//!   has the least output error `δ G δᵀ` on the calibration statistics; rows are independent in
//!   every type, so this is free to choose.
//!
//! The stored part `blocks` (u8 `[rows, row_bytes]`) holds each row's blocks exactly as
//! `ggml-common.h` lays them out; decoding is llama.cpp's reference dequantization
//! ([`types::GgmlType::dequantize`]), and [`Codec::native`] hands the bytes to the GGUF exporter
//! as they are.
//!
//! Types (`type`): `q4_0`, `q4_1`, `q5_0`, `q5_1`, `q8_0`, `iq4_nl` (blocks of 32) and `q2_k`,
//! `q3_k`, `q4_k`, `q5_k`, `q6_k`, `iq4_xs` (super-blocks of 256). IQ4_NL and IQ4_XS code on
//! llama.cpp's non-uniform 16-level table (`kvalues_iq4nl`); their scales are fitted on that
//! table at both of its ends. A row that is not a whole number of blocks takes llama.cpp's
//! fallback type (`tensor_type_fallback`: Q2_K/Q3_K → Q4_0, Q4_K → Q5_0, Q5_K → Q5_1, Q6_K →
//! Q8_0, IQ4_XS → IQ4_NL) when `fallback = true` (the default), and the stored `type` is the one
//! used; a row that fits no type is an error naming both.
//!
//! Parameters: `type` (`q4_k`), `error_feedback` (true; needs the calibration Gram matrix),
//! `headers` (`best` | `dynamic` | `static`), `percdamp` (0.01), `block_size` (128; speed only),
//! `fallback` (true). Recorded besides: `output_error` and `rtn_output_error` (relative to
//! `tr(W G Wᵀ)`), `static_rows`, `rtn_rows`. Without error feedback the headers are fitted with
//! the Hessian diagonal as importance when the calibration provides it (`hessian_diag`, or the
//! Gram matrix's diagonal), with equal weights otherwise.
//!
//! **`ggml_plain`** is the same codec for tensors that have no calibration statistics (the token
//! embedding, which is no linear's input): parameters `type` and `fallback` only, headers fitted
//! with equal weights, no error feedback; same stored form, decode and native form.
//!
//! Measured (BENCHMARKS.md, "llama.cpp's file types written by TenPak"): on the grid-free variant
//! of SmolLM2-135M the presets built on this codec cost a quarter to a third of
//! `llama-quantize --imatrix`'s perplexity increase and mean KL divergence at the same file size,
//! scored by llama.cpp. On the grid-aligned checkpoint itself, error feedback hurts Q4_0 (the
//! layer output error it lowers does not track the loss there); `error_feedback = false` is the
//! better setting for that source.
//!
//! Not written yet: the IQ2/IQ3 types (lattice codebooks). TenPak's GGUF reader (candle) cannot
//! load IQ4 files back; llama.cpp runs them, and the exporter checks their blocks with
//! `tenpak_quant::ggml::types`.
#![deny(missing_docs)]
// The block layouts index several arrays by the same position, as ggml-quants.c does.
#![allow(clippy::needless_range_loop)]

pub mod fit;
pub mod sweep;
pub use tenpak_quant::ggml::types;

use tenpak_api::{
    Codec, Encoded, Error, ErrorKind, LayerStats, NativeForm, NativeTarget, ParamSpec, ParamType,
    Params, Part, Result, StatsNeeds, WeightView, param_in_range, param_one_of, validate_params,
};
use tenpak_quant::encoded;
use tenpak_quant::gptq::hessian::{Hessian, from_damped_rows};
use tenpak_quant::gptq::sweep::InverseFactor;
use tenpak_quant::quadratic::{difference, quadratic_form_rows};

use crate::sweep::{Coded, Headers};
pub use crate::types::GgmlType;

/// The registry id.
pub const ID: &str = "ggml";
/// The registry id of the calibration-free variant.
pub const PLAIN_ID: &str = "ggml_plain";
/// `type` when the parameter is absent.
pub const DEFAULT_TYPE: &str = "q4_k";
/// GPTQ's dampening, as a fraction of the Hessian's mean diagonal.
pub const DEFAULT_PERCDAMP: f64 = 0.01;
/// Columns per lazy batch of the sweep.
pub const DEFAULT_BLOCK_SIZE: usize = 128;
/// Accepted `headers` values.
pub const HEADERS: &[&str] = &["best", "dynamic", "static"];

const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "type",
        ty: ParamType::Str,
        default: DEFAULT_TYPE,
        doc: "llama.cpp weight type: q4_0, q4_1, q5_0, q5_1, q8_0, q2_k, q3_k, q4_k, q5_k, q6_k",
    },
    ParamSpec {
        name: "error_feedback",
        ty: ParamType::Bool,
        default: "true",
        doc: "GPTQ error feedback through the calibration Gram matrix",
    },
    ParamSpec {
        name: "headers",
        ty: ParamType::Str,
        default: "best",
        doc: "block headers fitted during the sweep (dynamic), before it (static), or the better per row (best)",
    },
    ParamSpec {
        name: "percdamp",
        ty: ParamType::Float,
        default: "0.01",
        doc: "dampening of the Hessian's diagonal, a fraction of its mean, in (0, 1]",
    },
    ParamSpec {
        name: "block_size",
        ty: ParamType::Int,
        default: "128",
        doc: "columns per lazy batch of the sweep (speed only), 1..=4096",
    },
    ParamSpec {
        name: "fallback",
        ty: ParamType::Bool,
        default: "true",
        doc: "rows that are not whole blocks of the type take llama.cpp's fallback type",
    },
];

/// `ggml_plain`'s parameters: the type and its fallback.
const PLAIN_PARAMS: &[ParamSpec] = &[PARAMS[0], PARAMS[5]];

/// What the encoder records besides the parameters.
const RECORDED: &[ParamSpec] = &[
    ParamSpec {
        name: "output_error",
        ty: ParamType::Float,
        default: "",
        doc: "tr(E G Eᵀ) / tr(W G Wᵀ) of the stored tensor",
    },
    ParamSpec {
        name: "rtn_output_error",
        ty: ParamType::Float,
        default: "",
        doc: "the same for the weighted fit without error feedback",
    },
    ParamSpec {
        name: "static_rows",
        ty: ParamType::Int,
        default: "",
        doc: "rows stored from the static-headers sweep",
    },
    ParamSpec {
        name: "rtn_rows",
        ty: ParamType::Int,
        default: "",
        doc: "rows stored without error feedback",
    },
];

/// Checked settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Settings {
    /// The requested type.
    pub ty: GgmlType,
    /// GPTQ error feedback.
    pub error_feedback: bool,
    /// `best`, `dynamic` or `static`.
    pub headers: &'static str,
    /// Hessian dampening.
    pub percdamp: f64,
    /// Sweep batch width.
    pub block_size: usize,
    /// Use llama.cpp's fallback type for rows that are not whole blocks.
    pub fallback: bool,
}

impl Settings {
    /// The settings of `params`, checked.
    pub fn from_params(params: &Params) -> Result<Self> {
        validate_params(ID, PARAMS, params)?;
        Self::read(params)
    }

    /// `ggml_plain`'s settings of `params`, checked (no error feedback).
    pub fn from_plain_params(params: &Params) -> Result<Self> {
        validate_params(PLAIN_ID, PLAIN_PARAMS, params)?;
        Ok(Self {
            error_feedback: false,
            ..Self::read(params)?
        })
    }

    fn read(params: &Params) -> Result<Self> {
        let name = params.str_or("type", DEFAULT_TYPE)?;
        let ty = GgmlType::from_name(name).ok_or_else(|| {
            Error::invalid_param(format!(
                "{ID}: unknown type `{name}` (known: {})",
                types::ALL.map(GgmlType::name).join(", ")
            ))
        })?;
        let headers = param_one_of(ID, "headers", params.str_or("headers", "best")?, HEADERS)?;
        let percdamp = params.float_or("percdamp", DEFAULT_PERCDAMP)?;
        if !(percdamp > 0.0 && percdamp <= 1.0) {
            return Err(Error::invalid_param(format!(
                "{ID}: percdamp must be in (0, 1], got {percdamp}"
            )));
        }
        let block_size = params.usize_or("block_size", DEFAULT_BLOCK_SIZE)?;
        param_in_range(ID, "block_size", block_size, 1, 4096)?;
        Ok(Self {
            ty,
            error_feedback: params.bool_or("error_feedback", true)?,
            headers,
            percdamp,
            block_size,
            fallback: params.bool_or("fallback", true)?,
        })
    }

    /// The type a `cols`-wide row is stored in: the requested one, or llama.cpp's fallback.
    pub fn type_for(&self, cols: usize) -> Result<GgmlType> {
        let mut ty = self.ty;
        if self.fallback && !cols.is_multiple_of(ty.block_weights()) {
            ty = ty.fallback().unwrap_or(ty);
        }
        ty.row_bytes(cols).map_err(|e| {
            Error::new(
                e.kind(),
                if ty == self.ty {
                    e.message().to_owned()
                } else {
                    format!("{} (the fallback of {})", e.message(), self.ty.name())
                },
            )
        })?;
        Ok(ty)
    }
}

/// What one encoding produced, for tests and measurements.
#[derive(Clone, Debug)]
pub struct Report {
    /// The encoded tensor.
    pub encoded: Encoded,
    /// The type it is stored in.
    pub ty: GgmlType,
    /// `δ G δᵀ` summed over rows (0 without a Gram matrix).
    pub output_error: f64,
    /// The same for the weighted round-to-nearest fit.
    pub rtn_output_error: f64,
}

/// The `ggml` codec.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ggml;

impl Ggml {
    /// Encode, and also return the output errors (see [`Report`]).
    pub fn encode_report(
        &self,
        weight: WeightView<'_>,
        stats: &LayerStats,
        params: &Params,
    ) -> Result<Report> {
        encode_with(ID, Settings::from_params(params)?, weight, stats)
    }
}

/// Encode under `settings` as codec `id` (`ggml` or `ggml_plain`).
fn encode_with(
    id: &str,
    settings: Settings,
    weight: WeightView<'_>,
    stats: &LayerStats,
) -> Result<Report> {
    weight.check_finite().map_err(|e| e.context(id))?;
    let (rows, cols) = (weight.rows(), weight.cols());
    let ty = settings.type_for(cols)?;
    let mut record = Params::new()
        .with("type", ty.name())
        .with("fallback", settings.fallback);
    if id == ID {
        record.set("error_feedback", settings.error_feedback);
        record.set("headers", settings.headers);
        record.set("percdamp", settings.percdamp);
        record.set("block_size", settings.block_size as i64);
    }
    let data = weight.data();
    let (coded, output_error, rtn_output_error) = if settings.error_feedback {
        let hessian = Hessian::from_stats(stats, cols).map_err(|e| e.context(ID))?;
        let gram = &stats
            .gram
            .as_ref()
            .expect("checked by Hessian::from_stats")
            .data;
        let importance: Vec<f32> = (0..cols).map(|j| gram[j * cols + j].max(0.0)).collect();
        let factor = InverseFactor::new(&hessian, settings.percdamp).map_err(|e| e.context(ID))?;
        let mut rtn = sweep::round_to_nearest(ty, data, cols, &importance);
        rtn.row_errors = row_errors_of(ty, &rtn, data, gram, rows, cols);
        let undamped = |mut c: Coded| {
            let decoded = decode_coded(ty, &c, cols);
            c.row_errors = from_damped_rows(
                &c.row_errors,
                data,
                &decoded,
                &hessian,
                factor.percdamp_applied(),
            );
            c
        };
        // The sweeps `headers` asks for, dynamic before static (the order ties resolve in).
        let mut candidates = Vec::new();
        let mut is_static = Vec::new();
        for (stat, headers) in [
            (false, Headers::Dynamic),
            (true, Headers::Static(&rtn.headers)),
        ] {
            if settings.headers == "best" || (settings.headers == "static") == stat {
                let c = sweep::sweep(
                    ty,
                    data,
                    cols,
                    &importance,
                    &factor,
                    headers,
                    settings.block_size,
                );
                candidates.push(undamped(c));
                is_static.push(stat);
            }
        }
        let rtn_index = candidates.len();
        candidates.push(rtn);
        let mut chosen = candidates[0].clone();
        let mut from = vec![0usize; rows];
        for r in 0..rows {
            for (k, c) in candidates.iter().enumerate().skip(1) {
                if c.row_errors[r] < chosen.row_errors[r] {
                    chosen.take_row(c, r, cols, ty);
                    from[r] = k;
                }
            }
        }
        record.set(
            "static_rows",
            from.iter()
                .filter(|&&k| is_static.get(k) == Some(&true))
                .count() as i64,
        );
        record.set(
            "rtn_rows",
            from.iter().filter(|&&k| k == rtn_index).count() as i64,
        );
        let total: f64 = chosen.row_errors.iter().sum();
        let rtn_total: f64 = candidates[rtn_index].row_errors.iter().sum();
        let energy: f64 = quadratic_form_rows(data, gram, rows, cols).iter().sum();
        if energy > 0.0 {
            record.set("output_error", total / energy);
            record.set("rtn_output_error", rtn_total / energy);
        }
        (chosen, total, rtn_total)
    } else {
        let importance = if id == ID {
            importance_without_gram(stats, cols)?
        } else {
            vec![1.0; cols]
        };
        (
            sweep::round_to_nearest(ty, data, cols, &importance),
            0.0,
            0.0,
        )
    };
    let bytes = coded.to_bytes(ty);
    let row_bytes = ty.row_bytes(cols)?;
    let encoded = Encoded {
        codec: id.to_owned(),
        params: record,
        shape: [rows, cols],
        parts: vec![Part::new(
            "blocks",
            tenpak_api::DType::U8,
            vec![rows, row_bytes],
            bytes,
        )?],
    };
    Ok(Report {
        encoded,
        ty,
        output_error,
        rtn_output_error,
    })
}

/// The Hessian diagonal (`hessian_diag`, else the Gram matrix's diagonal), or ones.
fn importance_without_gram(stats: &LayerStats, cols: usize) -> Result<Vec<f32>> {
    let diag = match (&stats.hessian_diag, &stats.gram) {
        (Some(d), _) => Some(d.clone()),
        (None, Some(g)) if g.dim == cols => Some((0..cols).map(|j| g.data[j * cols + j]).collect()),
        _ => None,
    };
    match diag {
        Some(d) if d.len() == cols => {
            if let Some(j) = d.iter().position(|v| !v.is_finite() || *v < 0.0) {
                return Err(Error::invalid_input(format!(
                    "{ID}: statistic `hessian_diag` has {} at column {j}",
                    d[j]
                )));
            }
            Ok(d)
        }
        Some(d) => Err(Error::invalid_input(format!(
            "{ID}: statistic `hessian_diag` has {} values for a layer with {cols} input columns",
            d.len()
        ))),
        None => Ok(vec![1.0; cols]),
    }
}

/// `δ G δᵀ` per row for a coded matrix.
fn row_errors_of(
    ty: GgmlType,
    c: &Coded,
    data: &[f32],
    gram: &[f32],
    rows: usize,
    cols: usize,
) -> Vec<f64> {
    let decoded = decode_coded(ty, c, cols);
    quadratic_form_rows(&difference(data, &decoded), gram, rows, cols)
}

/// The values a coded matrix decodes to.
fn decode_coded(ty: GgmlType, c: &Coded, cols: usize) -> Vec<f32> {
    decode_bytes(ty, &c.to_bytes(ty), c.codes.len() / cols.max(1), cols)
}

/// Rows of blocks back to f32 by the type's reference dequantization.
fn decode_bytes(ty: GgmlType, bytes: &[u8], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; rows * cols];
    for (block, y) in bytes
        .chunks_exact(ty.block_bytes())
        .zip(out.chunks_exact_mut(ty.block_weights()))
    {
        ty.dequantize(block, y);
    }
    out
}

impl Codec for Ggml {
    fn id(&self) -> &str {
        ID
    }

    fn description(&self) -> &str {
        "llama.cpp's weight types (Q4_0 … Q8_0, Q2_K … Q6_K, IQ4_NL, IQ4_XS) with importance-weighted headers and GPTQ error feedback, stored as the type's blocks"
    }

    fn params(&self) -> &[ParamSpec] {
        PARAMS
    }

    fn needs(&self) -> StatsNeeds {
        StatsNeeds {
            gram: true,
            ..StatsNeeds::NONE
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
        self.encode_report(weight, stats, params).map(|r| r.encoded)
    }

    fn decode(&self, encoded: &Encoded) -> Result<Vec<f32>> {
        decode(ID, encoded)
    }

    fn native(&self, encoded: &Encoded, target: NativeTarget) -> Result<Option<NativeForm>> {
        native(ID, encoded, target)
    }
}

/// The `ggml_plain` codec: `ggml` without calibration (see the crate docs).
#[derive(Clone, Copy, Debug, Default)]
pub struct GgmlPlain;

impl Codec for GgmlPlain {
    fn id(&self) -> &str {
        PLAIN_ID
    }

    fn description(&self) -> &str {
        "llama.cpp's weight types fitted without calibration (for the token embedding), stored as the type's blocks"
    }

    fn params(&self) -> &[ParamSpec] {
        PLAIN_PARAMS
    }

    fn validate(&self, params: &Params) -> Result<()> {
        Settings::from_plain_params(params).map(|_| ())
    }

    fn encode(
        &self,
        weight: WeightView<'_>,
        stats: &LayerStats,
        params: &Params,
    ) -> Result<Encoded> {
        encode_with(
            PLAIN_ID,
            Settings::from_plain_params(params)?,
            weight,
            stats,
        )
        .map(|r| r.encoded)
    }

    fn decode(&self, encoded: &Encoded) -> Result<Vec<f32>> {
        decode(PLAIN_ID, encoded)
    }

    fn native(&self, encoded: &Encoded, target: NativeTarget) -> Result<Option<NativeForm>> {
        native(PLAIN_ID, encoded, target)
    }
}

fn decode(id: &str, encoded: &Encoded) -> Result<Vec<f32>> {
    let (ty, bytes) = stored(id, encoded)?;
    let [rows, cols] = encoded.shape;
    Ok(decode_bytes(ty, bytes, rows, cols))
}

fn native(id: &str, encoded: &Encoded, target: NativeTarget) -> Result<Option<NativeForm>> {
    Ok(match target {
        NativeTarget::Gguf => {
            let (ty, bytes) = stored(id, encoded)?;
            Some(NativeForm::Ggml {
                ggml_type: ty.type_id(),
                data: bytes.to_vec(),
            })
        }
        _ => None,
    })
}

/// The type and blocks `encoded` stores, checked.
fn stored<'a>(id: &str, encoded: &'a Encoded) -> Result<(GgmlType, &'a [u8])> {
    encoded::expect_codec(encoded, id)?;
    encoded::expect_parts(encoded, &["blocks"])?;
    let settings = encoded::read_params(encoded, |p| {
        let specs = if id == ID { PARAMS } else { PLAIN_PARAMS };
        tenpak_api::validate_recorded(id, specs, RECORDED, p)?;
        Settings::read(p)
    })?;
    let [rows, cols] = encoded.shape;
    let ty = settings.ty;
    let row_bytes = ty
        .row_bytes(cols)
        .map_err(|e| Error::corrupt(format!("{ID} tensor {:?}: {}", encoded.shape, e.message())))?;
    let part = encoded.part("blocks")?;
    let bytes = part.as_u8()?;
    if Some(bytes.len()) != rows.checked_mul(row_bytes) {
        return Err(Error::new(
            ErrorKind::Corrupt,
            format!(
                "{ID} tensor {:?} of {}: part `blocks` has {} bytes, expected {rows} x {row_bytes}",
                encoded.shape,
                ty.name(),
                bytes.len()
            ),
        ));
    }
    Ok((ty, bytes))
}

tenpak_api::register_codec!("ggml", Ggml);
tenpak_api::register_codec!("ggml_plain", GgmlPlain);
