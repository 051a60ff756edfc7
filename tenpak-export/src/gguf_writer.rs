//! A streaming GGUF (v3) writer: tensors are appended one at a time and never held together.
//!
//! The header (metadata, then one record per tensor with its type and data offset) precedes the
//! data, but the type of each tensor is only known once it has been converted. The header's
//! length does not depend on the types or offsets (both are fixed-width fields), so the writer
//! reserves it, appends the data, and writes the header last ([`GgufWriter::finish`]).
//!
//! Layout (ggml's `gguf.md`): magic `GGUF`, version 3, tensor count (u64), metadata count (u64),
//! each metadata key (u64 length + UTF-8) with its value type (u32) and value, each tensor's name,
//! dimension count (u32), dimensions innermost first (u64 each), `ggml_type` (u32) and offset
//! (u64, relative to the data section); the data section starts at the next multiple of the
//! alignment (32), and each tensor's data is padded to it.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

use tenpak_error::{Context, Result, bail, ensure};
use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::Value;

use tenpak_model::ggml;
use tenpak_quant::ggml::types::GgmlType;

/// GGUF's default (and our) data alignment.
pub const ALIGNMENT: u64 = 32;

/// A GGUF tensor type: one candle-core reads (and quantizes), or a llama.cpp type that only
/// TenPak's own blocks come in (IQ4_NL, IQ4_XS: written from a codec's native form, checked
/// with `tenpak_quant`'s port of llama.cpp's dequantization).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgufType {
    /// A type candle-core reads.
    Candle(GgmlDType),
    /// A llama.cpp type candle-core does not read.
    Llama(GgmlType),
}

impl GgufType {
    /// The type with ggml.h id `id`, if TenPak can write it (candle's reading of it preferred).
    pub fn from_type_id(id: u32) -> Option<Self> {
        ggml::from_type_id(id).map(GgufType::Candle).or_else(|| {
            tenpak_quant::ggml::types::ALL
                .into_iter()
                .find(|t| t.type_id() == id)
                .map(GgufType::Llama)
        })
    }

    /// ggml.h's `enum ggml_type` id.
    pub fn type_id(self) -> u32 {
        match self {
            GgufType::Candle(d) => ggml::type_id(d),
            GgufType::Llama(t) => t.type_id(),
        }
    }

    /// llama.cpp's name of the type (`Q4_K`, `IQ4_NL`).
    pub fn name(self) -> &'static str {
        match self {
            GgufType::Candle(d) => ggml::name_of(d),
            GgufType::Llama(t) => ggml::type_name(t.type_id()).unwrap_or("unknown"),
        }
    }

    /// Weights per block.
    pub fn block_size(self) -> usize {
        match self {
            GgufType::Candle(d) => d.block_size(),
            GgufType::Llama(t) => t.block_weights(),
        }
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        match self {
            GgufType::Candle(d) => d.type_size(),
            GgufType::Llama(t) => t.block_bytes(),
        }
    }

    /// Bits per weight.
    pub fn bits_per_weight(self) -> f64 {
        8.0 * self.type_size() as f64 / self.block_size() as f64
    }
}

impl From<GgmlDType> for GgufType {
    fn from(d: GgmlDType) -> Self {
        GgufType::Candle(d)
    }
}

impl PartialEq<GgmlDType> for GgufType {
    fn eq(&self, other: &GgmlDType) -> bool {
        *self == GgufType::Candle(*other)
    }
}

/// Bytes of tensor data of `numel` elements in `dtype` (a whole number of blocks).
pub fn data_bytes(dtype: impl Into<GgufType>, numel: usize) -> Result<usize> {
    let dtype = dtype.into();
    let block = dtype.block_size();
    ensure!(
        numel.is_multiple_of(block),
        "{numel} elements are not a whole number of {} blocks of {block}",
        dtype.name()
    );
    (numel / block)
        .checked_mul(dtype.type_size())
        .with_context(|| format!("{numel} elements of {} are more bytes than can exist", dtype.name()))
}

/// One tensor's entry: name and shape, outermost first (a linear weight is `[out, in]`).
#[derive(Clone, Debug)]
pub struct TensorDecl {
    /// GGUF name.
    pub name: String,
    /// Shape, outermost first (written innermost first, as GGUF wants).
    pub shape: Vec<usize>,
}

