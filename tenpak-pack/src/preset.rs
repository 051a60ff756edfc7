//! Presets: TOML files that say how to compress a model.
//!
//! A preset names its calibrators, its allocator, the default codec for block linears with its
//! parameters, role refinements and name overrides, and how much text to calibrate and evaluate
//! on. Five ship inside the binary (`fast`, `quality`, `balanced`, `size`, `budget`); any other is read from
//! a path or given inline ([`crate::plan::PresetSpec`]). Parsing checks the *shape* of the file (unknown keys, wrong types, with the line);
//! [`Preset::validate`] then checks it against the registry (unknown codec, calibrator or
//! allocator ids, listing the known ones; codec parameters against each codec's own list).
//!
//! ```toml
//! name = "fast"
//! description = "INT4 without calibration"
//!
//! [allocator]
//! id = "role_rules"
//!
//! [codec]                      # default for attention and MLP projections
//! codec = "int4_residual"
//! group_size = 64
//!
//! [roles.attention]            # role classes: attention, mlp; or exact roles: attn_q, mlp_down, ...
//! group_size = 128
//!
//! [roles.embedding]
//! codec = "int8"
//!
//! [[overrides]]                # by tensor name; `*` is a wildcard; later entries win
//! pattern = "model.layers.0.*"
//! codec = "keep"
//! dtype = "f16"
//! ```

use std::collections::BTreeMap;

use tenpak_error::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tenpak_api::registry::Registry;
use tenpak_api::{AllocatorConfig, CodecChoice, Override, ParamValue, Params};

use crate::limits::Limits;

/// The presets shipped inside the binary, as `(name, TOML text)`.
pub const BUILTIN: &[(&str, &str)] = &[
    ("fast", include_str!("../../presets/fast.toml")),
    ("quality", include_str!("../../presets/quality.toml")),
    ("balanced", include_str!("../../presets/balanced.toml")),
    ("size", include_str!("../../presets/size.toml")),
    ("budget", include_str!("../../presets/budget.toml")),
    ("q4_0", include_str!("../../presets/gguf/q4_0.toml")),
    ("q4_1", include_str!("../../presets/gguf/q4_1.toml")),
    ("q5_0", include_str!("../../presets/gguf/q5_0.toml")),
    ("q5_1", include_str!("../../presets/gguf/q5_1.toml")),
    ("q8_0", include_str!("../../presets/gguf/q8_0.toml")),
    ("q2_k", include_str!("../../presets/gguf/q2_k.toml")),
    ("q3_k_m", include_str!("../../presets/gguf/q3_k_m.toml")),
    ("q4_k_m", include_str!("../../presets/gguf/q4_k_m.toml")),
    ("q5_k_m", include_str!("../../presets/gguf/q5_k_m.toml")),
    ("q6_k", include_str!("../../presets/gguf/q6_k.toml")),
    ("iq4_nl", include_str!("../../presets/gguf/iq4_nl.toml")),
    ("iq4_xs", include_str!("../../presets/gguf/iq4_xs.toml")),
    ("gguf-budget", include_str!("../../presets/gguf/gguf-budget.toml")),
];

/// A codec table: `codec = "id"` plus that codec's parameters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CodecTable {
    /// Codec id; absent means "inherit".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codec: Option<String>,
    /// Every other key: the codec's parameters.
    #[serde(flatten)]
    pub params: Params,
}

impl From<&CodecTable> for CodecChoice {
    fn from(t: &CodecTable) -> Self {
        CodecChoice { codec: t.codec.clone(), params: t.params.clone() }
    }
}

/// A name override.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OverrideTable {
    /// Glob over tensor names.
    pub pattern: String,
    /// What matching tensors get.
    #[serde(flatten)]
    pub table: CodecTable,
}

/// `[allocator]`: its id, its own parameters beside it (`target_bpw = 4.0`), and for a
/// measuring allocator the configurations it may choose from (`[[allocator.candidates]]`, each a
/// codec table laid over the layer's resolved plan).
///
/// Unknown keys are not refused here but by the allocator's `validate`, which knows its
/// parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AllocatorTable {
    /// Allocator id.
    pub id: String,
    /// Configurations to choose from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<CodecTable>,
    /// Allocator-specific parameters: every other key.
    #[serde(flatten)]
    pub params: Params,
}

/// `[calibration]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrationTable {
    /// Calibrator ids to run.
    #[serde(default)]
    pub calibrators: Vec<String>,
    /// Number of calibration windows.
    #[serde(default = "default_calib_windows")]
    pub windows: usize,
    /// Tokens per calibration window.
    #[serde(default = "default_ctx")]
    pub ctx: usize,
}

/// `[evaluation]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluationTable {
    /// Number of evaluation windows (0 = all the text holds).
    #[serde(default)]
    pub windows: usize,
    /// Tokens per evaluation window.
    #[serde(default = "default_ctx")]
    pub ctx: usize,
}

