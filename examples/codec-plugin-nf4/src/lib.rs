//! Example third-party TenPak codec `nf4`: 4-bit NormalFloat with a per-group absmax scale.
//!
//! NF4 comes from QLoRA (Dettmers et al., 2023, §3 "4-bit NormalFloat Quantization"): the 16
//! levels are quantiles of a standard normal distribution, rescaled to [-1, 1], with an exact
//! zero. Weights of trained networks are roughly normal inside a group, so normal quantiles put
//! more levels where the weights are dense than a uniform INT4 grid does. Each group of
//! `group_size` consecutive weights in a row is divided by its absolute maximum (stored as f16)
//! and every weight is replaced by the index of the nearest level.
//!
//! This crate depends on `tenpak-api` (and `half` for f16) only, and is the worked example of
//! `docs/writing-a-codec.md`. One source, two ways in:
//! - statically: a host links the rlib and finds the codec through `inventory`
//!   ([`tenpak_api::register_codec!`] below; see `examples/custom-host`);
//! - dynamically: the cdylib exports the C entry point ([`tenpak_api::export_plugin!`] below,
//!   behind the default `plugin` feature) and `tenpak --plugin libtenpak_codec_nf4.so …` loads it.
//!
//! # Stored layout
//!
//! For a `rows × cols` matrix with `g = group_size` and `groups = ceil(cols / g)` per row (the
//! last group of a row is shorter when `g` does not divide `cols`):
//!
//! | part | dtype | shape | content |
//! |---|---|---|---|
//! | `codes` | u8 | `[ceil(rows·cols / 2)]` | level index of weight `i` (row-major) in byte `i / 2`: low nibble for even `i`, high nibble for odd `i`; a trailing unused nibble is 0 |
//! | `scales` | f16 | `[rows, groups]` | absmax of each group, rounded to nearest f16 |
//!
//! Size: `4·rows·cols + 16·rows·groups` bits (plus 4 when `rows·cols` is odd), 4.25 bits per
//! weight at `g = 64`. Decoding is `LEVELS[code] · scale`, in f32.

#![deny(missing_docs)]

use half::f16;
use tenpak_api::{
    Codec, DType, Encoded, Error, LayerStats, ParamSpec, ParamType, Params, Part, Result, WeightView, validate_params,
};

/// The 16 NF4 levels, as published with QLoRA (bitsandbytes `create_normal_map`), ascending.
// The digits are the published ones (f32 values printed as f64); they round to exactly the f32
// levels bitsandbytes uses, so keep them rather than shortening them.
#[allow(clippy::excessive_precision)]
pub const LEVELS: [f32; 16] = [
    -1.0,
    -0.696_192_800_998_687_7,
    -0.525_073_051_452_636_7,
    -0.394_917_488_098_144_53,
    -0.284_441_381_692_886_35,
    -0.184_773_430_228_233_34,
    -0.091_050_036_251_544_95,
    0.0,
    0.079_580_299_556_255_34,
    0.160_930_201_411_247_25,
    0.246_112_301_945_686_34,
    0.337_915_241_718_292_24,
    0.440_709_829_330_444_34,
    0.562_617_003_917_694_1,
    0.722_956_836_223_602_3,
    1.0,
];

/// Index of [`LEVELS`]' exact zero, the code of every weight of an all-zero group.
const ZERO_CODE: u8 = 7;

/// Default weights per group.
pub const DEFAULT_GROUP_SIZE: usize = 64;

/// The NF4 codec. Stateless; `Default` is what both registrations construct.
#[derive(Clone, Copy, Debug, Default)]
pub struct Nf4;

/// The codec id, in presets and manifests.
pub const ID: &str = "nf4";

const PARAMS: &[ParamSpec] = &[ParamSpec {
    name: "group_size",
    ty: ParamType::Int,
    default: "64",
    doc: "weights per absmax group (consecutive, within a row; any size ≥ 1)",
}];

tenpak_api::register_codec!("nf4", Nf4);

#[cfg(feature = "plugin")]
tenpak_api::export_plugin! {
    codec("nf4", Nf4);
}

/// Nearest level to `x` by plain search: the reference. Ties go to the lower level.
///
/// `x` is clamped to [-1, 1] first: beyond the end levels the answer is the end level, and for a
/// huge `x` every distance `|x - level|` would round to the same float and tie.
pub fn nearest_level_reference(x: f32) -> u8 {
    let x = x.clamp(-1.0, 1.0);
    let mut best = 0;
    let mut best_distance = f32::INFINITY;
    for (i, &level) in LEVELS.iter().enumerate() {
        let distance = (x - level).abs();
        if distance < best_distance {
            best = i;
            best_distance = distance;
        }
    }
    best as u8
}

