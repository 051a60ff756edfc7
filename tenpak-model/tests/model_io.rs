//! Model input: safetensors directories (single and sharded), single safetensors files and GGUF,
//! on tiny models written by the tests and on the real SmolLM2 GGUF; bad inputs give errors that
//! name the file and what is wrong.

use tenpak_testkit as util;

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::str::FromStr;
use std::time::Instant;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use tenpak_model::gguf::GgufModel;
use tenpak_model::{self as model, ModelConfig, ModelSource, SourceDType, TokenizerSource};
use util::{
    NamedTensor, StoreAs, llama_cpp_permute, tiny_llama_config, tiny_llama_tensors, tiny_model_tensors, tiny_qwen2_config, tiny_vocab,
    write_safetensors, write_tiny_gguf, write_tiny_gguf_as,
};

// ---------------------------------------------------------------------------------------------
// helpers

/// The message of an error, with its whole context chain.
fn err_text<T>(result: tenpak_error::Result<T>) -> String {
    match result {
        Ok(_) => panic!("expected an error, got success"),
        Err(e) => format!("{e:#}"),
    }
}

fn assert_mentions(message: &str, needles: &[&str]) {
    for needle in needles {
        assert!(
            message.contains(needle),
            "error message should mention {needle:?}:\n{message}"
        );
    }
}

/// An HF config.json written by hand (no head_dim, no tie_word_embeddings, no rope_theta), so
/// parsing and defaults are tested independently of `to_hf_config_json`.
fn hand_config_json(c: &ModelConfig, model_type: &str) -> String {
    format!(
        r#"{{
  "architectures": ["LlamaForCausalLM"],
  "model_type": "{model_type}",
  "hidden_size": {},
  "intermediate_size": {},
  "num_hidden_layers": {},
  "num_attention_heads": {},
  "num_key_value_heads": {},
  "vocab_size": {},
  "rms_norm_eps": 1e-05,
  "max_position_embeddings": 256,
  "hidden_act": "silu",
  "bos_token_id": 1,
  "eos_token_id": [2, 3],
  "torch_dtype": "bfloat16"
}}"#,
        c.hidden_size,
        c.intermediate_size,
        c.num_hidden_layers,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.vocab_size
    )
}

/// A tiny model directory: config.json, tokenizer.json placeholder, model.safetensors with most
/// tensors f32, the embedding f16 and one projection bf16.
fn store_mixed(name: &str) -> StoreAs {
    if name == "model.embed_tokens.weight" {
        StoreAs::F16
    } else if name.ends_with("v_proj.weight") {
        StoreAs::BF16
    } else {
        StoreAs::F32
    }
}

fn write_tiny_dir(dir: &Path) -> (ModelConfig, Vec<NamedTensor>) {
    let config = tiny_llama_config(64, 96, 2, 50);
    let tensors = tiny_llama_tensors(&config, 7);
    fs::write(dir.join("config.json"), hand_config_json(&config, "llama")).unwrap();
    fs::write(dir.join("tokenizer.json"), "{}").unwrap();
    write_safetensors(&dir.join("model.safetensors"), &tensors, store_mixed);
    (config, tensors)
}

/// Every tensor of `model` equals `expected` after rounding through its storage type.
fn assert_exact(model: &dyn ModelSource, expected: &[NamedTensor], store: impl Fn(&str) -> StoreAs) {
    assert_eq!(model.tensors().len(), expected.len());
    for (name, shape, values) in expected {
        let info = model.tensor(name).unwrap_or_else(|| panic!("tensor {name} missing"));
        assert_eq!(&info.shape, shape, "{name}");
        let kind = store(name);
        let want_dtype = match kind {
            StoreAs::F32 => "f32",
            StoreAs::F16 => "f16",
            StoreAs::BF16 => "bf16",
        };
        assert_eq!(info.dtype, SourceDType::Float(want_dtype), "{name}");
        let got = model.load_f32(name).unwrap();
        let want: Vec<f32> = values.iter().map(|&v| kind.round(v)).collect();
        assert!(got == want, "{name}: loaded values differ from the written ones");
    }
}

// ---------------------------------------------------------------------------------------------
// safetensors

