//! GGUF input (llama.cpp's format): Llama-family models (`llama`, which Mistral and SmolLM GGUFs
//! also use, and `qwen2`), any tensor type candle-core can dequantize, read tensor by tensor from
//! a memory map.
//!
//! Three conversions make a GGUF look like the Hugging Face checkpoint it was made from:
//! - names: `blk.N.attn_q.weight` becomes `model.layers.N.self_attn.q_proj.weight`, and so on;
//! - q/k rows: llama.cpp's `convert_hf_to_gguf.py` (`LlamaModel.permute`) reorders the rows of
//!   each q and k head from HF's "rotate halves" RoPE layout to GGML's "rotate adjacent pairs"
//!   layout; we apply the inverse (transformers does the same in `reverse_permute_weights`), so
//!   downstream code runs HF's RoPE on HF's row order (Qwen2 GGUFs are not permuted);
//! - hyper-parameters: `llama.*` / `qwen2.*` metadata becomes a [`ModelConfig`] and, through it, an HF
//!   `config.json`; the embedded vocabulary becomes a `tokenizer.json` ([`super::gguf_tokenizer`]).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use tenpak_error::{Context, bail};
use candle_core::CpuStorage;
use candle_core::backend::BackendStorage;
use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::{Content, Value};
use memmap2::Mmap;

use super::gguf_tokenizer::{integer, tokenizer_json_from_gguf};
use super::chat::TemplateSource;
use super::{ModelConfig, ModelSource, SourceDType, TensorInfo, TokenizerSource};
use tenpak_error::Kind;

/// GGUF `general.architecture` values this reader accepts. Mistral and SmolLM GGUFs say
/// "llama"; Qwen2 GGUFs say "qwen2" (same tensor names, q/k/v biases, and no q/k row
/// permutation: llama.cpp runs Qwen2 with NeoX-style RoPE, which is HF's layout). Other
/// architectures name their tensors and hyper-parameters differently and are refused by name.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama", "qwen2"];

/// Whether llama.cpp's converter permutes the q/k rows of architecture `arch` (it does for
/// "llama", whose GGML RoPE rotates adjacent pairs; not for NeoX-RoPE architectures like Qwen2).
pub fn permutes_qk(arch: &str) -> bool {
    arch == "llama"
}

/// The HF `model_type` of GGUF architecture `arch`.
pub fn model_type_of(arch: &str) -> &'static str {
    match arch {
        "qwen2" => "qwen2",
        _ => "llama",
    }
}

/// A GGUF file opened for reading.
pub struct GgufModel {
    /// What messages and [`ModelSource::path`] call the file.
    path: PathBuf,
    /// The file itself (hashed into manifests).
    file: PathBuf,
    mmap: Mmap,
    content: Content,
    config: ModelConfig,
    tensors: Vec<TensorInfo>,
    entries: HashMap<String, Entry>,
    tokenizer: Result<String, String>,
}

/// Where one tensor lives in the file and how to turn it into its HF form.
struct Entry {
    gguf_name: String,
    ggml_dtype: GgmlDType,
    numel: usize,
    rows: usize,
    /// Byte range of the tensor's data in the file, checked against the file size at open.
    start: usize,
    len: usize,
    /// `Some(heads)` for q/k projections: undo llama.cpp's RoPE row permutation over `heads`.
    unpermute_heads: Option<usize>,
}

impl GgufModel {
    /// Open and validate `path`: parse the header, check the architecture, derive the
    /// configuration, map every tensor to its HF name and check its data lies inside the file.
    /// No tensor data is read.
    pub fn open(path: &Path) -> tenpak_error::Result<GgufModel> {
        Self::open_named(path, path)
    }

    /// [`GgufModel::open`] of the file at `path`, called `shown` in every message and by
    /// [`ModelSource::path`] (a server shows a name under its model root, never its own paths).
    pub fn open_named(path: &Path, shown: &Path) -> tenpak_error::Result<GgufModel> {
        let file_name = shown.display();
        let file = File::open(path).with_context(|| format!("{file_name}: cannot open"))?;
        // SAFETY: the map is read-only and lives as long as `GgufModel`; we never hand out
        // mutable access. As with every file-backed map, another process truncating or rewriting
        // the file while it is open is outside what Rust can guard against (model files are not
        // modified in place by TenPak).
        let mmap = unsafe { Mmap::map(&file) }.with_context(|| format!("{file_name}: cannot memory-map"))?;
        let mut model = Self::from_map(shown, mmap)?;
        model.file = path.to_path_buf();
        Ok(model)
    }

