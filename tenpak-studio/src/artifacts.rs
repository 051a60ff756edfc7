//! Where finished artifacts live: an [`object_store`] — the local directory `data_dir/artifacts`
//! by default, any directory by `file://`, or S3-compatible storage by `s3://bucket/prefix` — so
//! moving artifacts to a bucket is a change of configuration.
//!
//! An artifact is the objects `<prefix>/<id>.tenpak/<file>`, `manifest.json` among them. A pack
//! is always written to a local directory by the artifact writer's temp-directory-then-rename:
//! on the filesystem store that directory is the store itself; otherwise it is
//! `data_dir/staging`, and [`ArtifactStore::publish`] uploads the files, `manifest.json` last, so
//! an artifact whose upload was cut short has no manifest and is not there. Downloads are read
//! back through the store as a deterministic tar ([`write_tar`]); evaluating a job's artifact
//! on S3 fetches a copy into `data_dir/cache` first.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tenpak_error::{Context, Kind, Result, bail};
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// `[artifacts]` in `studio.toml`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactsConfig {
    /// `file:///dir` or `s3://bucket/prefix`; default the directory `data_dir/artifacts`.
    #[serde(default)]
    pub url: Option<String>,
    /// Store options by object_store's names (`endpoint`, `region`, `allow_http`,
    /// `access_key_id`, `secret_access_key`, …); S3 also reads the usual `AWS_*` variables.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// The artifact store and the local directories around it.
pub struct ArtifactStore {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    /// Where packs are written: the store's directory, or `data_dir/staging`.
    work: PathBuf,
    /// Whether `work` is the store itself.
    local: bool,
    /// Where copies fetched from a remote store go.
    cache: PathBuf,
    /// For messages.
    shown: String,
}

/// An object store failure as a TenPak error: a missing object is [`Kind::NotFound`], anything
/// else (a store that does not answer, refuses the credentials, times out) is
/// [`Kind::Unavailable`]: not the request's fault, and gone once the store is back.
fn store_error(error: object_store::Error) -> tenpak_error::Error {
    let kind = match error {
        object_store::Error::NotFound { .. } => Kind::NotFound,
        _ => Kind::Unavailable,
    };
    kind.tag(error)
}

/// One file of an artifact: its path inside the artifact and its size.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    /// `manifest.json`, `shard-00000.safetensors`, ….
    pub name: String,
    /// Bytes.
    pub size: u64,
}

impl ArtifactStore {
    /// Open the store `config` names (checking that it answers), creating the local directories.
    pub async fn open(config: &ArtifactsConfig, data_dir: &Path) -> Result<Self> {
        let cache = data_dir.join("cache");
        let staging = data_dir.join("staging");
        let (store, prefix, work, local, shown): (Arc<dyn ObjectStore>, _, _, _, _) = match config.url.as_deref() {
            None => {
                if !config.options.is_empty() {
                    bail!("[artifacts] options are for a `url`; the default local directory takes none");
                }
                let dir = data_dir.join("artifacts");
                std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
                (Arc::new(LocalFileSystem::new_with_prefix(&dir)?), ObjectPath::default(), dir.clone(), true, dir.display().to_string())
            }
            Some(text) => {
                let url = url::Url::parse(text).with_context(|| format!("[artifacts] url `{text}`"))?;
                match url.scheme() {
                    "file" => {
                        if !config.options.is_empty() {
                            bail!("[artifacts] options are for s3:// urls; `{text}` takes none");
                        }
                        let dir = url.to_file_path().map_err(|()| tenpak_error::err!("[artifacts] url `{text}` is not a local path"))?;
                        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
                        (Arc::new(LocalFileSystem::new_with_prefix(&dir)?), ObjectPath::default(), dir, true, text.to_owned())
                    }
                    "s3" | "s3a" => {
                        let mut builder = AmazonS3Builder::from_env().with_url(text);
                        for (key, value) in &config.options {
                            let parsed: AmazonS3ConfigKey =
                                key.to_ascii_lowercase().parse().map_err(|_| tenpak_error::err!("[artifacts.options] `{key}` is not an S3 option"))?;
                            builder = builder.with_config(parsed, value);
                        }
                        let store = builder.build().with_context(|| format!("[artifacts] url `{text}`"))?;
                        let prefix = ObjectPath::parse(url.path()).with_context(|| format!("[artifacts] url `{text}`"))?;
                        (Arc::new(store), prefix, staging.clone(), false, text.to_owned())
                    }
                    other => bail!("[artifacts] url `{text}`: scheme `{other}` is not supported (file:// or s3://)"),
                }
            }
        };
        for dir in [&work, &cache] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let this = ArtifactStore { store, prefix, work, local, cache, shown };
        // Fail at start, not at the first finished job, when the store does not answer.
        this.store.list_with_delimiter(Some(&this.prefix)).await.map_err(store_error).with_context(|| format!("artifact store {}", this.shown))?;
        Ok(this)
    }

