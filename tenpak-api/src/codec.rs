use crate::{
    Encoded, Error, LayerStats, NativeForm, NativeTarget, ParamValue, Params, Result, StatsNeeds,
    WeightView,
};

/// The type a parameter must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum ParamType {
    Bool,
    Int,
    Float,
    Str,
}

impl ParamType {
    fn accepts(self, value: &ParamValue) -> bool {
        matches!(
            (self, value),
            (ParamType::Bool, ParamValue::Bool(_))
                | (ParamType::Int, ParamValue::Int(_))
                | (ParamType::Float, ParamValue::Float(_) | ParamValue::Int(_))
                | (ParamType::Str, ParamValue::Str(_))
        )
    }
    fn name(self) -> &'static str {
        match self {
            ParamType::Bool => "bool",
            ParamType::Int => "int",
            ParamType::Float => "float",
            ParamType::Str => "string",
        }
    }
}

/// One parameter a component accepts: its name, type, default (as text, for docs) and meaning.
#[derive(Clone, Copy, Debug)]
pub struct ParamSpec {
    /// Key in the parameter map.
    pub name: &'static str,
    /// Expected type.
    pub ty: ParamType,
    /// The default, written as it would be in TOML.
    pub default: &'static str,
    /// One line on what it does.
    pub doc: &'static str,
}

/// Check `params` against `specs`: every key known, every value of the right type.
///
/// The error names the offending key and lists the accepted ones, so a typo in a preset is
/// caught before any work starts.
pub fn validate_params(owner: &str, specs: &[ParamSpec], params: &Params) -> Result<()> {
    for (key, value) in params.iter() {
        match specs.iter().find(|s| s.name == key) {
            None => {
                let known: Vec<&str> = specs.iter().map(|s| s.name).collect();
                return Err(Error::invalid_param(format!(
                    "{owner}: unknown parameter `{key}` (known: {})",
                    if known.is_empty() { "none".to_owned() } else { known.join(", ") }
                )));
            }
            Some(spec) if !spec.ty.accepts(value) => {
                return Err(Error::invalid_param(format!(
                    "{owner}: parameter `{key}` must be {}, got {} ({value})",
                    spec.ty.name(),
                    value.type_name()
                )));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// [`validate_params`] for the parameters recorded with an encoded tensor: the preset's `specs`
/// plus what the encoder wrote beside them (`recorded`), which a preset may not set.
pub fn validate_recorded(owner: &str, specs: &[ParamSpec], recorded: &[ParamSpec], params: &Params) -> Result<()> {
    let all: Vec<ParamSpec> = specs.iter().chain(recorded).copied().collect();
    validate_params(owner, &all, params)
}

/// `value` if it is one of `allowed`, else an [`crate::ErrorKind::InvalidParam`] error naming
/// `owner`, `key` and the accepted values.
pub fn param_one_of(owner: &str, key: &str, value: &str, allowed: &[&'static str]) -> Result<&'static str> {
    allowed.iter().copied().find(|m| *m == value).ok_or_else(|| {
        Error::invalid_param(format!("{owner}: parameter `{key}` must be one of {}, got {value:?}", allowed.join(", ")))
    })
}

/// Check `lo <= value <= hi` (a NaN is refused too), else an
/// [`crate::ErrorKind::InvalidParam`] error naming `owner`, `key` and the range.
pub fn param_in_range<T: PartialOrd + std::fmt::Display>(owner: &str, key: &str, value: T, lo: T, hi: T) -> Result<()> {
    // `!(a && b)` rather than `a || b` so a NaN float is refused too.
    if !(value >= lo && value <= hi) {
        return Err(Error::invalid_param(format!("{owner}: parameter `{key}` must be in [{lo}, {hi}], got {value}")));
    }
    Ok(())
}

/// A weight-matrix codec: encodes one row-major `f32` matrix into named parts and decodes them.
///
/// Implementors provide [`id`](Codec::id), [`encode`](Codec::encode) and
/// [`decode`](Codec::decode); the rest have defaults. A codec must be deterministic (the same
/// input, statistics and parameters give the same bytes) and must refuse non-finite weights with
/// an [`crate::ErrorKind::InvalidInput`] error rather than invent a value for them.
pub trait Codec: Send + Sync {
    /// Stable id: the registry key, the preset value and the manifest value (`"int4_rtn"`).
    fn id(&self) -> &str;

    /// One line for `tenpak codecs`. Default: empty.
    fn description(&self) -> &str {
        ""
    }

    /// The parameters this codec accepts. Default: none. [`Codec::validate`] checks presets
    /// against this list, so list every key `encode` reads.
    fn params(&self) -> &[ParamSpec] {
        &[]
    }

    /// Calibration statistics `encode` needs. Default: none.
    fn needs(&self) -> StatsNeeds {
        StatsNeeds::NONE
    }

    /// Check parameters before any work. Default: [`validate_params`] against [`Codec::params`];
    /// override to add range checks, calling the default logic too.
    fn validate(&self, params: &Params) -> Result<()> {
        validate_params(self.id(), self.params(), params)
    }

    /// Encode `weight` using `stats` (empty when [`Codec::needs`] asks for nothing).
    fn encode(&self, weight: WeightView<'_>, stats: &LayerStats, params: &Params) -> Result<Encoded>;

    /// Decode back to a row-major `f32` matrix of `encoded.shape`.
    fn decode(&self, encoded: &Encoded) -> Result<Vec<f32>>;

    /// Exact size in bits of what is stored. Default: [`Encoded::stored_bits`], which is right
    /// whenever every stored byte lives in a part, as it should.
    fn size_bits(&self, encoded: &Encoded) -> u64 {
        encoded.stored_bits()
    }

    /// `encoded` in `target`'s own layout, if this codec's stored grid is one the target holds
    /// exactly. Default: `Ok(None)`. It is never wrong to return `None`: the exporter then
    /// re-quantizes from the decode and reports the cost.
    fn native(&self, encoded: &Encoded, target: NativeTarget) -> Result<Option<NativeForm>> {
        let _ = (encoded, target);
        Ok(None)
    }
}