    /// [`GgufModel::open`] on the bytes of a GGUF file (copied into an anonymous map); `path`
    /// names it in messages.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> tenpak_error::Result<GgufModel> {
        if bytes.is_empty() {
            bail!("{}: empty file, not a GGUF", path.display());
        }
        let mut map = memmap2::MmapMut::map_anon(bytes.len()).context("allocating a map")?;
        map.copy_from_slice(bytes);
        Self::from_map(path, map.make_read_only()?)
    }

    fn from_map(path: &Path, mmap: Mmap) -> tenpak_error::Result<GgufModel> {
        let file_name = path.display();
        let content = read_content(&mmap).map_err(|e| {
            let unreadable = super::ggml::unreadable_tensors(&mmap);
            match unreadable.first() {
                Some((name, id)) => Kind::Unsupported.error(format!(
                    "{file_name}: tensor '{name}' is stored as {} ({} tensors in all are of types TenPak's GGUF reader \
                     (candle-core) cannot dequantize; readable: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K; \
                     `llama-quantize --allow-requantize IN OUT F32` converts such a file exactly)",
                    super::ggml::type_name(*id).map_or_else(|| format!("unknown ggml type {id}"), str::to_owned),
                    unreadable.len()
                )),
                None => tenpak_error::err!("{file_name}: not a readable GGUF file: {e:#}"),
            }
        })?;

        let arch = match content.metadata.get("general.architecture") {
            Some(Value::String(s)) => s.clone(),
            Some(_) => bail!("{file_name}: metadata general.architecture is not a string"),
            None => bail!(
                "{file_name}: metadata general.architecture is missing (supported architectures: {})",
                SUPPORTED_ARCHITECTURES.join(", ")
            ),
        };
        if !SUPPORTED_ARCHITECTURES.contains(&arch.as_str()) {
            return Err(tenpak_error::Kind::Unsupported.error(format!(
                "{file_name}: GGUF architecture \"{arch}\" is not supported (supported architectures: {})",
                SUPPORTED_ARCHITECTURES.join(", ")
            )));
        }

        let config = config_from_metadata(&content, &arch).with_context(|| format!("{file_name}: GGUF metadata"))?;

        let mut by_offset: Vec<(&String, &candle_core::quantized::gguf_file::TensorInfo)> =
            content.tensor_infos.iter().collect();
        by_offset.sort_by(|a, b| (a.1.offset, a.0).cmp(&(b.1.offset, b.0)));
        let file_len = mmap.len();
        let mut tensors = Vec::with_capacity(by_offset.len());
        let mut entries = HashMap::with_capacity(by_offset.len());
        for (gguf_name, info) in by_offset {
            let (hf_name, role) = hf_name(gguf_name, config.num_hidden_layers)
                .with_context(|| format!("{file_name}: tensor '{gguf_name}'"))?;
            let shape = info.shape.dims().to_vec();
            let numel = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).with_context(|| {
                format!("{file_name}: tensor '{gguf_name}' has shape {shape:?}, more elements than can exist")
            })?;
            let block = info.ggml_dtype.block_size();
            if !numel.is_multiple_of(block) {
                bail!(
                    "{file_name}: tensor '{gguf_name}' has {numel} elements, not a multiple of the {:?} block size {block}",
                    info.ggml_dtype
                );
            }
            let len = (numel / block).checked_mul(info.ggml_dtype.type_size()).with_context(|| {
                format!("{file_name}: tensor '{gguf_name}' has shape {shape:?}, more bytes than can exist")
            })?;
            let start = content
                .tensor_data_offset
                .checked_add(info.offset)
                .and_then(|s| usize::try_from(s).ok())
                .with_context(|| {
                    format!(
                        "{file_name}: tensor '{gguf_name}' has an impossible offset {}",
                        info.offset
                    )
                })?;
            start.checked_add(len).filter(|&end| end <= file_len).with_context(|| {
                format!(
                    "{file_name}: tensor '{gguf_name}' ({hf_name}) needs bytes {start}..{} but the file has only {file_len} bytes \
                     (truncated file or corrupt header)",
                    start as u128 + len as u128
                )
            })?;
            let rows = shape.first().copied().unwrap_or(1);
            let unpermute_heads = match role {
                _ if !permutes_qk(&arch) => None,
                Role::Query => Some(config.num_attention_heads),
                Role::Key => Some(config.num_key_value_heads),
                Role::Other => None,
            };
            if let Some(heads) = unpermute_heads
                && (rows == 0 || heads.checked_mul(2).is_none_or(|pairs| !rows.is_multiple_of(pairs)))
            {
                bail!(
                    "{file_name}: tensor '{gguf_name}' has {rows} rows, not a positive multiple of 2 x {heads} heads; \
                     cannot undo llama.cpp's RoPE permutation"
                );
            }
            tensors.push(TensorInfo {
                name: hf_name.clone(),
                shape,
                dtype: SourceDType::Ggml(format!("{:?}", info.ggml_dtype).to_lowercase()),
            });
            let entry = Entry {
                gguf_name: gguf_name.clone(),
                ggml_dtype: info.ggml_dtype,
                numel,
                rows,
                start,
                len,
                unpermute_heads,
            };
            if entries.insert(hf_name.clone(), entry).is_some() {
                bail!("{file_name}: two GGUF tensors map to {hf_name}");
            }
        }
        if !entries.contains_key("model.embed_tokens.weight") {
            bail!("{file_name}: tensor 'token_embd.weight' (the token embedding) is missing");
        }

        let tokenizer = if content.metadata.contains_key("tokenizer.ggml.model") {
            tokenizer_json_from_gguf(&content.metadata)
                .map_err(|e| format!("{file_name}: cannot rebuild the tokenizer from GGUF metadata: {e:#}"))
        } else {
            Err(format!("{file_name}: the GGUF has no tokenizer.ggml.* metadata"))
        };

        Ok(GgufModel {
            path: path.to_path_buf(),
            file: path.to_path_buf(),
            mmap,
            content,
            config,
            tensors,
            entries,
            tokenizer,
        })
    }

    /// The GGUF architecture (`general.architecture`).
    pub fn architecture(&self) -> &str {
        match self.content.metadata.get("general.architecture") {
            Some(Value::String(s)) => s,
            _ => unreachable!("open() checked general.architecture"),
        }
    }

    /// All GGUF metadata, as candle parsed it.
    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    /// The GGUF name of HF tensor `hf_name` (`model.layers.0.self_attn.q_proj.weight` ->
    /// `blk.0.attn_q.weight`).
    pub fn gguf_name(&self, hf_name: &str) -> Option<&str> {
        self.entries.get(hf_name).map(|e| e.gguf_name.as_str())
    }

    /// The rebuilt `tokenizer.json` text, or why it could not be built.
    pub fn tokenizer_json(&self) -> Result<&str, &str> {
        self.tokenizer.as_deref().map_err(String::as_str)
    }

    /// Load HF tensor `name` exactly as stored in the GGUF (dequantized to f32, row-major), without
    /// undoing the q/k permutation. For checks against llama.cpp's layout; everything else wants
    /// [`ModelSource::load_f32`].
    pub fn load_raw_f32(&self, name: &str) -> tenpak_error::Result<Vec<f32>> {
        self.dequantize(self.entry(name)?)
    }

    fn entry(&self, name: &str) -> tenpak_error::Result<&Entry> {
        self.entries.get(name).with_context(|| {
            format!(
                "{}: no tensor named '{name}' (this GGUF holds {} tensors, named the Hugging Face way, e.g. {})",
                self.path.display(),
                self.tensors.len(),
                self.tensors.first().map_or("-", |t| t.name.as_str())
            )
        })
    }

    /// Dequantize one tensor straight from the map: the only copies are candle's block vector
    /// (the tensor's size in the file) and the f32 output.
    fn dequantize(&self, entry: &Entry) -> tenpak_error::Result<Vec<f32>> {
        let file_name = self.path.display();
        let bytes = &self.mmap[entry.start..entry.start + entry.len];
        // candle reinterprets the bytes as blocks and asserts alignment; GGUF aligns tensor data
        // (32 bytes by default), so a misaligned tensor means a malformed file: say so, don't panic.
        if !(bytes.as_ptr() as usize).is_multiple_of(4) {
            bail!(
                "{file_name}: tensor '{}' starts at byte {}, not 4-byte aligned as GGUF requires",
                entry.gguf_name,
                entry.start
            );
        }
        let blocks = entry.ggml_dtype.from_data(Cow::Borrowed(bytes));
        let storage = blocks
            .dequantize(entry.numel)
            .map_err(|e| tenpak_error::err!("{file_name}: tensor '{}': cannot dequantize: {e}", entry.gguf_name))?;
        drop(blocks);
        super::release_pages(&self.mmap, entry.start, entry.len);
        match storage {
            CpuStorage::F32(values) if values.len() == entry.numel => Ok(values),
            other => bail!(
                "{file_name}: tensor '{}': dequantization returned {:?} data of unexpected size",
                entry.gguf_name,
                other.dtype()
            ),
        }
    }
}