    /// The directories a killed server may have left temporaries in.
    pub fn local_dirs(&self) -> [&Path; 2] {
        [&self.work, &self.cache]
    }

    /// Where job `id`'s pack is written.
    pub fn work_dir(&self, id: &str) -> PathBuf {
        self.work.join(format!("{id}.tenpak"))
    }

    fn object(&self, id: &str, name: &str) -> ObjectPath {
        let mut path = self.prefix.clone().join(format!("{id}.tenpak"));
        for part in name.split('/') {
            path = path.join(part);
        }
        path
    }

    /// Put the pack in [`Self::work_dir`] into the store (nothing to do on the filesystem store).
    /// An upload cut short (the store went away) removes what it uploaded and the staged pack:
    /// a failed job leaves nothing behind, here or there.
    pub async fn publish(&self, id: &str) -> Result<()> {
        if self.local {
            return Ok(());
        }
        let dir = self.work_dir(id);
        let uploaded = self.upload(id, &dir).await;
        if uploaded.is_err() {
            self.discard(id).await;
            return uploaded;
        }
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing the staged pack of {id}"))?;
        Ok(())
    }

    async fn upload(&self, id: &str, dir: &Path) -> Result<()> {
        let mut names = list_files(dir).with_context(|| format!("listing the staged pack of {id}"))?;
        // The manifest last: an upload cut short leaves an artifact that is not there.
        names.sort_by_key(|name| (name == "manifest.json", name.clone()));
        for name in &names {
            let mut file = tokio::fs::File::open(dir.join(name)).await.with_context(|| format!("reading {name} of the staged pack of {id}"))?;
            let mut upload = BufWriter::new(self.store.clone(), self.object(id, name));
            // A copy cut short aborts the upload (a multipart upload shut down would be
            // completed, truncated); only a whole copy is finished.
            let uploaded = match tokio::io::copy(&mut file, &mut upload).await {
                Ok(_) => upload.shutdown().await,
                Err(e) => {
                    let _ = upload.abort().await;
                    Err(e)
                }
            };
            uploaded.kind(Kind::Unavailable).with_context(|| format!("uploading {name} of {id} to the artifact store"))?;
        }
        Ok(())
    }

