//! Safetensors input: a Hugging Face model directory (`config.json` + `model.safetensors`, or
//! shards listed in `model.safetensors.index.json`) or a single `.safetensors` file with
//! `config.json` beside it.
//!
//! Every shard is memory-mapped and its header checked at open: each tensor's byte range must lie
//! inside the file and match its dtype and shape. A truncated download or a corrupt header is
//! reported then, naming the file and tensor, instead of as a fault halfway through a pack.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use tenpak_error::{Context, bail};
use memmap2::Mmap;
use safetensors::Dtype;

use super::chat::TemplateSource;
use super::{ModelConfig, ModelSource, SourceDType, TensorInfo, TokenizerSource};

/// safetensors' own limit on the JSON header (100 MB); larger values mean a corrupt length.
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Paths under a model directory as messages show them: `real` is where the files are, `shown`
/// what messages call that directory (itself, for the CLI; a name under a model root, for a
/// server that must not show its own paths).
struct Names {
    real: PathBuf,
    shown: PathBuf,
}

impl Names {
    /// What messages call `path` (a path under the real directory, or the directory itself).
    fn of(&self, path: &Path) -> PathBuf {
        match path.strip_prefix(&self.real) {
            Ok(rest) if rest.as_os_str().is_empty() => self.shown.clone(),
            Ok(rest) => self.shown.join(rest),
            Err(_) => path.to_path_buf(),
        }
    }
}

/// A safetensors model opened for reading.
pub struct SafetensorsModel {
    /// What messages and [`ModelSource::path`] call the model.
    path: PathBuf,
    config: ModelConfig,
    config_text: String,
    /// config.json, the index if any, then the shards: every file read.
    files: Vec<PathBuf>,
    shards: Vec<Shard>,
    tensors: Vec<TensorInfo>,
    entries: HashMap<String, Entry>,
    tokenizer: TokenizerSource,
    /// The directory the model's side files (tokenizer_config.json, chat_template.jinja) are read
    /// from, real and as messages name it.
    dir: Names,
}

struct Shard {
    path: PathBuf,
    mmap: Mmap,
}

/// Where one tensor's bytes are, checked against the file size at open.
struct Entry {
    shard: usize,
    dtype: FloatType,
    start: usize,
    len: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum FloatType {
    F32,
    F16,
    BF16,
}

impl FloatType {
    fn bytes(self) -> usize {
        match self {
            FloatType::F32 => 4,
            FloatType::F16 | FloatType::BF16 => 2,
        }
    }
    fn name(self) -> &'static str {
        match self {
            FloatType::F32 => "f32",
            FloatType::F16 => "f16",
            FloatType::BF16 => "bf16",
        }
    }
}

/// One shard's tensors as its header lists them, in file order.
struct ShardHeader {
    tensors: Vec<(String, FloatType, Vec<usize>, usize, usize)>,
}

impl SafetensorsModel {
    /// Open a Hugging Face model directory: `config.json` plus `model.safetensors.index.json`
    /// (sharded) or `model.safetensors`.
    pub fn open_dir(dir: &Path) -> tenpak_error::Result<SafetensorsModel> {
        Self::open_dir_named(dir, dir)
    }