/// A GGUF file being written.
pub struct GgufWriter {
    out: BufWriter<File>,
    metadata: Vec<(String, Value)>,
    tensors: Vec<TensorDecl>,
    /// Type and offset (relative to the data section) of each tensor appended so far.
    written: Vec<(GgufType, u64)>,
    data_start: u64,
    data_len: u64,
}

impl GgufWriter {
    /// Create `path` for `metadata` and `tensors` (in this order in the file); data follows
    /// through [`GgufWriter::append`], one call per tensor in the same order.
    pub fn create(
        path: &Path,
        metadata: Vec<(String, Value)>,
        tensors: Vec<TensorDecl>,
    ) -> Result<Self> {
        for (key, value) in &metadata {
            check_value(value, 0).with_context(|| format!("metadata {key}"))?;
        }
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut writer = Self {
            out: BufWriter::new(file),
            metadata,
            tensors,
            written: Vec::new(),
            data_start: 0,
            data_len: 0,
        };
        let header_len = writer.header_bytes(None)?.len() as u64;
        writer.data_start = header_len.next_multiple_of(ALIGNMENT);
        writer.out.seek(SeekFrom::Start(writer.data_start))?;
        Ok(writer)
    }

    /// Append the next tensor's data, `bytes` in `dtype` (the size is checked against its shape).
    pub fn append(&mut self, dtype: impl Into<GgufType>, bytes: &[u8]) -> Result<()> {
        let dtype = dtype.into();
        let index = self.written.len();
        let decl = self
            .tensors
            .get(index)
            .with_context(|| format!("GGUF writer: tensor {index} was not declared"))?;
        let numel = decl
            .shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .context("shape overflows")?;
        let expected = data_bytes(dtype, numel).with_context(|| format!("tensor {}", decl.name))?;
        ensure!(
            bytes.len() == expected,
            "tensor {}: {} bytes of {} data, expected {expected} for shape {:?}",
            decl.name,
            bytes.len(),
            dtype.name(),
            decl.shape
        );
        if let Some(&inner) = decl.shape.last() {
            ensure!(
                inner.is_multiple_of(dtype.block_size()),
                "tensor {}: rows of {inner} are not a whole number of {} blocks",
                decl.name,
                dtype.name()
            );
        }
        self.out.write_all(bytes)?;
        let padded = (bytes.len() as u64).next_multiple_of(ALIGNMENT);
        self.out
            .write_all(&vec![0u8; (padded - bytes.len() as u64) as usize])?;
        self.written.push((dtype, self.data_len));
        self.data_len += padded;
        Ok(())
    }

    /// Write the header and flush; every declared tensor must have been appended.
    pub fn finish(mut self) -> Result<()> {
        ensure!(
            self.written.len() == self.tensors.len(),
            "GGUF writer: {} of {} tensors written",
            self.written.len(),
            self.tensors.len()
        );
        let header = self.header_bytes(Some(&self.written))?;
        ensure!(
            (header.len() as u64).next_multiple_of(ALIGNMENT) == self.data_start,
            "GGUF header length changed"
        );
        self.out.seek(SeekFrom::Start(0))?;
        self.out.write_all(&header)?;
        self.out
            .write_all(&vec![0u8; (self.data_start - header.len() as u64) as usize])?;
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(())
    }

