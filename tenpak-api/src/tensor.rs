use half::f16;
use serde::{Deserialize, Serialize};

use crate::{Error, Params, Result};

/// Element type of an encoded part. Multi-byte types are stored little-endian.
///
/// Bit-packed codes (4-bit, 3-bit, …) are stored as `U8` bytes; the codec that packed them knows
/// the layout and says so in its docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum DType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F16,
    BF16,
    F32,
}

impl DType {
    /// Every dtype, in declaration order.
    pub const ALL: [DType; 9] =
        [DType::U8, DType::I8, DType::U16, DType::I16, DType::U32, DType::I32, DType::F16, DType::BF16, DType::F32];

    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            DType::U8 | DType::I8 => 1,
            DType::U16 | DType::I16 | DType::F16 | DType::BF16 => 2,
            DType::U32 | DType::I32 | DType::F32 => 4,
        }
    }
    /// Lower-case name (`"f16"`), as used in manifests.
    pub const fn name(self) -> &'static str {
        match self {
            DType::U8 => "u8",
            DType::I8 => "i8",
            DType::U16 => "u16",
            DType::I16 => "i16",
            DType::U32 => "u32",
            DType::I32 => "i32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F32 => "f32",
        }
    }
}

/// A borrowed row-major `f32` weight matrix: `rows` = out_features, `cols` = in_features.
#[derive(Clone, Copy, Debug)]
pub struct WeightView<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
}

impl<'a> WeightView<'a> {
    /// View `data` as a `rows × cols` matrix; fails if the length does not match.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Result<Self> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(Error::invalid_input(format!(
                "weight of shape [{rows}, {cols}] needs {} values, got {}",
                rows.saturating_mul(cols),
                data.len()
            )));
        }
        Ok(Self { data, rows, cols })
    }
    /// The values, row-major.
    pub fn data(&self) -> &'a [f32] {
        self.data
    }
    /// Number of rows (out_features).
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Number of columns (in_features).
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Row `i`.
    pub fn row(&self, i: usize) -> &'a [f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }
    /// Fails with an error naming the first NaN or infinite value's position, if any.
    ///
    /// Codecs call this first: a non-finite weight has no place on any quantization grid, and
    /// silently mapping it to something finite would hide a broken checkpoint.
    pub fn check_finite(&self) -> Result<()> {
        match self.data.iter().position(|v| !v.is_finite()) {
            None => Ok(()),
            Some(i) => Err(Error::invalid_input(format!(
                "non-finite weight {} at row {}, column {}",
                self.data[i],
                i / self.cols.max(1),
                i % self.cols.max(1)
            ))),
        }
    }
}

/// One named buffer of an encoded tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Part {
    /// Part name, unique within its tensor (`"codes"`, `"scales"`, …).
    pub name: String,
    /// Element type of `data`.
    pub dtype: DType,
    /// Logical shape; the product times `dtype.size()` equals `data.len()`.
    pub shape: Vec<usize>,
    /// Little-endian bytes.
    pub data: Vec<u8>,
}

impl Part {
    /// A part from raw bytes; fails if the shape and dtype do not account for every byte.
    pub fn new(name: &str, dtype: DType, shape: Vec<usize>, data: Vec<u8>) -> Result<Self> {
        let want = shape.iter().try_fold(dtype.size(), |n, &d| n.checked_mul(d));
        if want != Some(data.len()) {
            return Err(Error::corrupt(format!(
                "part `{name}`: shape {shape:?} of {} needs {} bytes, got {}",
                dtype.name(),
                want.map_or("more than 2^64".to_owned(), |w| w.to_string()),
                data.len()
            )));
        }
        Ok(Self { name: name.to_owned(), dtype, shape, data })
    }
    /// A `U8` part holding `bytes` (shape `[bytes.len()]`).
    pub fn from_u8(name: &str, bytes: Vec<u8>) -> Self {
        Self { name: name.to_owned(), dtype: DType::U8, shape: vec![bytes.len()], data: bytes }
    }
    /// An `F16` part of the given shape.
    pub fn from_f16(name: &str, shape: Vec<usize>, values: &[f16]) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), values.len());
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self { name: name.to_owned(), dtype: DType::F16, shape, data }
    }
    /// An `F32` part of the given shape.
    pub fn from_f32(name: &str, shape: Vec<usize>, values: &[f32]) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), values.len());
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self { name: name.to_owned(), dtype: DType::F32, shape, data }
    }
    /// A `U32` part of the given shape.
    pub fn from_u32(name: &str, shape: Vec<usize>, values: &[u32]) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), values.len());
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self { name: name.to_owned(), dtype: DType::U32, shape, data }
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len() / self.dtype.size()
    }
    /// True if the part holds no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    fn expect(&self, dtype: DType) -> Result<()> {
        if self.dtype != dtype {
            return Err(Error::corrupt(format!(
                "part `{}`: expected {}, found {}",
                self.name,
                dtype.name(),
                self.dtype.name()
            )));
        }
        Ok(())
    }
    /// The bytes of a `U8` part.
    pub fn as_u8(&self) -> Result<&[u8]> {
        self.expect(DType::U8)?;
        Ok(&self.data)
    }
    /// The values of an `F16` part.
    pub fn to_f16(&self) -> Result<Vec<f16>> {
        self.expect(DType::F16)?;
        Ok(self.data.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]])).collect())
    }
    /// The values of an `F32` part.
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        self.expect(DType::F32)?;
        Ok(self.data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    }
    /// The values of a `U32` part.
    pub fn to_u32(&self) -> Result<Vec<u32>> {
        self.expect(DType::U32)?;
        Ok(self.data.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    }
}

