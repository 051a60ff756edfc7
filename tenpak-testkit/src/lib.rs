//! Helpers shared by the integration tests of TenPak's crates: the real assets, tiny random models of the
//! real architecture, and writers for the files they live in.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use rand::{Rng, SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, Normal};
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use tenpak_model::ModelConfig;
use tenpak_model::runtime::WeightLoader;

/// The repository root (the parent of this crate's directory).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tenpak-testkit sits in the workspace")
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

/// [`tiny_llama_config`] as a Qwen2 model: q/k/v biases.
pub fn tiny_qwen2_config(
    hidden: usize,
    intermediate: usize,
    layers: usize,
    vocab: usize,
) -> ModelConfig {
    ModelConfig {
        model_type: "qwen2".into(),
        attention_bias: true,
        ..tiny_llama_config(hidden, intermediate, layers, vocab)
    }
}

/// [`tiny_llama_tensors`] plus the q/k/v biases (N(0, 0.3)) when `config.attention_bias`.
pub fn tiny_model_tensors(config: &ModelConfig, seed: u64) -> Vec<NamedTensor> {
    let mut tensors = tiny_llama_tensors(config, seed);
    if config.attention_bias {
        let mut rng = StdRng::seed_from_u64(seed ^ 0xb1a5);
        let normal = Normal::new(0.0f32, 0.3).expect("valid normal");
        for layer in 0..config.num_hidden_layers {
            for (name, width) in [
                ("q_proj", config.num_attention_heads * config.head_dim),
                ("k_proj", config.num_key_value_heads * config.head_dim),
                ("v_proj", config.num_key_value_heads * config.head_dim),
            ] {
                let values = (0..width).map(|_| normal.sample(&mut rng)).collect();
                tensors.push((
                    format!("model.layers.{layer}.self_attn.{name}.bias"),
                    vec![width],
                    values,
                ));
            }
        }
    }
    tensors
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
/// [`tenpak_pack::pack::run`].
pub fn pack(
    request: &tenpak_pack::plan::PackRequest,
    registry: &std::sync::Arc<tenpak_api::registry::Registry>,
) -> Result<tenpak_pack::artifact::Manifest, tenpak_error::Error> {
    let plan = tenpak_pack::plan::PackPlan::build(request, registry)?;
    tenpak_pack::pack::run(&plan, registry, &tenpak_pack::observe::Silent)
}

/// A preset given as text (`origin` names it in errors).
pub fn inline_preset(text: &str, origin: &str) -> tenpak_pack::plan::PresetSpec {
    tenpak_pack::plan::PresetSpec::Inline { origin: origin.to_owned(), text: text.to_owned() }
}

/// A calibration-free request: `model` packed with `preset` into `output`, no texts.
pub fn request(
    model: impl Into<tenpak_pack::plan::ModelSpec>,
    preset: tenpak_pack::plan::PresetSpec,
    output: &Path,
) -> tenpak_pack::plan::PackRequest {
    tenpak_pack::plan::PackRequest {
        model: model.into(),
        preset,
        output: output.to_owned(),
        force: false,
        calib: None,
        eval: None,
        target_bpw: None,
        tasks: None,
    }
}

// ---------------------------------------------------------------------------------------------
// A tiny model held in a map

/// Weights by HF name, with shapes.
pub struct MapWeights(pub HashMap<String, (Vec<usize>, Vec<f32>)>);

impl WeightLoader for MapWeights {
    fn tensor_shape(&self, name: &str) -> Option<Vec<usize>> {
        self.0.get(name).map(|(shape, _)| shape.clone())
    }
    fn tensor_f32(&self, name: &str) -> tenpak_error::Result<Vec<f32>> {
        self.0.get(name).map(|(_, values)| values.clone()).ok_or_else(|| tenpak_error::err!("no tensor {name}"))
    }
}

impl MapWeights {
    pub fn get(&self, name: &str) -> &[f32] {
        &self.0.get(name).unwrap_or_else(|| panic!("test model has no {name}")).1
    }
}

/// hidden 64, 4 query heads / 2 kv heads of 16, MLP 96, 2 blocks, vocabulary 100.
pub fn tiny_config(tied: bool, bias: bool) -> ModelConfig {
    ModelConfig {
        model_type: if bias { "qwen2" } else { "llama" }.into(),
        hidden_size: 64,
        intermediate_size: 96,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 16,
        vocab_size: 100,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: None,
        max_position_embeddings: 128,
        tie_word_embeddings: tied,
        attention_bias: bias,
        bos_token_id: None,
        eos_token_id: None,
    }
}

/// Random weights for `config`, scaled so activations stay O(1) through the blocks (weights
/// ~ U(−1, 1)·√(3/in)) and attention is far from uniform; norm weights around 1, biases O(0.3).
pub fn tiny_weights(config: &ModelConfig, seed: u64) -> MapWeights {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut map = HashMap::new();
    let mut add = |name: String, shape: Vec<usize>, scale: f32, offset: f32| {
        let n = shape.iter().product();
        let values = (0..n).map(|_| offset + scale * rng.random_range(-1.0f32..1.0)).collect();
        map.insert(name, (shape, values));
    };
    let (h, i, v) = (config.hidden_size, config.intermediate_size, config.vocab_size);
    let (q, kv) = (config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim);
    let linear = |input: usize| (3.0 / input as f32).sqrt();
    add("model.embed_tokens.weight".into(), vec![v, h], 1.0, 0.0);
    for layer in 0..config.num_hidden_layers {
        let p = format!("model.layers.{layer}");
        add(format!("{p}.input_layernorm.weight"), vec![h], 0.3, 1.0);
        add(format!("{p}.self_attn.q_proj.weight"), vec![q, h], 2.0 * linear(h), 0.0);
        add(format!("{p}.self_attn.k_proj.weight"), vec![kv, h], 2.0 * linear(h), 0.0);
        add(format!("{p}.self_attn.v_proj.weight"), vec![kv, h], linear(h), 0.0);
        if config.attention_bias {
            add(format!("{p}.self_attn.q_proj.bias"), vec![q], 0.3, 0.0);
            add(format!("{p}.self_attn.k_proj.bias"), vec![kv], 0.3, 0.0);
            add(format!("{p}.self_attn.v_proj.bias"), vec![kv], 0.3, 0.0);
        }
        add(format!("{p}.self_attn.o_proj.weight"), vec![h, q], linear(q), 0.0);
        add(format!("{p}.post_attention_layernorm.weight"), vec![h], 0.3, 1.0);
        add(format!("{p}.mlp.gate_proj.weight"), vec![i, h], linear(h), 0.0);
        add(format!("{p}.mlp.up_proj.weight"), vec![i, h], linear(h), 0.0);
        add(format!("{p}.mlp.down_proj.weight"), vec![h, i], linear(i), 0.0);
    }
    add("model.norm.weight".into(), vec![h], 0.3, 1.0);
    if !config.tie_word_embeddings {
        add("lm_head.weight".into(), vec![v, h], linear(h), 0.0);
    }
    MapWeights(map)
}

/// `n` token ids drawn uniformly from the vocabulary.
pub fn random_ids(rng: &mut StdRng, n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|_| rng.random_range(0..vocab as u32)).collect()
}