/// Nearest level to `x` by binary search: the fast path. Same answer as
/// [`nearest_level_reference`] for every finite `x` (tested), ties to the lower level included:
/// the two neighbours of the insertion point are compared with the same distance.
pub fn nearest_level(x: f32) -> u8 {
    let above = LEVELS.partition_point(|&level| level < x);
    if above == 0 {
        return 0;
    }
    if above == LEVELS.len() {
        return (LEVELS.len() - 1) as u8;
    }
    let below = above - 1;
    if (x - LEVELS[below]).abs() <= (x - LEVELS[above]).abs() { below as u8 } else { above as u8 }
}

fn group_size(params: &Params) -> Result<usize> {
    let group_size = params.usize_or("group_size", DEFAULT_GROUP_SIZE)?;
    if group_size == 0 {
        return Err(Error::invalid_param("nf4: parameter `group_size` must be at least 1, got 0"));
    }
    Ok(group_size)
}

impl Codec for Nf4 {
    fn id(&self) -> &str {
        ID
    }

    fn description(&self) -> &str {
        "NF4 (QLoRA normal-quantile 4-bit levels), per-group absmax f16 scale; example plugin"
    }

    fn params(&self) -> &[ParamSpec] {
        PARAMS
    }

    fn validate(&self, params: &Params) -> Result<()> {
        validate_params(ID, PARAMS, params)?;
        group_size(params).map(|_| ())
    }

    fn encode(&self, weight: WeightView<'_>, _stats: &LayerStats, params: &Params) -> Result<Encoded> {
        weight.check_finite()?;
        let group_size = group_size(params)?;
        let (rows, cols) = (weight.rows(), weight.cols());
        let groups = cols.div_ceil(group_size);
        let mut scales = Vec::with_capacity(rows * groups);
        let mut codes = vec![0u8; (rows * cols).div_ceil(2)];
        for r in 0..rows {
            let row = weight.row(r);
            for (g, group) in row.chunks(group_size).enumerate() {
                let absmax = group.iter().fold(0f32, |m, v| m.max(v.abs()));
                let scale = f16::from_f32(absmax);
                if scale.is_infinite() {
                    return Err(Error::invalid_input(format!(
                        "nf4: row {r}, group {g}: absmax {absmax} does not fit an f16 scale (max 65504)"
                    )));
                }
                scales.push(scale);
                let scale = scale.to_f32();
                for (j, &x) in group.iter().enumerate() {
                    let code = if scale == 0.0 { ZERO_CODE } else { nearest_level(x / scale) };
                    let i = r * cols + g * group_size + j;
                    codes[i / 2] |= code << (4 * (i % 2));
                }
            }
        }
        Ok(Encoded {
            codec: ID.to_owned(),
            params: Params::new().with("group_size", group_size),
            shape: [rows, cols],
            parts: vec![Part::from_u8("codes", codes), Part::from_f16("scales", vec![rows, groups], &scales)],
        })
    }

    fn decode(&self, encoded: &Encoded) -> Result<Vec<f32>> {
        let group_size = group_size(&encoded.params)?;
        let [rows, cols] = encoded.shape;
        let groups = cols.div_ceil(group_size);
        let codes = encoded.part("codes")?;
        let scales = encoded.part("scales")?;
        if codes.dtype != DType::U8 || codes.data.len() != (rows * cols).div_ceil(2) {
            return Err(Error::corrupt(format!(
                "nf4: part `codes` must be {} u8 bytes for shape [{rows}, {cols}], got {} {}",
                (rows * cols).div_ceil(2),
                codes.len(),
                codes.dtype.name()
            )));
        }
        if scales.shape != [rows, groups] {
            return Err(Error::corrupt(format!(
                "nf4: part `scales` must have shape [{rows}, {groups}] (group_size {group_size}), got {:?}",
                scales.shape
            )));
        }
        let scales = scales.to_f16()?;
        let codes = codes.as_u8()?;
        let mut out = Vec::with_capacity(rows * cols);
        for r in 0..rows {
            for c in 0..cols {
                let i = r * cols + c;
                let code = (codes[i / 2] >> (4 * (i % 2))) & 0x0f;
                out.push(LEVELS[code as usize] * scales[r * groups + c / group_size].to_f32());
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed | 1;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                // Sum of uniforms: roughly normal, σ ≈ 0.02 like real weights.
                let u = (0..4).map(|k| ((state >> (16 * k)) & 0xffff) as f32 / 65535.0 - 0.5).sum::<f32>();
                u * 0.035
            })
            .collect()
    }

