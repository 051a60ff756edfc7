//! The `gguf_recipe` allocator: each tensor's llama.cpp type as `llama-quantize` chooses it for a
//! file type (`ftype = "q4_k_m"`, …), to be encoded by the `ggml` codec.
//!
//! The rules are those of `llama_tensor_get_type` in llama.cpp's `llama-quant.cpp` (b7400 era,
//! the version the llama-cpp-python 0.3.x source package vendors), for dense models:
//!
//! - the output head, and the token embedding when it is tied to it (no `lm_head` among the
//!   layers), take Q6_K, or Q8_0 when its rows are not whole blocks of the file's type;
//! - `attn_v`: Q2_K → Q3_K (Q4_K when 4 or more query heads share a KV head); Q3_K_M → Q5_K for
//!   the first two layers, Q4_K after; Q4_K_M and Q5_K_M → Q6_K on the layers `use_more_bits`
//!   picks (the first and last eighth, and every third layer between); IQ4_NL and IQ4_XS → Q5_K
//!   when 4 or more query heads share a KV head;
//! - `ffn_down`: Q2_K → Q3_K; Q3_K_M → Q5_K for the first sixteenth of the layers, Q4_K after;
//!   Q4_K_M and Q5_K_M → Q6_K on `use_more_bits` layers; Q4_0 and Q5_0 → Q4_1 and Q5_1 on the
//!   first eighth (llama.cpp does that with an importance matrix; a TenPak pack is always
//!   calibrated, so IQ4_NL/IQ4_XS's Q5_K for the first eighth, which llama.cpp takes only
//!   without one, does not apply);
//! - `attn_output`: Q2_K → Q3_K, Q3_K_M → Q4_K;
//! - everything else takes the file type's default type;
//! - then `tensor_type_fallback`: rows that are not whole 256-weight super-blocks take Q4_0 for
//!   Q2_K/Q3_K, Q5_0 for Q4_K, Q5_1 for Q5_K, Q8_0 for Q6_K, IQ4_NL for IQ4_XS; rows that are
//!   not whole 32-weight blocks stay in f16 (`keep`).
//!
//! Every tensor gets the preset's `[codec]` parameters (which must name the `ggml` codec) with its
//! `type`; the token embedding (no linear's input, so no calibration statistics)
//! goes to `ggml_plain`, the same types fitted without calibration. `[roles]` and `[[overrides]]` apply on top, so a
//! preset can still pin a tensor's type by name. The number of query heads per KV head is not
//! known to an allocator; it is taken from the ratio of the q and v projections' rows.
#![deny(missing_docs)]

use tenpak_api::{
    Allocator, AllocatorConfig, CodecChoice, Error, LayerInfo, LayerPlan, LayerRole, Plan, Probe,
    Result,
};
use tenpak_quant::ggml::types::GgmlType;

/// The registry id.
pub const ID: &str = "gguf_recipe";

/// The file types this allocator knows, as `llama-quantize` names them (lower case).
pub const FTYPES: &[&str] = &[
    "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k_m", "q4_k_m", "q5_k_m", "q6_k", "iq4_nl",
    "iq4_xs",
];

/// See the crate docs.
#[derive(Default)]
pub struct GgufRecipe;

tenpak_api::register_allocator!("gguf_recipe", GgufRecipe);

/// The type named `ty` (every name this allocator produces is one).
fn ggml_type(ty: &str) -> GgmlType {
    GgmlType::from_name(ty).unwrap_or_else(|| panic!("gguf_recipe names an unknown type {ty}"))
}

/// llama.cpp's `use_more_bits`.
fn use_more_bits(i: usize, n: usize) -> bool {
    let (i, n) = (i as i64, n as i64);
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8).rem_euclid(3) == 2 && i >= n / 8
}

/// The file type's default tensor type.
fn default_type(ftype: &str) -> &'static str {
    match ftype {
        "q4_0" => "q4_0",
        "q4_1" => "q4_1",
        "q5_0" => "q5_0",
        "q5_1" => "q5_1",
        "q8_0" => "q8_0",
        "q2_k" => "q2_k",
        "q3_k_m" => "q3_k",
        "q4_k_m" => "q4_k",
        "q5_k_m" => "q5_k",
        "iq4_nl" => "iq4_nl",
        "iq4_xs" => "iq4_xs",
        _ => "q6_k",
    }
}