// ---------------------------------------------------------------------------------------------
// Synthetic GGUF files, written the way llama.cpp's converter writes them.

/// llama.cpp's `LlamaModel.permute` (convert_hf_to_gguf.py), written out from its numpy:
/// `w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)`.
/// Kept independent of the library's implementation on purpose.
pub fn llama_cpp_permute(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    let half = rows / n_head / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..n_head {
        for j in 0..half {
            for i in 0..2 {
                // after swapaxes, element (h, j, i) is the input's (h, i, j)
                let out_row = h * 2 * half + j * 2 + i;
                let in_row = h * 2 * half + i * half + j;
                out[out_row * cols..(out_row + 1) * cols].copy_from_slice(&w[in_row * cols..(in_row + 1) * cols]);
            }
        }
    }
    out
}

/// GPT-2's byte-to-printable-character table (`bytes_to_unicode` in GPT-2's encoder.py).
pub fn bytes_to_unicode() -> Vec<char> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars: Vec<u32> = printable.clone();
    let mut extra = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + extra);
            extra += 1;
        }
    }
    let mut table = vec!['\0'; 256];
    for (b, c) in printable.iter().zip(chars) {
        table[*b as usize] = char::from_u32(c).unwrap();
    }
    table
}

/// A tiny byte-level BPE vocabulary: 3 control tokens, the 256 byte symbols, and merges that
/// build "Ġthe" and (deliberately) a two-digit token "12".
pub fn tiny_vocab(vocab_size: usize) -> (Vec<String>, Vec<String>, Vec<i32>) {
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .map(String::from)
        .to_vec();
    tokens.extend(bytes_to_unicode().into_iter().map(String::from));
    let merges = ["Ġ t", "h e", "Ġt he", "1 2"];
    for m in merges {
        tokens.push(m.replace(' ', ""));
    }
    assert!(tokens.len() <= vocab_size);
    let mut pad = 0;
    while tokens.len() < vocab_size {
        tokens.push(format!("<pad{pad}>"));
        pad += 1;
    }
    let types: Vec<i32> = (0..tokens.len()).map(|i| if i < 3 { 3 } else { 1 }).collect();
    (tokens, merges.map(String::from).to_vec(), types)
}

