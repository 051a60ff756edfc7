//! Reading an [`Encoded`] value back: what every codec's `decode` checks before trusting it.
//!
//! A decoder only meets data that passed through an artifact on disk, so anything unexpected in
//! it (another codec's id, a missing or extra part, a parameter of the wrong type) means the data
//! is damaged: every error here is [`tenpak_api::ErrorKind::Corrupt`].

use tenpak_api::{Encoded, Error, ErrorKind, Params, Result};

/// Fail unless `encoded` was produced by codec `id`.
pub fn expect_codec(encoded: &Encoded, id: &str) -> Result<()> {
    if encoded.codec != id {
        return Err(Error::corrupt(format!(
            "codec `{id}` cannot decode a tensor encoded by `{}`",
            encoded.codec
        )));
    }
    Ok(())
}

/// Fail unless the parts of `encoded` are exactly `names` (in any order): a missing part cannot
/// be decoded, and an extra one would be counted in the size without being used.
pub fn expect_parts(encoded: &Encoded, names: &[&str]) -> Result<()> {
    let have: Vec<&str> = encoded.parts.iter().map(|p| p.name.as_str()).collect();
    let mut sorted_have = have.clone();
    let mut sorted_want = names.to_vec();
    sorted_have.sort_unstable();
    sorted_want.sort_unstable();
    if sorted_have != sorted_want {
        return Err(Error::corrupt(format!(
            "{} tensor {:?}: expected parts {names:?}, found {have:?}",
            encoded.codec, encoded.shape
        )));
    }
    Ok(())
}

/// Re-label a parameter error found while decoding as corruption, naming the codec.
fn corrupt_param(codec: &str, err: Error) -> Error {
    if err.kind() == ErrorKind::InvalidParam {
        Error::corrupt(format!("{codec} tensor parameters: {}", err.message()))
    } else {
        err
    }
}

/// A non-negative integer parameter of an encoded tensor, or `default` if absent.
pub fn param_usize(encoded: &Encoded, key: &str, default: usize) -> Result<usize> {
    encoded
        .params
        .usize_or(key, default)
        .map_err(|e| corrupt_param(&encoded.codec, e))
}

/// Read the parameters stored with an encoded tensor through `read` (typically the codec's own
/// validation), reporting a parameter error as corruption.
pub fn read_params<T>(encoded: &Encoded, read: impl FnOnce(&Params) -> Result<T>) -> Result<T> {
    read(&encoded.params).map_err(|e| corrupt_param(&encoded.codec, e))
}
