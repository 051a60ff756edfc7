//! Native forms: an encoded tensor in another runtime's own layout, for the exporters.
//!
//! A codec whose stored grid is one a runtime holds exactly (a GGML block type, a
//! compressed-tensors integer group) can hand that form over through [`crate::Codec::native`];
//! the exporter copies it instead of re-quantizing the decode, and checks it against the
//! runtime's reference dequantization. The forms are plain data, like everything else in this
//! crate: bytes and integers in the runtime's own terms, so an exporter needs to know the
//! runtime's format and nothing about the codec.

/// Formats of other runtimes that a codec may store a tensor in as they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NativeTarget {
    /// GGUF (llama.cpp and everything built on it): GGML block types.
    Gguf,
    /// compressed-tensors "pack-quantized" (vLLM, transformers): integer groups of `group_size`
    /// along each row.
    CompressedTensors {
        /// Weights per (scale, zero point) along a row, as the export writes it.
        group_size: usize,
    },
}

/// An encoded tensor in a runtime's own layout.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum NativeForm {
    /// GGML data: `ggml_type` is the id of ggml.h's `enum ggml_type` (0 F32, 1 F16, 3 Q4_1,
    /// 8 Q8_0, 12 Q4_K, 30 BF16, ...); `data` the blocks of every row, rows in the encoded
    /// matrix's order.
    Ggml {
        /// The `enum ggml_type` id.
        ggml_type: u32,
        /// The blocks (or elements) of every row, little-endian, rows in order.
        data: Vec<u8>,
    },
    /// Asymmetric integer groups along each row: w = (code − zero_point) · scale.
    /// `codes`: one per weight, row-major, each below 2^bits; `scales` and `zero_points`: one per
    /// (row, group), row-major.
    IntGroups {
        /// Code width: every code and zero point is below `2^bits`.
        bits: u32,
        /// Weights per group along a row.
        group_size: usize,
        /// One code per weight, row-major, unpacked.
        codes: Vec<u8>,
        /// One scale per (row, group), row-major.
        scales: Vec<half::f16>,
        /// One zero point per (row, group), row-major, unpacked.
        zero_points: Vec<u8>,
    },
}