fn default_calib_windows() -> usize {
    128
}
fn default_ctx() -> usize {
    512
}

impl Default for CalibrationTable {
    fn default() -> Self {
        Self { calibrators: Vec::new(), windows: default_calib_windows(), ctx: default_ctx() }
    }
}
impl Default for EvaluationTable {
    fn default() -> Self {
        Self { windows: 0, ctx: default_ctx() }
    }
}

/// A parsed preset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    /// Short name.
    pub name: String,
    /// One line on what it is for.
    #[serde(default)]
    pub description: String,
    /// Calibration settings.
    #[serde(default)]
    pub calibration: CalibrationTable,
    /// Evaluation settings.
    #[serde(default)]
    pub evaluation: EvaluationTable,
    /// Which allocator plans the layers.
    pub allocator: AllocatorTable,
    /// Default codec for block linears.
    pub codec: CodecTable,
    /// Role refinements.
    #[serde(default)]
    pub roles: BTreeMap<String, CodecTable>,
    /// Name overrides, in order.
    #[serde(default)]
    pub overrides: Vec<OverrideTable>,
}

impl Preset {
    /// How to score the evaluation text: the preset's window length and count (0 = all).
    pub fn eval_options(&self) -> crate::eval::PplOptions {
        crate::eval::PplOptions {
            ctx: self.evaluation.ctx,
            samples: (self.evaluation.windows > 0).then_some(self.evaluation.windows),
            ..Default::default()
        }
    }

    /// Parse TOML text; `origin` names the file (or built-in) in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Preset> {
        toml::from_str(text).map_err(|e| tenpak_error::err!("preset {origin}: {e}"))
    }

    /// The built-in preset `name` with its text, if there is one.
    pub fn builtin(name: &str) -> Option<(Preset, String)> {
        let (_, text) = BUILTIN.iter().find(|(n, _)| *n == name)?;
        let preset = Self::parse(text, &format!("`{name}` (built-in)")).expect("built-in presets parse (tested)");
        Some((preset, text.to_string()))
    }

    /// The allocator's view of the rules.
    pub fn allocator_config(&self) -> AllocatorConfig {
        AllocatorConfig {
            default: (&self.codec).into(),
            roles: self.roles.iter().map(|(k, v)| (k.clone(), v.into())).collect(),
            overrides: self
                .overrides
                .iter()
                .map(|o| Override { pattern: o.pattern.clone(), choice: (&o.table).into() })
                .collect(),
            params: self.allocator.params.clone(),
            candidates: self.allocator.candidates.iter().map(CodecChoice::from).collect(),
        }
    }

    /// Refuse a preset that asks for more than `limits` allow, naming the table and the limit.
    pub fn check_limits(&self, limits: &Limits) -> Result<()> {
        let preset = self;
        let refuse = |what: String| Err(tenpak_error::Kind::BadRequest.error(format!("preset `{}`, {what}", preset.name)));
        if preset.overrides.len() > limits.overrides {
            return refuse(format!("[[overrides]]: {} entries; at most {} are accepted (limit `overrides`)", preset.overrides.len(), limits.overrides));
        }
        if let Some((i, o)) = preset.overrides.iter().enumerate().find(|(_, o)| o.pattern.len() > limits.pattern_bytes) {
            return refuse(format!(
                "[[overrides]] #{}: a pattern of {} bytes; at most {} are accepted (limit `pattern_bytes`)",
                i + 1,
                o.pattern.len(),
                limits.pattern_bytes
            ));
        }
        let candidates = preset.allocator.candidates.len();
        if candidates > limits.candidates {
            return refuse(format!("[[allocator.candidates]]: {candidates} entries; at most {} are accepted (limit `candidates`)", limits.candidates));
        }
        let tables = std::iter::once(("[codec]".to_owned(), &preset.codec))
            .chain(preset.roles.iter().map(|(role, t)| (format!("[roles.{role}]"), t)))
            .chain(preset.overrides.iter().enumerate().map(|(i, o)| (format!("[[overrides]] #{}", i + 1), &o.table)))
            .chain(preset.allocator.candidates.iter().enumerate().map(|(i, c)| (format!("[[allocator.candidates]] #{}", i + 1), c)));
        for (what, table) in tables {
            if let Some((key, value)) = oversized_group(table, limits.group_size) {
                return refuse(format!(
                    "{what}: {key} = {value}; at most {} is accepted (limit `group_size`; a group as long as a row is already \
                     one group per row)",
                    limits.group_size
                ));
            }
        }
        for (table, windows, ctx) in [
            ("[calibration]", preset.calibration.windows, preset.calibration.ctx),
            ("[evaluation]", preset.evaluation.windows, preset.evaluation.ctx),
        ] {
            limits.check_windows(windows, &format!("{table} windows")).with_context(|| format!("preset `{}`", preset.name))?;
            limits.check_ctx(ctx, &format!("{table} ctx")).with_context(|| format!("preset `{}`", preset.name))?;
        }
        Ok(())
    }

    /// Check every id and every codec parameter against `registry`, before any work starts.
    pub fn validate(&self, registry: &Registry) -> Result<()> {
        let ctx = |what: &str| format!("preset `{}`, {what}", self.name);
        let allocator = registry.allocator(&self.allocator.id).with_context(|| ctx("[allocator]"))?;
        allocator.validate(&self.allocator_config()).with_context(|| ctx("[allocator]"))?;
        for id in &self.calibration.calibrators {
            registry.calibrator(id).with_context(|| ctx("[calibration] calibrators"))?;
        }
        let default_id = self.codec.codec.as_deref().ok_or_else(|| {
            tenpak_error::err!("{}: `codec` is required (the default codec id)", ctx("[codec]"))
        })?;
        let check = |table: &CodecTable, inherited: &Params, what: &str| -> Result<()> {
            let (id, params) = match &table.codec {
                Some(id) if id != default_id => (id.as_str(), table.params.clone()),
                _ => (default_id, inherited.merged(&table.params)),
            };
            let codec = registry.codec(id).with_context(|| ctx(what))?;
            codec.validate(&params).with_context(|| ctx(what))?;
            Ok(())
        };
        check(&self.codec, &Params::new(), "[codec]")?;
        for (role, table) in &self.roles {
            check(table, &self.codec.params, &format!("[roles.{role}]"))?;
        }
        for (i, o) in self.overrides.iter().enumerate() {
            check(&o.table, &self.codec.params, &format!("[[overrides]] #{} (`{}`)", i + 1, o.pattern))?;
        }
        for (i, c) in self.allocator.candidates.iter().enumerate() {
            check(c, &self.codec.params, &format!("[[allocator.candidates]] #{}", i + 1))?;
        }
        if self.evaluation.ctx < 2 || self.calibration.ctx < 2 {
            bail!("{}: ctx must be at least 2 tokens", ctx("[evaluation]/[calibration]"));
        }
        Ok(())
    }
}