/// Write a GGUF for `config`: HF tensors renamed and q/k permuted the way convert_hf_to_gguf.py
/// does, all f32 except `q8_name` (if any) stored Q8_0.
pub fn write_tiny_gguf(
    path: &Path,
    arch: &str,
    config: &ModelConfig,
    tensors: &[NamedTensor],
    pre: &str,
    q8_name: Option<&str>,
) {
    let dtype = |name: &str| if Some(name) == q8_name { GgmlDType::Q8_0 } else { GgmlDType::F32 };
    write_tiny_gguf_as(path, arch, config, tensors, pre, &dtype)
}

/// [`write_tiny_gguf`] with each HF tensor stored as `dtype(name)` says.
pub fn write_tiny_gguf_as(
    path: &Path,
    arch: &str,
    config: &ModelConfig,
    tensors: &[NamedTensor],
    pre: &str,
    dtype: &dyn Fn(&str) -> GgmlDType,
) {
    let (tokens, merges, types) = tiny_vocab(config.vocab_size);
    let strings = |v: &[String]| Value::Array(v.iter().map(|s| Value::String(s.clone())).collect());
    let metadata: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        (
            format!("{arch}.block_count"),
            Value::U32(config.num_hidden_layers as u32),
        ),
        (
            format!("{arch}.context_length"),
            Value::U32(config.max_position_embeddings as u32),
        ),
        (
            format!("{arch}.embedding_length"),
            Value::U32(config.hidden_size as u32),
        ),
        (
            format!("{arch}.feed_forward_length"),
            Value::U32(config.intermediate_size as u32),
        ),
        (
            format!("{arch}.attention.head_count"),
            Value::U32(config.num_attention_heads as u32),
        ),
        (
            format!("{arch}.attention.head_count_kv"),
            Value::U32(config.num_key_value_heads as u32),
        ),
        (format!("{arch}.rope.freq_base"), Value::F32(config.rope_theta as f32)),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            Value::F32(config.rms_norm_eps as f32),
        ),
        (
            format!("{arch}.rope.dimension_count"),
            Value::U32(config.head_dim as u32),
        ),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String(pre.into())),
        ("tokenizer.ggml.tokens".into(), strings(&tokens)),
        ("tokenizer.ggml.merges".into(), strings(&merges)),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.iter().map(|&t| Value::I32(t)).collect()),
        ),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
    ];
    let gguf_name = |hf: &str| -> String {
        let simple = [
            ("model.embed_tokens.weight", "token_embd.weight"),
            ("model.norm.weight", "output_norm.weight"),
            ("lm_head.weight", "output.weight"),
        ];
        if let Some((_, g)) = simple.iter().find(|(h, _)| *h == hf) {
            return (*g).to_owned();
        }
        let rest = hf.strip_prefix("model.layers.").unwrap();
        let (layer, part) = rest.split_once('.').unwrap();
        let (part, suffix) = part.rsplit_once('.').unwrap();
        let g = match part {
            "self_attn.q_proj" => "attn_q",
            "self_attn.k_proj" => "attn_k",
            "self_attn.v_proj" => "attn_v",
            "self_attn.o_proj" => "attn_output",
            "mlp.gate_proj" => "ffn_gate",
            "mlp.up_proj" => "ffn_up",
            "mlp.down_proj" => "ffn_down",
            "input_layernorm" => "attn_norm",
            "post_attention_layernorm" => "ffn_norm",
            other => panic!("unmapped {other}"),
        };
        format!("blk.{layer}.{g}.{suffix}")
    };
    let mut qtensors: Vec<(String, QTensor)> = Vec::new();
    for (name, shape, values) in tensors {
        // llama.cpp permutes q/k rows only for its "llama" architecture (Qwen2 uses NeoX RoPE).
        let stored = if arch != "llama" {
            values.clone()
        } else if name.ends_with("q_proj.weight") {
            llama_cpp_permute(values, shape[0], shape[1], config.num_attention_heads)
        } else if name.ends_with("k_proj.weight") {
            llama_cpp_permute(values, shape[0], shape[1], config.num_key_value_heads)
        } else {
            values.clone()
        };
        let t = Tensor::from_vec(stored, shape.as_slice(), &Device::Cpu).unwrap();
        qtensors.push((gguf_name(name), QTensor::quantize(&t, dtype(name)).unwrap()));
    }
    let md_refs: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = qtensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut file, &md_refs, &t_refs).unwrap();
}

