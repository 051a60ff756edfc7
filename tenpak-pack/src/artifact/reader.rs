//! Reading an artifact: the manifest's format and version checked, every shard's size and
//! sha256 verified, then tensors decoded through the registry, as an [`ArtifactSource`] wherever a
//! model is expected.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use tenpak_api::registry::Registry;
use tenpak_api::{DType, Encoded, Part};
use tenpak_error::{Context, Result, bail};
use tenpak_model::chat::TemplateSource;
use tenpak_model::{ModelConfig, ModelSource, TensorInfo, TokenizerSource};

use super::CHAT_TEMPLATE_FILE;
use super::manifest::{FORMAT, FORMAT_VERSION, Manifest, PartRecord, TensorRecord};
use super::safetensors_writer::{dtype_from_safetensors, sha256_file_named};

/// An artifact opened for reading, its shards verified.
pub struct Artifact {
    dir: PathBuf,
    /// What messages call `dir` (itself, or a name a server shows instead of its own paths).
    shown: PathBuf,
    manifest: Manifest,
    shards: Vec<Mmap>,
    /// Per shard: key -> (dtype, shape, byte range).
    index: Vec<HashMap<String, (DType, Vec<usize>, std::ops::Range<usize>)>>,
}

impl Artifact {
    /// Open `dir`: read the manifest, check its format and version, and verify every shard's size
    /// and sha256 before trusting anything in it.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_named(dir, dir)
    }

    /// [`Artifact::open`] of `dir`, called `shown` in every message (its files by their names
    /// under `shown`).
    pub fn open_named(dir: &Path, shown: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(dir.join("manifest.json")).with_context(|| {
            format!("{}: not a TenPak artifact (cannot read manifest.json)", shown.display())
        })?;
        let manifest_path = shown.join("manifest.json");
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
            if shard.file.contains("..") || Path::new(&shard.file).is_absolute() {
                bail!("{}: shard path `{}` escapes the artifact", manifest_path.display(), shard.file);
            }
            let (file_path, path) = (dir.join(&shard.file), shown.join(&shard.file));
            let len = std::fs::metadata(&file_path).with_context(|| format!("shard {}: missing", path.display()))?.len();
            if len != shard.bytes {
                bail!(
                    "shard {}: size {len} bytes, the manifest says {} ({})",
                    path.display(),
                    shard.bytes,
                    if len < shard.bytes { "the file is truncated" } else { "the file has extra bytes" }
                );
            }
            let sha = sha256_file_named(&file_path, &format!("shard {}", path.display()))?;
            if sha != shard.sha256 {
                bail!(
                    "shard {}: sha256 {sha} does not match the manifest's {}: the file is corrupt or was modified",
                    path.display(),
                    shard.sha256
                );
            }
            let file = File::open(&file_path).with_context(|| format!("shard {}: cannot open", path.display()))?;
            // SAFETY: the map is read-only and the file was just verified; TenPak never writes to
            // a finished artifact. A concurrent external writer could still change the bytes
            // under us, which is the usual caveat of memory-mapped reads.
            let map = unsafe { Mmap::map(&file) }.with_context(|| format!("mapping {}", path.display()))?;
            index.push(parse_index(&map, &path)?);
            shards.push(map);
        }
        Ok(Self { dir: dir.to_owned(), shown: shown.to_owned(), manifest, shards, index })
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
            .with_context(|| format!("{}: no tensor `{name}` in the artifact", self.shown.display()))
    }

    fn part_bytes(&self, part: &PartRecord) -> Result<(DType, Vec<usize>, &[u8])> {
        let (dtype, shape, range) = self
            .index
            .get(part.shard)
            .and_then(|i| i.get(&part.key))
            .with_context(|| format!("{}: shard {} has no tensor `{}`", self.shown.display(), part.shard, part.key))?;
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
        Self::open_named(dir, dir, registry)
    }

    /// [`ArtifactSource::open`] of `dir`, called `shown` in every message and by
    /// [`ModelSource::path`].
    pub fn open_named(dir: &Path, shown: &Path, registry: std::sync::Arc<Registry>) -> Result<Self> {
        let artifact = Artifact::open_named(dir, shown)?;
        for t in &artifact.manifest.tensors {
            if let Some(id) = &t.codec {
                registry.codec(id).with_context(|| {
                    format!(
                        "{}: tensor `{}` needs codec `{id}`{}",
                        shown.display(),
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
        &self.artifact.shown
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
    fn chat_template(&self) -> Result<Option<TemplateSource>> {
        let path = self.artifact.dir.join(CHAT_TEMPLATE_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let origin = self.artifact.shown.join(CHAT_TEMPLATE_FILE).display().to_string();
        let template = std::fs::read_to_string(&path).with_context(|| format!("reading {origin}"))?;
        Ok(Some(TemplateSource { template, origin, bos_token: None, eos_token: None }))
    }
    fn config_json(&self) -> Result<String> {
        let path = self.artifact.dir.join("config.json");
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", self.artifact.shown.join("config.json").display()))
    }
    fn files(&self) -> Vec<PathBuf> {
        self.artifact.manifest.shards.iter().map(|s| self.artifact.dir.join(&s.file)).collect()
    }
}
