//! Artifact format v1: what `tenpak pack` writes and everything else reads.
//!
//! ```text
//! artifact/
//!   manifest.json                  see [`Manifest`]
//!   weights/shard_0.safetensors    packed parts keyed "<tensor name>.<part>"; raw tensors by name
//!   config.json, tokenizer.json    copied (or derived, for a GGUF source)
//! ```
//!
//! Writing happens in a hidden temporary directory beside the destination, which is renamed into
//! place only after every file is written and synced: a crash leaves a `.<name>.tmp-*` directory,
//! never a directory that looks like a finished artifact. Reading verifies the manifest version
//! and the size and sha256 of every shard before any tensor is trusted.

pub mod safetensors_writer;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use tenpak_error::{Context, Result, bail};
use memmap2::Mmap;
use serde::{Deserialize, Serialize};
use tenpak_api::registry::Registry;
use tenpak_api::{DType, Encoded, LayerRole, Params, Part};

use tenpak_model::{ModelConfig, ModelSource, TensorInfo, TokenizerSource};
use safetensors_writer::{ShardWriter, WrittenShard, dtype_from_safetensors, sha256_file};

/// The `format` field of every manifest.
pub const FORMAT: &str = "tenpak-artifact";
/// The artifact format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Shards are closed once they hold this many bytes of tensor data.
pub const SHARD_BYTES: u64 = 2 << 30;

/// `manifest.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`FORMAT_VERSION`] at writing time.
    pub format_version: u32,
    /// `tenpak <version>`.
    pub tool: String,
    /// Seconds since the Unix epoch when the artifact was finished.
    pub created_unix: u64,
    /// The model it was made from.
    pub source: SourceRecord,
    /// Hyper-parameters of the model (so readers need not parse `config.json`).
    pub model_config: ModelConfig,
    /// The preset, whole.
    pub preset: PresetRecord,
    /// Every tensor, in source order.
    pub tensors: Vec<TensorRecord>,
    /// Sizes and ratios.
    pub totals: Totals,
    /// Baseline and compressed perplexity, when `pack` evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<EvaluationRecord>,
    /// How calibration statistics were gathered (absent for calibration-free presets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<CalibrationRecord>,
    /// What a measuring allocator measured and chose (absent for rule-based presets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation: Option<crate::measure::AllocationRecord>,
    /// The weight shards with their hashes.
    pub shards: Vec<ShardRecord>,
}

/// Where the weights came from.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SourceRecord {
    /// Path as given.
    pub path: String,
    /// "safetensors" or "gguf".
    pub format: String,
    /// HF `model_type`.
    pub architecture: String,
    /// Storage types of the source's tensors with their counts (`{"q4_1": 210, "f32": 61}`).
    pub dtypes: BTreeMap<String, usize>,
    /// The source files and their sha256.
    pub files: Vec<FileRecord>,
}

/// A file and its hash.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FileRecord {
    /// File name.
    pub file: String,
    /// Size in bytes.
    pub bytes: u64,
    /// sha256, lowercase hex.
    pub sha256: String,
}

/// The preset an artifact was made with.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PresetRecord {
    /// Preset name.
    pub name: String,
    /// The preset file's text, whole.
    pub toml: String,
}

/// One stored part of a tensor.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PartRecord {
    /// Part name within the tensor.
    pub name: String,
    /// Key in the shard (`"<tensor>.<part>"`).
    pub key: String,
    /// Index into [`Manifest::shards`].
    pub shard: usize,
}

/// One tensor of the model.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TensorRecord {
    /// Hugging Face name.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Role in the model.
    pub role: LayerRole,
    /// Storage type in the source.
    pub source_dtype: String,
    /// Codec id, or `None` for a tensor stored as-is (f32, keyed by its own name).
    pub codec: Option<String>,
    /// Where the codec came from when the artifact was written (crate and version, or plugin
    /// library), so a reader missing it knows what to install.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codec_source: Option<String>,
    /// Codec parameters (empty for raw tensors).
    pub params: Params,
    /// Exact stored bits.
    pub bits: u64,
    /// `bits / numel`.
    pub bits_per_weight: f64,
    /// ‖W − Ŵ‖² / ‖W‖².
    pub rel_mse: f64,
    /// 10·log10(‖W‖² / ‖W − Ŵ‖²), dB (infinite when exact: stored as null).
    pub snr_db: Option<f64>,
    /// Stored parts.
    pub parts: Vec<PartRecord>,
}

impl TensorRecord {
    /// Number of elements (`usize::MAX` for a shape too large to exist, so it matches nothing).
    pub fn numel(&self) -> usize {
        self.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).unwrap_or(usize::MAX)
    }
}

