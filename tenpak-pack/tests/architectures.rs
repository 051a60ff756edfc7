//! Qwen2 and Mistral, from GGUF and from Hugging Face directories, through pack → eval →
//! unpack: the same weights read either way give the same model (same baseline perplexity), the
//! recorded perplexity is what `eval` of the artifact measures, and the unpacked directory keeps
//! the architecture.

use tenpak_testkit as util;

use std::path::Path;
use std::sync::Arc;

use tenpak_api::registry::Registry;
use tenpak_pack::artifact::Artifact;
use tenpak_plugins::builtins;
use tenpak_pack::eval::{self, EvalRequest, PplOptions};
use tenpak_model::{self as model, ModelConfig, TokenizerSource};
use tenpak_pack::observe::Silent;
use tenpak_pack::plan::PackRequest;
use tenpak_pack::text::TextSpec;
use tenpak_pack::unpack::{DenseDType, unpack};
use util::{
    NamedTensor, StoreAs, inline_preset, pack, tiny_llama_config, tiny_model_tensors,
    tiny_qwen2_config, write_safetensors, write_tiny_gguf,
};

const PRESET: &str = "name = \"g32\"\ndescription = \"int4_rtn g32\"\n[allocator]\nid = \"role_rules\"\n\
                      [evaluation]\nwindows = 4\nctx = 64\n[codec]\ncodec = \"int4_rtn\"\ngroup_size = 32\n\
                      [roles.embedding]\ncodec = \"int8\"\n[roles.lm_head]\ncodec = \"int8\"\n";

fn text() -> TextSpec {
    let words = [
        "the", "people", "of", "12", "union", "they'll", "345", "night\n", "Ġ", "café",
    ];
    let text: Vec<&str> = (0..600)
        .map(|i| words[(i * 7 + i / 3) % words.len()])
        .collect();
    TextSpec::Inline {
        name: "tiny text".into(),
        text: text.join(" "),
    }
}

/// An HF directory (config.json, tokenizer.json, model.safetensors) of `config` and `tensors`,
/// with the tokenizer a GGUF of the same vocabulary yields.
fn write_hf_dir(dir: &Path, config: &ModelConfig, tensors: &[NamedTensor], tokenizer_json: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config.to_hf_config_json()).unwrap();
    std::fs::write(dir.join("tokenizer.json"), tokenizer_json).unwrap();
    write_safetensors(&dir.join("model.safetensors"), tensors, |_| StoreAs::F32);
}

/// Pack `source`, check the recorded perplexity against `eval` of the artifact and the unpacked
/// directory against the artifact; returns the baseline perplexity.
fn round_trip(source: &Path, work: &Path, model_type: &str, registry: &Arc<Registry>) -> f64 {
    let out = work.join("model.tenpak");
    let request = PackRequest {
        model: source.to_owned().into(),
        preset: inline_preset(PRESET, "g32"),
        output: out.clone(),
        force: true,
        calib: None,
        eval: Some(text()),
        target_bpw: None,
        tasks: None,
    };
    let manifest = pack(&request, registry).unwrap();
    assert_eq!(manifest.model_config.model_type, model_type);
    assert_eq!(manifest.source.architecture, model_type);
    let evaluation = manifest.evaluation.clone().unwrap();
    assert!(evaluation.compressed_ppl.is_finite() && evaluation.baseline_ppl.is_finite());

    let rescored = eval::run(
        &EvalRequest {
            model: out.clone().into(),
            text: text(),
            options: PplOptions {
                ctx: 64,
                samples: Some(4),
                batch: 1,
            },
            protocol: Default::default(),
        },
        registry,
        &Silent,
    )
    .unwrap();
    assert!(
        (rescored.ppl - evaluation.compressed_ppl).abs() <= 1e-9 * evaluation.compressed_ppl,
        "{source:?}: recorded {} vs eval {}",
        evaluation.compressed_ppl,
        rescored.ppl
    );

    let artifact = Artifact::open(&out).unwrap();
    let dense = work.join("dense");
    unpack(&artifact, registry, &dense, DenseDType::F32, true, &Silent).unwrap();
    let back = model::open(&dense).unwrap();
    assert_eq!(
        back.config(),
        &manifest.model_config,
        "{source:?}: unpacked config"
    );
    for t in &manifest.tensors {
        assert!(
            back.load_f32(&t.name).unwrap() == artifact.load_f32(&t.name, registry).unwrap(),
            "{}",
            t.name
        );
    }
    evaluation.baseline_ppl
}

#[test]
fn qwen2_from_gguf_and_hf_and_mistral_from_hf_pack_eval_and_unpack() {
    let registry = Arc::new(builtins::registry().unwrap());
    let dir = tempfile::tempdir().unwrap();

    let qwen2 = tiny_qwen2_config(64, 96, 2, 300);
    let tensors = tiny_model_tensors(&qwen2, 31);
    let gguf = dir.path().join("qwen2.gguf");
    write_tiny_gguf(&gguf, "qwen2", &qwen2, &tensors, "qwen2", None);
    let TokenizerSource::Json(tokenizer) = model::open(&gguf).unwrap().tokenizer() else {
        panic!("no tokenizer")
    };
    let from_gguf = round_trip(&gguf, &dir.path().join("qwen2-gguf"), "qwen2", &registry);

    let hf = dir.path().join("qwen2-hf");
    write_hf_dir(&hf, &qwen2, &tensors, &tokenizer);
    let from_hf = round_trip(&hf, &dir.path().join("qwen2-hf-work"), "qwen2", &registry);
    assert_eq!(
        from_gguf, from_hf,
        "the same Qwen2 weights read from GGUF and HF must be the same model"
    );

    let mistral = ModelConfig {
        model_type: "mistral".into(),
        ..tiny_llama_config(64, 96, 2, 300)
    };
    let tensors = tiny_model_tensors(&mistral, 32);
    let hf = dir.path().join("mistral-hf");
    write_hf_dir(&hf, &mistral, &tensors, &tokenizer);
    round_trip(&hf, &dir.path().join("mistral-work"), "mistral", &registry);
}
