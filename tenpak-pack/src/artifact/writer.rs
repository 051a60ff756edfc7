//! Writing an artifact: shards and side files in a temporary directory beside the destination,
//! the manifest last, then one rename into place.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use tenpak_api::{DType, Encoded};
use tenpak_error::{Context, Result, bail};

use super::manifest::{Manifest, PartRecord, SHARD_BYTES, ShardRecord, TensorRecord};
use super::safetensors_writer::{ShardWriter, WrittenShard};

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
