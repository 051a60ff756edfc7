//! Llama-family hyper-parameters, from an HF `config.json` or GGUF metadata.
//!
//! One struct in Hugging Face terms serves every source: the GGUF reader fills it from metadata,
//! the safetensors reader parses it from `config.json`, and [`ModelConfig::to_hf_config_json`]
//! writes it back as a `config.json` that transformers loads, so an unpacked GGUF becomes an
//! ordinary HF checkpoint.

use std::path::Path;

use tenpak_error::{Context, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use tenpak_error::Kind;

/// The `model_type` values this host runs: all three are the Llama block (RMSNorm, RoPE,
/// grouped-query attention, SwiGLU), differing only in q/k/v bias and defaults.
pub const SUPPORTED_MODEL_TYPES: &[&str] = &["llama", "mistral", "qwen2"];

/// The hyper-parameters a Llama-family forward pass needs, in Hugging Face terms.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// HF `model_type`: "llama", "mistral", "qwen2".
    pub model_type: String,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// MLP inner width.
    pub intermediate_size: usize,
    /// Number of transformer blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention).
    pub num_key_value_heads: usize,
    /// Per-head width; `hidden_size / num_attention_heads` unless the config says otherwise.
    pub head_dim: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base frequency.
    pub rope_theta: f64,
    /// RoPE scaling as the HF config states it (`{"rope_type": "llama3", …}`), if any.
    pub rope_scaling: Option<serde_json::Value>,
    /// Maximum positions the model was trained for.
    pub max_position_embeddings: usize,
    /// True if `lm_head` shares the token embedding.
    pub tie_word_embeddings: bool,
    /// True if q/k/v projections carry a bias (Qwen2).
    pub attention_bias: bool,
    /// Beginning-of-sequence token id, if known.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token id, if known.
    pub eos_token_id: Option<u32>,
}

impl ModelConfig {
    /// Parse an HF `config.json` text. `path` only names the file in errors.
    ///
    /// Defaults follow transformers' `LlamaConfig` / `MistralConfig` / `Qwen2Config` for keys the
    /// file omits (`tie_word_embeddings` false, `rms_norm_eps` 1e-6, `rope_theta` 10000, …);
    /// Qwen2 always has q/k/v bias, whatever the file says, because its modeling code hard-codes it.
    pub fn from_hf_config_json(text: &str, path: &Path) -> tenpak_error::Result<ModelConfig> {
        let file = path.display();
        let root: Value = serde_json::from_str(text).with_context(|| format!("{file}: not valid JSON"))?;
        let obj = root
            .as_object()
            .with_context(|| format!("{file}: expected a JSON object"))?;

        let model_type = match obj.get("model_type") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => bail!("{file}: field `model_type` must be a string, found {other}"),
            None => bail!(
                "{file}: field `model_type` is missing (supported: {})",
                SUPPORTED_MODEL_TYPES.join(", ")
            ),
        };
        if !SUPPORTED_MODEL_TYPES.contains(&model_type.as_str()) {
            return Err(Kind::Unsupported.error(format!(
                "{file}: unsupported model_type \"{model_type}\" (supported: {})",
                SUPPORTED_MODEL_TYPES.join(", ")
            )));
        }
        if let Some(act) = obj.get("hidden_act")
            && act.as_str() != Some("silu")
        {
            return Err(Kind::Unsupported.error(format!(
                "{file}: field `hidden_act` is {act}; the Llama-family runtime implements only \"silu\""
            )));
        }