impl ModelSource for GgufModel {
    fn path(&self) -> &Path {
        &self.path
    }
    fn format(&self) -> &'static str {
        "gguf"
    }
    fn config(&self) -> &ModelConfig {
        &self.config
    }
    fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }
    fn load_f32(&self, name: &str) -> tenpak_error::Result<Vec<f32>> {
        let entry = self.entry(name)?;
        let mut values = self.dequantize(entry)?;
        if let Some(heads) = entry.unpermute_heads {
            let cols = entry.numel / entry.rows;
            unpermute_rope_rows(&mut values, entry.rows, cols, heads);
        }
        Ok(values)
    }
    fn tokenizer(&self) -> TokenizerSource {
        match &self.tokenizer {
            Ok(json) => TokenizerSource::Json(json.clone()),
            Err(_) => TokenizerSource::Missing,
        }
    }
    fn tokenizer_error(&self) -> Option<String> {
        self.tokenizer.as_ref().err().cloned()
    }
    fn chat_template(&self) -> tenpak_error::Result<Option<TemplateSource>> {
        let origin = format!("{}: tokenizer.chat_template", self.path.display());
        match self.content.metadata.get("tokenizer.chat_template") {
            None => Ok(None),
            Some(Value::String(template)) => Ok(Some(TemplateSource { template: template.clone(), origin, bos_token: None, eos_token: None })),
            Some(_) => tenpak_error::bail!("{origin}: not a string"),
        }
    }
    fn config_json(&self) -> tenpak_error::Result<String> {
        Ok(self.config.to_hf_config_json())
    }
    fn files(&self) -> Vec<PathBuf> {
        vec![self.file.clone()]
    }
}