/// The first parameter of `table` named `group_size` or `*_group_size` above `limit`: an
/// integer, or a float (JSON's `1e9`; a plugin codec may take one), shown as an integer.
fn oversized_group(table: &CodecTable, limit: u64) -> Option<(&str, i64)> {
    table.params.iter().find_map(|(key, value)| match value {
        ParamValue::Int(v) if key.ends_with("group_size") && u64::try_from(*v).is_ok_and(|v| v > limit) => Some((key, *v)),
        ParamValue::Float(v) if key.ends_with("group_size") && *v > limit as f64 => Some((key, *v as i64)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Limits;

    fn preset(extra: &str) -> Preset {
        let text = format!("name = \"t\"\n[allocator]\nid = \"role_rules\"\n[codec]\ncodec = \"int4_rtn\"\ngroup_size = 64\n{extra}");
        Preset::parse(&text, "test").unwrap()
    }

    #[test]
    fn each_limit_is_named_when_it_refuses() {
        let limits = Limits::default();
        assert!(preset("").check_limits(&limits).is_ok());
        let refused = |extra: &str| preset(extra).check_limits(&limits).unwrap_err().to_string();
        let many: String = (0..257).map(|i| format!("[[overrides]]\npattern = \"x{i}\"\ncodec = \"keep\"\n")).collect();
        assert!(refused(&many).contains("257 entries; at most 256"), "{}", refused(&many));
        // The local CLI's: none of them.
        assert!(preset(&many).check_limits(&Limits::none()).is_ok());
        assert!(preset("[roles.attention]\ngroup_size = 1000000000\n").check_limits(&Limits::none()).is_ok());
        let huge = "[roles.attention]\ngroup_size = 1000000000\n";
        assert!(refused(huge).contains("[roles.attention]: group_size = 1000000000; at most 65536"), "{}", refused(huge));
        let float = "[roles.attention]\ngroup_size = 1e9\n";
        assert!(refused(float).contains("[roles.attention]: group_size = 1000000000; at most 65536"), "{}", refused(float));
        let residual = "[[overrides]]\npattern = \"*\"\nresidual_group_size = 99999999\n";
        assert!(refused(residual).contains("residual_group_size"), "{}", refused(residual));
        assert!(refused("[calibration]\nwindows = 100000\n").contains("[calibration] windows = 100000"));
        assert!(refused("[evaluation]\nctx = 0\n").contains("at least 2 tokens"));
        assert!(refused("[evaluation]\nctx = 99999999999\n").contains("limit `ctx`"));
        let long = format!("[[overrides]]\npattern = \"{}\"\ncodec = \"keep\"\n", "*".repeat(300));
        assert!(refused(&long).contains("limit `pattern_bytes`"));
        assert!(limits.check_preset_text(&"#".repeat(70_000), "`x`").unwrap_err().to_string().contains("limit `preset_bytes`"));
    }
}
