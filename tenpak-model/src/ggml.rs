//! GGML tensor types by their ids in `ggml.h` (`enum ggml_type`), which candle-core keeps private:
//! the GGUF writer needs the ids, and error messages need the names of types candle cannot read.

use candle_core::quantized::GgmlDType;

/// `(id, name)` of every `ggml_type` llama.cpp defines (removed ids 4, 5, 31–33 and 36–38 are
/// absent), names as llama.cpp prints them.
const TYPES: &[(u32, &str)] = &[
    (0, "F32"),
    (1, "F16"),
    (2, "Q4_0"),
    (3, "Q4_1"),
    (6, "Q5_0"),
    (7, "Q5_1"),
    (8, "Q8_0"),
    (9, "Q8_1"),
    (10, "Q2_K"),
    (11, "Q3_K"),
    (12, "Q4_K"),
    (13, "Q5_K"),
    (14, "Q6_K"),
    (15, "Q8_K"),
    (16, "IQ2_XXS"),
    (17, "IQ2_XS"),
    (18, "IQ3_XXS"),
    (19, "IQ1_S"),
    (20, "IQ4_NL"),
    (21, "IQ3_S"),
    (22, "IQ2_S"),
    (23, "IQ4_XS"),
    (24, "I8"),
    (25, "I16"),
    (26, "I32"),
    (27, "I64"),
    (28, "F64"),
    (29, "IQ1_M"),
    (30, "BF16"),
    (34, "TQ1_0"),
    (35, "TQ2_0"),
    (39, "MXFP4"),
];

/// The `ggml_type` id of a candle type.
pub fn type_id(dtype: GgmlDType) -> u32 {
    match dtype {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q8_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::Q8K => 15,
        GgmlDType::BF16 => 30,
    }
}

/// llama.cpp's name for type `id` (`"IQ4_NL"`), if it is one.
pub fn type_name(id: u32) -> Option<&'static str> {
    TYPES.iter().find(|(i, _)| *i == id).map(|(_, n)| *n)
}

/// llama.cpp's name for a candle type (`"Q4_K"`).
pub fn name_of(dtype: GgmlDType) -> &'static str {
    type_name(type_id(dtype)).expect("every candle type has a ggml id in TYPES")
}

/// Every type candle-core reads (and dequantizes).
const CANDLE_TYPES: [GgmlDType; 15] = [
    GgmlDType::F32,
    GgmlDType::F16,
    GgmlDType::BF16,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_0,
    GgmlDType::Q8_1,
    GgmlDType::Q2K,
    GgmlDType::Q3K,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
    GgmlDType::Q8K,
];

/// The candle type called `name` (case-insensitive, `q4_k` or `Q4_K`), if candle has it as a
/// storage type (Q8_1 and Q8_K are llama.cpp's activation types, never a file's).
pub fn parse_name(name: &str) -> Option<GgmlDType> {
    CANDLE_TYPES
        .into_iter()
        .filter(|d| !matches!(d, GgmlDType::Q8_1 | GgmlDType::Q8K))
        .find(|&d| name_of(d).eq_ignore_ascii_case(name))
}

/// The candle type whose `ggml_type` id is `id`, if candle reads that type.
pub fn from_type_id(id: u32) -> Option<GgmlDType> {
    CANDLE_TYPES.into_iter().find(|&d| type_id(d) == id)
}

/// Tensors of a GGUF file whose type candle-core cannot read, as `(name, type id)`, found by
/// walking the header without candle (which stops at the first with "unknown dtype for tensor
/// <id>", naming neither the tensor nor the type). Empty when the header cannot be walked.
pub fn unreadable_tensors(bytes: &[u8]) -> Vec<(String, u32)> {
    tensor_types(bytes)
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, id)| !CANDLE_TYPES.into_iter().any(|d| type_id(d) == *id))
        .collect()
}

/// `(name, type id)` of every tensor in a GGUF v2/v3 header; `None` if the header is malformed.
fn tensor_types(bytes: &[u8]) -> Option<Vec<(String, u32)>> {
    let mut r = Reader { bytes, pos: 0 };
    if r.u32()? != 0x4655_4747 || !matches!(r.u32()?, 2 | 3) {
        return None;
    }
    let (tensors, kvs) = (r.u64()?, r.u64()?);
    for _ in 0..kvs {
        r.string()?;
        let ty = r.u32()?;
        r.skip_value(ty, 0)?;
    }
    let mut out = Vec::new();
    for _ in 0..tensors {
        let name = String::from_utf8_lossy(r.string()?).into_owned();
        let dims = r.u32()?;
        if dims > 8 {
            return None;
        }
        r.take(8 * dims as usize)?;
        out.push((name, r.u32()?));
        r.u64()?;
    }
    Some(out)
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len())?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Some(out)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn string(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.u64()?).ok()?;
        self.take(len)
    }
    fn skip_value(&mut self, ty: u32, depth: usize) -> Option<()> {
        let size = match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            8 => {
                self.string()?;
                return Some(());
            }
            9 if depth == 0 => {
                let item = self.u32()?;
                let n = self.u64()?;
                for _ in 0..n {
                    self.skip_value(item, depth + 1)?;
                }
                return Some(());
            }
            _ => return None,
        };
        self.take(size).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_candle_type_has_an_id_and_a_name() {
        for (dtype, name) in [
            (GgmlDType::Q4_1, "Q4_1"),
            (GgmlDType::Q4K, "Q4_K"),
            (GgmlDType::BF16, "BF16"),
            (GgmlDType::Q8_0, "Q8_0"),
        ] {
            assert_eq!(name_of(dtype), name);
        }
        assert_eq!(type_name(20), Some("IQ4_NL"));
        assert_eq!(type_name(4), None);
        for dtype in CANDLE_TYPES {
            assert_eq!(from_type_id(type_id(dtype)), Some(dtype));
        }
        assert_eq!(from_type_id(20), None, "IQ4_NL: llama.cpp's, not candle's");
    }

    #[test]
    fn malformed_headers_give_no_tensors() {
        assert!(unreadable_tensors(b"").is_empty());
        assert!(
            unreadable_tensors(b"GGUF\x03\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff").is_empty()
        );
    }
}