/// Parse a GGUF header (metadata and tensor table) from the start of `bytes`.
pub fn read_content(bytes: &[u8]) -> tenpak_error::Result<Content> {
    Content::read(&mut Cursor::new(bytes)).map_err(|e| tenpak_error::err!("{e}"))
}

/// Which rows a tensor's RoPE permutation spans.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
    Query,
    Key,
    Other,
}

/// Per-block tensors: GGUF name part and HF name part (`blk.N.<gguf>.weight` is
/// `model.layers.N.<hf>.weight`; biases likewise).
const BLOCK_PARTS: &[(&str, &str)] = &[
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
];

/// The HF name of GGUF tensor `gguf_name`, and whether it is a q or k projection.
fn hf_name(gguf_name: &str, num_layers: usize) -> tenpak_error::Result<(String, Role)> {
    let simple = match gguf_name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        "rope_freqs.weight" => {
            bail!("per-dimension RoPE frequency factors (Llama 3.1-style rope scaling) are not supported")
        }
        _ => None,
    };
    if let Some(name) = simple {
        return Ok((name.to_owned(), Role::Other));
    }
    let unknown = || tenpak_error::err!("no Hugging Face Llama equivalent is known for this tensor name");
    let rest = gguf_name.strip_prefix("blk.").ok_or_else(unknown)?;
    let (layer, rest) = rest.split_once('.').ok_or_else(unknown)?;
    let layer: usize = layer.parse().map_err(|_| unknown())?;
    if layer >= num_layers {
        bail!("block {layer} is beyond the block count {num_layers}");
    }
    let (part, suffix) = rest.rsplit_once('.').ok_or_else(unknown)?;
    if suffix != "weight" && suffix != "bias" {
        return Err(unknown());
    }
    let hf_part = BLOCK_PARTS
        .iter()
        .find(|(g, _)| *g == part)
        .map(|(_, h)| *h)
        .ok_or_else(unknown)?;
    let role = match part {
        "attn_q" => Role::Query,
        "attn_k" => Role::Key,
        _ => Role::Other,
    };
    Ok((format!("model.layers.{layer}.{hf_part}.{suffix}"), role))
}

