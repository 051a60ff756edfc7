//! TenPak codecs `keep` (store as f32, or cast to f16/bf16) and `int8` (symmetric, per row or per
//! group), for the weights that should stay close to their source: embeddings and `lm_head`.
//!
//! **`keep`** (`dtype` = `"f32"` | `"f16"` | `"bf16"`, default `"f16"`): one part `weight` of
//! that dtype, shape `[rows, cols]`; `rows · cols · {32, 16, 16}` bits. f16 is the default because
//! it is what the source models (and fp16 size ratios) are measured against; a weight beyond
//! f16's range (|w| > 65504) is refused, naming its position, rather than stored as infinity.
//!
//! **`int8`** (`group_size` = 0 for one scale per row, the default, or ≥ 8): `ŵ = scale · q`,
//! `q ∈ [−127, 127]`, `scale = absmax / 127` rounded up to f16 (so nothing clips and
//! `|w − ŵ| ≤ scale / 2`). Parts `codes` (i8 `[rows, cols]`) and `scales`
//! (f16 `[rows, ceil(cols/group_size)]`); `8 · rows · cols + 16 · rows · ceil(cols/group_size)`
//! bits, i.e. 8 + 16/cols per weight per row.
//!
//! Native forms ([`Codec::native`]), for GGUF: `keep` as F32 / F16 / BF16 per its `dtype`;
//! `int8` as Q8_0 (`d·q`, the same scale in each block of 32) when rows are whole blocks and
//! groups a multiple of 32 or the whole row.
#![deny(missing_docs)]

use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
use half::{bf16, f16};
use rayon::prelude::*;
use tenpak_api::{
    Codec, DType, Encoded, Error, LayerStats, NativeForm, NativeTarget, ParamSpec, ParamType,
    Params, Part, Result, WeightView, validate_params,
};
use tenpak_quant::{GroupLayout, SymFormat, SymQuantized, encoded, ggml};

/// Id of the keep codec.
pub const KEEP_ID: &str = "keep";
/// Id of the int8 codec.
pub const INT8_ID: &str = "int8";
/// Smallest accepted int8 group size other than 0 (per row).
pub const MIN_GROUP_SIZE: usize = 8;

const KEEP_PARAMS: &[ParamSpec] = &[ParamSpec {
    name: "dtype",
    ty: ParamType::Str,
    default: "\"f16\"",
    doc: "stored element type: f32 | f16 | bf16",
}];

const INT8_PARAMS: &[ParamSpec] = &[ParamSpec {
    name: "group_size",
    ty: ParamType::Int,
    default: "0",
    doc: "weights per scale along a row; 0 = one scale per row; otherwise >= 8",
}];

/// Exact stored bits of a `keep` tensor.
pub fn keep_stored_bits(rows: usize, cols: usize, dtype: DType) -> u64 {
    (rows * cols * dtype.size()) as u64 * 8
}

/// Exact stored bits of an `int8` tensor (`group_size` 0 = per row).
pub fn int8_stored_bits(rows: usize, cols: usize, group_size: usize) -> u64 {
    let groups = if group_size == 0 {
        usize::from(cols > 0)
    } else {
        cols.div_ceil(group_size)
    };
    rows as u64 * (8 * cols as u64 + 16 * groups as u64)
}

/// The `keep` codec.
#[derive(Clone, Copy, Debug, Default)]
pub struct Keep;

fn keep_dtype(params: &Params) -> Result<DType> {
    validate_params(KEEP_ID, KEEP_PARAMS, params)?;
    match params.str_or("dtype", "f16")? {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        other => Err(Error::invalid_param(format!(
            "{KEEP_ID}: parameter `dtype` must be one of f32, f16, bf16, got {other:?}"
        ))),
    }
}

/// The error for a weight that became infinite when narrowed.
fn overflow(data: &[f32], cols: usize, index: usize, dtype: DType) -> Error {
    Error::invalid_input(format!(
        "weight {} at row {}, column {} does not fit {} (it would become infinite); use dtype \"f32\"",
        data[index],
        index / cols.max(1),
        index % cols.max(1),
        dtype.name()
    ))
}

impl Codec for Keep {
    fn id(&self) -> &str {
        KEEP_ID
    }

