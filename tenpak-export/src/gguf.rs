//! `tenpak export --format gguf`: an artifact as a GGUF file llama.cpp runs.
//!
//! Each tensor goes into the GGUF type that holds its stored codes exactly where one exists. The
//! exporter knows GGUF, not the codecs: a raw f32 tensor is F32, and an encoded one is what its
//! codec offers as its native GGUF form ([`tenpak_api::Codec::native`]); the built-in codecs
//! offer these (their blocks are built by `tenpak_quant::ggml`):
//!
//! | artifact tensor | GGUF type |
//! |---|---|
//! | raw f32 (norms), `keep` f32 / f16 / bf16 | F32 / F16 / BF16 |
//! | `int8`, one scale per row or per group of a multiple of 32 | Q8_0 (`d·q`, the same scale in each block) |
//! | 4-bit asymmetric groups of a multiple of 32 with f16 `(scale, min)` and nothing else (`int4_rtn`, `int4_gptq`, `int4_awq` without column scales, outliers or double-quantized headers) | Q4_1 (`d·q + m`) |
//! | 4-bit groups of 32 with 6-bit double-quantized headers in super-groups of 8 (`int4_awq` with `header_bits = 6`, `super_group = 8`, `alpha = 0`, no outliers), rows a multiple of 256, each super-group's mins of one sign | Q4_K (`d·sc·q − dmin·m`) |
//!
//! "Exactly" is checked, not assumed: the GGUF blocks are dequantized (candle-core's llama.cpp
//! formulas) and must equal the artifact's decode bit for bit; a tensor that does not is
//! re-quantized instead. Every other tensor is re-quantized from its decoded values to the GGUF
//! type nearest its bits per weight (k-quants where the row length allows, or the type given with
//! `--requant`), and its cost, ‖Ŵ_gguf − Ŵ‖² / ‖Ŵ‖² against the artifact's decode, is reported.
//!
//! Llama-architecture q/k rows are permuted back to llama.cpp's RoPE layout (Qwen2's are not);
//! the tokenizer and hyper-parameters become `tokenizer.ggml.*` and `<arch>.*` metadata. The file
//! is written tensor by tensor to a temporary sibling and renamed into place.

use std::borrow::Cow;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, Device, Tensor};
use serde_json::Value as Json;
use tenpak_api::registry::Registry;
use tenpak_api::{NativeForm, NativeTarget};
use tenpak_error::{Context, Kind, Result, bail, ensure};
use tenpak_model::ggml::name_of;
use tenpak_model::gguf::{gguf_tensor_name, permutes_qk, rope_permuted_row_order};
use tenpak_model::ModelConfig;
use tenpak_pack::artifact::{Artifact, CHAT_TEMPLATE_FILE, TensorRecord};
use tenpak_pack::observe::{PackObserver, Stage, Tracker};

use super::gguf_vocab::tokenizer_metadata;
use super::gguf_writer::{GgufType, GgufWriter, TensorDecl, data_bytes};

/// Options of a GGUF export.
#[derive(Clone, Debug, Default)]
pub struct GgufOptions {
    /// The type for tensors with no exact GGUF form (default: the nearest in bits per weight).
    pub requant: Option<GgmlDType>,
    /// Replace an existing output file.
    pub force: bool,
}

/// How one tensor was written.
#[derive(Clone, Debug)]
pub struct TensorExport {
    /// GGUF name.
    pub name: String,
    /// The artifact's (Hugging Face) name.
    pub hf_name: String,
    /// GGUF type written.
    pub dtype: GgufType,
    /// Elements.
    pub numel: usize,
    /// Bits per weight in the artifact.
    pub artifact_bits_per_weight: f64,
    /// True if the GGUF decodes to exactly the artifact's values.
    pub exact: bool,
    /// ‖Ŵ_gguf − Ŵ‖² / ‖Ŵ‖² against the artifact's decode (0 when exact).
    pub rel_err: f64,
    /// True for the block linears (attention and MLP projections).
    pub linear: bool,
}

