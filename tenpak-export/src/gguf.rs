//! `tenpak export --format gguf`: an artifact as a GGUF file llama.cpp runs.
//!
//! Each tensor goes into the GGUF type that holds its stored codes exactly where one exists:
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

use tenpak_error::{Context, Result, bail, ensure};
use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, Device, Tensor};
use half::{bf16, f16};
use serde_json::Value as Json;
use tenpak_api::registry::Registry;

use super::gguf_vocab::tokenizer_metadata;
use super::gguf_writer::{GgufWriter, TensorDecl, data_bytes};
use tenpak_pack::artifact::{Artifact, TensorRecord};
use tenpak_error::Kind;
use tenpak_model::ggml::name_of;
use tenpak_model::gguf::{gguf_tensor_name, permutes_qk, rope_permuted_row_order};
use tenpak_model::{ModelConfig, ggml_bits_per_weight};
use tenpak_pack::observe::{PackObserver, Stage, Tracker};

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
    pub dtype: GgmlDType,
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
        ggml_bits_per_weight(&format!("{:?}", self.dtype).to_lowercase())
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
            if permutes_qk(arch) {
                let heads = if record.name.contains(".self_attn.q_proj.") {
                    Some(config.num_attention_heads)
                } else if record.name.contains(".self_attn.k_proj.") {
                    Some(config.num_key_value_heads)
                } else {
                    None
                };
                if let Some(heads) = heads {
                    bytes = permute_byte_rows(&bytes, record.shape[0], heads)?;
                }
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
    dtype: GgmlDType,
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
    if let Some((dtype, bytes)) = exact_form(artifact, registry, record, &values)? {
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
    let decoded = dequantize(dtype, &bytes, values.len())?;
    let (rel_err, _) = tenpak_pack::encode::reconstruction_error(&values, &decoded);
    Ok(Converted {
        dtype,
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

/// The GGUF form that holds the tensor's stored codes exactly, if its codec has one (candidate
/// only: the caller checks the decode).
fn exact_form(
    artifact: &Artifact,
    registry: &Registry,
    record: &TensorRecord,
    values: &[f32],
) -> Result<Option<(GgmlDType, Vec<u8>)>> {
    let Some(codec) = record.codec.as_deref() else {
        return Ok(Some((
            GgmlDType::F32,
            values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        )));
    };
    let param = |key: &str| -> Result<Option<i64>> {
        if let Some(v) = record.params.get(key) {
            return Ok(Some(
                record
                    .params
                    .int_or(key, 0)
                    .with_context(|| format!("parameter {key} = {v:?}"))?,
            ));
        }
        let default = registry.codec(codec).ok().and_then(|c| {
            c.params()
                .iter()
                .find(|p| p.name == key)
                .map(|p| p.default.to_owned())
        });
        Ok(default.and_then(|d| d.parse::<i64>().ok()))
    };
    let part_names: Vec<&str> = record.parts.iter().map(|p| p.name.as_str()).collect();
    let [rows, cols] = match record.shape[..] {
        [r, c] => [r, c],
        _ => return Ok(None),
    };
    if codec == "keep" {
        let dtype = record.params.str_or("dtype", "f16").unwrap_or("f16");
        return Ok(Some(match dtype {
            "f32" => (
                GgmlDType::F32,
                values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
            "bf16" => (
                GgmlDType::BF16,
                values
                    .iter()
                    .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
                    .collect(),
            ),
            _ => (
                GgmlDType::F16,
                values
                    .iter()
                    .flat_map(|v| f16::from_f32(*v).to_le_bytes())
                    .collect(),
            ),
        }));
    }
    if !cols.is_multiple_of(32) {
        return Ok(None);
    }
    // Groups must be whole numbers of 32-weight blocks (or whole rows).
    let group_of = |group_size: i64| -> Option<usize> {
        let g = usize::try_from(group_size).ok()?;
        if g == 0 || g >= cols {
            Some(cols)
        } else if g.is_multiple_of(32) {
            Some(g)
        } else {
            None
        }
    };
    if codec == "int8" && part_names == ["codes", "scales"] {
        let Some(group) = group_of(param("group_size")?.unwrap_or(0)) else {
            return Ok(None);
        };
        let encoded = artifact.encoded(&record.name)?;
        let codes = &encoded.part("codes")?.data;
        let scales = &encoded.part("scales")?.data;
        let groups = cols.div_ceil(group);
        ensure!(
            codes.len() == rows * cols && scales.len() == rows * groups * 2,
            "int8 parts have unexpected sizes"
        );
        let mut out = Vec::with_capacity(rows * cols / 32 * 34);
        for r in 0..rows {
            for b in 0..cols / 32 {
                let g = r * groups + b * 32 / group;
                out.extend_from_slice(&scales[2 * g..2 * g + 2]);
                out.extend_from_slice(&codes[r * cols + b * 32..r * cols + b * 32 + 32]);
            }
        }
        return Ok(Some((GgmlDType::Q8_0, out)));
    }
    if matches!(
        part_names.as_slice(),
        ["codes", "scale_min"] | ["scale_min", "codes"]
    ) && param("bits")?.unwrap_or(4) == 4
    {
        let Some(group) = group_of(param("group_size")?.unwrap_or(-1)) else {
            return Ok(None);
        };
        let encoded = artifact.encoded(&record.name)?;
        let headers = &encoded.part("scale_min")?.data;
        let groups = cols.div_ceil(group);
        if headers.len() != rows * groups * 4 {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(rows * cols / 32 * 20);
        for r in 0..rows {
            for b in 0..cols / 32 {
                let g = r * groups + b * 32 / group;
                let header = &headers[4 * g..4 * g + 4];
                let scale = f16::from_le_bytes([header[0], header[1]]).to_f32();
                let min = f16::from_le_bytes([header[2], header[3]]).to_f32();
                let block = &values[r * cols + b * 32..r * cols + b * 32 + 32];
                let q: Vec<u8> = block
                    .iter()
                    .map(|&v| {
                        if scale > 0.0 {
                            ((v - min) / scale).round().clamp(0.0, 15.0) as u8
                        } else {
                            0
                        }
                    })
                    .collect();
                out.extend_from_slice(header);
                out.extend((0..16).map(|j| q[j] | (q[j + 16] << 4)));
            }
        }
        return Ok(Some((GgmlDType::Q4_1, out)));
    }
    if matches!(part_names.as_slice(), ["codes", "header_q", "header_super"])
        && param("bits")?.unwrap_or(4) == 4
        && param("group_size")? == Some(32)
        && param("header_bits")? == Some(6)
        && param("super_group")? == Some(8)
        && cols.is_multiple_of(256)
    {
        return q4_k_form(artifact, record, values, rows, cols);
    }
    Ok(None)
}

/// 4-bit codes in groups of 32 whose (scale, min) are 6-bit integers against an f16 pair per
/// super-group of 8 groups: llama.cpp's Q4_K block (`d·sc·q − dmin·m`), when every group's min
/// in a super-group has the same sign (Q4_K's mins are one signed f16 times unsigned 6-bit
/// integers; TenPak's are signed integers). Rows must be whole 256-weight super-blocks.
fn q4_k_form(artifact: &Artifact, record: &TensorRecord, values: &[f32], rows: usize, cols: usize) -> Result<Option<(GgmlDType, Vec<u8>)>> {
    use tenpak_quant::GroupLayout;
    use tenpak_quant::dq::{DqHeaders, DqLayout};
    let encoded = artifact.encoded(&record.name)?;
    let dq = DqLayout::new(GroupLayout::new(rows, cols, 32)?, 6, 8)?;
    let grids = DqHeaders::from_parts(dq, encoded.part("header_q")?, encoded.part("header_super")?)?.grids();
    let supers = &encoded.part("header_super")?.data;
    let (groups, blocks) = (cols / 32, cols / 256);
    let mut out = Vec::with_capacity(rows * blocks * 144);
    for r in 0..rows {
        for b in 0..blocks {
            let at = 4 * (r * blocks + b);
            let (d_bits, m_bits) = ([supers[at], supers[at + 1]], [supers[at + 2], supers[at + 3]]);
            let (d, m) = (f16::from_le_bytes(d_bits).to_f32(), f16::from_le_bytes(m_bits).to_f32());
            let group = |j: usize| grids[r * groups + b * 8 + j];
            let sc: Vec<u8> = (0..8).map(|j| if d > 0.0 { (group(j).scale / d).round() as u8 } else { 0 }).collect();
            let k: Vec<i32> = (0..8).map(|j| if m > 0.0 { (group(j).min / m).round() as i32 } else { 0 }).collect();
            // min = m·k = −dmin·|k|: dmin = m when every k ≤ 0, −m when every k ≥ 0.
            let dmin_bits = if k.iter().all(|&k| k <= 0) {
                m_bits
            } else if k.iter().all(|&k| k >= 0) {
                (-f16::from_le_bytes(m_bits)).to_le_bytes()
            } else {
                return Ok(None);
            };
            let mq: Vec<u8> = k.iter().map(|k| k.unsigned_abs() as u8).collect();
            if sc.iter().chain(&mq).any(|&v| v > 63) {
                return Ok(None);
            }
            // Six-bit (scale, min) pairs packed as llama.cpp's quantize_row_q4_K_ref packs them.
            let mut scales = [0u8; 12];
            for j in 0..8 {
                if j < 4 {
                    scales[j] = sc[j];
                    scales[j + 4] = mq[j];
                } else {
                    scales[j + 4] = (sc[j] & 0xF) | ((mq[j] & 0xF) << 4);
                    scales[j - 4] |= (sc[j] >> 4) << 6;
                    scales[j] |= (mq[j] >> 4) << 6;
                }
            }
            let base = r * cols + b * 256;
            let code = |i: usize| -> u8 {
                let g = group(i / 32);
                if g.scale > 0.0 { ((values[base + i] - g.min) / g.scale).round().clamp(0.0, 15.0) as u8 } else { 0 }
            };
            out.extend_from_slice(&d_bits);
            out.extend_from_slice(&dmin_bits);
            out.extend_from_slice(&scales);
            for chunk in 0..4 {
                out.extend((0..32).map(|l| code(64 * chunk + l) | (code(64 * chunk + 32 + l) << 4)));
            }
        }
    }
    Ok(Some((GgmlDType::Q4K, out)))
}

/// `values` (row-major, `shape`) quantized to `dtype` by candle-core (llama.cpp's reference
/// quantizers).
fn quantize(dtype: GgmlDType, values: &[f32], shape: &[usize]) -> Result<Vec<u8>> {
    let tensor = Tensor::from_slice(values, shape, &Device::Cpu)?;
    let q = QTensor::quantize(&tensor, dtype)?;
    Ok(q.data()?.into_owned())
}

/// GGUF data of `numel` elements in `dtype` back to f32 (candle-core's dequantizers).
pub fn dequantize(dtype: GgmlDType, bytes: &[u8], numel: usize) -> Result<Vec<f32>> {
    ensure!(
        bytes.len() == data_bytes(dtype, numel)?,
        "{} bytes of {} for {numel} elements",
        bytes.len(),
        name_of(dtype)
    );
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