    /// Remove whatever job `id` left of an artifact (a failed job must leave none): its local
    /// directory (the artifact itself on the filesystem store, the staged pack otherwise) and
    /// its objects in a remote store. Best effort: what cannot be removed now is logged (an
    /// object without `manifest.json` is not an artifact, and is never served).
    pub async fn discard(&self, id: &str) {
        let dir = self.work_dir(id);
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("studio: removing what job {id} left in {}: {e}", dir.display());
        }
        if self.local {
            return;
        }
        let root = self.prefix.clone().join(format!("{id}.tenpak"));
        let objects: Vec<_> = self.store.list(Some(&root)).collect().await;
        for meta in objects {
            let removed = match meta {
                Ok(meta) => self.store.delete(&meta.location).await,
                Err(e) => Err(e),
            };
            if let Err(e) = removed {
                eprintln!("studio: removing what job {id} left in {}: {e}", self.shown);
                return;
            }
        }
    }

    /// The bytes of one file of job `id`'s artifact (`manifest.json`, `tokenizer.json`), read
    /// through the store; `None` if the store has no such object.
    pub async fn read(&self, id: &str, name: &str) -> Result<Option<bytes::Bytes>> {
        match self.store.get(&self.object(id, name)).await {
            Ok(got) => Ok(Some(got.bytes().await.map_err(store_error).with_context(|| format!("reading {name} of {id}"))?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_error(e)).with_context(|| format!("reading {name} of {id}")),
        }
    }

    /// The files of job `id`'s artifact, sorted by name; `None` if it has no manifest.
    pub async fn entries(&self, id: &str) -> Result<Option<Vec<Entry>>> {
        let root = self.prefix.clone().join(format!("{id}.tenpak"));
        let mut listing = self.store.list(Some(&root));
        let mut entries = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(store_error).with_context(|| format!("listing {id} in the artifact store"))?;
            let Some(parts) = meta.location.prefix_match(&root) else { continue };
            let name = parts.map(|p| p.as_ref().to_owned()).collect::<Vec<_>>().join("/");
            entries.push(Entry { name, size: meta.size });
        }
        entries.sort();
        Ok(entries.iter().any(|e| e.name == "manifest.json").then_some(entries))
    }

    /// A reader of one file of job `id`'s artifact, for a blocking thread inside the runtime.
    pub fn reader(&self, id: &str, name: &str) -> Result<Box<dyn Read + Send>> {
        if self.local {
            let path = self.work_dir(id).join(name);
            return Ok(Box::new(std::fs::File::open(&path).with_context(|| format!("reading {}", path.display()))?));
        }
        let handle = tokio::runtime::Handle::current();
        let got = handle.block_on(self.store.get(&self.object(id, name))).map_err(store_error).with_context(|| format!("reading {name} of {id} from the artifact store"))?;
        Ok(Box::new(StreamReader { handle, stream: got.into_stream(), chunk: bytes::Bytes::new() }))
    }

    /// A local directory holding job `id`'s artifact (`None` if the store has none): the store's
    /// own on the filesystem, else a copy fetched into `data_dir/cache` (temp then rename).
    pub async fn local_copy(&self, id: &str) -> Result<Option<PathBuf>> {
        if self.local {
            let dir = self.work_dir(id);
            return Ok(dir.join("manifest.json").is_file().then_some(dir));
        }
        let dir = self.cache.join(format!("{id}.tenpak"));
        if dir.join("manifest.json").is_file() {
            return Ok(Some(dir));
        }
        let Some(entries) = self.entries(id).await? else { return Ok(None) };
        let temporary = self.cache.join(format!(".{id}.tenpak.tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&temporary);
        // A copy cut short (the store or the disk failed) leaves no temporary behind.
        if let Err(e) = self.fetch(id, &entries, &temporary).await {
            let _ = std::fs::remove_dir_all(&temporary);
            return Err(e);
        }
        if let Err(e) = std::fs::rename(&temporary, &dir) {
            let _ = std::fs::remove_dir_all(&temporary);
            if !dir.join("manifest.json").is_file() {
                return Err(e).with_context(|| format!("moving the copy of {id} into the cache"));
            } // else another job fetched it first
        }
        Ok(Some(dir))
    }

    async fn fetch(&self, id: &str, entries: &[Entry], temporary: &Path) -> Result<()> {
        for entry in entries {
            let path = temporary.join(&entry.name);
            let name = &entry.name;
            std::fs::create_dir_all(path.parent().expect("inside the temporary")).with_context(|| format!("copying {id} into the cache"))?;
            let mut file = tokio::fs::File::create(&path).await.with_context(|| format!("copying {name} of {id} into the cache"))?;
            let got = self.store.get(&self.object(id, name)).await.map_err(store_error).with_context(|| format!("fetching {name} of {id}"))?;
            let mut stream = got.into_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(store_error).with_context(|| format!("fetching {name} of {id}"))?;
                file.write_all(&chunk).await.with_context(|| format!("copying {name} of {id} into the cache"))?;
            }
            file.sync_all().await.with_context(|| format!("copying {name} of {id} into the cache"))?;
        }
        Ok(())
    }
}

/// Blocking reads of an object's byte stream.
struct StreamReader {
    handle: tokio::runtime::Handle,
    stream: BoxStream<'static, object_store::Result<bytes::Bytes>>,
    chunk: bytes::Bytes,
}