        let usize_field = |key: &str| -> tenpak_error::Result<Option<usize>> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_u64()
                    .map(|n| Some(n as usize))
                    .with_context(|| format!("{file}: field `{key}` must be a non-negative integer, found {v}")),
            }
        };
        let required = |key: &str| -> tenpak_error::Result<usize> {
            usize_field(key)?.with_context(|| format!("{file}: required field `{key}` is missing"))
        };
        let f64_field = |key: &str| -> tenpak_error::Result<Option<f64>> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_f64()
                    .map(Some)
                    .with_context(|| format!("{file}: field `{key}` must be a number, found {v}")),
            }
        };
        let bool_field = |key: &str| -> tenpak_error::Result<Option<bool>> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_bool()
                    .map(Some)
                    .with_context(|| format!("{file}: field `{key}` must be a boolean, found {v}")),
            }
        };
        // `eos_token_id` may be a list (Llama 3); the first entry is the canonical one.
        let token_field = |key: &str| -> tenpak_error::Result<Option<u32>> {
            let v = match obj.get(key) {
                None | Some(Value::Null) => return Ok(None),
                Some(Value::Array(items)) => match items.first() {
                    None => return Ok(None),
                    Some(first) => first,
                },
                Some(v) => v,
            };
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(Some)
                .with_context(|| format!("{file}: field `{key}` must be a token id, found {v}"))
        };

        let hidden_size = required("hidden_size")?;
        let num_attention_heads = required("num_attention_heads")?;
        // transformers >= 4.56 may move rope_theta into `rope_parameters`.
        let rope_theta = match f64_field("rope_theta")? {
            Some(theta) => theta,
            None => obj
                .get("rope_parameters")
                .and_then(|p| p.get("rope_theta"))
                .and_then(Value::as_f64)
                .unwrap_or(10000.0),
        };
        // transformers >= 5 writes the scaling into `rope_parameters` too (rope_type beside
        // rope_theta); `rope_scaling`, where present, still wins.
        let rope_scaling = match (obj.get("rope_scaling"), obj.get("rope_parameters")) {
            (Some(v @ Value::Object(_)), _) => Some(v.clone()),
            (Some(v), _) if !v.is_null() => bail!("{file}: field `rope_scaling` must be an object or null, found {v}"),
            (_, Some(p @ Value::Object(fields))) => {
                let kind = fields.get("rope_type").or_else(|| fields.get("type")).and_then(Value::as_str).unwrap_or("default");
                (kind != "default").then(|| p.clone())
            }
            _ => None,
        };
        let default_max_positions = match model_type.as_str() {
            "qwen2" => 32768,
            "mistral" => 4096 * 32,
            _ => 2048,
        };
        let head_dim = match usize_field("head_dim")? {
            Some(d) => d,
            None => {
                if num_attention_heads == 0 || !hidden_size.is_multiple_of(num_attention_heads) {
                    bail!(
                        "{file}: hidden_size {hidden_size} is not a multiple of num_attention_heads {num_attention_heads} and no head_dim is given"
                    );
                }
                hidden_size / num_attention_heads
            }
        };
        let config = ModelConfig {
            hidden_size,
            intermediate_size: required("intermediate_size")?,
            num_hidden_layers: required("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads: usize_field("num_key_value_heads")?.unwrap_or(num_attention_heads),
            head_dim,
            vocab_size: required("vocab_size")?,
            rms_norm_eps: f64_field("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings: usize_field("max_position_embeddings")?.unwrap_or(default_max_positions),
            tie_word_embeddings: bool_field("tie_word_embeddings")?.unwrap_or(false),
            attention_bias: model_type == "qwen2" || bool_field("attention_bias")?.unwrap_or(false),
            bos_token_id: token_field("bos_token_id")?,
            eos_token_id: token_field("eos_token_id")?,
            model_type,
        };
        config
            .validate()
            .with_context(|| format!("{file}: inconsistent hyper-parameters"))?;
        Ok(config)
    }

    /// Check the relations a forward pass relies on: positive sizes, query heads a multiple of
    /// key/value heads, an even head width (RoPE rotates pairs).
    pub fn validate(&self) -> tenpak_error::Result<()> {
        for (name, value) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
        ] {
            if value == 0 {
                bail!("{name} is 0");
            }
        }
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            bail!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.num_key_value_heads
            );
        }
        if !self.head_dim.is_multiple_of(2) {
            bail!("head_dim {} is odd; RoPE rotates pairs of dimensions", self.head_dim);
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            bail!("rms_norm_eps {} must be a positive number", self.rms_norm_eps);
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            bail!("rope_theta {} must be a positive number", self.rope_theta);
        }
        Ok(())
    }

    /// An HF `config.json` for this model (pretty-printed), with every field transformers'
    /// `LlamaForCausalLM` / `MistralForCausalLM` / `Qwen2ForCausalLM` reads, weights declared as
    /// float32 (what TenPak's dense outputs hold).
    pub fn to_hf_config_json(&self) -> String {
        let architecture = match self.model_type.as_str() {
            "mistral" => "MistralForCausalLM",
            "qwen2" => "Qwen2ForCausalLM",
            _ => "LlamaForCausalLM",
        };
        let mut obj = Map::new();
        let mut put = |k: &str, v: Value| {
            obj.insert(k.to_owned(), v);
        };
        put("architectures", json!([architecture]));
        put("model_type", json!(self.model_type));
        put("hidden_size", json!(self.hidden_size));
        put("intermediate_size", json!(self.intermediate_size));
        put("num_hidden_layers", json!(self.num_hidden_layers));
        put("num_attention_heads", json!(self.num_attention_heads));
        put("num_key_value_heads", json!(self.num_key_value_heads));
        put("head_dim", json!(self.head_dim));
        put("vocab_size", json!(self.vocab_size));
        put("hidden_act", json!("silu"));
        put("rms_norm_eps", json!(self.rms_norm_eps));
        put("rope_theta", json!(self.rope_theta));
        put("rope_scaling", self.rope_scaling.clone().unwrap_or(Value::Null));
        put("max_position_embeddings", json!(self.max_position_embeddings));
        put("tie_word_embeddings", json!(self.tie_word_embeddings));
        if self.model_type != "qwen2" {
            put("attention_bias", json!(self.attention_bias));
            put("mlp_bias", json!(false));
        }
        put("attention_dropout", json!(0.0));
        put("initializer_range", json!(0.02));
        if self.model_type == "llama" {
            put("pretraining_tp", json!(1));
        }
        put("use_cache", json!(true));
        put("bos_token_id", self.bos_token_id.map_or(Value::Null, |v| json!(v)));
        put("eos_token_id", self.eos_token_id.map_or(Value::Null, |v| json!(v)));
        put("torch_dtype", json!("float32"));
        let mut text = serde_json::to_string_pretty(&Value::Object(obj)).expect("a JSON object always serializes");
        text.push('\n');
        text
    }
}