/// llama.cpp's `tensor_type_fallback`: the type for rows of `cols`, or `None` for f16.
fn fallback(ty: &'static str, cols: usize) -> Option<&'static str> {
    let wanted = ggml_type(ty);
    let fits = |t: GgmlType| cols.is_multiple_of(t.block_weights());
    if fits(wanted) {
        return Some(ty);
    }
    let demoted = wanted.fallback().unwrap_or(wanted);
    fits(demoted).then_some(demoted.name())
}

/// The type llama.cpp gives `layer` in a file of `ftype` (before the shape fallback).
/// `n_layers`: transformer blocks; `tied`: the embedding is also the head; `gqa`: query heads
/// per KV head.
pub fn recipe_type(
    ftype: &str,
    layer: &LayerInfo,
    n_layers: usize,
    tied: bool,
    gqa: usize,
) -> &'static str {
    let base = default_type(ftype);
    let i = layer.block.unwrap_or(0);
    let n = n_layers.max(1);
    match layer.role {
        LayerRole::LmHead => output_type(base, layer.cols),
        LayerRole::Embedding if tied => output_type(base, layer.cols),
        LayerRole::AttnV => match ftype {
            "q2_k" => {
                if gqa >= 4 {
                    "q4_k"
                } else {
                    "q3_k"
                }
            }
            "q3_k_m" => {
                if i < 2 {
                    "q5_k"
                } else {
                    "q4_k"
                }
            }
            "q4_k_m" | "q5_k_m" if use_more_bits(i, n) => "q6_k",
            "iq4_nl" | "iq4_xs" if gqa >= 4 => "q5_k",
            _ => base,
        },
        LayerRole::MlpDown => match ftype {
            "q2_k" => "q3_k",
            "q3_k_m" => {
                if i < n / 16 {
                    "q5_k"
                } else {
                    "q4_k"
                }
            }
            "q4_k_m" | "q5_k_m" if use_more_bits(i, n) => "q6_k",
            "q4_0" if i < n / 8 => "q4_1",
            "q5_0" if i < n / 8 => "q5_1",
            _ => base,
        },
        LayerRole::AttnO => match ftype {
            "q2_k" => "q3_k",
            "q3_k_m" => "q4_k",
            _ => base,
        },
        _ => base,
    }
}