impl Read for StreamReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.handle.block_on(self.stream.next()) {
                Some(chunk) => self.chunk = chunk.map_err(std::io::Error::other)?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

/// The files under `dir`, as `/`-separated relative names.
pub fn list_files(dir: &Path) -> std::io::Result<Vec<String>> {
    fn walk(dir: &Path, relative: &str, out: &mut Vec<String>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let name = if relative.is_empty() { name } else { format!("{relative}/{name}") };
            if entry.file_type()?.is_dir() {
                walk(&entry.path(), &name, out)?;
            } else {
                out.push(name);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, "", &mut out)?;
    Ok(out)
}

/// The entries of the artifact in local directory `dir`.
pub fn local_entries(dir: &Path) -> std::io::Result<Vec<Entry>> {
    let mut entries = Vec::new();
    for name in list_files(dir)? {
        let size = std::fs::metadata(dir.join(&name))?.len();
        entries.push(Entry { name, size });
    }
    entries.sort();
    Ok(entries)
}

/// Write an artifact as a tar to `out`, every byte determined by the files alone (sorted
/// entries; fixed owner, mode and time), so the digest recorded when the job finished is the
/// digest of every later download, whichever store it comes from. Entries are under
/// `<id>.tenpak/`; `open` gives each file's bytes, which must be `size` long.
pub fn write_tar(
    id: &str,
    entries: &[Entry],
    mut open: impl FnMut(&str) -> std::io::Result<Box<dyn Read + Send>>,
    out: impl Write,
) -> std::io::Result<()> {
    let mut builder = tar::Builder::new(out);
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(entry.size);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        let reader = open(&entry.name)?.take(entry.size);
        builder.append_data(&mut header, format!("{id}.tenpak/{}", entry.name), reader)?;
    }
    builder.into_inner()?.flush()
}

/// Size and sha256 of the tar of the artifact in local directory `dir`.
pub fn tar_digest(dir: &Path, id: &str) -> std::io::Result<(u64, String)> {
    struct Hashing(Sha256, u64);
    impl Write for Hashing {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.update(buf);
            self.1 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut hashing = Hashing(Sha256::new(), 0);
    let entries = local_entries(dir)?;
    write_tar(id, &entries, |name| Ok(Box::new(std::fs::File::open(dir.join(name))?)), &mut hashing)?;
    Ok((hashing.1, tenpak_pack::artifact::safetensors_writer::hex(&hashing.0.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar written from the files equals the one read back through the filesystem store, and
    /// its digest is the one `tar_digest` announces; an artifact without manifest is not there.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tar_through_the_store_matches_the_files() {
        let data = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(&ArtifactsConfig::default(), data.path()).await.unwrap();
        let dir = store.work_dir("J1");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("manifest.json"), b"{}").unwrap();
        std::fs::write(dir.join("b.safetensors"), vec![7u8; 100_000]).unwrap();
        std::fs::write(dir.join("sub/x"), b"x").unwrap();
        let half = store.work_dir("J2");
        std::fs::create_dir_all(&half).unwrap();
        std::fs::write(half.join("a.safetensors"), b"a").unwrap();

        store.publish("J1").await.unwrap();
        let (bytes, sha) = tar_digest(&dir, "J1").unwrap();
        let entries = store.entries("J1").await.unwrap().unwrap();
        assert_eq!(entries, local_entries(&dir).unwrap());
        assert!(store.entries("J2").await.unwrap().is_none(), "no manifest, no artifact");
        assert!(store.local_copy("J2").await.unwrap().is_none());
        assert_eq!(store.local_copy("J1").await.unwrap(), Some(dir.clone()));

        let store = Arc::new(store);
        let tar = tokio::task::spawn_blocking({
            let store = store.clone();
            move || {
                let mut out = Vec::new();
                write_tar("J1", &entries, |name| store.reader("J1", name).map_err(|e| std::io::Error::other(e.into_std())), &mut out).unwrap();
                out
            }
        })
        .await
        .unwrap();
        assert_eq!(tar.len() as u64, bytes);
        assert_eq!(tenpak_pack::artifact::safetensors_writer::hex(&Sha256::digest(&tar)), sha);
        let names: Vec<String> =
            tar::Archive::new(tar.as_slice()).entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect();
        assert_eq!(names, ["J1.tenpak/b.safetensors", "J1.tenpak/manifest.json", "J1.tenpak/sub/x"]);
    }

    #[tokio::test]
    async fn refuses_what_it_cannot_store_to() {
        let data = tempfile::tempdir().unwrap();
        let open = |url: &str, options: &[(&str, &str)]| {
            let config = ArtifactsConfig {
                url: Some(url.to_owned()),
                options: options.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            };
            let dir = data.path().to_owned();
            async move { ArtifactStore::open(&config, &dir).await.err().map(|e| format!("{e:#}")) }
        };
        assert!(open("gs://bucket", &[]).await.unwrap().contains("scheme `gs`"));
        assert!(open("not a url", &[]).await.unwrap().contains("not a url"));
        assert!(open("s3://bucket/p", &[("colour", "red")]).await.unwrap().contains("`colour` is not an S3 option"));
        let file = format!("file://{}", data.path().join("elsewhere").display());
        assert!(open(&file, &[("region", "x")]).await.unwrap().contains("takes none"));
        assert_eq!(open(&file, &[]).await, None);
    }
}