    /// The header; with `written = None`, placeholder types and offsets of the same width.
    fn header_bytes(&self, written: Option<&[(GgufType, u64)]>) -> Result<Vec<u8>> {
        let mut h = Vec::new();
        h.extend_from_slice(b"GGUF");
        h.extend_from_slice(&3u32.to_le_bytes());
        h.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        h.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            write_string(&mut h, key);
            h.extend_from_slice(&value_type(value).to_le_bytes());
            write_value(&mut h, value);
        }
        for (i, decl) in self.tensors.iter().enumerate() {
            write_string(&mut h, &decl.name);
            h.extend_from_slice(&(decl.shape.len() as u32).to_le_bytes());
            for &d in decl.shape.iter().rev() {
                h.extend_from_slice(&(d as u64).to_le_bytes());
            }
            let (dtype, offset) = match written {
                Some(w) => (w[i].0.type_id(), w[i].1),
                None => (0, 0),
            };
            h.extend_from_slice(&dtype.to_le_bytes());
            h.extend_from_slice(&offset.to_le_bytes());
        }
        Ok(h)
    }
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// GGUF's value type ids (`gguf_type`).
fn value_type(value: &Value) -> u32 {
    match value {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

/// Arrays hold one element type and do not nest (what llama.cpp reads).
fn check_value(value: &Value, depth: usize) -> Result<()> {
    if let Value::Array(items) = value {
        if depth > 0 {
            bail!("nested arrays are not written");
        }
        if let Some(first) = items.first() {
            let ty = value_type(first);
            if let Some(i) = items.iter().position(|v| value_type(v) != ty) {
                bail!("array element {i} differs in type from element 0");
            }
            check_value(first, depth + 1)?;
        }
    }
    Ok(())
}

fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::U8(v) => out.push(*v),
        Value::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Bool(v) => out.push(u8::from(*v)),
        Value::String(s) => write_string(out, s),
        Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Array(items) => {
            // An empty array is written as an array of u32 (its element type is moot).
            out.extend_from_slice(&items.first().map_or(4, value_type).to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                write_value(out, item);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::gguf_file::Content;
    use candle_core::{Device, Tensor};

    /// What candle-core's reader (an implementation we did not write) makes of our file.
    #[test]
    fn candle_reads_back_metadata_types_offsets_and_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gguf");
        let metadata = vec![
            (
                "general.architecture".to_string(),
                Value::String("llama".into()),
            ),
            ("llama.block_count".to_string(), Value::U32(3)),
            ("x.eps".to_string(), Value::F32(1e-5)),
            ("x.flag".to_string(), Value::Bool(true)),
            (
                "x.list".to_string(),
                Value::Array(vec![Value::String("a".into()), Value::String("b c".into())]),
            ),
            (
                "x.ids".to_string(),
                Value::Array(vec![Value::I32(-1), Value::I32(7)]),
            ),
        ];
        let a: Vec<f32> = (0..64 * 3).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..5).map(|i| i as f32).collect();
        let qa = candle_core::quantized::QTensor::quantize(
            &Tensor::from_vec(a.clone(), (3, 64), &Device::Cpu).unwrap(),
            GgmlDType::Q4_1,
        )
        .unwrap();
        let tensors = vec![
            TensorDecl {
                name: "a".into(),
                shape: vec![3, 64],
            },
            TensorDecl {
                name: "b".into(),
                shape: vec![5],
            },
        ];
        let mut w = GgufWriter::create(&path, metadata, tensors).unwrap();
        w.append(GgmlDType::Q4_1, &qa.data().unwrap()).unwrap();
        assert!(
            w.append(GgmlDType::F32, &[0u8; 3]).is_err(),
            "a wrong size is refused"
        );
        w.append(
            GgmlDType::F32,
            &b.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
        )
        .unwrap();
        w.finish().unwrap();

        let mut file = File::open(&path).unwrap();
        let content = Content::read(&mut file).unwrap();
        assert!(
            matches!(&content.metadata["general.architecture"], Value::String(s) if s == "llama")
        );
        assert!(matches!(
            content.metadata["llama.block_count"],
            Value::U32(3)
        ));
        assert!(matches!(content.metadata["x.flag"], Value::Bool(true)));
        match &content.metadata["x.list"] {
            Value::Array(items) => assert!(matches!(&items[1], Value::String(s) if s == "b c")),
            other => panic!("{other:?}"),
        }
        let ta = content.tensor(&mut file, "a", &Device::Cpu).unwrap();
        assert_eq!(ta.dtype(), GgmlDType::Q4_1);
        assert_eq!(ta.shape().dims(), &[3, 64]);
        let deq: Vec<f32> = ta
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let expected: Vec<f32> = qa
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(deq, expected);
        let tb = content.tensor(&mut file, "b", &Device::Cpu).unwrap();
        assert_eq!(
            tb.dequantize(&Device::Cpu)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            b
        );
    }

    #[test]
    fn unfinished_or_undeclared_tensors_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gguf");
        let w = GgufWriter::create(
            &path,
            vec![],
            vec![TensorDecl {
                name: "a".into(),
                shape: vec![32],
            }],
        )
        .unwrap();
        assert!(w.finish().is_err());
        let mut w = GgufWriter::create(&path, vec![], vec![]).unwrap();
        assert!(w.append(GgmlDType::F32, &[0; 4]).is_err());
        let nested = vec![("k".to_string(), Value::Array(vec![Value::Array(vec![])]))];
        assert!(GgufWriter::create(&path, nested, vec![]).is_err());
    }
}