#[test]
fn safetensors_dir_loads_exact_values_and_config() {
    let dir = tempfile::tempdir().unwrap();
    let (config, tensors) = write_tiny_dir(dir.path());
    let model = model::open(dir.path()).unwrap();
    assert_eq!(model.format(), "safetensors");
    let c = model.config();
    assert_eq!(c.model_type, "llama");
    assert_eq!(c.hidden_size, config.hidden_size);
    assert_eq!(c.num_key_value_heads, 2);
    assert_eq!(c.head_dim, 16, "head_dim defaults to hidden / heads");
    assert!(
        !c.tie_word_embeddings,
        "LlamaConfig's tie_word_embeddings default is false"
    );
    assert_eq!(c.rope_theta, 10000.0, "LlamaConfig's rope_theta default");
    assert_eq!(c.rms_norm_eps, 1e-5);
    assert_eq!(c.bos_token_id, Some(1));
    assert_eq!(c.eos_token_id, Some(2), "the first of a list of eos ids");
    assert!(!c.attention_bias);
    assert_exact(model.as_ref(), &tensors, store_mixed);
    assert_eq!(
        model.config_json().unwrap(),
        fs::read_to_string(dir.path().join("config.json")).unwrap()
    );
    match model.tokenizer() {
        TokenizerSource::File(p) => assert_eq!(p, dir.path().join("tokenizer.json")),
        other => panic!("expected tokenizer.json beside the model, got {other:?}"),
    }
    assert!(model.files().contains(&dir.path().join("model.safetensors")));
    // Tensors are listed as stored: the writer orders them by name... whatever the order, it is
    // the file's offset order, so listing twice gives the same order.
    let again = model::open(dir.path()).unwrap();
    assert_eq!(model.tensors(), again.tensors());

    let err = err_text(model.load_f32("model.layers.9.mlp.up_proj.weight"));
    assert_mentions(
        &err,
        &["model.layers.9.mlp.up_proj.weight", &dir.path().display().to_string()],
    );
}

#[test]
fn safetensors_single_file_needs_config_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let (_, tensors) = write_tiny_dir(dir.path());
    let file = dir.path().join("model.safetensors");
    let model = model::open(&file).unwrap();
    assert_exact(model.as_ref(), &tensors, store_mixed);
    assert_eq!(model.path(), file);

    let lonely = tempfile::tempdir().unwrap();
    let moved = lonely.path().join("weights.safetensors");
    fs::copy(&file, &moved).unwrap();
    let err = err_text(model::open(&moved));
    assert_mentions(&err, &[&moved.display().to_string(), "config.json"]);
}

#[test]
fn safetensors_missing_config_in_dir_is_named() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_dir(dir.path());
    fs::remove_file(dir.path().join("config.json")).unwrap();
    let err = err_text(model::open(dir.path()));
    assert_mentions(&err, &[&dir.path().display().to_string(), "config.json"]);
}

#[test]
fn safetensors_dir_without_weights_lists_what_it_found() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_dir(dir.path());
    fs::rename(
        dir.path().join("model.safetensors"),
        dir.path().join("other.safetensors"),
    )
    .unwrap();
    let err = err_text(model::open(dir.path()));
    assert_mentions(&err, &["model.safetensors.index.json", "other.safetensors"]);
}

#[test]
fn safetensors_unsupported_model_type_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = write_tiny_dir(dir.path());
    fs::write(dir.path().join("config.json"), hand_config_json(&config, "gpt2")).unwrap();
    let err = err_text(model::open(dir.path()));
    assert_mentions(
        &err,
        &[
            &dir.path().join("config.json").display().to_string(),
            "gpt2",
            "llama",
            "model_type",
        ],
    );
}

#[test]
fn safetensors_config_errors_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = write_tiny_dir(dir.path());
    let text = hand_config_json(&config, "llama").replace("\"hidden_size\": 64,", "");
    fs::write(dir.path().join("config.json"), text).unwrap();
    assert_mentions(
        &err_text(model::open(dir.path())),
        &["config.json", "hidden_size", "missing"],
    );

    let text = hand_config_json(&config, "llama").replace("\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3");
    fs::write(dir.path().join("config.json"), text).unwrap();
    assert_mentions(
        &err_text(model::open(dir.path())),
        &["config.json", "num_key_value_heads 3"],
    );
}