/// The head's type: Q6_K unless the file is Q8_0, Q8_0 when rows are not whole blocks of the
/// file's type.
fn output_type(base: &'static str, cols: usize) -> &'static str {
    if !cols.is_multiple_of(ggml_type(base).block_weights()) || base == "q8_0" {
        "q8_0"
    } else {
        "q6_k"
    }
}

impl Allocator for GgufRecipe {
    fn id(&self) -> &str {
        ID
    }

    fn description(&self) -> &str {
        "llama.cpp's tensor types for a GGUF file type (llama-quantize's recipe), each tensor on the ggml codec"
    }

    fn validate(&self, config: &AllocatorConfig) -> Result<()> {
        ftype_of(config)?;
        if config.default.codec.as_deref() != Some("ggml") {
            return Err(Error::invalid_param(format!(
                "{ID}: the preset's [codec] must be `ggml`, got {:?}",
                config.default.codec.as_deref().unwrap_or("none")
            )));
        }
        if let Some((key, _)) = config.params.iter().find(|(k, _)| *k != "ftype") {
            return Err(Error::invalid_param(format!(
                "{ID}: unknown parameter `{key}` (it takes `ftype`)"
            )));
        }
        if !config.candidates.is_empty() {
            return Err(Error::invalid_param(format!(
                "{ID}: it takes no [[allocator.candidates]]"
            )));
        }
        Ok(())
    }

    fn plan(
        &self,
        layers: &[LayerInfo],
        config: &AllocatorConfig,
        _probe: &mut dyn Probe,
    ) -> Result<Plan> {
        self.validate(config)?;
        let ftype = ftype_of(config)?;
        let n_layers = layers
            .iter()
            .filter_map(|l| l.block)
            .max()
            .map_or(0, |b| b + 1);
        let tied = !layers.iter().any(|l| l.role == LayerRole::LmHead);
        let rows_of = |role| layers.iter().find(|l| l.role == role).map(|l| l.rows);
        let gqa = match (rows_of(LayerRole::AttnQ), rows_of(LayerRole::AttnV)) {
            (Some(q), Some(v)) if v > 0 => q / v,
            _ => 1,
        };
        let plans = layers
            .iter()
            .map(|layer| {
                let wanted = recipe_type(ftype, layer, n_layers, tied, gqa);
                let mut default = config.default.clone();
                match fallback(wanted, layer.cols) {
                    Some(ty) => {
                        default.params.set("type", ty);
                        if matches!(layer.role, LayerRole::Embedding | LayerRole::Other) {
                            // No linear's input: no statistics, so the calibration-free variant.
                            default = CodecChoice {
                                codec: Some("ggml_plain".into()),
                                params: tenpak_api::Params::new().with("type", ty),
                            };
                        }
                    }
                    None => {
                        default = CodecChoice {
                            codec: Some("keep".into()),
                            params: tenpak_api::Params::new().with("dtype", "f16"),
                        }
                    }
                }
                let layered = AllocatorConfig {
                    default,
                    ..config.clone()
                };
                layered.resolve(layer)
            })
            .collect::<Result<Vec<LayerPlan>>>()?;
        Ok(Plan { layers: plans })
    }
}

/// The checked `ftype` parameter.
fn ftype_of(config: &AllocatorConfig) -> Result<&'static str> {
    let name = config.params.str_or("ftype", "")?;
    FTYPES
        .iter()
        .copied()
        .find(|f| f.eq_ignore_ascii_case(name))
        .ok_or_else(|| {
            Error::invalid_param(format!(
                "{ID}: `ftype` must be one of {}, got {name:?}",
                FTYPES.join(", ")
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tenpak_api::Params;

    /// SmolLM2-135M's shapes: 30 blocks, hidden 576, 9 query heads on 3 KV heads, tied head.
    fn smollm2() -> Vec<LayerInfo> {
        let mut layers = Vec::new();
        for b in 0..30 {
            for (name, role, rows, cols) in [
                ("self_attn.q_proj", LayerRole::AttnQ, 576, 576),
                ("self_attn.k_proj", LayerRole::AttnK, 192, 576),
                ("self_attn.v_proj", LayerRole::AttnV, 192, 576),
                ("self_attn.o_proj", LayerRole::AttnO, 576, 576),
                ("mlp.gate_proj", LayerRole::MlpGate, 1536, 576),
                ("mlp.up_proj", LayerRole::MlpUp, 1536, 576),
                ("mlp.down_proj", LayerRole::MlpDown, 576, 1536),
            ] {
                layers.push(LayerInfo {
                    name: format!("model.layers.{b}.{name}.weight"),
                    role,
                    block: Some(b),
                    rows,
                    cols,
                });
            }
        }
        layers.push(LayerInfo {
            name: "model.embed_tokens.weight".into(),
            role: LayerRole::Embedding,
            block: None,
            rows: 49152,
            cols: 576,
        });
        layers
    }

    fn plan(ftype: &str) -> Plan {
        let config = AllocatorConfig {
            default: CodecChoice {
                codec: Some("ggml".into()),
                params: Params::new(),
            },
            params: Params::new().with("ftype", ftype),
            ..Default::default()
        };
        struct NoProbe;
        impl Probe for NoProbe {
            fn try_codec(
                &mut self,
                _: usize,
                _: &str,
                _: &tenpak_api::Params,
            ) -> Result<tenpak_api::ProbeResult> {
                unreachable!()
            }
        }
        GgufRecipe.plan(&smollm2(), &config, &mut NoProbe).unwrap()
    }

    fn ty(plan: &Plan, name: &str) -> String {
        let l = plan.layers.iter().find(|l| l.name == name).unwrap();
        l.params.str_or("type", "").unwrap().to_owned()
    }

    /// The types llama-quantize 0.3.x wrote into SmolLM2-135M's Q4_K_M (read from the file with
    /// gguf-py): Q5_0 where rows are 576 wide, Q4_K/Q6_K on the 1536-wide down projections,
    /// Q8_0 for the tied embedding.
    #[test]
    fn q4_k_m_on_smollm2_is_llama_quantize_s() {
        let p = plan("q4_k_m");
        assert_eq!(ty(&p, "model.embed_tokens.weight"), "q8_0");
        assert_eq!(ty(&p, "model.layers.0.self_attn.v_proj.weight"), "q8_0");
        assert_eq!(ty(&p, "model.layers.4.self_attn.v_proj.weight"), "q5_0");
        assert_eq!(ty(&p, "model.layers.5.self_attn.v_proj.weight"), "q8_0");
        assert_eq!(ty(&p, "model.layers.0.mlp.down_proj.weight"), "q6_k");
        assert_eq!(ty(&p, "model.layers.4.mlp.down_proj.weight"), "q4_k");
        assert_eq!(ty(&p, "model.layers.5.mlp.down_proj.weight"), "q6_k");
        assert_eq!(ty(&p, "model.layers.29.mlp.down_proj.weight"), "q6_k");
        assert_eq!(ty(&p, "model.layers.12.mlp.up_proj.weight"), "q5_0");
        let emb = p
            .layers
            .iter()
            .find(|l| l.name == "model.embed_tokens.weight")
            .unwrap();
        assert_eq!(emb.codec, "ggml_plain");
    }

    fn counts(plan: &Plan) -> Vec<(String, usize)> {
        let mut c = std::collections::BTreeMap::new();
        for l in &plan.layers {
            *c.entry(l.params.str_or("type", "").unwrap().to_owned())
                .or_insert(0) += 1;
        }
        c.into_iter().collect()
    }

    /// Type counts of llama-quantize's own files of SmolLM2-135M (llama-cpp-python 0.3.36's
    /// llama.cpp, with an importance matrix; read with gguf-py), 2-D tensors only. With 9 query
    /// heads on 3 KV heads, IQ4's attn_v stays IQ4.
    #[test]
    fn type_counts_match_llama_quantize_files() {
        let c = |v: &[(&str, usize)]| {
            v.iter()
                .map(|(k, n)| (k.to_string(), *n))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            counts(&plan("q4_k_m")),
            c(&[("q4_k", 16), ("q5_0", 166), ("q6_k", 14), ("q8_0", 15)])
        );
        assert_eq!(
            counts(&plan("q3_k_m")),
            c(&[
                ("q4_0", 120),
                ("q4_k", 29),
                ("q5_0", 58),
                ("q5_1", 2),
                ("q5_k", 1),
                ("q8_0", 1)
            ])
        );
        assert_eq!(counts(&plan("q6_k")), c(&[("q6_k", 30), ("q8_0", 181)]));
        assert_eq!(
            counts(&plan("q4_0")),
            c(&[("q4_0", 207), ("q4_1", 3), ("q8_0", 1)])
        );
        assert_eq!(counts(&plan("iq4_nl")), c(&[("iq4_nl", 210), ("q8_0", 1)]));
        assert_eq!(
            counts(&plan("iq4_xs")),
            c(&[("iq4_nl", 180), ("iq4_xs", 30), ("q8_0", 1)])
        );
    }

    #[test]
    fn use_more_bits_is_llama_cpp_s() {
        let picked: Vec<usize> = (0..30).filter(|&i| use_more_bits(i, 30)).collect();
        // n/8 = 3, 7n/8 = 26: layers 0-2, 26-29, and (i - 3) % 3 == 2 between.
        assert_eq!(
            picked,
            vec![0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]
        );
    }

    #[test]
    fn bad_configs_are_named() {
        let config = AllocatorConfig {
            default: CodecChoice {
                codec: Some("ggml".into()),
                params: Params::new(),
            },
            params: Params::new().with("ftype", "q4_k_x"),
            ..Default::default()
        };
        let err = GgufRecipe.validate(&config).unwrap_err();
        assert!(
            err.message().contains("q4_k_m") && err.message().contains("q4_k_x"),
            "{err}"
        );
        let config = AllocatorConfig {
            default: CodecChoice {
                codec: Some("int4_awq".into()),
                params: Params::new(),
            },
            params: Params::new().with("ftype", "q4_0"),
            ..Default::default()
        };
        assert!(
            GgufRecipe
                .validate(&config)
                .unwrap_err()
                .message()
                .contains("ggml")
        );
    }
}