/// The GGUF name of HF tensor `hf_name` (the inverse of the reader's mapping), if it has one.
pub fn gguf_tensor_name(hf_name: &str) -> Option<String> {
    match hf_name {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf_name.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    layer.parse::<usize>().ok()?;
    let (part, suffix) = rest.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let gguf_part = BLOCK_PARTS
        .iter()
        .find(|(_, h)| *h == part)
        .map(|(g, _)| *g)?;
    Some(format!("blk.{layer}.{gguf_part}.{suffix}"))
}

/// The row order llama.cpp's q/k permutation produces: row `i` of the permuted matrix is row
/// `order[i]` of the HF one ([`permute_rope_rows`] moves whole rows this way).
pub fn rope_permuted_row_order(rows: usize, heads: usize) -> Vec<usize> {
    assert!(
        heads > 0 && rows.is_multiple_of(2 * heads),
        "rope_permuted_row_order: {rows} rows do not split into {heads} heads of pairs"
    );
    let head_rows = rows / heads;
    let half = head_rows / 2;
    let mut order = vec![0; rows];
    for h in 0..heads {
        for i in 0..2 {
            for j in 0..half {
                order[h * head_rows + 2 * j + i] = h * head_rows + i * half + j;
            }
        }
    }
    order
}

/// Undo llama.cpp's q/k row permutation in place.
///
/// `convert_hf_to_gguf.py` stores, within each head of `rows / heads` rows, HF row
/// `i * half + j` (i in 0..2, j in 0..half) at position `2 * j + i`
/// (`w.reshape(heads, 2, half, cols).swapaxes(1, 2)`). We move each row back; one head is
/// buffered at a time.
pub fn unpermute_rope_rows(values: &mut [f32], rows: usize, cols: usize, heads: usize) {
    assert_eq!(
        values.len(),
        rows * cols,
        "unpermute_rope_rows: {rows}x{cols} does not match {} values",
        values.len()
    );
    assert!(
        heads > 0 && rows.is_multiple_of(2 * heads),
        "unpermute_rope_rows: {rows} rows do not split into {heads} heads of pairs"
    );
    let head_rows = rows / heads;
    let half = head_rows / 2;
    let mut head = vec![0f32; head_rows * cols];
    for h in 0..heads {
        let block = &mut values[h * head_rows * cols..(h + 1) * head_rows * cols];
        head.copy_from_slice(block);
        for i in 0..2 {
            for j in 0..half {
                let src = (2 * j + i) * cols;
                let dst = (i * half + j) * cols;
                block[dst..dst + cols].copy_from_slice(&head[src..src + cols]);
            }
        }
    }
}

/// Apply llama.cpp's q/k row permutation in place (the inverse of [`unpermute_rope_rows`]): what
/// `convert_hf_to_gguf.py` does to an HF q/k projection before writing it to GGUF.
pub fn permute_rope_rows(values: &mut [f32], rows: usize, cols: usize, heads: usize) {
    assert_eq!(
        values.len(),
        rows * cols,
        "permute_rope_rows: {rows}x{cols} does not match {} values",
        values.len()
    );
    assert!(
        heads > 0 && rows.is_multiple_of(2 * heads),
        "permute_rope_rows: {rows} rows do not split into {heads} heads of pairs"
    );
    let head_rows = rows / heads;
    let half = head_rows / 2;
    let mut head = vec![0f32; head_rows * cols];
    for h in 0..heads {
        let block = &mut values[h * head_rows * cols..(h + 1) * head_rows * cols];
        head.copy_from_slice(block);
        for i in 0..2 {
            for j in 0..half {
                let src = (i * half + j) * cols;
                let dst = (2 * j + i) * cols;
                block[dst..dst + cols].copy_from_slice(&head[src..src + cols]);
            }
        }
    }
}

/// Llama hyper-parameters from `<arch>.*` and `tokenizer.ggml.*` metadata.
fn config_from_metadata(content: &Content, arch: &str) -> tenpak_error::Result<ModelConfig> {
    let md = &content.metadata;
    let key = |k: &str| format!("{arch}.{k}");
    let get_usize = |k: &str| -> tenpak_error::Result<Option<usize>> {
        let full = key(k);
        match md.get(&full) {
            None => Ok(None),
            Some(v) => {
                let n = integer(v).with_context(|| full.clone())?;
                usize::try_from(n)
                    .map(Some)
                    .with_context(|| format!("{full} = {n} is negative"))
            }
        }
    };
    let required =
        |k: &str| -> tenpak_error::Result<usize> { get_usize(k)?.with_context(|| format!("{} is missing", key(k))) };
    let get_f64 = |k: &str| -> tenpak_error::Result<Option<f64>> {
        let full = key(k);
        match md.get(&full) {
            None => Ok(None),
            // Through the shortest decimal that round-trips the f32, so 1e-5 stays 1e-5 in
            // config.json instead of becoming 9.99999974737875e-6.
            Some(Value::F32(v)) => Ok(Some(v.to_string().parse::<f64>().expect("a float's Display parses"))),
            Some(Value::F64(v)) => Ok(Some(*v)),
            Some(other) => bail!("{full}: expected a float, found {:?}", other.value_type()),
        }
    };
    let token_id = |k: &str| -> tenpak_error::Result<Option<u32>> {
        match md.get(k) {
            None => Ok(None),
            Some(v) => {
                let n = integer(v).with_context(|| k.to_owned())?;
                u32::try_from(n)
                    .map(Some)
                    .with_context(|| format!("{k} = {n} is not a token id"))
            }
        }
    };

    let hidden_size = required("embedding_length")?;
    let num_attention_heads = required("attention.head_count")?;
    let num_key_value_heads = get_usize("attention.head_count_kv")?.unwrap_or(num_attention_heads);
    let head_dim = match get_usize("attention.key_length")? {
        Some(d) => d,
        None if num_attention_heads > 0 && hidden_size.is_multiple_of(num_attention_heads) => hidden_size / num_attention_heads,
        None => bail!(
            "{} = {hidden_size} is not a multiple of {} = {num_attention_heads}",
            key("embedding_length"),
            key("attention.head_count")
        ),
    };
    if let Some(rot) = get_usize("rope.dimension_count")?
        && rot != head_dim
    {
        bail!(
            "{} = {rot} differs from the head width {head_dim}: partial rotary embeddings are not supported",
            key("rope.dimension_count")
        );
    }
    let rope_scaling = match md.get(&key("rope.scaling.type")) {
        None => None,
        Some(Value::String(t)) if t == "none" => None,
        Some(Value::String(t)) if t == "linear" => {
            let factor = get_f64("rope.scaling.factor")?
                .with_context(|| format!("{} is missing", key("rope.scaling.factor")))?;
            Some(serde_json::json!({"rope_type": "linear", "factor": factor}))
        }
        Some(other) => bail!(
            "{}: {other:?} RoPE scaling is not supported (supported: none, linear)",
            key("rope.scaling.type")
        ),
    };

    // The embedding's row count is the model's vocabulary (HF `vocab_size`); the tokenizer may
    // list fewer tokens when the embedding is padded, never more.
    let token_embd_rows = content
        .tensor_infos
        .get("token_embd.weight")
        .and_then(|t| t.shape.dims().first().copied())
        .context("tensor token_embd.weight is missing")?;
    match md.get("tokenizer.ggml.tokens") {
        Some(Value::Array(tokens)) if tokens.len() > token_embd_rows => bail!(
            "tokenizer.ggml.tokens lists {} tokens but token_embd.weight has only {token_embd_rows} rows",
            tokens.len()
        ),
        Some(Value::Array(_)) | None => {}
        Some(_) => bail!("tokenizer.ggml.tokens: expected an array"),
    }
    let vocab_size = token_embd_rows;

    let config = ModelConfig {
        model_type: model_type_of(arch).to_owned(),
        hidden_size,
        intermediate_size: required("feed_forward_length")?,
        num_hidden_layers: required("block_count")?,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        vocab_size,
        rms_norm_eps: get_f64("attention.layer_norm_rms_epsilon")?
            .with_context(|| format!("{} is missing", key("attention.layer_norm_rms_epsilon")))?,
        rope_theta: get_f64("rope.freq_base")?.unwrap_or(10000.0),
        rope_scaling,
        max_position_embeddings: required("context_length")?,
        // llama.cpp writes `output.weight` only when the checkpoint has a separate lm_head.
        tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
        // Qwen2 always has q/k/v biases (its HF modeling code hard-codes them); a Qwen2 GGUF
        // without them fails at load, naming the missing tensor.
        attention_bias: arch == "qwen2" || content.tensor_infos.contains_key("blk.0.attn_q.bias"),
        bos_token_id: token_id("tokenizer.ggml.bos_token_id")?,
        eos_token_id: token_id("tokenizer.ggml.eos_token_id")?,
    };
    config.validate()?;
    Ok(config)
}
