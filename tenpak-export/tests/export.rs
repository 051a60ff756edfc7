//! `tenpak export --format gguf`: exact where the artifact's codes map to a GGUF type, the rest
//! re-quantized with its cost reported; read back by TenPak's reader, by llama.cpp's own Python
//! package (`gguf`, PyPI), and on the real model scored the same as the artifact.

use tenpak_testkit as util;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::sync::Arc;

use candle_core::quantized::GgmlDType;
use sha2::{Digest, Sha256};
use tenpak_api::registry::Registry;
use tenpak_pack::artifact::Artifact;
use tenpak_plugins::builtins;
use tenpak_pack::eval::{self, EvalRequest, PplOptions};
use tenpak_export::{GgufOptions, GgufReport, export_gguf};
use tenpak_model::gguf::GgufModel;
use tenpak_model::{self as model, ModelConfig, TokenizerSource};
use tenpak_pack::observe::Silent;
use tenpak_pack::text::TextSpec;
use util::{
    inline_preset, llama_cpp_permute, pack, request, tiny_llama_config, tiny_model_tensors,
    tiny_qwen2_config, write_tiny_gguf,
};

/// Block linears int4_rtn g32 (→ Q4_1), down_proj int4_rtn g16 (two grids per 32-weight block:
/// no exact GGUF form), embedding
/// int8 per row (→ Q8_0), lm_head kept f16 (→ F16), norms and biases raw f32 (→ F32).
const MIXED_PRESET: &str = r#"
name = "mixed"
description = "exact and re-quantized GGUF mappings"
[allocator]
id = "role_rules"
[codec]
codec = "int4_rtn"
group_size = 32
[roles.mlp_down]
codec = "int4_rtn"
group_size = 16
[roles.embedding]
codec = "int8"
[roles.lm_head]
codec = "keep"
dtype = "f16"
"#;

fn registry() -> Arc<Registry> {
    Arc::new(builtins::registry().unwrap())
}

/// A tiny GGUF of `config` packed with [`MIXED_PRESET`] into `dir/model.tenpak`.
fn tiny_artifact(dir: &Path, config: &ModelConfig, registry: &Arc<Registry>) -> PathBuf {
    let tensors = tiny_model_tensors(config, 21);
    let source = dir.join("source.gguf");
    let (arch, pre) = if config.model_type == "qwen2" {
        ("qwen2", "qwen2")
    } else {
        ("llama", "smollm")
    };
    write_tiny_gguf(&source, arch, config, &tensors, pre, None);
    let out = dir.join("model.tenpak");
    pack(
        &request(source, inline_preset(MIXED_PRESET, "mixed"), &out),
        registry,
    )
    .unwrap();
    out
}

fn export(artifact: &Path, out: &Path, registry: &Registry) -> GgufReport {
    let artifact = Artifact::open(artifact).unwrap();
    export_gguf(&artifact, registry, out, &GgufOptions::default(), &Silent).unwrap()
}