    #[test]
    fn levels_are_ascending_symmetric_in_range_with_an_exact_zero() {
        assert!(LEVELS.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(LEVELS[0], -1.0);
        assert_eq!(LEVELS[15], 1.0);
        assert_eq!(LEVELS[ZERO_CODE as usize], 0.0);
    }

    #[test]
    fn fast_nearest_level_equals_the_reference() {
        let mut inputs: Vec<f32> = random(100_000, 3).iter().map(|v| v * 40.0).collect();
        for w in LEVELS.windows(2) {
            let mid = (w[0] + w[1]) / 2.0;
            inputs.extend([mid, f32::from_bits(mid.to_bits() + 1), f32::from_bits(mid.to_bits() - 1)]);
        }
        inputs.extend(LEVELS);
        inputs.extend([0.0, -0.0, 1e-45, -1e-45, 1.0001, -1.0001, 1e30, -1e30, f32::MAX, f32::MIN]);
        for x in inputs {
            assert_eq!(nearest_level(x), nearest_level_reference(x), "x = {x:e}");
        }
    }

    #[test]
    fn round_trip_error_is_small_and_levels_are_exact() {
        let (rows, cols) = (7, 200); // 200 is not a multiple of 64: short last groups
        let weight = random(rows * cols, 11);
        let view = WeightView::new(&weight, rows, cols).unwrap();
        let encoded = Nf4.encode(view, &LayerStats::none(), &Params::new()).unwrap();
        assert_eq!(encoded.part("scales").unwrap().shape, vec![rows, 4]);
        assert_eq!(encoded.stored_bits(), 4 * 1400 + 16 * 28);
        let decoded = Nf4.decode(&encoded).unwrap();
        let (mut signal, mut noise) = (0f64, 0f64);
        for (w, d) in weight.iter().zip(&decoded) {
            signal += (*w as f64).powi(2);
            noise += ((w - d) as f64).powi(2);
        }
        // NF4 on roughly normal data: relative MSE around 1%.
        assert!(noise / signal < 0.02, "relative MSE {}", noise / signal);
        // Decoding an encoding of decoded values changes nothing: every value is on the grid.
        let again = Nf4
            .encode(WeightView::new(&decoded, rows, cols).unwrap(), &LayerStats::none(), &Params::new())
            .unwrap();
        assert_eq!(Nf4.decode(&again).unwrap(), decoded);
    }

    #[test]
    fn adversarial_inputs() {
        let none = LayerStats::none();
        let p = Params::new().with("group_size", 3usize);
        // Constant rows, an all-zero row, one huge outlier, tiny values, odd element count.
        let weight = [0.5, 0.5, 0.5, 0.0, 0.0, 0.0, 1000.0, 1e-3, -1e-3, 1e-30, -2e-30, 0.0, 7.0];
        let view = WeightView::new(&weight, 1, 13).unwrap();
        let decoded = Nf4.decode(&Nf4.encode(view, &none, &p).unwrap()).unwrap();
        assert_eq!(&decoded[..6], &[0.5, 0.5, 0.5, 0.0, 0.0, 0.0]);
        assert_eq!(decoded[6], 1000.0);
        assert_eq!(&decoded[9..12], &[0.0, 0.0, 0.0], "values below f16's range quantize to zero");
        assert_eq!(decoded[12], 7.0);
        // NaN and Inf are refused with their position.
        let err = Nf4.encode(WeightView::new(&[1.0, f32::NAN], 1, 2).unwrap(), &none, &p).unwrap_err();
        assert!(err.message().contains("column 1"), "{err}");
        assert!(Nf4.encode(WeightView::new(&[f32::INFINITY], 1, 1).unwrap(), &none, &p).is_err());
        // A scale beyond f16 is refused, naming the group.
        let err = Nf4.encode(WeightView::new(&[1e6], 1, 1).unwrap(), &none, &p).unwrap_err();
        assert!(err.message().contains("row 0, group 0"), "{err}");
        // Zero-size matrices round-trip.
        let e = Nf4.encode(WeightView::new(&[], 0, 5).unwrap(), &none, &p).unwrap();
        assert!(Nf4.decode(&e).unwrap().is_empty());
        // group_size 0 and wrong types are refused by validate and encode.
        assert!(Nf4.validate(&Params::new().with("group_size", 0usize)).is_err());
        assert!(Nf4.validate(&Params::new().with("group_size", "64")).is_err());
        assert!(Nf4.validate(&Params::new().with("grup_size", 64usize)).is_err());
        // Decoding checks part sizes.
        let mut e = Nf4.encode(WeightView::new(&weight, 1, 13).unwrap(), &none, &p).unwrap();
        e.params = Params::new().with("group_size", 4usize);
        assert!(Nf4.decode(&e).unwrap_err().message().contains("scales"));
    }
}