#[test]
fn safetensors_sharded_index_loads_every_shard() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_llama_config(64, 96, 3, 50);
    let tensors = tiny_llama_tensors(&config, 11);
    fs::write(dir.path().join("config.json"), hand_config_json(&config, "llama")).unwrap();
    let (first, second) = tensors.split_at(tensors.len() / 2);
    let shard_names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"];
    write_safetensors(&dir.path().join(shard_names[0]), first, |_| StoreAs::F32);
    write_safetensors(&dir.path().join(shard_names[1]), second, |_| StoreAs::BF16);
    let store = |name: &str| {
        if first.iter().any(|t| t.0 == name) {
            StoreAs::F32
        } else {
            StoreAs::BF16
        }
    };
    let mut weight_map = serde_json::Map::new();
    for (part, file) in [(first, shard_names[0]), (second, shard_names[1])] {
        for (name, _, _) in part {
            weight_map.insert(name.clone(), serde_json::json!(file));
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    let index_path = dir.path().join("model.safetensors.index.json");
    fs::write(&index_path, index.to_string()).unwrap();

    let model = model::open(dir.path()).unwrap();
    assert_exact(model.as_ref(), &tensors, store);
    let files = model.files();
    for f in shard_names {
        assert!(files.contains(&dir.path().join(f)), "{f} not among {files:?}");
    }
    assert!(matches!(model.tokenizer(), TokenizerSource::Missing));

    // An index naming a shard that is not there.
    let mut broken = index.clone();
    broken["weight_map"]["model.norm.weight"] = serde_json::json!("model-00003-of-00002.safetensors");
    fs::write(&index_path, broken.to_string()).unwrap();
    let err = err_text(model::open(dir.path()));
    assert_mentions(
        &err,
        &[
            "model.safetensors.index.json",
            "model.norm.weight",
            "model-00003-of-00002.safetensors",
        ],
    );

    // An index naming a tensor its shard does not hold.
    let mut broken = index.clone();
    broken["weight_map"]["model.layers.7.mlp.up_proj.weight"] = serde_json::json!(shard_names[0]);
    fs::write(&index_path, broken.to_string()).unwrap();
    let err = err_text(model::open(dir.path()));
    assert_mentions(
        &err,
        &[
            "model.safetensors.index.json",
            "model.layers.7.mlp.up_proj.weight",
            shard_names[0],
        ],
    );
}

#[test]
fn truncated_safetensors_is_reported_with_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_dir(dir.path());
    let file = dir.path().join("model.safetensors");
    let bytes = fs::read(&file).unwrap();
    // The writer puts tensors in some order; whichever is last in the file loses its tail.
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let last = header
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .max_by_key(|(_, v)| v["data_offsets"][1].as_u64().unwrap())
        .map(|(k, _)| k.clone())
        .unwrap();
    fs::write(&file, &bytes[..bytes.len() - 10]).unwrap();
    let err = err_text(model::open(dir.path()));
    assert_mentions(&err, &[&file.display().to_string(), &last, "truncated"]);

    // Cut inside the header itself.
    fs::write(&file, &bytes[..8 + header_len / 2]).unwrap();
    let err = err_text(model::open(dir.path()));
    assert_mentions(&err, &[&file.display().to_string(), "truncated"]);

    // Cut inside the length field.
    fs::write(&file, &bytes[..5]).unwrap();
    let err = err_text(model::open(dir.path()));
    assert_mentions(&err, &[&file.display().to_string(), "truncated"]);
}

/// A header that is consistent in itself but whose offsets point past the end of the file.
#[test]
fn safetensors_header_offsets_past_file_end_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_llama_config(64, 96, 2, 50);
    fs::write(dir.path().join("config.json"), hand_config_json(&config, "llama")).unwrap();
    let header = r#"{"small":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"model.norm.weight":{"dtype":"F32","shape":[1000000],"data_offsets":[16,4000016]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&[0u8; 32]);
    let file = dir.path().join("model.safetensors");
    fs::write(&file, &bytes).unwrap();
    let err = err_text(model::open(dir.path()));
    assert_mentions(
        &err,
        &[&file.display().to_string(), "model.norm.weight", "past the end"],
    );

    // Offsets that disagree with dtype and shape.
    let header = r#"{"model.norm.weight":{"dtype":"F32","shape":[8],"data_offsets":[0,16]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&[0u8; 16]);
    fs::write(&file, &bytes).unwrap();
    let err = err_text(model::open(dir.path()));
    assert_mentions(&err, &[&file.display().to_string(), "model.norm.weight", "needs 32"]);

    // A header length larger than the file.
    let mut bytes = 1_000_000u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    fs::write(&file, &bytes).unwrap();
    let err = err_text(model::open(dir.path()));
    assert_mentions(&err, &[&file.display().to_string(), "truncated"]);

    // A non-float tensor.
    let header = r#"{"model.norm.weight":{"dtype":"I64","shape":[2],"data_offsets":[0,16]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&[0u8; 16]);
    fs::write(&file, &bytes).unwrap();
    let err = err_text(model::open(dir.path()));
    assert_mentions(&err, &[&file.display().to_string(), "model.norm.weight", "I64"]);
}