fn sha256_f32(values: &[f32]) -> String {
    let mut hasher = Sha256::new();
    for v in values {
        hasher.update(v.to_le_bytes());
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn encode(tokenizer: &tokenizers::Tokenizer, text: &str) -> Vec<u32> {
    tokenizer.encode(text, false).unwrap().get_ids().to_vec()
}

fn check_export_reads_back(config: ModelConfig) {
    let registry = registry();
    let dir = tempfile::tempdir().unwrap();
    let artifact_dir = tiny_artifact(dir.path(), &config, &registry);
    let gguf_path = dir.path().join("model.gguf");
    let report = export(&artifact_dir, &gguf_path, &registry);
    let artifact = Artifact::open(&artifact_dir).unwrap();

    // The expected type of every tensor, and whether it must be exact.
    let by_name: HashMap<&str, _> = report
        .tensors
        .iter()
        .map(|t| (t.hf_name.as_str(), t))
        .collect();
    assert_eq!(by_name.len(), artifact.manifest().tensors.len());
    for record in &artifact.manifest().tensors {
        let t = by_name[record.name.as_str()];
        let (dtype, exact) = match record.codec.as_deref() {
            None => (GgmlDType::F32, true),
            Some("int4_rtn") if record.role == tenpak_api::LayerRole::MlpDown => (
                tenpak_export::gguf::nearest_type(record.bits_per_weight, record.shape[1]),
                false,
            ),
            Some("int4_rtn") => (GgmlDType::Q4_1, true),
            Some("int8") => (GgmlDType::Q8_0, true),
            Some("keep") => (GgmlDType::F16, true),
            other => panic!("unexpected codec {other:?}"),
        };
        assert_eq!((t.dtype, t.exact), (dtype.into(), exact), "{}", record.name);
    }

    // TenPak's reader: the same configuration, and each tensor (back in HF row order) equal to
    // the artifact's decode where exact, at the reported cost where not.
    let gguf = model::open(&gguf_path).unwrap();
    assert_eq!(gguf.config(), &artifact.manifest().model_config);
    for record in &artifact.manifest().tensors {
        let want = artifact.load_f32(&record.name, &registry).unwrap();
        let got = gguf.load_f32(&record.name).unwrap();
        let t = by_name[record.name.as_str()];
        if t.exact {
            assert!(
                got == want,
                "{}: exact export decodes differently",
                record.name
            );
        } else {
            let err: f64 = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2))
                .sum();
            let norm: f64 = want.iter().map(|b| f64::from(*b).powi(2)).sum();
            assert!(
                (err / norm - t.rel_err).abs() <= 1e-9 * t.rel_err,
                "{}: reported cost {} vs {}",
                record.name,
                t.rel_err,
                err / norm
            );
            assert!(
                t.rel_err > 0.0 && t.rel_err < 0.02,
                "{}: re-quantization cost {}",
                record.name,
                t.rel_err
            );
        }
    }
    // The stored rows are llama.cpp's layout: permuted for llama (by the tests' own
    // implementation of the converter), untouched for Qwen2.
    let raw = GgufModel::open(&gguf_path).unwrap();
    let q = "model.layers.1.self_attn.q_proj.weight";
    let hf = artifact.load_f32(q, &registry).unwrap();
    let expected = if config.model_type == "llama" {
        llama_cpp_permute(
            &hf,
            config.num_attention_heads * config.head_dim,
            config.hidden_size,
            config.num_attention_heads,
        )
    } else {
        hf
    };
    assert!(
        raw.load_raw_f32(q).unwrap() == expected,
        "q rows in the wrong order"
    );

    // The vocabulary written as tokenizer.ggml.* tokenizes like the artifact's tokenizer.json.
    let TokenizerSource::Json(json) = gguf.tokenizer() else {
        panic!("no tokenizer: {:?}", gguf.tokenizer_error())
    };
    let ours = tokenizers::Tokenizer::from_str(&json).unwrap();
    let original = tokenizers::Tokenizer::from_file(artifact_dir.join("tokenizer.json")).unwrap();
    for text in [
        "the the 12 345<|im_start|>x",
        "It's  the\n\nthe's 2024, they'll",
    ] {
        assert_eq!(encode(&ours, text), encode(&original, text), "{text:?}");
    }

    let dump = assert_gguf_py_reads_what_tenpak_reads(&gguf_path, &report);
    let md = &dump["metadata"];
    let arch = md["general.architecture"].as_str().unwrap();
    assert_eq!(
        arch,
        if config.model_type == "qwen2" {
            "qwen2"
        } else {
            "llama"
        }
    );
    assert_eq!(md[format!("{arch}.block_count")], config.num_hidden_layers);
    assert_eq!(
        md[format!("{arch}.attention.head_count_kv")],
        config.num_key_value_heads
    );
    assert_eq!(md["tokenizer.ggml.tokens"]["len"], config.vocab_size);
}

