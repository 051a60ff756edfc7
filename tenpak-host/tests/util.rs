//! Helpers shared by tenpak-host's integration tests: the real assets, tiny random models of the
//! real architecture, and writers for the files they live in.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use rand::{SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, Normal};
use tenpak_host::model::ModelConfig;

/// The repository root (tenpak-host's parent).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tenpak-host sits in the workspace")
        .to_path_buf()
}

/// Path of a file under `assets/`; panics, telling how to get it, when it is missing. Tests that
/// need the real model or texts fail loudly instead of skipping.
pub fn asset(name: &str) -> PathBuf {
    let path = repo_root().join("assets").join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `bash scripts/fetch-assets.sh` first (it downloads the SmolLM2 GGUF and the texts)",
        path.display()
    );
    path
}

/// The real model: SmolLM2-135M-Instruct, Q4_1 GGUF.
pub fn real_gguf() -> PathBuf {
    asset("SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// A tiny Llama configuration: grouped-query attention (4 query heads, 2 kv heads), untied.
pub fn tiny_llama_config(hidden: usize, intermediate: usize, layers: usize, vocab: usize) -> ModelConfig {
    ModelConfig {
        model_type: "llama".into(),
        hidden_size: hidden,
        intermediate_size: intermediate,
        num_hidden_layers: layers,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: hidden / 4,
        vocab_size: vocab,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: None,
        max_position_embeddings: 256,
        tie_word_embeddings: false,
        attention_bias: false,
        bos_token_id: Some(1),
        eos_token_id: Some(2),
    }
}

/// One named tensor: HF name, shape, row-major values.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// Every tensor of a Llama model with `config`, HF names, in HF order, filled with N(0, 0.02)
/// weights (norm weights around 1) from `seed`. `lm_head.weight` only when embeddings are untied.
pub fn tiny_llama_tensors(config: &ModelConfig, seed: u64) -> Vec<NamedTensor> {
    let mut rng = StdRng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, 0.02).expect("valid normal");
    let mut random = |n: usize, offset: f32| -> Vec<f32> { (0..n).map(|_| offset + normal.sample(&mut rng)).collect() };
    let (h, i, v) = (config.hidden_size, config.intermediate_size, config.vocab_size);
    let q = config.num_attention_heads * config.head_dim;
    let kv = config.num_key_value_heads * config.head_dim;
    let mut out: Vec<NamedTensor> = Vec::new();
    let mut push = |name: String, shape: Vec<usize>, offset: f32, random: &mut dyn FnMut(usize, f32) -> Vec<f32>| {
        let n = shape.iter().product();
        out.push((name, shape, random(n, offset)));
    };
    push("model.embed_tokens.weight".into(), vec![v, h], 0.0, &mut random);
    for layer in 0..config.num_hidden_layers {
        let p = format!("model.layers.{layer}");
        push(format!("{p}.input_layernorm.weight"), vec![h], 1.0, &mut random);
        push(format!("{p}.self_attn.q_proj.weight"), vec![q, h], 0.0, &mut random);
        push(format!("{p}.self_attn.k_proj.weight"), vec![kv, h], 0.0, &mut random);
        push(format!("{p}.self_attn.v_proj.weight"), vec![kv, h], 0.0, &mut random);
        push(format!("{p}.self_attn.o_proj.weight"), vec![h, q], 0.0, &mut random);
        push(
            format!("{p}.post_attention_layernorm.weight"),
            vec![h],
            1.0,
            &mut random,
        );
        push(format!("{p}.mlp.gate_proj.weight"), vec![i, h], 0.0, &mut random);
        push(format!("{p}.mlp.up_proj.weight"), vec![i, h], 0.0, &mut random);
        push(format!("{p}.mlp.down_proj.weight"), vec![h, i], 0.0, &mut random);
    }
    push("model.norm.weight".into(), vec![h], 1.0, &mut random);
    if !config.tie_word_embeddings {
        push("lm_head.weight".into(), vec![v, h], 0.0, &mut random);
    }
    out
}

/// Storage type for [`write_safetensors`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreAs {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
}

impl StoreAs {
    /// `x` as it reads back after a round trip through this type.
    pub fn round(self, x: f32) -> f32 {
        match self {
            StoreAs::F32 => x,
            StoreAs::F16 => half::f16::from_f32(x).to_f32(),
            StoreAs::BF16 => half::bf16::from_f32(x).to_f32(),
        }
    }
}

/// Write `tensors` as one safetensors file, each stored as `store(name)` says.
pub fn write_safetensors(path: &Path, tensors: &[NamedTensor], store: impl Fn(&str) -> StoreAs) {
    use safetensors::tensor::{Dtype, TensorView};
    let encoded: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, shape, values)| {
            let (dtype, bytes) = match store(name) {
                StoreAs::F32 => (Dtype::F32, values.iter().flat_map(|v| v.to_le_bytes()).collect()),
                StoreAs::F16 => (
                    Dtype::F16,
                    values
                        .iter()
                        .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                        .collect(),
                ),
                StoreAs::BF16 => (
                    Dtype::BF16,
                    values
                        .iter()
                        .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                        .collect(),
                ),
            };
            (name.clone(), dtype, shape.clone(), bytes)
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = encoded
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            (
                name.clone(),
                TensorView::new(*dtype, shape.clone(), bytes).expect("consistent tensor view"),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).expect("write safetensors");
}

/// Validate and run `request` as the CLI does, with no display: [`PackPlan::build`], then
/// [`tenpak_host::pack::run`].
pub fn pack(
    request: &tenpak_host::plan::PackRequest,
    registry: &std::sync::Arc<tenpak_api::registry::Registry>,
) -> Result<tenpak_host::artifact::Manifest, tenpak_host::error::HostError> {
    let plan = tenpak_host::plan::PackPlan::build(request, registry)?;
    tenpak_host::pack::run(&plan, registry, &tenpak_host::observe::Silent)
}

/// A preset given as text (`origin` names it in errors).
pub fn inline_preset(text: &str, origin: &str) -> tenpak_host::plan::PresetSpec {
    tenpak_host::plan::PresetSpec::Inline { origin: origin.to_owned(), text: text.to_owned() }
}

/// A calibration-free request: `model` packed with `preset` into `output`, no texts.
pub fn request(
    model: impl Into<tenpak_host::plan::ModelSpec>,
    preset: tenpak_host::plan::PresetSpec,
    output: &Path,
) -> tenpak_host::plan::PackRequest {
    tenpak_host::plan::PackRequest {
        model: model.into(),
        preset,
        output: output.to_owned(),
        force: false,
        calib: None,
        eval: None,
    }
}