/// Sizes and ratios.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Totals {
    /// Weights in the model.
    pub weights: u64,
    /// Stored bits over all tensors.
    pub bits: u64,
    /// `bits / weights`.
    pub bits_per_weight: f64,
    /// Weights in block linears (attention and MLP projections).
    pub linear_weights: u64,
    /// Stored bits of block linears.
    pub linear_bits: u64,
    /// `linear_bits / linear_weights`.
    pub linear_bits_per_weight: f64,
    /// Size of the tensors in the source's own storage types, bytes.
    pub source_bytes: u64,
    /// Size the model would have in fp16, bytes.
    pub fp16_bytes: u64,
    /// Stored tensor bytes in the artifact (`bits / 8`).
    pub stored_bytes: u64,
    /// `source_bytes / stored_bytes`.
    pub ratio_vs_source: f64,
    /// `fp16_bytes / stored_bytes`.
    pub ratio_vs_fp16: f64,
}

/// Perplexity before and after compression.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvaluationRecord {
    /// PPL of the source model.
    pub baseline_ppl: f64,
    /// PPL of the compressed model.
    pub compressed_ppl: f64,
    /// `100 · (compressed − baseline) / baseline`.
    pub delta_pct: f64,
    /// How the figures were measured (text, its sha256, ctx, windows, tokens scored).
    pub protocol: String,
}

/// The calibration behind a calibrated artifact.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CalibrationRecord {
    /// Calibrator ids that ran.
    pub calibrators: Vec<String>,
    /// The calibration text's path, as given.
    pub text: String,
    /// Its sha256.
    pub text_sha256: String,
    /// Windows used (the first this-many non-overlapping windows of the text).
    pub windows: usize,
    /// Tokens per window.
    pub ctx: usize,
    /// Wall time of calibration, encoding and evaluation together, in seconds.
    pub seconds: f64,
}

/// One weight shard.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShardRecord {
    /// Path relative to the artifact directory.
    pub file: String,
    /// Size in bytes.
    pub bytes: u64,
    /// sha256, lowercase hex.
    pub sha256: String,
}

/// Builds an artifact in a temporary directory; [`ArtifactWriter::commit`] moves it into place.
pub struct ArtifactWriter {
    dest: PathBuf,
    tmp: PathBuf,
    shard: Option<ShardWriter>,
    shards: Vec<WrittenShard>,
    records: Vec<TensorRecord>,
    committed: bool,
}

/// The temporary directory `.<name>.tmp-<pid>` beside `dest` that this process writes `dest`
/// in before renaming it into place: the parent is created, and temporaries of `dest` that killed
/// processes left behind are removed first.
pub fn temp_sibling(dest: &Path) -> Result<PathBuf> {
    let parent = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let name = dest.file_name().and_then(|n| n.to_str()).with_context(|| format!("{}: no file name", dest.display()))?;
    remove_stale_temporaries(parent, Some(name))?;
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.is_dir() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    } else if tmp.exists() {
        std::fs::remove_file(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    Ok(tmp)
}

/// Remove the temporaries (directories, or files for single-file outputs) `.<name>.tmp-<pid>` in `dir` (of `name` only, or of any)
/// whose process is no longer alive on this host: what a `kill -9` mid-write leaves.
pub fn remove_stale_temporaries(dir: &Path, name: Option<&str>) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for entry in entries {
        let entry = entry?;
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some((stem, pid)) = file_name.strip_prefix('.').and_then(|n| n.rsplit_once(".tmp-")) else { continue };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        let dead = pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists();
        if dead && name.is_none_or(|n| n == stem) {
            let removed = if entry.file_type()?.is_dir() {
                std::fs::remove_dir_all(entry.path())
            } else {
                std::fs::remove_file(entry.path())
            };
            removed.with_context(|| format!("removing {}", entry.path().display()))?;
        }
    }
    Ok(())
}

impl ArtifactWriter {
    /// Start an artifact that will live at `dest`. Fails if `dest` exists, unless `replace`.
    pub fn create(dest: &Path, replace: bool) -> Result<Self> {
        if dest.exists() && !replace {
            bail!("{} already exists (pass --force to replace it)", dest.display());
        }
        let tmp = temp_sibling(dest)?;
        std::fs::create_dir_all(tmp.join("weights")).with_context(|| format!("creating {}", tmp.display()))?;
        Ok(Self { dest: dest.to_owned(), tmp, shard: None, shards: Vec::new(), records: Vec::new(), committed: false })
    }