/// `scripts/gguf_dump.py` of `gguf_path`: the file as llama.cpp's own Python reader (PyPI `gguf`)
/// sees it, each tensor's dequantized values as a SHA-256.
fn gguf_py_dump(gguf_path: &Path) -> serde_json::Value {
    let output = Command::new(tenpak_quant::testing::python_gguf())
        .arg(util::repo_root().join("scripts/gguf_dump.py"))
        .arg(gguf_path)
        .output()
        .unwrap();
    assert!(output.status.success(), "gguf_dump.py failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// llama.cpp's own Python reader (PyPI `gguf`) dequantizes every tensor of `gguf_path` to the
/// values TenPak's reader gives, in the types the report says; returns its dump.
fn assert_gguf_py_reads_what_tenpak_reads(gguf_path: &Path, report: &GgufReport) -> serde_json::Value {
    let raw = GgufModel::open(gguf_path).unwrap();
    let dump = gguf_py_dump(gguf_path);
    let tensors = dump["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), report.tensors.len());
    for (entry, t) in tensors.iter().zip(&report.tensors) {
        assert_eq!(entry["name"], t.name.as_str());
        assert_eq!(entry["type"], t.dtype.name(), "{}", t.name);
        let values = raw.load_raw_f32(&t.hf_name).unwrap();
        assert_eq!(entry["sha256"], sha256_f32(&values).as_str(), "{}: gguf-py dequantizes other values", t.name);
    }
    dump
}

/// int4_awq with 6-bit double-quantized headers in super-groups of 8 (no column scales, no
/// outliers) on rows of 256 and 512: every linear lands in Q4_K, exactly, read the same by
/// gguf-py; the perplexity of the GGUF is the artifact's.
#[test]
fn double_quantized_int4_awq_exports_exactly_to_q4_k() {
    let registry = registry();
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_llama_config(256, 512, 2, 320);
    config.max_position_embeddings = 512;
    let tensors = tiny_model_tensors(&config, 41);
    let source = dir.path().join("source.gguf");
    write_tiny_gguf(&source, "llama", &config, &tensors, "smollm", None);
    let preset = "name = \"q4k\"\ndescription = \"Q4_K-shaped int4_awq\"\n[calibration]\nwindows = 4\nctx = 64\n\
                  [evaluation]\nwindows = 4\nctx = 64\n[allocator]\nid = \"role_rules\"\n[codec]\ncodec = \"int4_awq\"\n\
                  group_size = 32\nheader_bits = 6\nsuper_group = 8\nalpha = 0.0\noutlier_fraction = 0.0\nerror_feedback = true\n\
                  [roles.embedding]\ncodec = \"int8\"\n[roles.lm_head]\ncodec = \"int8\"\n";
    let text = word_text();
    let artifact_dir = dir.path().join("q4k.tenpak");
    let request = tenpak_pack::plan::PackRequest {
        model: source.into(),
        preset: inline_preset(preset, "q4k"),
        output: artifact_dir.clone(),
        force: false,
        calib: Some(TextSpec::Inline { name: "calib".into(), text: text.clone() }),
        eval: Some(TextSpec::Inline { name: "eval".into(), text: text.clone() }),
        target_bpw: None,
        tasks: None,
    };
    let manifest = pack(&request, &registry).unwrap();
    let gguf_path = dir.path().join("q4k.gguf");
    let report = export(&artifact_dir, &gguf_path, &registry);
    for t in report.tensors.iter().filter(|t| t.linear) {
        assert_eq!((t.dtype, t.exact), (GgmlDType::Q4K.into(), true), "{}", t.hf_name);
    }
    assert!((report.bits_per_weight(|t| t.linear) - 4.5).abs() < 1e-12);
    assert_gguf_py_reads_what_tenpak_reads(&gguf_path, &report);
    let score = |model: &Path| {
        let request = EvalRequest {
            model: model.to_owned().into(),
            text: TextSpec::Inline { name: "eval".into(), text: text.clone() },
            options: PplOptions { ctx: 64, samples: Some(4), batch: 1 },
            protocol: Default::default(),
        };
        eval::run(&request, &registry, &Silent).unwrap().ppl
    };
    let recorded = manifest.evaluation.unwrap().compressed_ppl;
    assert_eq!(score(&gguf_path), score(&artifact_dir));
    assert!((score(&gguf_path) - recorded).abs() <= 1e-9 * recorded);
}

/// A calibration and evaluation text for the tiny models: 3,000 words, digits, an apostrophe,
/// newlines and a non-ASCII letter.
fn word_text() -> String {
    let words = ["the", "people", "of", "12", "union", "they'll", "345", "night\n", "café"];
    (0..3000).map(|i| words[(i * 7 + i / 5) % words.len()]).collect::<Vec<_>>().join(" ")
}

/// The compressed-tensors directory `out` decoded to a dense model in `dense` by the independent
/// numpy decoder (scripts/ct_decode.py), and opened.
fn ct_decode(out: &Path, dense: &Path) -> Box<dyn model::ModelSource> {
    let output = Command::new(tenpak_quant::testing::python_gguf())
        .arg(util::repo_root().join("scripts/ct_decode.py"))
        .args([out, dense])
        .output()
        .unwrap();
    assert!(output.status.success(), "ct_decode.py failed: {}", String::from_utf8_lossy(&output.stderr));
    model::open(dense).unwrap()
}

/// PPL of `model` on the first 4 windows of 512 of the evaluation text.
fn ppl_4(model: &Path, registry: &Arc<Registry>) -> f64 {
    let request = EvalRequest {
        model: model.to_owned().into(),
        text: TextSpec::File(util::asset("eval.txt")),
        options: PplOptions { ctx: 512, samples: Some(4), batch: 1 },
        protocol: Default::default(),
    };
    eval::run(&request, registry, &Silent).unwrap().ppl
}


#[test]
fn gguf_export_of_a_llama_model_is_exact_where_codes_map_and_reads_back_everywhere() {
    // intermediate 256: down_proj rows can take k-quants.
    check_export_reads_back(tiny_llama_config(64, 256, 2, 320));
}

#[test]
fn gguf_export_of_a_qwen2_model_keeps_its_rows_and_biases() {
    check_export_reads_back(tiny_qwen2_config(64, 256, 2, 320));
}

#[test]
fn gguf_export_refuses_to_overwrite_and_names_what_is_missing() {
    let registry = registry();
    let dir = tempfile::tempdir().unwrap();
    let artifact_dir = tiny_artifact(dir.path(), &tiny_llama_config(64, 96, 1, 300), &registry);
    let out = dir.path().join("m.gguf");
    std::fs::write(&out, b"keep me").unwrap();
    let artifact = Artifact::open(&artifact_dir).unwrap();
    let err =
        export_gguf(&artifact, &registry, &out, &GgufOptions::default(), &Silent).unwrap_err();
    assert!(format!("{err:#}").contains("--force"), "{err:#}");
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");

    std::fs::remove_file(artifact_dir.join("tokenizer.json")).unwrap();
    let err = export_gguf(
        &artifact,
        &registry,
        &out,
        &GgufOptions {
            force: true,
            ..Default::default()
        },
        &Silent,
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("tokenizer.json"), "{err:#}");
    assert_eq!(
        std::fs::read(&out).unwrap(),
        b"keep me",
        "a failed export leaves the old file"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temporaries left: {leftovers:?}");
}

/// The real model packed with int4_rtn in groups of 32 exports to Q4_1 bit for bit (the int8
/// embedding to Q8_0), and the GGUF scores exactly the artifact's perplexity.
#[test]
fn real_model_int4_g32_exports_exactly_and_scores_the_same() {
    let registry = registry();
    let dir = tempfile::tempdir().unwrap();
    let preset = "name = \"rtn32\"\ndescription = \"int4_rtn g32\"\n[allocator]\nid = \"role_rules\"\n[codec]\ncodec = \"int4_rtn\"\n\
                  group_size = 32\n[roles.embedding]\ncodec = \"int8\"\n[roles.lm_head]\ncodec = \"int8\"\n";
    let artifact_dir = dir.path().join("rtn32.tenpak");
    pack(
        &request(
            util::real_gguf(),
            inline_preset(preset, "rtn32"),
            &artifact_dir,
        ),
        &registry,
    )
    .unwrap();
    let gguf_path = dir.path().join("rtn32.gguf");
    let report = export(&artifact_dir, &gguf_path, &registry);
    assert!(
        report.tensors.iter().all(|t| t.exact),
        "every tensor has an exact GGUF form"
    );
    assert_eq!(
        report
            .tensors
            .iter()
            .filter(|t| t.dtype == GgmlDType::Q4_1)
            .count(),
        210
    );
    assert!((report.bits_per_weight(|t| t.linear) - 5.0).abs() < 1e-12);
    // The chat template travels: source GGUF -> artifact (chat_template.jinja) -> exported GGUF.
    let template = |path: &Path| model::open(path).unwrap().chat_template().unwrap().map(|t| t.template);
    let source_template = template(&util::real_gguf()).expect("SmolLM2's GGUF has a chat template");
    assert_eq!(std::fs::read_to_string(artifact_dir.join("chat_template.jinja")).unwrap(), source_template);
    let artifact_source = tenpak_pack::artifact::ArtifactSource::open(&artifact_dir, registry.clone()).unwrap();
    assert_eq!(model::ModelSource::chat_template(&artifact_source).unwrap().map(|t| t.template).as_ref(), Some(&source_template));
    assert_eq!(template(&gguf_path), Some(source_template));

    let (from_artifact, from_gguf) = (ppl_4(&artifact_dir, &registry), ppl_4(&gguf_path, &registry));
    assert_eq!(
        from_artifact, from_gguf,
        "the same weights must give the same perplexity"
    );
}

/// compressed-tensors: every block linear of the tiny Qwen2 packed as W4A16 groups of 32, the
/// rest dense; an independent numpy decoder (scripts/ct_decode.py, written from the
/// compressed-tensors library's rules) recovers weights whose error against the artifact is
/// exactly the reported one.
#[test]
fn compressed_tensors_export_decodes_independently_at_the_reported_cost() {
    use tenpak_export::{CtOptions, export_compressed_tensors};
    let registry = registry();
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_qwen2_config(64, 256, 2, 320);
    let artifact_dir = tiny_artifact(dir.path(), &config, &registry);
    let artifact = Artifact::open(&artifact_dir).unwrap();
    let out = dir.path().join("ct");
    let report = export_compressed_tensors(&artifact, &registry, &out, &CtOptions::default(), &Silent).unwrap();
    assert_eq!(report.group_size, 32, "the artifact's own group size");
    let linears = artifact.manifest().tensors.iter().filter(|t| t.role.is_block_linear()).count();
    assert_eq!(report.tensors.iter().filter(|t| t.quantized).count(), linears);

    let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    let qc = &written["quantization_config"];
    assert_eq!(qc["quant_method"], "compressed-tensors");
    assert_eq!(qc["quantization_status"], "compressed");
    assert_eq!(qc["config_groups"]["group_0"]["weights"]["group_size"], 32);
    assert_eq!(qc["config_groups"]["group_0"]["weights"]["symmetric"], false);
    assert_eq!(written["model_type"], "qwen2");

    let decoded = ct_decode(&out, &dir.path().join("dense"));
    assert_eq!(decoded.config(), &artifact.manifest().model_config);
    for t in &report.tensors {
        let want = artifact.load_f32(&t.name, &registry).unwrap();
        let got = decoded.load_f32(&t.name).unwrap();
        let err: f64 = got.iter().zip(&want).map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2)).sum();
        let norm: f64 = want.iter().map(|b| f64::from(*b).powi(2)).sum();
        let rel = if err == 0.0 { 0.0 } else { err / norm };
        assert!((rel - t.rel_err).abs() <= 1e-9 * t.rel_err.max(1e-300), "{}: decoded error {rel} vs reported {}", t.name, t.rel_err);
        // Re-fitting a 4-bit grid onto another costs a fraction of a 4-bit step; f16 rounding of
        // the dense tensors much less.
        let bound = if t.quantized { 2e-2 } else { 1e-6 };
        assert!(t.rel_err < bound, "{}: rel err {}", t.name, t.rel_err);
    }
}

/// A calibrated `int4_awq` preset whose linears compressed-tensors holds exactly: 4-bit codes on
/// integer zero points in groups of 32, no column scales, no outliers.
fn ct_exact_preset(calibration_windows: usize, ctx: usize) -> String {
    format!(
        "name = \"ct32\"\ndescription = \"int4_awq g32, integer zero points\"\n[calibration]\nwindows = {calibration_windows}\nctx = {ctx}\n\
         [allocator]\nid = \"role_rules\"\n[codec]\ncodec = \"int4_awq\"\ngroup_size = 32\nzero_point = \"integer\"\n\
         alpha = 0.0\noutlier_fraction = 0.0\nerror_feedback = true\n[roles.embedding]\ncodec = \"int8\"\n[roles.lm_head]\ncodec = \"int8\"\n"
    )
}

/// int4_awq on integer zero points: every block linear's codes, scales and zero points are
/// carried into compressed-tensors as they are, and the independent numpy decoder
/// (scripts/ct_decode.py) returns the artifact's weights rounded to f16 (the format's own
/// `(q − zp)·s` in f16), bit for bit.
#[test]
fn integer_zero_point_int4_awq_exports_exactly_to_compressed_tensors() {
    use tenpak_export::{CtOptions, export_compressed_tensors};
    let registry = registry();
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_qwen2_config(64, 256, 2, 320);
    let tensors = tiny_model_tensors(&config, 43);
    let source = dir.path().join("source.gguf");
    write_tiny_gguf(&source, "qwen2", &config, &tensors, "qwen2", None);
    let text = word_text();
    let artifact_dir = dir.path().join("ct32.tenpak");
    let request = tenpak_pack::plan::PackRequest {
        calib: Some(TextSpec::Inline { name: "calib".into(), text }),
        ..request(source, inline_preset(&ct_exact_preset(4, 64), "ct32"), &artifact_dir)
    };
    pack(&request, &registry).unwrap();
    let artifact = Artifact::open(&artifact_dir).unwrap();
    let out = dir.path().join("ct");
    let report = export_compressed_tensors(&artifact, &registry, &out, &CtOptions::default(), &Silent).unwrap();
    let linears: Vec<_> = report.tensors.iter().filter(|t| t.quantized).collect();
    assert_eq!(linears.len(), 14);
    assert!(linears.iter().all(|t| t.exact), "every block linear carried over");
    // Its own scales and zero points: 4 + (16 + 4)/32 bits per weight, as the artifact stores.
    for t in &linears {
        assert_eq!(t.bits, t.numel as u64 * 4 + (t.numel as u64 / 32) * 16 + (t.numel as u64 / 32) * 4 + 128, "{}", t.name);
    }
    let decoded = ct_decode(&out, &dir.path().join("dense"));
    for t in &linears {
        let want: Vec<u32> = artifact.load_f32(&t.name, &registry).unwrap().iter().map(|&v| half::f16::from_f32(v).to_f32().to_bits()).collect();
        let got: Vec<u32> = decoded.load_f32(&t.name).unwrap().iter().map(|v| v.to_bits()).collect();
        assert!(got == want, "{}: the export does not decode to the artifact's weights in f16", t.name);
        assert!(t.rel_err < 1e-6, "{}: f16 rounding only, got {}", t.name, t.rel_err);
    }
}

/// The real model, packed on integer zero points and exported to compressed-tensors, loaded by
/// transformers + compressed-tensors (PyPI, the venv of scripts/python-hf.sh) on the CPU: its
/// perplexity on 4 windows of 512 tokens is the artifact's by `tenpak eval` within 0.5 %.
#[test]
fn real_model_compressed_tensors_export_scores_the_artifacts_ppl_in_transformers() {
    use tenpak_export::{CtOptions, export_compressed_tensors};
    let registry = registry();
    let dir = tempfile::tempdir().unwrap();
    let artifact_dir = dir.path().join("ct32.tenpak");
    let request = tenpak_pack::plan::PackRequest {
        calib: Some(TextSpec::File(util::asset("calib.txt"))),
        ..request(util::real_gguf(), inline_preset(&ct_exact_preset(8, 512), "ct32"), &artifact_dir)
    };
    pack(&request, &registry).unwrap();
    let artifact = Artifact::open(&artifact_dir).unwrap();
    let out = dir.path().join("ct");
    let report = export_compressed_tensors(&artifact, &registry, &out, &CtOptions::default(), &Silent).unwrap();
    assert_eq!(report.tensors.iter().filter(|t| t.quantized && t.exact).count(), 210, "every block linear exact");
    let ours = eval::run(
        &EvalRequest {
            model: artifact_dir.clone().into(),
            text: TextSpec::File(util::asset("eval.txt")),
            options: PplOptions { ctx: 512, samples: Some(4), batch: 1 },
            protocol: Default::default(),
        },
        &registry,
        &Silent,
    )
    .unwrap()
    .ppl;
    let script = util::repo_root().join("scripts/python-hf.sh");
    let venv = Command::new("bash").arg(&script).output().unwrap();
    assert!(venv.status.success(), "{} failed (it needs PyPI): {}", script.display(), String::from_utf8_lossy(&venv.stderr));
    let python = String::from_utf8(venv.stdout).unwrap().lines().last().unwrap().to_owned();
    let output = Command::new(python)
        .arg(util::repo_root().join("scripts/ct_transformers_check.py"))
        .arg(&out)
        .arg(util::asset("eval.txt"))
        .args(["--windows", "4", "--ctx", "512"])
        .output()
        .unwrap();
    assert!(output.status.success(), "ct_transformers_check.py failed: {}", String::from_utf8_lossy(&output.stderr));
    let result: serde_json::Value = serde_json::from_slice(output.stdout.trim_ascii()).unwrap();
    let theirs = result["ppl"].as_f64().unwrap();
    let diff = (theirs - ours).abs() / ours;
    eprintln!("artifact {ours:.4}, transformers {theirs:.4} ({:+.3} %): {result}", 100.0 * (theirs - ours) / ours);
    assert!(diff <= 5e-3, "transformers scores the export {theirs}, TenPak the artifact {ours}");
}

/// llama.cpp's gguf-py (`scripts/gguf_dump.py`) dequantizes every tensor of the GGUF at `gguf`
/// to the values the artifact decodes to (q and k rows in llama.cpp's rope order), compared by
/// SHA-256 of the f32 bits; unlike [`assert_gguf_py_reads_what_tenpak_reads`] this needs no
/// TenPak reader of the file, so it covers the types candle cannot read.
fn gguf_py_reads_the_artifact(gguf: &Path, artifact_dir: &Path, report: &GgufReport, registry: &Registry) {
    let dump = gguf_py_dump(gguf);
    let tensors = dump["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), report.tensors.len());
    let artifact = Artifact::open(artifact_dir).unwrap();
    let config = &artifact.manifest().model_config;
    for (entry, t) in tensors.iter().zip(&report.tensors) {
        assert_eq!(entry["name"], t.name.as_str());
        let mut values = artifact.load_f32(&t.hf_name, registry).unwrap();
        if let Some(heads) = tenpak_export::gguf::rope_heads(&t.hf_name, config) {
            let rows = values.len() / config.hidden_size;
            tenpak_model::gguf::permute_rope_rows(&mut values, rows, config.hidden_size, heads);
        }
        assert_eq!(entry["sha256"], sha256_f32(&values).as_str(), "{}: gguf-py's dequantization of {} differs", t.name, t.dtype.name());
    }
}

/// Pack `source` with the built-in llama.cpp preset `name` (its calibration windows cut to
/// `windows`) into `dir`, export it to GGUF and check the export: every quantized tensor is the
/// artifact's blocks copied (exact), and llama.cpp's gguf-py dequantizes every tensor to the
/// artifact's values bit for bit. Returns the artifact's directory, the GGUF and the report.
fn pack_and_export_preset(
    source: PathBuf,
    name: &str,
    windows: usize,
    calib: TextSpec,
    dir: &Path,
    registry: &Arc<Registry>,
) -> (PathBuf, PathBuf, GgufReport) {
    let text = std::fs::read_to_string(util::repo_root().join(format!("presets/gguf/{name}.toml")))
        .unwrap()
        .replace("windows = 32", &format!("windows = {windows}"));
    let artifact_dir = dir.join(format!("{name}.tenpak"));
    let request = tenpak_pack::plan::PackRequest { calib: Some(calib), ..request(source, inline_preset(&text, name), &artifact_dir) };
    pack(&request, registry).unwrap();
    let gguf_path = dir.join(format!("{name}.gguf"));
    let report = export(&artifact_dir, &gguf_path, registry);
    assert!(report.tensors.iter().all(|t| t.dtype == GgmlDType::F32 || t.exact), "{name}: every quantized tensor copied exactly");
    gguf_py_reads_the_artifact(&gguf_path, &artifact_dir, &report, registry);
    (artifact_dir, gguf_path, report)
}

/// Every built-in llama.cpp preset on a tiny model 256 wide whose MLP is 640 wide (so down_proj's
/// rows are not whole 256-weight super-blocks and take the recipe's fallback type), calibrated on
/// a short text: every tensor of the GGUF export is the artifact's blocks copied (exact), the
/// file holds the preset's own type, and llama.cpp's gguf-py reads it and dequantizes every tensor
/// to the artifact's values bit for bit. The real model takes `q4_k_m` below; the type counts of
/// every file type on the real model are the allocator's tests.
#[test]
fn every_llama_cpp_preset_exports_exactly_and_gguf_py_reads_it() {
    let registry = registry();
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_llama_config(256, 640, 2, 300);
    config.max_position_embeddings = 1024;
    let tensors = tiny_model_tensors(&config, 11);
    let source = dir.path().join("source.gguf");
    write_tiny_gguf(&source, "llama", &config, &tensors, "smollm", None);
    let calib_text: String = std::fs::read_to_string(util::asset("calib.txt")).unwrap().chars().take(30_000).collect();
    for (name, own_type) in [
        ("q4_0", "Q4_0"),
        ("q4_1", "Q4_1"),
        ("q5_0", "Q5_0"),
        ("q5_1", "Q5_1"),
        ("q8_0", "Q8_0"),
        ("q2_k", "Q2_K"),
        ("q3_k_m", "Q3_K"),
        ("q4_k_m", "Q4_K"),
        ("q5_k_m", "Q5_K"),
        ("q6_k", "Q6_K"),
        ("iq4_nl", "IQ4_NL"),
        ("iq4_xs", "IQ4_XS"),
    ] {
        let calib = TextSpec::Inline { name: "calib".into(), text: calib_text.clone() };
        let (_, _, report) = pack_and_export_preset(source.clone(), name, 2, calib, dir.path(), &registry);
        assert!(report.tensors.iter().any(|t| t.dtype.name() == own_type), "{name}: no {own_type} tensor");
    }
}

/// The built-in `q4_k_m` preset on the real model (SmolLM2's 576-wide rows fall back to Q5_0 and
/// Q8_0 as llama-quantize's do), calibrated on 4 windows of the calibration text to keep the test
/// short: every tensor of the GGUF export is the artifact's blocks copied (exact), in
/// llama-quantize's types and counts for that file; llama.cpp's gguf-py reads the file and
/// dequantizes every tensor to the artifact's values bit for bit; and `tenpak eval` scores the
/// GGUF as it scores the artifact (within 0.5 %). The other presets: the tiny test above.
#[test]
fn real_model_q4_k_m_exports_exactly_and_scores_the_same() {
    let registry = registry();
    let dir = tempfile::tempdir().unwrap();
    let name = "q4_k_m";
    let calib = TextSpec::File(util::asset("calib.txt"));
    let (artifact_dir, gguf_path, report) = pack_and_export_preset(util::real_gguf(), name, 4, calib, dir.path(), &registry);
    let quantized: Vec<_> = report.tensors.iter().filter(|t| t.dtype != GgmlDType::F32).collect();
    for (dtype, count) in [(GgmlDType::Q5_0, 166), (GgmlDType::Q4K, 16), (GgmlDType::Q8_0, 15), (GgmlDType::Q6K, 14)] {
        assert_eq!(quantized.iter().filter(|t| t.dtype == dtype).count(), count, "{name}: {dtype:?} tensors");
    }
    let (from_artifact, from_gguf) = (ppl_4(&artifact_dir, &registry), ppl_4(&gguf_path, &registry));
    eprintln!("{name}: artifact PPL {from_artifact:.4}, GGUF {from_gguf:.4}");
    assert!((from_gguf - from_artifact).abs() <= 5e-3 * from_artifact, "{name}: GGUF {from_gguf} vs artifact {from_artifact}");
}

/// The built-in `gguf-budget` preset on a tiny model 256 wide (every linear takes the k-quants
/// themselves): the pack stays within `--target-bpw` on the block linears, every linear is in one
/// of the candidate types, and the GGUF export copies every tensor exactly.
#[test]
fn gguf_budget_packs_within_its_target_and_exports_exactly() {
    let registry = registry();
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_llama_config(256, 512, 2, 300);
    config.max_position_embeddings = 1024;
    config.tie_word_embeddings = true;
    let tensors = tiny_model_tensors(&config, 5);
    let source = dir.path().join("source.gguf");
    write_tiny_gguf(&source, "llama", &config, &tensors, "smollm", None);
    let text = std::fs::read_to_string(util::repo_root().join("presets/gguf/gguf-budget.toml"))
        .unwrap()
        .replace("windows = 32", "windows = 4");
    let calib: String = std::fs::read_to_string(util::asset("calib.txt")).unwrap().chars().take(60_000).collect();
    let out = dir.path().join("budget.tenpak");
    let target = 4.8;
    let request = tenpak_pack::plan::PackRequest {
        calib: Some(TextSpec::Inline { name: "calib".into(), text: calib }),
        target_bpw: Some(target),
        ..request(source, inline_preset(&text, "gguf-budget"), &out)
    };
    let manifest = pack(&request, &registry).unwrap();
    let (mut bits, mut weights) = (0.0, 0usize);
    let mut types = std::collections::BTreeSet::new();
    for t in manifest.tensors.iter().filter(|t| t.role.is_block_linear()) {
        bits += t.bits_per_weight * t.numel() as f64;
        weights += t.numel();
        assert_eq!(t.codec.as_deref(), Some("ggml"), "{}", t.name);
        types.insert(t.params.str_or("type", "").unwrap().to_owned());
    }
    let bpw = bits / weights as f64;
    eprintln!("gguf-budget at {target}: {bpw:.3} bits per weight on the linears, types {types:?}");
    assert!(bpw <= target + 1e-9, "{bpw} bits per weight over the target {target}");
    let allowed = ["q2_k", "q3_k", "iq4_xs", "q4_k", "q5_k", "q6_k", "q8_0"];
    assert!(types.iter().all(|t| allowed.contains(&t.as_str())), "{types:?}");
    let report = export(&out, &dir.path().join("budget.gguf"), &registry);
    assert!(report.tensors.iter().all(|t| t.exact), "every tensor copied exactly");
}