impl TensorExport {
    /// Bits per weight of the GGUF type.
    pub fn bits_per_weight(&self) -> f64 {
        self.dtype.bits_per_weight()
    }
}

/// What an export wrote.
#[derive(Clone, Debug)]
pub struct GgufReport {
    /// Per tensor, in file order.
    pub tensors: Vec<TensorExport>,
    /// Size of the file in bytes.
    pub file_bytes: u64,
}

impl GgufReport {
    /// Bits per weight over the tensors `filter` keeps (tensor data only).
    pub fn bits_per_weight(&self, filter: impl Fn(&TensorExport) -> bool) -> f64 {
        let (bits, n) = self
            .tensors
            .iter()
            .filter(|t| filter(t))
            .fold((0.0, 0usize), |(b, n), t| {
                (b + t.bits_per_weight() * t.numel as f64, n + t.numel)
            });
        bits / n.max(1) as f64
    }
}

/// GGUF architecture name for an HF `model_type` (Mistral runs as llama in llama.cpp).
fn gguf_architecture(model_type: &str) -> Result<&'static str> {
    match model_type {
        "llama" | "mistral" => Ok("llama"),
        "qwen2" => Ok("qwen2"),
        other => Err(Kind::Unsupported.error(format!(
            "no GGUF architecture is known for model_type \"{other}\""
        ))),
    }
}

