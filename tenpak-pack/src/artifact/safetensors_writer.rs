//! A streaming safetensors writer: tensors are appended one at a time, so writing an artifact
//! never holds more than one tensor's bytes in memory.
//!
//! safetensors puts a JSON header (with every tensor's byte offsets) before the data, and the
//! offsets are only known once every tensor is encoded. So the data goes to a side file first and
//! is copied behind the header at the end; both files live in the artifact's temporary directory.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use tenpak_error::{Context, Result, bail};
use serde_json::json;
use sha2::{Digest, Sha256};
use tenpak_api::DType;

/// safetensors' name for a dtype.
pub fn safetensors_dtype(dtype: DType) -> &'static str {
    match dtype {
        DType::U8 => "U8",
        DType::I8 => "I8",
        DType::U16 => "U16",
        DType::I16 => "I16",
        DType::U32 => "U32",
        DType::I32 => "I32",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        DType::F32 => "F32",
    }
}

/// The dtype for a safetensors dtype name, if TenPak stores that type.
pub fn dtype_from_safetensors(name: &str) -> Option<DType> {
    Some(match name {
        "U8" => DType::U8,
        "I8" => DType::I8,
        "U16" => DType::U16,
        "I16" => DType::I16,
        "U32" => DType::U32,
        "I32" => DType::I32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "F32" => DType::F32,
        _ => return None,
    })
}

/// What [`ShardWriter::finish`] wrote.
#[derive(Clone, Debug)]
pub struct WrittenShard {
    /// Final path.
    pub path: PathBuf,
    /// Total file size.
    pub bytes: u64,
    /// sha256 of the whole file, lowercase hex.
    pub sha256: String,
}

/// Writes one safetensors file, tensor by tensor.
pub struct ShardWriter {
    path: PathBuf,
    data_path: PathBuf,
    data: BufWriter<File>,
    offset: u64,
    entries: BTreeMap<String, serde_json::Value>,
}

impl ShardWriter {
    /// Start writing `path` (its side file is `path` + `.data`).
    pub fn create(path: &Path) -> Result<Self> {
        let data_path = path.with_extension("safetensors.data");
        let data = File::create(&data_path).with_context(|| format!("creating {}", data_path.display()))?;
        Ok(Self { path: path.to_owned(), data_path, data: BufWriter::new(data), offset: 0, entries: BTreeMap::new() })
    }

    /// Bytes of tensor data written so far.
    pub fn data_bytes(&self) -> u64 {
        self.offset
    }

    /// Append tensor `key`.
    pub fn add(&mut self, key: &str, dtype: DType, shape: &[usize], bytes: &[u8]) -> Result<()> {
        self.add_as(key, safetensors_dtype(dtype), dtype.size(), shape, bytes)
    }

    /// [`ShardWriter::add`] for a safetensors type TenPak's own parts never use (`"I64"` for
    /// another format's shape tensors), given by its safetensors name and element size.
    pub fn add_as(&mut self, key: &str, dtype_name: &str, element_bytes: usize, shape: &[usize], bytes: &[u8]) -> Result<()> {
        if self.entries.contains_key(key) {
            bail!("{}: tensor key `{key}` written twice", self.path.display());
        }
        let want = shape.iter().try_fold(element_bytes, |n, &d| n.checked_mul(d));
        if want != Some(bytes.len()) {
            bail!("tensor `{key}`: shape {shape:?} of {dtype_name} does not fit {} bytes", bytes.len());
        }
        self.data.write_all(bytes).with_context(|| format!("writing {}", self.data_path.display()))?;
        let end = self.offset + bytes.len() as u64;
        self.entries.insert(
            key.to_owned(),
            json!({ "dtype": dtype_name, "shape": shape, "data_offsets": [self.offset, end] }),
        );
        self.offset = end;
        Ok(())
    }

    /// Write the header and the data into the final file, fsync it, remove the side file.
    pub fn finish(mut self, metadata: &BTreeMap<String, String>) -> Result<WrittenShard> {
        self.data.flush()?;
        drop(self.data);
        let mut header = serde_json::Map::new();
        if !metadata.is_empty() {
            header.insert("__metadata__".into(), json!(metadata));
        }
        for (k, v) in self.entries {
            header.insert(k, v);
        }
        let mut header = serde_json::to_vec(&serde_json::Value::Object(header))?;
        // Pad with spaces so the data starts 8-byte aligned, as the safetensors writer does.
        while (header.len() + 8) % 8 != 0 {
            header.push(b' ');
        }
        let file = File::create(&self.path).with_context(|| format!("creating {}", self.path.display()))?;
        let mut out = HashingWriter { inner: BufWriter::new(file), hasher: Sha256::new(), bytes: 0 };
        out.write_all(&(header.len() as u64).to_le_bytes())?;
        out.write_all(&header)?;
        let mut data = BufReader::new(File::open(&self.data_path)?);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = data.read(&mut buf)?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])?;
        }
        out.flush()?;
        let HashingWriter { inner, hasher, bytes } = out;
        let file = inner.into_inner().map_err(|e| e.into_error())?;
        file.sync_all().with_context(|| format!("syncing {}", self.path.display()))?;
        std::fs::remove_file(&self.data_path)?;
        Ok(WrittenShard { path: self.path, bytes, sha256: hex(&hasher.finalize()) })
    }
}

struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of a file, streamed, lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    sha256_file_named(path, &path.display().to_string())
}

/// [`sha256_file`] of `path`, called `shown` in errors.
pub fn sha256_file_named(path: &Path, shown: &str) -> Result<String> {
    let mut file = BufReader::new(File::open(path).with_context(|| format!("opening {shown}"))?);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).with_context(|| format!("reading {shown}"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}