/// Words the tiny tokenizer knows; text is made of them.
pub const WORDS: &[&str] = &[
    "the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on", "not",
    "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an", "had", "they", "you", "were",
    "their", "one", "all", "we", "can", "her", "has", "there", "been", "if", "more", "when", "will", "would",
    "who", "so", "no", "nation", "people", "state", "union", "year", "war", "law", "work", "peace", "congress",
];

/// A tiny model directory: config.json, model.safetensors (untied lm_head), and a word-level
/// tokenizer.json over [`WORDS`].
pub fn write_tiny_model(dir: &Path, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let config = tiny_llama_config(72, 160, 2, 96);
    std::fs::write(dir.join("config.json"), config.to_hf_config_json()).unwrap();
    let tensors = tiny_llama_tensors(&config, seed);
    write_safetensors(&dir.join("model.safetensors"), &tensors, |_| StoreAs::F32);
    let mut vocab = serde_json::Map::new();
    vocab.insert("[UNK]".into(), 0.into());
    for (i, w) in WORDS.iter().enumerate() {
        vocab.insert((*w).into(), (i + 1).into());
    }
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
}

/// `words` words of random text, a line break every 12.
pub fn write_text(path: &Path, words: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut text = String::new();
    for i in 0..words {
        text.push_str(WORDS[rng.random_range(0..WORDS.len())]);
        text.push(if i % 12 == 11 { '\n' } else { ' ' });
    }
    std::fs::write(path, text).unwrap();
}

/// A tiny model directory with a calibration and an evaluation text, in a temporary directory.
pub struct Tiny {
    pub _tmp: tempfile::TempDir,
    pub model: PathBuf,
    pub calib: PathBuf,
    pub eval: PathBuf,
    pub out: PathBuf,
}

/// [`write_tiny_model`] with 400 words of calibration text and 200 of evaluation text.
pub fn tiny(seed: u64) -> Tiny {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("tiny");
    write_tiny_model(&model, seed);
    let (calib, eval) = (tmp.path().join("calib.txt"), tmp.path().join("eval.txt"));
    write_text(&calib, 400, seed + 1);
    write_text(&eval, 200, seed + 2);
    let out = tmp.path().join("tiny.tenpak");
    Tiny { _tmp: tmp, model, calib, eval, out }
}

