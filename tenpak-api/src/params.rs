use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// One parameter value. Untagged in serialized form, so `{"group_size": 128, "refine": true}` in
/// JSON and `group_size = 128` in TOML both read naturally.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    /// A boolean flag.
    Bool(bool),
    /// An integer. Also accepted where a float is expected.
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// A string.
    Str(String),
}

impl ParamValue {
    /// The name of this value's type, as used in error messages and [`crate::ParamType`].
    pub fn type_name(&self) -> &'static str {
        match self {
            ParamValue::Bool(_) => "bool",
            ParamValue::Int(_) => "int",
            ParamValue::Float(_) => "float",
            ParamValue::Str(_) => "string",
        }
    }
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamValue::Bool(v) => write!(f, "{v}"),
            ParamValue::Int(v) => write!(f, "{v}"),
            ParamValue::Float(v) => write!(f, "{v}"),
            ParamValue::Str(v) => write!(f, "{v:?}"),
        }
    }
}

impl From<bool> for ParamValue {
    fn from(v: bool) -> Self {
        ParamValue::Bool(v)
    }
}
impl From<i64> for ParamValue {
    fn from(v: i64) -> Self {
        ParamValue::Int(v)
    }
}
impl From<usize> for ParamValue {
    fn from(v: usize) -> Self {
        ParamValue::Int(v as i64)
    }
}
impl From<f64> for ParamValue {
    fn from(v: f64) -> Self {
        ParamValue::Float(v)
    }
}
impl From<&str> for ParamValue {
    fn from(v: &str) -> Self {
        ParamValue::Str(v.to_owned())
    }
}

/// A small, ordered, self-describing parameter map: the one form in which codec, calibrator and
/// allocator parameters travel, whether they came from a preset, a request or a manifest.
///
/// Typed getters return an [`crate::ErrorKind::InvalidParam`] error that names the key and the
/// expected type; `*_or` getters fall back to a default only when the key is absent, never when it
/// holds a value of the wrong type.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Params(pub BTreeMap<String, ParamValue>);

impl Params {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }
    /// Builder-style insert.
    pub fn with(mut self, key: &str, value: impl Into<ParamValue>) -> Self {
        self.0.insert(key.to_owned(), value.into());
        self
    }
    /// Insert or replace `key`.
    pub fn set(&mut self, key: &str, value: impl Into<ParamValue>) {
        self.0.insert(key.to_owned(), value.into());
    }
    /// The raw value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&ParamValue> {
        self.0.get(key)
    }
    /// Iterate over `(key, value)` in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &ParamValue)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }
    /// `self` with every entry of `other` laid over it (other wins).
    pub fn merged(&self, other: &Params) -> Params {
        let mut out = self.clone();
        for (k, v) in &other.0 {
            out.0.insert(k.clone(), v.clone());
        }
        out
    }

    fn wrong_type(key: &str, expected: &str, got: &ParamValue) -> Error {
        Error::invalid_param(format!(
            "parameter `{key}`: expected {expected}, got {} ({got})",
            got.type_name()
        ))
    }

    /// Integer value of `key`, or `default` if absent.
    pub fn int_or(&self, key: &str, default: i64) -> Result<i64> {
        match self.0.get(key) {
            None => Ok(default),
            Some(ParamValue::Int(v)) => Ok(*v),
            Some(other) => Err(Self::wrong_type(key, "int", other)),
        }
    }
    /// Non-negative integer value of `key`, or `default` if absent.
    pub fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        let v = self.int_or(key, default as i64)?;
        usize::try_from(v).map_err(|_| {
            Error::invalid_param(format!("parameter `{key}`: expected a non-negative int, got {v}"))
        })
    }
    /// Float value of `key` (an int is accepted), or `default` if absent.
    pub fn float_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.0.get(key) {
            None => Ok(default),
            Some(ParamValue::Float(v)) => Ok(*v),
            Some(ParamValue::Int(v)) => Ok(*v as f64),
            Some(other) => Err(Self::wrong_type(key, "float", other)),
        }
    }
    /// Bool value of `key`, or `default` if absent.
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.0.get(key) {
            None => Ok(default),
            Some(ParamValue::Bool(v)) => Ok(*v),
            Some(other) => Err(Self::wrong_type(key, "bool", other)),
        }
    }
    /// String value of `key`, or `default` if absent.
    pub fn str_or<'a>(&'a self, key: &str, default: &'a str) -> Result<&'a str> {
        match self.0.get(key) {
            None => Ok(default),
            Some(ParamValue::Str(v)) => Ok(v),
            Some(other) => Err(Self::wrong_type(key, "string", other)),
        }
    }
}

impl<K: Into<String>, V: Into<ParamValue>> FromIterator<(K, V)> for Params {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Params(iter.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn getters_distinguish_absent_from_wrong_type() {
        let p = Params::new().with("group_size", 128usize).with("refine", true).with("alpha", 0.5);
        assert_eq!(p.usize_or("group_size", 64).unwrap(), 128);
        assert_eq!(p.usize_or("missing", 64).unwrap(), 64);
        assert_eq!(p.float_or("group_size", 0.0).unwrap(), 128.0);
        let err = p.usize_or("refine", 1).unwrap_err();
        assert!(err.message().contains("`refine`") && err.message().contains("bool"), "{err}");
        assert!(Params::new().with("n", -1i64).usize_or("n", 0).is_err());
    }
}