/// transformers 5 writes a Llama 3 checkpoint's scaling into `rope_parameters` (beside
/// rope_theta) with `rope_scaling` absent; a "default" rope_type there is no scaling.
#[test]
fn rope_parameters_of_transformers_5_carry_the_scaling() {
    let base = serde_json::json!({"model_type": "llama", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 1,
        "num_attention_heads": 4, "vocab_size": 50});
    let with = |parameters: serde_json::Value| {
        let mut doc = base.clone();
        doc["rope_parameters"] = parameters;
        ModelConfig::from_hf_config_json(&doc.to_string(), Path::new("config.json")).unwrap()
    };
    let llama3 = serde_json::json!({"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
    let config = with(llama3.clone());
    assert_eq!(config.rope_theta, 500000.0);
    assert_eq!(config.rope_scaling, Some(llama3));
    let plain = with(serde_json::json!({"rope_type": "default", "rope_theta": 10000.0}));
    assert_eq!((plain.rope_theta, plain.rope_scaling), (10000.0, None));
}

#[test]
fn config_json_round_trips_through_hf_format() {
    let mut config = tiny_llama_config(64, 96, 2, 50);
    config.rope_scaling = Some(serde_json::json!({"rope_type": "linear", "factor": 2.0}));
    config.tie_word_embeddings = true;
    let text = config.to_hf_config_json();
    let back = ModelConfig::from_hf_config_json(&text, Path::new("derived/config.json")).unwrap();
    assert_eq!(back, config);
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["architectures"][0], "LlamaForCausalLM");
    assert_eq!(json["torch_dtype"], "float32");
    assert_eq!(json["hidden_act"], "silu");
}

// ---------------------------------------------------------------------------------------------
// GGUF, synthetic

#[test]
fn gguf_synthetic_llama_maps_names_unpermutes_qk_and_derives_config() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_llama_config(64, 96, 2, 300);
    config.tie_word_embeddings = true;
    let tensors = tiny_llama_tensors(&config, 3);
    let path = dir.path().join("tiny.gguf");
    let q8 = "model.layers.1.mlp.up_proj.weight";
    write_tiny_gguf(&path, "llama", &config, &tensors, "smollm", Some(q8));

    let model = model::open(&path).unwrap();
    assert_eq!(model.format(), "gguf");
    assert_eq!(model.config(), &config);
    assert_eq!(model.tensors().len(), tensors.len());
    assert!(model.tensor("lm_head.weight").is_none(), "tied: no output.weight");

    for (name, shape, values) in &tensors {
        let info = model.tensor(name).unwrap_or_else(|| panic!("{name} not mapped"));
        assert_eq!(&info.shape, shape, "{name}");
        let got = model.load_f32(name).unwrap();
        if name == q8 {
            assert_eq!(info.dtype, SourceDType::Ggml("q8_0".into()));
            // Q8_0 is lossy: compare with candle's own dequantization of the same blocks.
            let t = Tensor::from_vec(values.clone(), shape.as_slice(), &Device::Cpu).unwrap();
            let want: Vec<f32> = QTensor::quantize(&t, GgmlDType::Q8_0)
                .unwrap()
                .dequantize(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert_eq!(got, want, "{name}");
        } else {
            assert_eq!(info.dtype, SourceDType::Ggml("f32".into()));
            assert!(
                &got == values,
                "{name}: not equal to the HF original (q/k un-permutation or mapping wrong)"
            );
        }
    }

    // The raw q rows are llama.cpp's layout, and differ from HF's.
    let gguf = GgufModel::open(&path).unwrap();
    let q = "model.layers.0.self_attn.q_proj.weight";
    assert_eq!(gguf.gguf_name(q), Some("blk.0.attn_q.weight"));
    let raw = gguf.load_raw_f32(q).unwrap();
    let hf = gguf.load_f32(q).unwrap();
    assert_ne!(raw, hf);
    assert_eq!(llama_cpp_permute(&hf, 64, 64, 4), raw);

    // The derived config.json parses back to the same configuration.
    let back = ModelConfig::from_hf_config_json(&model.config_json().unwrap(), Path::new("derived")).unwrap();
    assert_eq!(&back, model.config());
}

#[test]
fn gguf_qwen2_keeps_hf_row_order_and_reads_its_biases() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_qwen2_config(64, 96, 2, 300);
    let tensors = tiny_model_tensors(&config, 11);
    assert!(tensors.iter().any(|t| t.0.ends_with("k_proj.bias")));
    let path = dir.path().join("qwen2.gguf");
    write_tiny_gguf(&path, "qwen2", &config, &tensors, "qwen2", None);

    let model = model::open(&path).unwrap();
    assert_eq!(model.config(), &config, "model_type qwen2 with q/k/v bias");
    assert_eq!(model.tensors().len(), tensors.len());
    for (name, shape, values) in &tensors {
        assert_eq!(
            &model
                .tensor(name)
                .unwrap_or_else(|| panic!("{name} not mapped"))
                .shape,
            shape
        );
        // llama.cpp does not permute Qwen2's q/k rows, so neither may the reader.
        assert!(
            &model.load_f32(name).unwrap() == values,
            "{name}: differs from the HF original"
        );
    }
    let back =
        ModelConfig::from_hf_config_json(&model.config_json().unwrap(), Path::new("derived"))
            .unwrap();
    assert_eq!(&back, model.config());
    assert!(model.config_json().unwrap().contains("Qwen2ForCausalLM"));
}