    /// [`SafetensorsModel::open_dir`] of `dir`, called `shown` in every message and by
    /// [`ModelSource::path`] (its files by their names under `shown`).
    pub fn open_dir_named(dir: &Path, shown: &Path) -> tenpak_error::Result<SafetensorsModel> {
        let names = Names { real: dir.to_path_buf(), shown: shown.to_path_buf() };
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            bail!(
                "{}: no config.json in this directory (a Hugging Face model directory holds config.json beside its *.safetensors)",
                shown.display()
            );
        }
        let index_path = dir.join("model.safetensors.index.json");
        let single_path = dir.join("model.safetensors");
        if index_path.is_file() {
            let text = std::fs::read_to_string(&index_path)
                .with_context(|| format!("{}: cannot read", names.of(&index_path).display()))?;
            let weight_map = parse_index(&text, &names.of(&index_path))?;
            let shard_names: BTreeSet<&String> = weight_map.values().collect();
            let shard_paths: Vec<PathBuf> = shard_names.iter().map(|n| dir.join(n)).collect();
            for (name, file) in &weight_map {
                if !dir.join(file).is_file() {
                    bail!(
                        "{}: tensor '{name}' is in shard {file}, which does not exist in {}",
                        names.of(&index_path).display(),
                        shown.display()
                    );
                }
            }
            let model = Self::open_parts(&names, &config_path, Some(&index_path), &shard_paths)?;
            for (name, file) in &weight_map {
                let entry = model.entries.get(name).with_context(|| {
                    format!(
                        "{}: lists tensor '{name}' in {file}, but that shard has no such tensor",
                        names.of(&index_path).display()
                    )
                })?;
                let actual = &model.shards[entry.shard].path;
                if actual != &dir.join(file) {
                    bail!(
                        "{}: lists tensor '{name}' in {file}, but it is in {}",
                        names.of(&index_path).display(),
                        names.of(actual).display()
                    );
                }
            }
            Ok(model)
        } else if single_path.is_file() {
            Self::open_parts(&names, &config_path, None, &[single_path])
        } else {
            let found: Vec<String> = std::fs::read_dir(dir)
                .with_context(|| format!("{}: cannot list", shown.display()))?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".safetensors"))
                .collect();
            bail!(
                "{}: neither model.safetensors nor model.safetensors.index.json found ({})",
                shown.display(),
                if found.is_empty() {
                    "no *.safetensors files at all".to_owned()
                } else {
                    format!("found {}", found.join(", "))
                }
            );
        }
    }

    /// Open one `.safetensors` file; the model's `config.json` must sit in the same directory.
    pub fn open_file(path: &Path) -> tenpak_error::Result<SafetensorsModel> {
        Self::open_file_named(path, path)
    }

    /// [`SafetensorsModel::open_file`] of `path`, called `shown` in every message and by
    /// [`ModelSource::path`] (its `config.json` as the one beside `shown`).
    pub fn open_file_named(path: &Path, shown: &Path) -> tenpak_error::Result<SafetensorsModel> {
        if !path.is_file() {
            bail!("{}: no such file", shown.display());
        }
        let dir = path.parent().map_or_else(
            || PathBuf::from("."),
            |p| {
                if p.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    p.to_path_buf()
                }
            },
        );
        let names = Names { real: dir.clone(), shown: shown.parent().unwrap_or(Path::new("")).to_path_buf() };
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            bail!(
                "{}: no config.json beside it (expected {}); a single .safetensors file needs the model's config.json in the same directory",
                shown.display(),
                names.of(&config_path).display()
            );
        }
        let mut model = Self::open_parts(&names, &config_path, None, &[path.to_path_buf()])?;
        model.path = shown.to_path_buf();
        Ok(model)
    }

    fn open_parts(
        names: &Names,
        config_path: &Path,
        index_path: Option<&Path>,
        shard_paths: &[PathBuf],
    ) -> tenpak_error::Result<SafetensorsModel> {
        let dir = &names.real;
        let config_text = std::fs::read_to_string(config_path)
            .with_context(|| format!("{}: cannot read", names.of(config_path).display()))?;
        let config = ModelConfig::from_hf_config_json(&config_text, &names.of(config_path))?;

        let mut shards = Vec::with_capacity(shard_paths.len());
        let mut tensors = Vec::new();
        let mut entries: HashMap<String, Entry> = HashMap::new();
        for (shard_index, shard_path) in shard_paths.iter().enumerate() {
            let shown = names.of(shard_path);
            let file = File::open(shard_path).with_context(|| format!("{}: cannot open", shown.display()))?;
            // SAFETY: the map is read-only and lives as long as the model; we never hand out
            // mutable access. Another process truncating or rewriting the file while it is open
            // is outside what Rust can guard against (TenPak never modifies model files).
            let mmap =
                unsafe { Mmap::map(&file) }.with_context(|| format!("{}: cannot memory-map", shown.display()))?;
            let header = read_header(&mmap, &shown)?;
            for (name, dtype, shape, start, len) in header.tensors {
                if let Some(previous) = entries.get(&name) {
                    bail!(
                        "tensor '{name}' appears in both {} and {}",
                        names.of(shards.get(previous.shard).map_or(shard_path, |s: &Shard| &s.path)).display(),
                        shown.display()
                    );
                }
                tensors.push(TensorInfo {
                    name: name.clone(),
                    shape,
                    dtype: SourceDType::Float(dtype.name()),
                });
                entries.insert(
                    name,
                    Entry {
                        shard: shard_index,
                        dtype,
                        start,
                        len,
                    },
                );
            }
            shards.push(Shard {
                path: shard_path.clone(),
                mmap,
            });
        }

        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer = if tokenizer_path.is_file() {
            TokenizerSource::File(tokenizer_path)
        } else {
            TokenizerSource::Missing
        };
        let mut files = vec![config_path.to_path_buf()];
        files.extend(index_path.map(Path::to_path_buf));
        files.extend(shard_paths.iter().cloned());
        Ok(SafetensorsModel {
            path: names.shown.clone(),
            config,
            config_text,
            files,
            shards,
            tensors,
            entries,
            tokenizer,
            dir: Names { real: names.real.clone(), shown: names.shown.clone() },
        })
    }
}