/// Write `artifact` to `out` as GGUF. `observer` sees one step per tensor and may cancel.
pub fn export_gguf(
    artifact: &Artifact,
    registry: &Registry,
    out: &Path,
    options: &GgufOptions,
    observer: &dyn PackObserver,
) -> Result<GgufReport> {
    if out.exists() && !options.force {
        bail!(
            "{} already exists (pass --force to replace it)",
            out.display()
        );
    }
    let manifest = artifact.manifest();
    let config = &manifest.model_config;
    let arch = gguf_architecture(&config.model_type)?;
    let tokenizer_path = artifact.dir().join("tokenizer.json");
    let tokenizer = std::fs::read_to_string(&tokenizer_path).with_context(|| {
        format!(
            "{}: cannot read the tokenizer, which a GGUF must carry",
            tokenizer_path.display()
        )
    })?;
    let mut metadata = model_metadata(config, arch, artifact)?;
    metadata.extend(
        tokenizer_metadata(&tokenizer, config)
            .with_context(|| tokenizer_path.display().to_string())?,
    );
    // The chat template, where llama.cpp's chat front ends look for it.
    let chat_path = artifact.dir().join(CHAT_TEMPLATE_FILE);
    if chat_path.exists() {
        let template = std::fs::read_to_string(&chat_path).with_context(|| format!("reading {}", chat_path.display()))?;
        metadata.push(("tokenizer.chat_template".to_owned(), Value::String(template)));
    }

    let decls = manifest
        .tensors
        .iter()
        .map(|t| {
            let name = gguf_tensor_name(&t.name).with_context(|| {
                format!(
                    "tensor `{}` has no GGUF name (not a Llama-family tensor)",
                    t.name
                )
            })?;
            Ok(TensorDecl {
                name,
                shape: t.shape.clone(),
            })
        })
        .collect::<Result<Vec<_>>>()?;

    let tmp = tenpak_pack::artifact::temp_sibling(out)?;
    let result = (|| -> Result<GgufReport> {
        let mut writer = GgufWriter::create(&tmp, metadata, decls.clone())?;
        let tracker = Tracker::new(observer, manifest.tensors.len() as u64);
        let mut tensors = Vec::with_capacity(decls.len());
        for (record, decl) in manifest.tensors.iter().zip(&decls) {
            tracker.begin(Stage::Export, None, &record.name)?;
            let converted = convert(artifact, registry, record, options.requant)
                .with_context(|| format!("exporting tensor `{}`", record.name))?;
            let mut bytes = converted.bytes;
            if permutes_qk(arch)
                && let Some(heads) = rope_heads(&record.name, config)
            {
                bytes = permute_byte_rows(&bytes, record.shape[0], heads)?;
            }
            writer.append(converted.dtype, &bytes)?;
            tensors.push(TensorExport {
                name: decl.name.clone(),
                hf_name: record.name.clone(),
                dtype: converted.dtype,
                numel: record.numel(),
                artifact_bits_per_weight: record.bits_per_weight,
                exact: converted.exact,
                rel_err: converted.rel_err,
                linear: record.role.is_block_linear(),
            });
            tracker.end(Stage::Export, None, &record.name);
        }
        writer.finish()?;
        let file_bytes = std::fs::metadata(&tmp)?.len();
        Ok(GgufReport {
            tensors,
            file_bytes,
        })
    })();
    match result {
        Ok(report) => {
            std::fs::rename(&tmp, out)
                .with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))?;
            Ok(report)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// The heads whose rows llama.cpp's RoPE layout interleaves in the HF tensor `name`: the query
/// heads for `q_proj`, the KV heads for `k_proj`, `None` for every other tensor.
pub fn rope_heads(name: &str, config: &ModelConfig) -> Option<usize> {
    if name.contains(".self_attn.q_proj.") {
        Some(config.num_attention_heads)
    } else if name.contains(".self_attn.k_proj.") {
        Some(config.num_key_value_heads)
    } else {
        None
    }
}

/// `general.*` and `<arch>.*` metadata.
fn model_metadata(
    config: &ModelConfig,
    arch: &str,
    artifact: &Artifact,
) -> Result<Vec<(String, Value)>> {
    let u32_of = |key: &str, v: usize| -> Result<Value> {
        Ok(Value::U32(u32::try_from(v).with_context(|| {
            format!("{key} = {v} does not fit GGUF's u32")
        })?))
    };
    let k = |key: &str| format!("{arch}.{key}");
    let name = Path::new(&artifact.manifest().source.path)
        .file_stem()
        .map_or_else(|| "model".to_owned(), |s| s.to_string_lossy().into_owned());
    let mut md = vec![
        (
            "general.architecture".to_owned(),
            Value::String(arch.to_owned()),
        ),
        ("general.name".to_owned(), Value::String(name)),
        ("general.quantization_version".to_owned(), Value::U32(2)),
        (
            k("context_length"),
            u32_of("max_position_embeddings", config.max_position_embeddings)?,
        ),
        (
            k("embedding_length"),
            u32_of("hidden_size", config.hidden_size)?,
        ),
        (
            k("block_count"),
            u32_of("num_hidden_layers", config.num_hidden_layers)?,
        ),
        (
            k("feed_forward_length"),
            u32_of("intermediate_size", config.intermediate_size)?,
        ),
        (
            k("attention.head_count"),
            u32_of("num_attention_heads", config.num_attention_heads)?,
        ),
        (
            k("attention.head_count_kv"),
            u32_of("num_key_value_heads", config.num_key_value_heads)?,
        ),
        (
            k("attention.key_length"),
            u32_of("head_dim", config.head_dim)?,
        ),
        (
            k("attention.value_length"),
            u32_of("head_dim", config.head_dim)?,
        ),
        (
            k("rope.dimension_count"),
            u32_of("head_dim", config.head_dim)?,
        ),
        (k("rope.freq_base"), Value::F32(config.rope_theta as f32)),
        (
            k("attention.layer_norm_rms_epsilon"),
            Value::F32(config.rms_norm_eps as f32),
        ),
        (k("vocab_size"), u32_of("vocab_size", config.vocab_size)?),
    ];
    if let Some(scaling) = &config.rope_scaling {
        let kind = scaling
            .get("rope_type")
            .or_else(|| scaling.get("type"))
            .and_then(Json::as_str);
        let factor = scaling.get("factor").and_then(Json::as_f64);
        match (kind, factor) {
            (Some("linear"), Some(factor)) => {
                md.push((k("rope.scaling.type"), Value::String("linear".into())));
                md.push((k("rope.scaling.factor"), Value::F32(factor as f32)));
            }
            _ => {
                return Err(Kind::Unsupported.error(format!(
                    "rope_scaling {scaling} cannot be written to GGUF (supported: none, linear)"
                )));
            }
        }
    }
    Ok(md)
}

/// One tensor's GGUF data in HF row order.
struct Converted {
    dtype: GgufType,
    bytes: Vec<u8>,
    exact: bool,
    rel_err: f64,
}

fn convert(
    artifact: &Artifact,
    registry: &Registry,
    record: &TensorRecord,
    requant: Option<GgmlDType>,
) -> Result<Converted> {
    let values = artifact.load_f32(&record.name, registry)?;
    if let Some((dtype, bytes)) = native_form(artifact, registry, record, &values)? {
        let decoded = dequantize(dtype, &bytes, values.len())?;
        if decoded
            .iter()
            .zip(&values)
            .all(|(a, b)| a.to_bits() == b.to_bits())
        {
            return Ok(Converted {
                dtype,
                bytes,
                exact: true,
                rel_err: 0.0,
            });
        }
    }
    let cols = *record.shape.last().unwrap_or(&1);
    let dtype = match requant {
        Some(dtype) if cols.is_multiple_of(dtype.block_size()) => dtype,
        _ => nearest_type(record.bits_per_weight, cols),
    };
    let bytes = quantize(dtype, &values, &record.shape)?;
    let decoded = dequantize(dtype.into(), &bytes, values.len())?;
    let (rel_err, _) = tenpak_pack::encode::reconstruction_error(&values, &decoded);
    Ok(Converted {
        dtype: dtype.into(),
        bytes,
        exact: rel_err == 0.0,
        rel_err,
    })
}

/// The GGUF type nearest `bits` bits per weight for rows of `cols` (k-quants need rows of 256,
/// the others 32; F16 when neither fits). On a tie the k-quant wins (a better format at the same
/// size), then the smaller type.
pub fn nearest_type(bits: f64, cols: usize) -> GgmlDType {
    let mut candidates = Vec::new();
    if cols.is_multiple_of(256) {
        candidates.extend([
            GgmlDType::Q2K,
            GgmlDType::Q3K,
            GgmlDType::Q4K,
            GgmlDType::Q5K,
            GgmlDType::Q6K,
        ]);
    }
    if cols.is_multiple_of(32) {
        candidates.extend([
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q8_0,
        ]);
    }
    candidates.push(GgmlDType::F16);
    let gap = |d: GgmlDType| (8.0 * d.type_size() as f64 / d.block_size() as f64 - bits).abs();
    let mut best = candidates[0];
    for d in candidates {
        if gap(d) < gap(best) - 1e-9 {
            best = d;
        }
    }
    best
}

/// The tensor in the GGUF type that holds its stored codes exactly, if there is one (a candidate
/// only: the caller checks its dequantization): raw f32 as F32, an encoded tensor in the form
/// its codec offers ([`tenpak_api::Codec::native`]).
fn native_form(
    artifact: &Artifact,
    registry: &Registry,
    record: &TensorRecord,
    values: &[f32],
) -> Result<Option<(GgufType, Vec<u8>)>> {
    let Some(id) = record.codec.as_deref() else {
        return Ok(Some((GgmlDType::F32.into(), values.iter().flat_map(|v| v.to_le_bytes()).collect())));
    };
    let codec = registry.codec(id)?;
    let encoded = artifact.encoded(&record.name)?;
    let form = codec.native(&encoded, NativeTarget::Gguf).with_context(|| format!("{id}'s GGUF form"))?;
    Ok(match form {
        Some(NativeForm::Ggml { ggml_type, data }) => GgufType::from_type_id(ggml_type).map(|dtype| (dtype, data)),
        _ => None,
    })
}

/// `values` (row-major, `shape`) quantized to `dtype` by candle-core (llama.cpp's reference
/// quantizers).
fn quantize(dtype: GgmlDType, values: &[f32], shape: &[usize]) -> Result<Vec<u8>> {
    let tensor = Tensor::from_slice(values, shape, &Device::Cpu)?;
    let q = QTensor::quantize(&tensor, dtype)?;
    Ok(q.data()?.into_owned())
}

/// GGUF data of `numel` elements in `dtype` back to f32: candle-core's dequantizers, or for the
/// types candle does not read, `tenpak_quant`'s port of llama.cpp's (`dequantize_row_*`, checked
/// bit for bit against llama.cpp's gguf-py by the `ggml` codec's tests).
pub fn dequantize(dtype: GgufType, bytes: &[u8], numel: usize) -> Result<Vec<f32>> {
    ensure!(
        bytes.len() == data_bytes(dtype, numel)?,
        "{} bytes of {} for {numel} elements",
        bytes.len(),
        dtype.name()
    );
    let dtype = match dtype {
        GgufType::Candle(d) => d,
        GgufType::Llama(t) => {
            let mut out = vec![0f32; numel];
            for (block, y) in bytes.chunks_exact(t.block_bytes()).zip(out.chunks_exact_mut(t.block_weights())) {
                t.dequantize(block, y);
            }
            return Ok(out);
        }
    };
    // candle reinterprets the bytes as blocks, which needs their alignment: copy into u64 storage.
    let mut aligned = vec![0u64; bytes.len().div_ceil(8)];
    let view: &mut [u8] = bytemuck_bytes(&mut aligned);
    view[..bytes.len()].copy_from_slice(bytes);
    let blocks = dtype.from_data(Cow::Borrowed(&view[..bytes.len()]));
    match blocks.dequantize(numel)? {
        CpuStorage::F32(v) => Ok(v),
        _ => bail!("{} dequantized to a type other than f32", name_of(dtype)),
    }
}

fn bytemuck_bytes(words: &mut [u64]) -> &mut [u8] {
    // SAFETY: u64 has no padding and every byte pattern is a valid u8; the slice covers exactly
    // the words' memory and borrows them mutably for its lifetime.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), words.len() * 8) }
}

/// Rows of `bytes` (a `[rows, …]` tensor in any GGUF type) in llama.cpp's q/k order.
fn permute_byte_rows(bytes: &[u8], rows: usize, heads: usize) -> Result<Vec<u8>> {
    ensure!(
        rows > 0 && bytes.len().is_multiple_of(rows) && rows.is_multiple_of(2 * heads),
        "{rows} rows cannot be permuted over {heads} heads"
    );
    let row_bytes = bytes.len() / rows;
    let mut out = Vec::with_capacity(bytes.len());
    for src in rope_permuted_row_order(rows, heads) {
        out.extend_from_slice(&bytes[src * row_bytes..(src + 1) * row_bytes]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_type_prefers_k_quants_where_rows_allow() {
        assert_eq!(nearest_type(4.43, 1536), GgmlDType::Q4K);
        assert_eq!(nearest_type(4.43, 576), GgmlDType::Q4_0);
        assert_eq!(nearest_type(5.0, 576), GgmlDType::Q4_1);
        assert_eq!(nearest_type(6.5, 512), GgmlDType::Q6K);
        assert_eq!(nearest_type(8.06, 576), GgmlDType::Q8_0);
        assert_eq!(nearest_type(4.0, 100), GgmlDType::F16);
        assert_eq!(nearest_type(2.0, 256), GgmlDType::Q2K);
    }

    #[test]
    fn byte_rows_move_like_the_f32_permutation() {
        let (rows, cols, heads) = (8, 3, 2);
        let values: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let mut expected = values.clone();
        tenpak_model::gguf::permute_rope_rows(&mut expected, rows, cols, heads);
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let permuted = permute_byte_rows(&bytes, rows, heads).unwrap();
        let back: Vec<f32> = permuted
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(back, expected);
    }
}