#[test]
fn gguf_types_candle_cannot_read_are_named_with_the_tensor() {
    // An IQ4_NL tensor (ggml type 20): written as Q4_0-sized bytes, then its type id patched.
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_llama_config(64, 96, 1, 300);
    let tensors = tiny_llama_tensors(&config, 5);
    let path = dir.path().join("iq4.gguf");
    let victim = "model.layers.0.mlp.up_proj.weight";
    write_tiny_gguf_as(
        &path,
        "llama",
        &config,
        &tensors,
        "smollm",
        &|name: &str| {
            if name == victim {
                GgmlDType::Q4_0
            } else {
                GgmlDType::F32
            }
        },
    );
    let mut bytes = fs::read(&path).unwrap();
    let key = b"blk.0.ffn_up.weight";
    let at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    // name, then n_dims (u32), two dims (u64), then the type (u32).
    let type_at = at + 4 + 16;
    assert_eq!(
        &bytes[type_at..type_at + 4],
        &2u32.to_le_bytes(),
        "Q4_0 where the layout says"
    );
    bytes[type_at..type_at + 4].copy_from_slice(&20u32.to_le_bytes());
    fs::write(&path, &bytes).unwrap();
    let err = err_text(model::open(&path));
    assert_mentions(
        &err,
        &[
            &path.display().to_string(),
            "blk.0.ffn_up.weight",
            "IQ4_NL",
            "F32",
        ],
    );
}

/// Qwen2's own tokenizer.json pipeline (as its Hugging Face repository publishes it): NFC, the
/// Qwen2 regex split, byte-level mapping without a regex, BPE over `vocab`/`merges`.
fn qwen2_hf_tokenizer_json(tokens: &[String], merges: &[String], specials: usize) -> String {
    let vocab: serde_json::Map<String, serde_json::Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), serde_json::json!(i)))
        .collect();
    let added: Vec<serde_json::Value> = (0..specials)
        .map(|i| {
            serde_json::json!({"id": i, "content": tokens[i], "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
             "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}
        ]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges}
    })
    .to_string()
}