/// Parse `model.safetensors.index.json`: tensor name -> shard file name.
fn parse_index(text: &str, path: &Path) -> tenpak_error::Result<HashMap<String, String>> {
    let root: serde_json::Value =
        serde_json::from_str(text).with_context(|| format!("{}: not valid JSON", path.display()))?;
    let map = root
        .get("weight_map")
        .and_then(|m| m.as_object())
        .with_context(|| format!("{}: no `weight_map` object", path.display()))?;
    map.iter()
        .map(|(name, file)| {
            let file = file
                .as_str()
                .with_context(|| format!("{}: weight_map entry for '{name}' is not a file name", path.display()))?;
            // Shards live in the model directory; a path that leaves it is not a shard.
            if file.contains('/') || file.contains('\\') || file == ".." {
                bail!(
                    "{}: weight_map entry for '{name}' names {file:?}, not a file in this directory",
                    path.display()
                );
            }
            Ok((name.clone(), file.to_owned()))
        })
        .collect()
}

/// Parse and check one shard's header against the file: every tensor's bytes inside the file,
/// sized as its dtype and shape say, and only float dtypes. Returns absolute byte ranges.
fn read_header(mmap: &[u8], path: &Path) -> tenpak_error::Result<ShardHeader> {
    let file_name = path.display();
    let file_len = mmap.len() as u64;
    if file_len < 8 {
        bail!("{file_name}: truncated: {file_len} bytes, too short for the 8-byte header length");
    }
    let header_len = u64::from_le_bytes(mmap[..8].try_into().expect("8 bytes"));
    if header_len > MAX_HEADER_BYTES {
        bail!(
            "{file_name}: header length {header_len} exceeds safetensors' limit of {MAX_HEADER_BYTES} bytes (corrupt file)"
        );
    }
    if 8 + header_len > file_len {
        bail!(
            "{file_name}: truncated: the header claims {header_len} bytes but the file has only {} after the length field",
            file_len - 8
        );
    }
    let data_start = 8 + header_len as usize;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&mmap[8..data_start])
        .with_context(|| format!("{file_name}: the safetensors header is not a JSON object"))?;

    let mut tensors = Vec::with_capacity(header.len());
    for (name, value) in header {
        if name == "__metadata__" {
            continue;
        }
        let info: safetensors::tensor::TensorInfo = serde_json::from_value(value)
            .with_context(|| format!("{file_name}: tensor '{name}': malformed header entry"))?;
        let dtype = match info.dtype {
            Dtype::F32 => FloatType::F32,
            Dtype::F16 => FloatType::F16,
            Dtype::BF16 => FloatType::BF16,
            other => bail!("{file_name}: tensor '{name}' has dtype {other:?}; supported: F32, F16, BF16"),
        };
        let (begin, end) = info.data_offsets;
        let numel = info.shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        let expected = numel.and_then(|n| n.checked_mul(dtype.bytes()));
        if end < begin || Some(end - begin) != expected {
            bail!(
                "{file_name}: tensor '{name}': data_offsets [{begin}, {end}) hold {} bytes but shape {:?} of {} needs {}",
                end.saturating_sub(begin),
                info.shape,
                dtype.name(),
                expected.map_or("more than fits in memory".to_owned(), |e| e.to_string())
            );
        }
        let absolute_end = (data_start as u64).checked_add(end as u64);
        if absolute_end.is_none_or(|e| e > file_len) {
            bail!(
                "{file_name}: tensor '{name}': data_offsets [{begin}, {end}) end past the end of the file \
                 ({} data bytes after the {data_start}-byte header): truncated file or corrupt header",
                file_len - data_start as u64
            );
        }
        tensors.push((name, dtype, info.shape, data_start + begin, end - begin));
    }
    // The crate's own check on top of ours: tensors contiguous, file fully covered.
    safetensors::SafeTensors::read_metadata(mmap)
        .map_err(|e| tenpak_error::err!("{file_name}: invalid safetensors file: {e}"))?;
    tensors.sort_by_key(|t| t.3);
    Ok(ShardHeader { tensors })
}

impl ModelSource for SafetensorsModel {
    fn path(&self) -> &Path {
        &self.path
    }
    fn format(&self) -> &'static str {
        "safetensors"
    }
    fn config(&self) -> &ModelConfig {
        &self.config
    }
    fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }
    fn load_f32(&self, name: &str) -> tenpak_error::Result<Vec<f32>> {
        let entry = self.entries.get(name).with_context(|| {
            format!(
                "{}: no tensor named '{name}' ({} tensors in this model)",
                self.path.display(),
                self.tensors.len()
            )
        })?;
        let mmap = &self.shards[entry.shard].mmap;
        let bytes = &mmap[entry.start..entry.start + entry.len];
        let values = match entry.dtype {
            FloatType::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            FloatType::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            FloatType::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        };
        super::release_pages(mmap, entry.start, entry.len);
        Ok(values)
    }
    fn tokenizer(&self) -> TokenizerSource {
        self.tokenizer.clone()
    }
    fn chat_template(&self) -> tenpak_error::Result<Option<TemplateSource>> {
        crate::chat::find_in_dir(&self.dir.real, &self.dir.shown)
    }
    fn config_json(&self) -> tenpak_error::Result<String> {
        Ok(self.config_text.clone())
    }
    fn files(&self) -> Vec<PathBuf> {
        self.files.clone()
    }
}