    /// The temporary directory being written (for tests that simulate a crash).
    pub fn temp_dir(&self) -> &Path {
        &self.tmp
    }

    fn shard(&mut self) -> Result<(usize, &mut ShardWriter)> {
        let full = self.shard.as_ref().is_some_and(|s| s.data_bytes() >= SHARD_BYTES);
        if full {
            let done = self.shard.take().expect("checked above").finish(&BTreeMap::new())?;
            self.shards.push(done);
        }
        if self.shard.is_none() {
            let path = self.tmp.join("weights").join(format!("shard_{}.safetensors", self.shards.len()));
            self.shard = Some(ShardWriter::create(&path)?);
        }
        Ok((self.shards.len(), self.shard.as_mut().expect("just set")))
    }

    /// Store an encoded tensor; `record` is completed with its parts.
    pub fn add_encoded(&mut self, mut record: TensorRecord, encoded: &Encoded) -> Result<()> {
        let (index, shard) = self.shard()?;
        for part in &encoded.parts {
            let key = format!("{}.{}", record.name, part.name);
            shard.add(&key, part.dtype, &part.shape, &part.data)?;
            record.parts.push(PartRecord { name: part.name.clone(), key, shard: index });
        }
        self.records.push(record);
        Ok(())
    }

    /// Store a tensor as-is in f32, keyed by its own name.
    pub fn add_raw(&mut self, mut record: TensorRecord, values: &[f32]) -> Result<()> {
        let (index, shard) = self.shard()?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        shard.add(&record.name, DType::F32, &record.shape, &bytes)?;
        record.parts.push(PartRecord { name: String::new(), key: record.name.clone(), shard: index });
        self.records.push(record);
        Ok(())
    }

    /// Write a side file (config.json, tokenizer.json) into the artifact.
    pub fn add_file(&mut self, name: &str, contents: &[u8]) -> Result<()> {
        std::fs::write(self.tmp.join(name), contents).with_context(|| format!("writing {name}"))
    }

    /// Records so far.
    pub fn records(&self) -> &[TensorRecord] {
        &self.records
    }

    /// Close the shards, write the manifest (filling in tensors and shards), sync, and rename the
    /// directory into place.
    pub fn commit(self, manifest: Manifest) -> Result<Manifest> {
        self.finish(manifest)?.publish()
    }

    /// Close the shards and write the manifest (filling in tensors and shards), but leave the
    /// artifact in its temporary directory: complete and readable there, not yet at its
    /// destination. [`Staged::publish`] moves it into place; dropping it removes it.
    pub fn finish(mut self, mut manifest: Manifest) -> Result<Staged> {
        if let Some(shard) = self.shard.take() {
            self.shards.push(shard.finish(&BTreeMap::new())?);
        }
        manifest.tensors = std::mem::take(&mut self.records);
        manifest.shards = self
            .shards
            .iter()
            .map(|s| ShardRecord {
                file: format!("weights/{}", s.path.file_name().and_then(|n| n.to_str()).unwrap_or_default()),
                bytes: s.bytes,
                sha256: s.sha256.clone(),
            })
            .collect();
        let staged = Staged { dir: self.tmp.clone(), dest: self.dest.clone(), manifest, published: false };
        staged.write_manifest()?;
        // The staged directory now owns the temporary directory.
        self.committed = true;
        Ok(staged)
    }
}

/// A finished artifact in its temporary directory, waiting to be moved into place.
pub struct Staged {
    dir: PathBuf,
    dest: PathBuf,
    manifest: Manifest,
    published: bool,
}

impl Staged {
    /// The temporary directory: a complete artifact that [`Artifact::open`] reads.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest written.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Replace the manifest (to add figures measured on the staged artifact).
    pub fn set_manifest(&mut self, manifest: Manifest) -> Result<()> {
        self.manifest = manifest;
        self.write_manifest()
    }