#[test]
fn gguf_qwen2_tokenizer_matches_the_hf_qwen2_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_qwen2_config(64, 96, 1, 300);
    let tensors = tiny_model_tensors(&config, 5);
    let (tokens, merges, _) = tiny_vocab(config.vocab_size);
    let path = dir.path().join("qwen2.gguf");
    write_tiny_gguf(&path, "qwen2", &config, &tensors, "qwen2", None);
    let model = model::open(&path).unwrap();
    let TokenizerSource::Json(ours) = model.tokenizer() else {
        panic!("no tokenizer: {:?}", model.tokenizer_error())
    };
    let reference = qwen2_hf_tokenizer_json(&tokens, &merges, 3);
    let texts = [
        "the the 12 345<|im_start|>x",
        "It's   the\n\n\tthe's 2024-12-03, they'll THE'S 99.5%!",
        "  leading spaces and trailing   ",
        "naïve café — 東京 123abc",
    ];
    for text in texts {
        assert_eq!(encode(&ours, text), encode(&reference, text), "{text:?}");
    }
    // Digits split one by one (Llama 3's regex would keep "12" together and the merge apply).
    let id = |t: &str| tokens.iter().position(|x| x == t).unwrap() as u32;
    assert_eq!(encode(&ours, "12"), vec![id("1"), id("2")]);
}

#[test]
fn gguf_untied_model_maps_output_to_lm_head() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_llama_config(64, 96, 1, 300);
    let tensors = tiny_llama_tensors(&config, 5);
    let path = dir.path().join("untied.gguf");
    write_tiny_gguf(&path, "llama", &config, &tensors, "smollm", None);
    let model = model::open(&path).unwrap();
    assert!(!model.config().tie_word_embeddings);
    let lm_head = tensors.iter().find(|t| t.0 == "lm_head.weight").unwrap();
    assert_eq!(model.load_f32("lm_head.weight").unwrap(), lm_head.2);
}

#[test]
fn gguf_unsupported_architecture_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.gguf");
    let config = tiny_llama_config(64, 96, 1, 300);
    let tensors = tiny_llama_tensors(&config, 5);
    write_tiny_gguf(&path, "gpt2", &config, &tensors[..1], "gpt-2", None);
    let err = err_text(model::open(&path));
    assert_mentions(
        &err,
        &[&path.display().to_string(), "architecture", "\"gpt2\"", "llama"],
    );
}

#[test]
fn gguf_truncated_is_reported_with_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_llama_config(64, 96, 1, 300);
    let tensors = tiny_llama_tensors(&config, 5);
    let path = dir.path().join("cut.gguf");
    write_tiny_gguf(&path, "llama", &config, &tensors, "smollm", None);
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() - 4096]).unwrap();
    let err = err_text(model::open(&path));
    assert_mentions(&err, &[&path.display().to_string(), "truncated"]);
    // Which tensor is last depends on the writer; the message names one by its GGUF name.
    assert!(err.contains(".weight'"), "{err}");

    fs::write(&path, &bytes[..40]).unwrap();
    let err = err_text(model::open(&path));
    assert_mentions(&err, &[&path.display().to_string(), "GGUF"]);
}

/// Tokenize with a tokenizer.json text through the `tokenizers` crate; no special tokens added.
fn encode(json: &str, text: &str) -> Vec<u32> {
    let tokenizer = tokenizers::Tokenizer::from_str(json).expect("tokenizer.json loads");
    tokenizer.encode(text, false).expect("encodes").get_ids().to_vec()
}