/// A bit_budget preset for the tiny model ([`measuring_preset`]).
pub fn budget_preset(target: &str, sensitivity: &str) -> String {
    measuring_preset("act_scale", &format!("id = \"bit_budget\"\n{target}\nsensitivity = \"{sensitivity}\""))
}

/// A preset for the tiny model whose allocator table is `allocator` (its lines, without the
/// header), calibrating with `calibrator`, choosing among int4_awq with error feedback at 2, 3,
/// 4, 6 and 8 bits in groups of 16 with f16 headers: 4.6 to 10.6 bits per weight with the column
/// scales (the tiny model's widths, 72 and 160, leave a short last group).
pub fn measuring_preset(calibrator: &str, allocator: &str) -> String {
    format!(
        r#"
name = "tiny-measuring"
[calibration]
calibrators = ["{calibrator}"]
windows = 6
ctx = 32
[evaluation]
windows = 3
ctx = 32
[allocator]
{allocator}
[[allocator.candidates]]
bits = 2
[[allocator.candidates]]
bits = 3
[[allocator.candidates]]
bits = 4
[[allocator.candidates]]
bits = 6
[[allocator.candidates]]
bits = 8
[codec]
codec = "int4_awq"
group_size = 16
error_feedback = true
[roles.embedding]
codec = "int8"
[roles.lm_head]
codec = "int8"
"#
    )
}

/// The registry of every built-in component (`tenpak_plugins::builtins`), built once per process.
pub fn builtin_registry() -> &'static std::sync::Arc<tenpak_api::registry::Registry> {
    static REGISTRY: std::sync::OnceLock<std::sync::Arc<tenpak_api::registry::Registry>> = std::sync::OnceLock::new();
    REGISTRY.get_or_init(|| std::sync::Arc::new(tenpak_plugins::builtins::registry().expect("the built-in registry builds")))
}

/// `target/<profile>` of the running test binary (`target/<profile>/deps/<test>-…`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent().and_then(Path::parent).expect("test binary lives in target/<profile>/deps").to_path_buf()
}

/// Build the plugin libraries (the examples' and the loader's test fixtures; once per process)
/// with the same cargo, profile and target directory as the running test, and return the
/// directory holding them. `cargo test` has released its build lock by the time test binaries
/// run, so the nested build does not wait on it.
fn plugin_dir() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let profile_dir = profile_dir();
        let target_dir = profile_dir.parent().expect("target dir").to_path_buf();
        let profile = profile_dir.file_name().and_then(|n| n.to_str()).expect("profile name").to_owned();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut command = Command::new(cargo);
        command
            .arg("build")
            .arg("--manifest-path")
            .arg(repo_root().join("Cargo.toml"))
            .arg("--target-dir")
            .arg(&target_dir)
            .args(["-p", "tenpak-codec-nf4", "-p", "tenpak-calibrator-absmax", "-p", "tenpak-alloc-error-cap"])
            .args(["-p", "tenpak-test-faulty-plugin", "-p", "tenpak-test-future-abi-plugin", "-p", "tenpak-test-old-abi-plugin"]);
        match profile.as_str() {
            "debug" => {}
            "release" => {
                command.arg("--release");
            }
            other => {
                command.args(["--profile", other]);
            }
        }
        let output = command.output().expect("run cargo to build the plugin libraries");
        assert!(
            output.status.success(),
            "building the plugin libraries failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        profile_dir
    })
}

/// The plugin library `name` (`tenpak_codec_nf4`, …, the file name without prefix and suffix),
/// built by [`plugin_dir`].
pub fn plugin_library(name: &str) -> PathBuf {
    let path = plugin_dir().join(format!("{}{name}{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX));
    assert!(path.is_file(), "{} was not built", path.display());
    path.canonicalize().unwrap()
}
