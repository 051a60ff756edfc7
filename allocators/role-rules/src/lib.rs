//! The `role_rules` allocator: each weight's codec and parameters come from a preset's rules.
//!
//! Resolution order, each step laid over the previous one: the preset's default codec, the role
//! class (`attention` or `mlp`), the exact role (`attn_q`, `mlp_down`, `embedding`, `lm_head`, …),
//! then every name override whose pattern matches, in file order (so the last match wins). A
//! step that names no codec keeps the inherited codec and only changes parameters; a step that
//! names a different codec starts from that codec's defaults, since one codec's parameters mean
//! nothing to another.
//!
//! It never measures anything: it is the allocator of presets whose choices were measured
//! beforehand and written down.
#![deny(missing_docs)]

use tenpak_api::{Allocator, AllocatorConfig, Error, LayerInfo, LayerPlan, Plan, Probe, Result};

/// See the crate docs.
#[derive(Default)]
pub struct RoleRules;

tenpak_api::register_allocator!("role_rules", RoleRules);

pub use tenpak_api::glob_match;

/// The plan for one layer under `config` ([`AllocatorConfig::resolve`]).
pub fn plan_layer(layer: &LayerInfo, config: &AllocatorConfig) -> Result<LayerPlan> {
    config.resolve(layer)
}

/// Role keys a preset may use under `[roles]`.
pub const ROLE_KEYS: &[&str] = &[
    "attention", "mlp", "attn_q", "attn_k", "attn_v", "attn_o", "mlp_gate", "mlp_up", "mlp_down",
    "embedding", "lm_head", "other",
];

impl Allocator for RoleRules {
    fn id(&self) -> &str {
        "role_rules"
    }

    fn description(&self) -> &str {
        "codec and parameters per layer from the preset's default, role rules and name overrides"
    }

    fn validate(&self, config: &AllocatorConfig) -> Result<()> {
        if config.default.codec.is_none() {
            return Err(Error::invalid_param("role_rules: the default codec needs a `codec` id"));
        }
        if let Some(key) = config.roles.keys().find(|k| !ROLE_KEYS.contains(&k.as_str())) {
            return Err(Error::invalid_param(format!(
                "role_rules: unknown role `{key}` (known: {})",
                ROLE_KEYS.join(", ")
            )));
        }
        if !config.candidates.is_empty() {
            return Err(Error::invalid_param(
                "role_rules: it takes no [[allocator.candidates]] (it measures nothing; use `bit_budget`)",
            ));
        }
        if let Some((key, _)) = config.params.iter().next() {
            return Err(Error::invalid_param(format!(
                "role_rules: unknown parameter `{key}` (it takes none)"
            )));
        }
        Ok(())
    }

    fn plan(&self, layers: &[LayerInfo], config: &AllocatorConfig, _probe: &mut dyn Probe) -> Result<Plan> {
        self.validate(config)?;
        let layers = layers.iter().map(|l| plan_layer(l, config)).collect::<Result<_>>()?;
        Ok(Plan { layers })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tenpak_api::{CodecChoice, LayerRole, Override, Params};

    fn layer(name: &str, role: LayerRole) -> LayerInfo {
        LayerInfo { name: name.into(), role, block: Some(0), rows: 8, cols: 8 }
    }

    #[test]
    fn glob() {
        assert!(glob_match("*", ""));
        assert!(glob_match("model.layers.*.mlp.down_proj.weight", "model.layers.12.mlp.down_proj.weight"));
        assert!(!glob_match("model.layers.*.mlp.down_proj.weight", "model.layers.12.mlp.up_proj.weight"));
        assert!(glob_match("*lm_head*", "lm_head.weight"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
    }

    #[test]
    fn resolution_order() {
        let mut config = AllocatorConfig {
            default: CodecChoice { codec: Some("int4_residual".into()), params: Params::new().with("group_size", 64usize) },
            ..Default::default()
        };
        config.roles.insert("attention".into(), CodecChoice { codec: None, params: Params::new().with("group_size", 128usize) });
        config.roles.insert("attn_v".into(), CodecChoice { codec: None, params: Params::new().with("group_size", 32usize) });
        config.roles.insert("embedding".into(), CodecChoice { codec: Some("int8".into()), params: Params::new() });
        config.overrides.push(Override {
            pattern: "model.layers.0.*".into(),
            choice: CodecChoice { codec: Some("keep".into()), params: Params::new().with("dtype", "f16") },
        });
        let plan = |name: &str, role| plan_layer(&layer(name, role), &config).unwrap();

        let q = plan("model.layers.1.self_attn.q_proj.weight", LayerRole::AttnQ);
        assert_eq!((q.codec.as_str(), q.params.usize_or("group_size", 0).unwrap()), ("int4_residual", 128));
        let v = plan("model.layers.1.self_attn.v_proj.weight", LayerRole::AttnV);
        assert_eq!(v.params.usize_or("group_size", 0).unwrap(), 32);
        let up = plan("model.layers.1.mlp.up_proj.weight", LayerRole::MlpUp);
        assert_eq!(up.params.usize_or("group_size", 0).unwrap(), 64);
        // A codec switch drops the inherited codec's parameters.
        let emb = plan("model.embed_tokens.weight", LayerRole::Embedding);
        assert_eq!(emb.codec, "int8");
        assert!(emb.params.get("group_size").is_none());
        let first = plan("model.layers.0.mlp.up_proj.weight", LayerRole::MlpUp);
        assert_eq!(first.codec, "keep");
        assert_eq!(first.params, Params::new().with("dtype", "f16"));
    }

    #[test]
    fn validation_names_the_bad_role() {
        let mut config = AllocatorConfig {
            default: CodecChoice { codec: Some("int4_rtn".into()), params: Params::new() },
            ..Default::default()
        };
        config.roles.insert("atention".into(), CodecChoice::default());
        let err = RoleRules.validate(&config).unwrap_err();
        assert!(err.message().contains("`atention`") && err.message().contains("attention"), "{err}");
    }
}