    fn write_manifest(&self) -> Result<()> {
        let path = self.dir.join("manifest.json");
        let tmp = self.dir.join(".manifest.json.tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(&self.manifest)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// Rename the directory to its destination (replacing an existing artifact there, which
    /// [`ArtifactWriter::create`] allowed), and return the manifest.
    pub fn publish(mut self) -> Result<Manifest> {
        if self.dest.exists() {
            let old = self.dir.with_extension("old");
            std::fs::rename(&self.dest, &old).with_context(|| format!("moving the old {} aside", self.dest.display()))?;
            std::fs::rename(&self.dir, &self.dest)?;
            std::fs::remove_dir_all(&old)?;
        } else {
            std::fs::rename(&self.dir, &self.dest)
                .with_context(|| format!("renaming {} to {}", self.dir.display(), self.dest.display()))?;
        }
        self.published = true;
        Ok(self.manifest.clone())
    }
}

impl Drop for Staged {
    /// A staged artifact never published (an error or a cancellation after it was finished) is
    /// removed.
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for ArtifactWriter {
    /// An abandoned writer (an error, not a crash) removes its temporary directory.
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

/// An artifact opened for reading, its shards verified.
pub struct Artifact {
    dir: PathBuf,
    manifest: Manifest,
    shards: Vec<Mmap>,
    /// Per shard: key -> (dtype, shape, byte range).
    index: Vec<HashMap<String, (DType, Vec<usize>, std::ops::Range<usize>)>>,
}

impl Artifact {
    /// Open `dir`: read the manifest, check its format and version, and verify every shard's size
    /// and sha256 before trusting anything in it.
    pub fn open(dir: &Path) -> Result<Self> {
        let manifest_path = dir.join("manifest.json");
        let text = std::fs::read_to_string(&manifest_path).with_context(|| {
            format!("{}: not a TenPak artifact (cannot read manifest.json)", dir.display())
        })?;
        let probe: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid JSON", manifest_path.display()))?;
        if probe.get("format").and_then(|v| v.as_str()) != Some(FORMAT) {
            bail!("{}: not a TenPak manifest (`format` is not \"{FORMAT}\")", manifest_path.display());
        }
        let version = probe.get("format_version").and_then(|v| v.as_u64());
        if version != Some(FORMAT_VERSION as u64) {
            bail!(
                "{}: artifact format version {} is not supported (this build reads version {FORMAT_VERSION})",
                manifest_path.display(),
                version.map_or("(missing)".to_string(), |v| v.to_string())
            );
        }
        let manifest: Manifest = serde_json::from_value(probe)
            .with_context(|| format!("{}: malformed manifest", manifest_path.display()))?;
        let mut shards = Vec::new();
        let mut index = Vec::new();
        for shard in &manifest.shards {
            let path = dir.join(&shard.file);
            if shard.file.contains("..") || Path::new(&shard.file).is_absolute() {
                bail!("{}: shard path `{}` escapes the artifact", manifest_path.display(), shard.file);
            }
            let len = std::fs::metadata(&path).with_context(|| format!("shard {}: missing", path.display()))?.len();
            if len != shard.bytes {
                bail!(
                    "shard {}: size {len} bytes, the manifest says {} ({})",
                    path.display(),
                    shard.bytes,
                    if len < shard.bytes { "the file is truncated" } else { "the file has extra bytes" }
                );
            }
            let sha = sha256_file(&path)?;
            if sha != shard.sha256 {
                bail!(
                    "shard {}: sha256 {sha} does not match the manifest's {}: the file is corrupt or was modified",
                    path.display(),
                    shard.sha256
                );
            }
            let file = File::open(&path)?;
            // SAFETY: the map is read-only and the file was just verified; TenPak never writes to
            // a finished artifact. A concurrent external writer could still change the bytes
            // under us, which is the usual caveat of memory-mapped reads.
            let map = unsafe { Mmap::map(&file) }.with_context(|| format!("mapping {}", path.display()))?;
            index.push(parse_index(&map, &path)?);
            shards.push(map);
        }
        Ok(Self { dir: dir.to_owned(), manifest, shards, index })
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The artifact directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The record of tensor `name`.
    pub fn record(&self, name: &str) -> Result<&TensorRecord> {
        self.manifest
            .tensors
            .iter()
            .find(|t| t.name == name)
            .with_context(|| format!("{}: no tensor `{name}` in the artifact", self.dir.display()))
    }

    fn part_bytes(&self, part: &PartRecord) -> Result<(DType, Vec<usize>, &[u8])> {
        let (dtype, shape, range) = self
            .index
            .get(part.shard)
            .and_then(|i| i.get(&part.key))
            .with_context(|| format!("{}: shard {} has no tensor `{}`", self.dir.display(), part.shard, part.key))?;
        Ok((*dtype, shape.clone(), &self.shards[part.shard][range.clone()]))
    }

    /// The stored form of an encoded tensor.
    pub fn encoded(&self, name: &str) -> Result<Encoded> {
        let record = self.record(name)?;
        let codec = record.codec.clone().with_context(|| format!("tensor `{name}` is stored raw, not encoded"))?;
        if record.shape.len() != 2 {
            bail!("tensor `{name}`: encoded tensors are 2-D, the manifest says {:?}", record.shape);
        }
        let parts = record
            .parts
            .iter()
            .map(|p| {
                let (dtype, shape, bytes) = self.part_bytes(p)?;
                Ok(Part::new(&p.name, dtype, shape, bytes.to_vec())?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Encoded { codec, params: record.params.clone(), shape: [record.shape[0], record.shape[1]], parts })
    }

    /// Tensor `name` as f32: decoded through its codec from `registry`, or read as-is.
    pub fn load_f32(&self, name: &str, registry: &Registry) -> Result<Vec<f32>> {
        let record = self.record(name)?;
        match &record.codec {
            None => {
                let part = record.parts.first().with_context(|| format!("tensor `{name}`: no stored data"))?;
                let (dtype, _, bytes) = self.part_bytes(part)?;
                if dtype != DType::F32 {
                    bail!("raw tensor `{name}`: expected f32, found {}", dtype.name());
                }
                Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
            }
            Some(id) => {
                let codec = registry.codec(id).with_context(|| {
                    let written_by = record.codec_source.as_ref().map_or(String::new(), |s| format!(" (written by {s})"));
                    format!("decoding tensor `{name}`: it needs codec `{id}`{written_by}")
                })?;
                let encoded = self.encoded(name)?;
                let values = codec.decode(&encoded).with_context(|| format!("decoding tensor `{name}` ({id})"))?;
                if values.len() != record.numel() {
                    bail!("decoding tensor `{name}` ({id}): got {} values for shape {:?}", values.len(), record.shape);
                }
                Ok(values)
            }
        }
    }
}

fn parse_index(map: &[u8], path: &Path) -> Result<HashMap<String, (DType, Vec<usize>, std::ops::Range<usize>)>> {
    let (n, meta) = safetensors::SafeTensors::read_metadata(map)
        .map_err(|e| tenpak_error::err!("shard {}: not a valid safetensors file: {e}", path.display()))?;
    let data_start = 8 + n;
    let mut out = HashMap::new();
    for (key, info) in meta.tensors() {
        let dtype = dtype_from_safetensors(&format!("{:?}", info.dtype))
            .with_context(|| format!("shard {}: tensor `{key}` has unsupported dtype {:?}", path.display(), info.dtype))?;
        let (s, e) = info.data_offsets;
        out.insert(key, (dtype, info.shape.clone(), data_start + s..data_start + e));
    }
    Ok(out)
}

/// An artifact seen as a model: tensors decode through the registry on load, so `eval` and the
/// runtime treat it like any other source.
pub struct ArtifactSource {
    artifact: Artifact,
    registry: std::sync::Arc<Registry>,
    infos: Vec<TensorInfo>,
}

impl ArtifactSource {
    /// Open `dir` and check that every codec it uses is registered, so a missing codec is
    /// reported before any work rather than halfway through.
    pub fn open(dir: &Path, registry: std::sync::Arc<Registry>) -> Result<Self> {
        let artifact = Artifact::open(dir)?;
        for t in &artifact.manifest.tensors {
            if let Some(id) = &t.codec {
                registry.codec(id).with_context(|| {
                    format!(
                        "{}: tensor `{}` needs codec `{id}`{}",
                        dir.display(),
                        t.name,
                        t.codec_source.as_ref().map_or(String::new(), |s| format!(" (written by {s})"))
                    )
                })?;
            }
        }
        let infos = artifact
            .manifest
            .tensors
            .iter()
            .map(|t| TensorInfo {
                name: t.name.clone(),
                shape: t.shape.clone(),
                dtype: tenpak_model::SourceDType::Float("f32"),
            })
            .collect();
        Ok(Self { artifact, registry, infos })
    }

    /// The underlying artifact.
    pub fn artifact(&self) -> &Artifact {
        &self.artifact
    }
}

impl ModelSource for ArtifactSource {
    fn path(&self) -> &Path {
        &self.artifact.dir
    }
    fn format(&self) -> &'static str {
        "tenpak-artifact"
    }
    fn config(&self) -> &ModelConfig {
        &self.artifact.manifest.model_config
    }
    fn tensors(&self) -> &[TensorInfo] {
        &self.infos
    }
    fn load_f32(&self, name: &str) -> Result<Vec<f32>> {
        self.artifact.load_f32(name, &self.registry)
    }
    fn tokenizer(&self) -> TokenizerSource {
        let path = self.artifact.dir.join("tokenizer.json");
        if path.exists() { TokenizerSource::File(path) } else { TokenizerSource::Missing }
    }
    fn config_json(&self) -> Result<String> {
        let path = self.artifact.dir.join("config.json");
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    }
    fn files(&self) -> Vec<PathBuf> {
        self.artifact.manifest.shards.iter().map(|s| self.artifact.dir.join(&s.file)).collect()
    }
}