/// One weight matrix as a codec stored it: the parts to write, and what is needed to read them.
#[derive(Clone, Debug, PartialEq)]
pub struct Encoded {
    /// Id of the codec that produced it; its decoder must be registered to read it.
    pub codec: String,
    /// The parameters the codec needs to decode (group size, bit width, …).
    pub params: Params,
    /// Shape of the original matrix, `[rows, cols]`.
    pub shape: [usize; 2],
    /// The stored buffers.
    pub parts: Vec<Part>,
}

impl Encoded {
    /// The part called `name`, or a [`crate::ErrorKind::Corrupt`] error listing the parts present.
    pub fn part(&self, name: &str) -> Result<&Part> {
        self.parts.iter().find(|p| p.name == name).ok_or_else(|| {
            let have: Vec<&str> = self.parts.iter().map(|p| p.name.as_str()).collect();
            Error::corrupt(format!(
                "{} tensor has no part `{name}` (parts present: {have:?})",
                self.codec
            ))
        })
    }
    /// Bits actually stored: eight times the total byte length of all parts.
    ///
    /// This is the figure TenPak reports. It includes every scale, zero point, index and padding
    /// byte, because they are all inside some part. The per-tensor parameters (a few bytes of
    /// JSON in the manifest) are not counted.
    pub fn stored_bits(&self) -> u64 {
        self.parts.iter().map(|p| p.data.len() as u64 * 8).sum()
    }
    /// Number of weights in the original matrix.
    pub fn numel(&self) -> usize {
        self.shape[0] * self.shape[1]
    }
}

/// What a linear layer (or other weight) does in the model. Allocators plan by role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum LayerRole {
    AttnQ,
    AttnK,
    AttnV,
    AttnO,
    MlpGate,
    MlpUp,
    MlpDown,
    Embedding,
    LmHead,
    /// A 1-D weight (norms, biases): never quantized by the built-in presets.
    Norm,
    Other,
}

impl LayerRole {
    /// Every role.
    pub const ALL: [LayerRole; 11] = [
        LayerRole::AttnQ,
        LayerRole::AttnK,
        LayerRole::AttnV,
        LayerRole::AttnO,
        LayerRole::MlpGate,
        LayerRole::MlpUp,
        LayerRole::MlpDown,
        LayerRole::Embedding,
        LayerRole::LmHead,
        LayerRole::Norm,
        LayerRole::Other,
    ];

    /// The role whose [`name`](LayerRole::name) is `name`.
    pub fn from_name(name: &str) -> Option<LayerRole> {
        Self::ALL.into_iter().find(|r| r.name() == name)
    }

    /// Snake-case name (`"attn_q"`), as used in presets and manifests.
    pub fn name(self) -> &'static str {
        match self {
            LayerRole::AttnQ => "attn_q",
            LayerRole::AttnK => "attn_k",
            LayerRole::AttnV => "attn_v",
            LayerRole::AttnO => "attn_o",
            LayerRole::MlpGate => "mlp_gate",
            LayerRole::MlpUp => "mlp_up",
            LayerRole::MlpDown => "mlp_down",
            LayerRole::Embedding => "embedding",
            LayerRole::LmHead => "lm_head",
            LayerRole::Norm => "norm",
            LayerRole::Other => "other",
        }
    }
    /// Attention projections (q, k, v, o).
    pub fn is_attention(self) -> bool {
        matches!(self, LayerRole::AttnQ | LayerRole::AttnK | LayerRole::AttnV | LayerRole::AttnO)
    }
    /// MLP projections (gate, up, down).
    pub fn is_mlp(self) -> bool {
        matches!(self, LayerRole::MlpGate | LayerRole::MlpUp | LayerRole::MlpDown)
    }
    /// The linear layers inside transformer blocks: attention and MLP projections.
    pub fn is_block_linear(self) -> bool {
        self.is_attention() || self.is_mlp()
    }
}

/// What an allocator knows about one weight.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerInfo {
    /// Tensor name in the source model's naming (`model.layers.3.mlp.up_proj.weight`).
    pub name: String,
    /// What the weight does.
    pub role: LayerRole,
    /// Transformer block index, if the weight belongs to one.
    pub block: Option<usize>,
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
}

/// A dense symmetric `dim × dim` matrix (row-major), e.g. the Gram matrix XᵀX of a layer's inputs.
#[derive(Clone, Debug, PartialEq)]
pub struct Gram {
    /// Side length (the layer's in_features).
    pub dim: usize,
    /// `dim * dim` values, row-major.
    pub data: Vec<f32>,
}

/// Calibration statistics of one layer. Every field is optional: a codec states what it needs
/// through [`crate::Codec::needs`] and the host runs the calibrators that provide it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LayerStats {
    /// Mean |x| per input channel (length `cols`).
    pub act_scale: Option<Vec<f32>>,
    /// Mean x² per input channel (length `cols`): the diagonal of XᵀX / n.
    pub hessian_diag: Option<Vec<f32>>,
    /// Full XᵀX / n.
    pub gram: Option<Gram>,
    /// Mean squared gradient of the loss per weight (length `rows * cols`).
    pub fisher_diag: Option<Vec<f32>>,
    /// Number of input vectors (tokens) the statistics were computed from.
    pub samples: usize,
}

impl LayerStats {
    /// No statistics: what codecs that need no calibration receive.
    pub fn none() -> Self {
        Self::default()
    }
}