    fn description(&self) -> &str {
        "store the weight as f32, or cast to f16 / bf16"
    }

    fn params(&self) -> &[ParamSpec] {
        KEEP_PARAMS
    }

    fn validate(&self, params: &Params) -> Result<()> {
        keep_dtype(params).map(|_| ())
    }

    fn encode(
        &self,
        weight: WeightView<'_>,
        _stats: &LayerStats,
        params: &Params,
    ) -> Result<Encoded> {
        let dtype = keep_dtype(params)?;
        weight.check_finite()?;
        let data = weight.data();
        let bytes: Vec<u8> = match dtype {
            DType::F32 => data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            DType::F16 => narrow(
                data,
                |src, dst| {
                    dst.reinterpret_cast_mut::<f16>()
                        .convert_from_f32_slice(src)
                },
                f16::INFINITY.to_bits(),
            )
            .map_err(|i| overflow(data, weight.cols(), i, dtype))?,
            _ => narrow(
                data,
                |src, dst| {
                    dst.reinterpret_cast_mut::<bf16>()
                        .convert_from_f32_slice(src)
                },
                bf16::INFINITY.to_bits(),
            )
            .map_err(|i| overflow(data, weight.cols(), i, dtype))?,
        };
        let part = Part::new("weight", dtype, vec![weight.rows(), weight.cols()], bytes)?;
        Ok(Encoded {
            codec: KEEP_ID.to_owned(),
            params: Params::new().with("dtype", dtype.name()),
            shape: [weight.rows(), weight.cols()],
            parts: vec![part],
        })
    }

    fn decode(&self, encoded: &Encoded) -> Result<Vec<f32>> {
        encoded::expect_codec(encoded, KEEP_ID)?;
        let dtype = encoded::read_params(encoded, keep_dtype)?;
        encoded::expect_parts(encoded, &["weight"])?;
        let part = encoded.part("weight")?;
        let [rows, cols] = encoded.shape;
        let numel = rows
            .checked_mul(cols)
            .ok_or_else(|| Error::corrupt(format!("keep tensor: shape {:?}", encoded.shape)))?;
        if part.dtype != dtype
            || part.data.len() != numel * dtype.size()
            || part.len() != part.shape.iter().product::<usize>()
        {
            return Err(Error::corrupt(format!(
                "keep tensor [{rows}, {cols}] as {}: part `weight` is {} with {} bytes (shape {:?}), expected {} bytes",
                dtype.name(),
                part.dtype.name(),
                part.data.len(),
                part.shape,
                numel * dtype.size()
            )));
        }
        let mut out = vec![0f32; numel];
        let chunk_values = CHUNK;
        out.par_chunks_mut(chunk_values)
            .zip(part.data.par_chunks(chunk_values * dtype.size()))
            .for_each(|(out, bytes)| match dtype {
                DType::F32 => {
                    for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                        *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    }
                }
                _ => {
                    let mut bits: Vec<u16> = bytes
                        .chunks_exact(2)
                        .map(|b| u16::from_le_bytes([b[0], b[1]]))
                        .collect();
                    if dtype == DType::F16 {
                        bits.reinterpret_cast_mut::<f16>().convert_to_f32_slice(out);
                    } else {
                        bits.reinterpret_cast_mut::<bf16>()
                            .convert_to_f32_slice(out);
                    }
                }
            });
        Ok(out)
    }

    fn native(&self, encoded: &Encoded, target: NativeTarget) -> Result<Option<NativeForm>> {
        if target != NativeTarget::Gguf {
            return Ok(None);
        }
        let values = self.decode(encoded)?;
        let (ggml_type, data) = match encoded::read_params(encoded, keep_dtype)? {
            DType::F32 => (ggml::TYPE_F32, ggml::f32_data(&values)),
            DType::BF16 => (ggml::TYPE_BF16, ggml::bf16_data(&values)),
            _ => (ggml::TYPE_F16, ggml::f16_data(&values)),
        };
        Ok(Some(NativeForm::Ggml { ggml_type, data }))
    }
}

/// Values per parallel work item of `keep`'s conversions.
const CHUNK: usize = 1 << 15;

