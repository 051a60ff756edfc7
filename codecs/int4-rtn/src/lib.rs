//! TenPak codec `int4_rtn`: asymmetric INT4 round-to-nearest per group, the floor every other
//! codec is measured against.
//!
//! Each group of `group_size` weights along a row (the last one of a row may be shorter) gets
//! `min` = its smallest weight rounded down to f16 and `scale` = `(max − min) / 15` rounded up to
//! f16, so the grid `min + scale · q`, `q ∈ 0..=15`, covers the whole group; every weight is coded
//! to its nearest level. Nothing is tuned, nothing searched: that is the point of a floor. Every
//! weight then satisfies `|w − ŵ| ≤ scale / 2` (up to the f32 rounding of `scale · q + min`).
//!
//! Stored parts (see [`tenpak_quant::AsymFormat`]):
//!
//! | part | dtype | shape | content |
//! |---|---|---|---|
//! | `codes` | u8 | `[rows, ceil(cols/2)]` | two codes per byte, even column in the low nibble; each row starts on a byte |
//! | `scale_min` | f16 | `[rows, ceil(cols/group_size), 2]` | `(scale, min)` per group, row-major |
//!
//! Size: `rows · (8 · ceil(cols/2) + 32 · ceil(cols/group_size))` bits ([`stored_bits`]); for
//! an even `cols`, `4 + 32/group_size` bits per weight (4.25 at the default group size 128).
//!
//! Native form ([`Codec::native`]): GGUF's Q4_1 (`d·q + m`, the same grid) when rows are whole
//! blocks of 32 and groups a multiple of 32 or the whole row.
#![deny(missing_docs)]

use tenpak_api::{
    Codec, Encoded, Error, LayerStats, NativeForm, NativeTarget, ParamSpec, ParamType, Params,
    Result, WeightView, validate_params,
};
use tenpak_quant::{AsymFormat, AsymQuantized, FitOptions, GroupLayout, encoded, ggml};

/// The registry id.
pub const ID: &str = "int4_rtn";
/// Group size when the parameter is absent.
pub const DEFAULT_GROUP_SIZE: usize = 128;
/// Smallest accepted group size: below 8 weights the 32-bit header costs more than the codes.
pub const MIN_GROUP_SIZE: usize = 8;

const PARAMS: &[ParamSpec] = &[ParamSpec {
    name: "group_size",
    ty: ParamType::Int,
    default: "128",
    doc: "weights per (scale, min) pair along a row; >= 8; any value >= the row length means one group per row",
}];

/// Exact stored bits of an `int4_rtn` tensor:
/// `rows · (8 · ceil(cols/2) + 32 · ceil(cols/group_size))`.
pub fn stored_bits(rows: usize, cols: usize, group_size: usize) -> u64 {
    rows as u64 * (8 * cols.div_ceil(2) as u64 + 32 * cols.div_ceil(group_size) as u64)
}

/// The `int4_rtn` codec.
#[derive(Clone, Copy, Debug, Default)]
pub struct Int4Rtn;

fn check_group_size(group_size: usize) -> Result<()> {
    if group_size < MIN_GROUP_SIZE {
        return Err(Error::invalid_param(format!(
            "{ID}: group_size must be at least {MIN_GROUP_SIZE}, got {group_size}"
        )));
    }
    Ok(())
}

fn format(rows: usize, cols: usize, group_size: usize) -> Result<AsymFormat> {
    AsymFormat::new(GroupLayout::new(rows, cols, group_size)?, 4)
}

impl Codec for Int4Rtn {
    fn id(&self) -> &str {
        ID
    }

    fn description(&self) -> &str {
        "asymmetric INT4, min/max round-to-nearest per group (f16 scale and min); the floor"
    }

    fn params(&self) -> &[ParamSpec] {
        PARAMS
    }

    fn validate(&self, params: &Params) -> Result<()> {
        validate_params(ID, PARAMS, params)?;
        check_group_size(params.usize_or("group_size", DEFAULT_GROUP_SIZE)?)
    }

    fn encode(
        &self,
        weight: WeightView<'_>,
        _stats: &LayerStats,
        params: &Params,
    ) -> Result<Encoded> {
        self.validate(params)?;
        weight.check_finite()?;
        let group_size = params.usize_or("group_size", DEFAULT_GROUP_SIZE)?;
        let format = format(weight.rows(), weight.cols(), group_size)?;
        let quantized = AsymQuantized::quantize(weight.data(), format, &FitOptions::RTN)?;
        Ok(Encoded {
            codec: ID.to_owned(),
            params: Params::new().with("group_size", group_size),
            shape: [weight.rows(), weight.cols()],
            parts: quantized.to_parts("codes", "scale_min").into(),
        })
    }

    fn decode(&self, encoded: &Encoded) -> Result<Vec<f32>> {
        Ok(stored(encoded)?.dequantize())
    }

    fn native(&self, encoded: &Encoded, target: NativeTarget) -> Result<Option<NativeForm>> {
        Ok(match target {
            NativeTarget::Gguf => ggml::q4_1_form(&stored(encoded)?),
            _ => None,
        })
    }
}

/// What `encoded` stores, checked.
fn stored(encoded: &Encoded) -> Result<AsymQuantized> {
    encoded::expect_codec(encoded, ID)?;
    encoded::read_params(encoded, |p| Int4Rtn.validate(p))?;
    encoded::expect_parts(encoded, &["codes", "scale_min"])?;
    let group_size = encoded::param_usize(encoded, "group_size", DEFAULT_GROUP_SIZE)?;
    let [rows, cols] = encoded.shape;
    let format =
        format(rows, cols, group_size).map_err(|e| Error::corrupt(format!("{ID} tensor: {e}")))?;
    AsymQuantized::from_parts(format, encoded.part("codes")?, encoded.part("scale_min")?)
}

tenpak_api::register_codec!("int4_rtn", Int4Rtn);