#[test]
fn gguf_tokenizer_json_reproduces_the_pre_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_llama_config(64, 96, 1, 300);
    let tensors = tiny_llama_tensors(&config, 5);
    let (tokens, _, _) = tiny_vocab(config.vocab_size);
    let id = |t: &str| {
        tokens
            .iter()
            .position(|x| x == t)
            .unwrap_or_else(|| panic!("{t} not in vocab")) as u32
    };

    let path = dir.path().join("smollm.gguf");
    write_tiny_gguf(&path, "llama", &config, &tensors, "smollm", None);
    let model = model::open(&path).unwrap();
    let TokenizerSource::Json(json) = model.tokenizer() else {
        panic!("no tokenizer: {:?}", model.tokenizer_error())
    };
    // SmolLM isolates every digit before BPE, so the "1 2" merge never applies; a control token
    // in the text is matched whole.
    assert_eq!(
        encode(&json, "the the 12<|im_start|>"),
        vec![
            id("t"),
            id("he"),
            id("Ġthe"),
            id("Ġ"),
            id("1"),
            id("2"),
            id("<|im_start|>")
        ]
    );
    let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
    let added = parsed["added_tokens"].as_array().unwrap();
    assert_eq!(added.len(), 3);
    assert!(added.iter().all(|t| t["special"] == true));

    // The GPT-2 pre-tokenizer keeps " 12" together, so the merge applies.
    let path = dir.path().join("gpt2.gguf");
    write_tiny_gguf(&path, "llama", &config, &tensors, "gpt-2", None);
    let TokenizerSource::Json(json) = model::open(&path).unwrap().tokenizer() else {
        panic!("no tokenizer")
    };
    assert_eq!(
        encode(&json, "the the 12"),
        vec![id("t"), id("he"), id("Ġthe"), id("Ġ"), id("12")]
    );

    // An unknown pre-tokenizer: the model opens, the tokenizer is missing, and the reason says why.
    let path = dir.path().join("unknown.gguf");
    write_tiny_gguf(&path, "llama", &config, &tensors, "frobnicate", None);
    let model = model::open(&path).unwrap();
    assert!(matches!(model.tokenizer(), TokenizerSource::Missing));
    let reason = model.tokenizer_error().unwrap();
    assert_mentions(
        &reason,
        &[
            &path.display().to_string(),
            "tokenizer.ggml.pre",
            "frobnicate",
            "smollm",
        ],
    );
}

#[test]
fn rope_permutation_helpers_are_inverse_and_match_llama_cpp() {
    use tenpak_model::gguf::{permute_rope_rows, unpermute_rope_rows};
    for (rows, cols, heads) in [(8, 3, 1), (24, 5, 3), (64, 1, 4), (192, 7, 3)] {
        let original: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let mut permuted = original.clone();
        permute_rope_rows(&mut permuted, rows, cols, heads);
        assert_eq!(
            permuted,
            llama_cpp_permute(&original, rows, cols, heads),
            "{rows}x{cols}/{heads}"
        );
        unpermute_rope_rows(&mut permuted, rows, cols, heads);
        assert_eq!(permuted, original);
    }
}

// ---------------------------------------------------------------------------------------------
// the real model

#[test]
fn real_gguf_structure_config_and_unpermutation() {
    let path = util::real_gguf();
    let gguf = GgufModel::open(&path).unwrap();
    let model: &dyn ModelSource = &gguf;
    let c = model.config();
    assert_eq!(gguf.architecture(), "llama");
    assert_eq!(c.model_type, "llama");
    assert_eq!(c.num_hidden_layers, 30);
    assert_eq!(c.hidden_size, 576);
    assert_eq!(c.intermediate_size, 1536);
    assert_eq!((c.num_attention_heads, c.num_key_value_heads, c.head_dim), (9, 3, 64));
    assert_eq!(c.vocab_size, 49152);
    assert!(c.tie_word_embeddings);
    assert_eq!(c.rope_theta, 100000.0);
    assert_eq!(c.max_position_embeddings, 8192);
    assert_eq!((c.bos_token_id, c.eos_token_id), (Some(1), Some(2)));

    // 30 blocks x 9 tensors, the embedding and the final norm; no lm_head (tied).
    assert_eq!(model.tensors().len(), 30 * 9 + 2);
    assert!(model.tensor("lm_head.weight").is_none());
    let mut by_dtype: HashMap<String, usize> = HashMap::new();
    for t in model.tensors() {
        *by_dtype.entry(t.dtype.name()).or_default() += 1;
    }
    assert_eq!(by_dtype.get("q4_1"), Some(&(30 * 7)));
    assert_eq!(by_dtype.get("f32"), Some(&(30 * 2 + 1)));
    assert_eq!(by_dtype.get("q8_0"), Some(&1));
    let shape = |n: &str| model.tensor(n).unwrap_or_else(|| panic!("{n}")).shape.clone();
    assert_eq!(shape("model.embed_tokens.weight"), vec![49152, 576]);
    assert_eq!(shape("model.layers.0.self_attn.q_proj.weight"), vec![576, 576]);
    assert_eq!(shape("model.layers.0.self_attn.k_proj.weight"), vec![192, 576]);
    assert_eq!(shape("model.layers.29.mlp.down_proj.weight"), vec![576, 1536]);
    assert_eq!(
        model.tensor("model.embed_tokens.weight").unwrap().dtype,
        SourceDType::Ggml("q8_0".into())
    );

    // Re-applying llama.cpp's permutation to what we load gives back the GGUF's bytes exactly.
    for layer in [0, 17, 29] {
        for (proj, heads) in [("q_proj", 9), ("k_proj", 3)] {
            let name = format!("model.layers.{layer}.self_attn.{proj}.weight");
            let hf = model.load_f32(&name).unwrap();
            let raw = gguf.load_raw_f32(&name).unwrap();
            let rows = hf.len() / 576;
            assert_ne!(hf, raw, "{name}: the permutation should move rows");
            assert!(
                llama_cpp_permute(&hf, rows, 576, heads) == raw,
                "{name}: permute(load_f32) != raw GGUF tensor"
            );
        }
    }

    // config.json derived from metadata is a valid HF config describing the same model.
    let back = ModelConfig::from_hf_config_json(&model.config_json().unwrap(), Path::new("derived")).unwrap();
    assert_eq!(&back, c);
}