/// Narrow every value to 16-bit floats with `convert` (a slice conversion, which `half` runs on
/// F16C where the CPU has it), as little-endian bytes; `Err(index)` of the first value that
/// became infinite (bits `& 0x7fff == infinity`; the input is finite, so there is no NaN).
fn narrow(
    data: &[f32],
    convert: impl Fn(&[f32], &mut [u16]) + Sync,
    infinity: u16,
) -> Result<Vec<u8>, usize> {
    let mut bytes = vec![0u8; data.len() * 2];
    let first_bad = bytes
        .par_chunks_mut(2 * CHUNK)
        .zip(data.par_chunks(CHUNK))
        .enumerate()
        .map_init(
            || vec![0u16; CHUNK],
            |bits, (chunk, (out, src))| {
                let bits = &mut bits[..src.len()];
                convert(src, bits);
                for (o, b) in out.chunks_exact_mut(2).zip(bits.iter()) {
                    o.copy_from_slice(&b.to_le_bytes());
                }
                bits.iter()
                    .position(|b| b & 0x7fff == infinity)
                    .map(|j| chunk * CHUNK + j)
            },
        )
        .flatten()
        .min();
    match first_bad {
        Some(index) => Err(index),
        None => Ok(bytes),
    }
}

/// The `int8` codec.
#[derive(Clone, Copy, Debug, Default)]
pub struct Int8;

fn int8_group_size(params: &Params) -> Result<usize> {
    validate_params(INT8_ID, INT8_PARAMS, params)?;
    let group_size = params.usize_or("group_size", 0)?;
    if group_size != 0 && group_size < MIN_GROUP_SIZE {
        return Err(Error::invalid_param(format!(
            "{INT8_ID}: group_size must be 0 (per row) or at least {MIN_GROUP_SIZE}, got {group_size}"
        )));
    }
    Ok(group_size)
}

/// The layout for `group_size` (0 = one group per row).
fn int8_format(rows: usize, cols: usize, group_size: usize) -> Result<SymFormat> {
    let effective = if group_size == 0 {
        cols.max(1)
    } else {
        group_size
    };
    Ok(SymFormat::new(GroupLayout::new(rows, cols, effective)?))
}

impl Codec for Int8 {
    fn id(&self) -> &str {
        INT8_ID
    }

    fn description(&self) -> &str {
        "symmetric int8, f16 absmax scale per row (group_size 0) or per group"
    }

    fn params(&self) -> &[ParamSpec] {
        INT8_PARAMS
    }

    fn validate(&self, params: &Params) -> Result<()> {
        int8_group_size(params).map(|_| ())
    }

    fn encode(
        &self,
        weight: WeightView<'_>,
        _stats: &LayerStats,
        params: &Params,
    ) -> Result<Encoded> {
        let group_size = int8_group_size(params)?;
        weight.check_finite()?;
        let format = int8_format(weight.rows(), weight.cols(), group_size)?;
        let quantized = SymQuantized::quantize(weight.data(), format)?;
        Ok(Encoded {
            codec: INT8_ID.to_owned(),
            params: Params::new().with("group_size", group_size),
            shape: [weight.rows(), weight.cols()],
            parts: quantized.to_parts("codes", "scales").into(),
        })
    }

    fn decode(&self, encoded: &Encoded) -> Result<Vec<f32>> {
        Ok(int8_stored(encoded)?.dequantize())
    }

    fn native(&self, encoded: &Encoded, target: NativeTarget) -> Result<Option<NativeForm>> {
        Ok(match target {
            NativeTarget::Gguf => {
                ggml::q8_0_blocks(&int8_stored(encoded)?).map(|b| ggml::native_form(&b))
            }
            _ => None,
        })
    }
}

/// What an `int8` tensor stores, checked.
fn int8_stored(encoded: &Encoded) -> Result<SymQuantized> {
    encoded::expect_codec(encoded, INT8_ID)?;
    let group_size = encoded::read_params(encoded, int8_group_size)?;
    encoded::expect_parts(encoded, &["codes", "scales"])?;
    let [rows, cols] = encoded.shape;
    let format = int8_format(rows, cols, group_size)
        .map_err(|e| Error::corrupt(format!("{INT8_ID} tensor: {e}")))?;
    SymQuantized::from_parts(format, encoded.part("codes")?, encoded.part("scales")?)
}

tenpak_api::register_codec!("keep", Keep);
tenpak_api::register_codec!("int8", Int8);