#[test]
fn real_gguf_tokenizer_json_tokenizes_plausibly() {
    let model = model::open(&util::real_gguf()).unwrap();
    let TokenizerSource::Json(json) = model.tokenizer() else {
        panic!("no tokenizer: {:?}", model.tokenizer_error())
    };
    let tokenizer = tokenizers::Tokenizer::from_str(&json).expect("tokenizer.json loads");
    assert_eq!(tokenizer.get_vocab_size(true), 49152);
    let text = "Hello world, it's 2024!";
    let encoding = tokenizer.encode(text, false).unwrap();
    // SmolLM's pre-tokenizer: digits isolated, then GPT-2's regex (" it" and "'s" apart, the
    // space before the digits alone); each piece is a whole vocabulary entry.
    let pieces = ["Hello", "Ġworld", ",", "Ġit", "'s", "Ġ", "2", "0", "2", "4", "!"];
    let want: Vec<u32> = pieces
        .iter()
        .map(|p| tokenizer.token_to_id(p).unwrap_or_else(|| panic!("{p} not in vocab")))
        .collect();
    assert_eq!(
        encoding.get_ids(),
        want.as_slice(),
        "tokens: {:?}",
        encoding.get_tokens()
    );
    assert_eq!(tokenizer.decode(encoding.get_ids(), false).unwrap(), text);
    // Control tokens are special and match whole.
    let chat = tokenizer.encode("<|im_start|>user\nHi<|im_end|>", false).unwrap();
    assert_eq!(chat.get_ids()[0], 1);
    assert_eq!(*chat.get_ids().last().unwrap(), 2);
    // Round trip on a stretch of the real evaluation text, whitespace runs and all.
    let eval = fs::read_to_string(util::asset("eval.txt")).unwrap();
    let sample: String = eval.chars().take(20_000).collect();
    let ids = tokenizer.encode(sample.as_str(), false).unwrap();
    assert_eq!(tokenizer.decode(ids.get_ids(), false).unwrap(), sample);
    // English prose: about 4 to 5 characters per token for this vocabulary.
    let chars_per_token = sample.chars().count() as f64 / ids.get_ids().len() as f64;
    assert!(
        (3.5..6.0).contains(&chars_per_token),
        "{chars_per_token} chars per token"
    );
}

/// Every tensor, one at a time: each loads whole and finite, and nothing is retained between
/// calls (the API returns owned vectors; the source keeps only the map).
#[test]
fn real_gguf_loads_every_tensor_one_at_a_time() {
    let model = model::open(&util::real_gguf()).unwrap();
    let start = Instant::now();
    let mut total = 0usize;
    let mut largest = 0usize;
    for info in model.tensors() {
        let values = model.load_f32(&info.name).unwrap();
        assert_eq!(values.len(), info.numel(), "{}", info.name);
        assert!(values.iter().all(|v| v.is_finite()), "{}: non-finite value", info.name);
        let max_abs = values.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(max_abs > 0.0, "{}: all zeros", info.name);
        total += values.len();
        largest = largest.max(values.len());
    }
    assert_eq!(
        total, 134_515_008,
        "SmolLM2-135M parameter count (tied embedding counted once)"
    );
    assert_eq!(largest, 49152 * 576);
    eprintln!(
        "loaded {} tensors ({total} weights, {:.0} MB as f32) in {:.2} s",
        model.tensors().len(),
        total as f64 * 4.0 / 1e6,
        start.elapsed().as_secs_f64()
    );
}
