//! The fuzz harnesses (`tenpak_pack::fuzzing`, run by `scripts/fuzz.sh` under cargo-fuzz) outside
//! the fuzzer: every input a fuzzer crashed on, replayed (`tests/fuzz-regressions/<target>/`), and
//! the seed corpus, built here from tiny models of the real architecture and the real texts,
//! checked to reach the code it is meant to reach. With `TENPAK_FUZZ_SEEDS=DIR` the seeds test
//! also writes the corpus to `DIR/<target>/` (that is how `scripts/fuzz.sh` gets it).

use tenpak_testkit as util;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::GgmlDType;
use tenpak_pack::fuzzing;
use tenpak_model::gguf::GgufModel;
use tenpak_model::{ModelConfig, ModelSource};
use tenpak_pack::plan::PresetSpec;
use tenpak_pack::text::TextSpec;
use util::{NamedTensor, StoreAs, tiny_llama_config, tiny_llama_tensors, write_safetensors, write_tiny_gguf_as};

type Harness = fn(&[u8]) -> usize;

const TARGETS: [(&str, Harness); 6] = [
    ("gguf", fuzzing::gguf),
    ("gguf_tokenizer", fuzzing::gguf_tokenizer),
    ("safetensors", fuzzing::safetensors),
    ("artifact", |data| fuzzing::artifact(data, util::builtin_registry())),
    ("preset", |data| fuzzing::preset(data, util::builtin_registry())),
    ("codec_decode", |data| fuzzing::codec_decode(data, util::builtin_registry())),
];

/// Every saved crashing input, through its harness: none panics any more.
#[test]
fn fuzz_regressions_stay_fixed() {
    let root = util::repo_root().join("tenpak-pack/tests/fuzz-regressions");
    let mut replayed = 0;
    for (target, harness) in TARGETS {
        let Ok(entries) = std::fs::read_dir(root.join(target)) else { continue };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "expect") {
                continue;
            }
            let data = std::fs::read(&path).unwrap();
            eprintln!("replaying {}", path.display());
            harness(&data);
            replayed += 1;
            // `<input>.expect`: what the refusal must say. (This test runs without overflow
            // checks in release builds, so a wrapped size would pass `harness` silently: the
            // message shows the input is refused for the right reason.)
            let Ok(expected) = std::fs::read_to_string(path.with_extension("expect")) else { continue };
            let refusal = match target {
                "gguf" => GgufModel::from_bytes(&path, &data).err().map(|e| format!("{e:#}")),
                other => panic!("no .expect check for target {other}"),
            };
            let refusal = refusal.unwrap_or_else(|| panic!("{} was accepted", path.display()));
            assert!(refusal.contains(expected.trim()), "{}: refused with {refusal:?}", path.display());
        }
    }
    eprintln!("{replayed} regression inputs replayed");
}

/// A tiny model whose context fits the built-in presets, with tied embeddings like the real one.
/// Seeds are kept small: a fuzzer's executions per second fall with the input's length, and the
/// bytes it can usefully mutate are the headers, not the weights.
fn seed_config(hidden: usize, intermediate: usize, layers: usize) -> ModelConfig {
    let mut config = tiny_llama_config(hidden, intermediate, layers, 300);
    config.max_position_embeddings = 1024;
    config.tie_word_embeddings = true;
    config
}

/// GGUF seeds: every 32-block type on a 32-wide model, the k-quants on a 256-wide one (whose
/// 32-wide `down_proj` is f16: a k-quant row holds 256 values).
fn gguf_seeds(dir: &Path) -> Vec<(String, PathBuf, ModelConfig, Vec<NamedTensor>)> {
    let small = seed_config(32, 64, 2);
    let wide = seed_config(256, 32, 1);
    let blocks = |name: &str| match name {
        n if n.contains("q_proj") => GgmlDType::Q4_0,
        n if n.contains("k_proj") => GgmlDType::Q4_1,
        n if n.contains("v_proj") => GgmlDType::Q5_0,
        n if n.contains("o_proj") => GgmlDType::Q5_1,
        n if n.contains("gate_proj") => GgmlDType::Q8_0,
        n if n.contains("up_proj") => GgmlDType::F16,
        n if n.contains("embed") => GgmlDType::BF16,
        _ => GgmlDType::F32,
    };
    let k_quants = |name: &str| match name {
        n if n.contains("q_proj") => GgmlDType::Q2K,
        n if n.contains("k_proj") => GgmlDType::Q3K,
        n if n.contains("v_proj") => GgmlDType::Q4K,
        n if n.contains("o_proj") => GgmlDType::Q5K,
        n if n.contains("down_proj") => GgmlDType::F16,
        n if n.contains("proj") || n.contains("embed") => GgmlDType::Q6K,
        _ => GgmlDType::F32,
    };
    let mut out = Vec::new();
    for (name, config, dtype, pre) in [
        ("llama-32-blocks", &small, &blocks as &dyn Fn(&str) -> GgmlDType, "smollm"),
        ("llama-k-quants", &wide, &k_quants, "gpt-2"),
    ] {
        let tensors = tiny_llama_tensors(config, 7);
        let path = dir.join(format!("{name}.gguf"));
        write_tiny_gguf_as(&path, "llama", config, &tensors, pre, dtype);
        out.push((name.to_owned(), path, config.clone(), tensors));
    }
    out
}

/// One seed: target, name, bytes.
type Seed = (&'static str, String, Vec<u8>);

/// The seed corpus, with the tensor count of the model and of each artifact.
fn seeds(dir: &Path) -> (Vec<Seed>, usize, std::collections::BTreeMap<String, usize>) {
    let mut out = Vec::new();
    let mut artifact_tensors = std::collections::BTreeMap::new();
    let ggufs = gguf_seeds(dir);
    for (name, path, _, _) in &ggufs {
        let bytes = std::fs::read(path).unwrap();
        // The tokenizer builder reads only the header: no tensor data in its seeds.
        let header = tenpak_model::gguf::read_content(&bytes).unwrap().tensor_data_offset as usize;
        out.push(("gguf_tokenizer", name.clone(), bytes[..header].to_vec()));
        out.push(("gguf", name.clone(), bytes));
    }

    // Hugging Face directories: one file in f32; two shards (f16, bf16) with their index.
    let (_, gguf_path, _, tensors) = &ggufs[0];
    let config_json = GgufModel::open(gguf_path).unwrap().config_json().unwrap();
    let single = dir.join("single.safetensors");
    write_safetensors(&single, tensors, |_| StoreAs::F32);
    out.push(("safetensors", "single-f32".into(), fuzzing::join(&[config_json.as_bytes(), &std::fs::read(&single).unwrap()])));
    let (first, second) = tensors.split_at(tensors.len() / 2);
    let shards = [dir.join("a.safetensors"), dir.join("b.safetensors")];
    write_safetensors(&shards[0], first, |_| StoreAs::F16);
    write_safetensors(&shards[1], second, |_| StoreAs::BF16);
    let weight_map: serde_json::Map<String, serde_json::Value> = first
        .iter()
        .map(|t| (t.0.clone(), "model-00001.safetensors".into()))
        .chain(second.iter().map(|t| (t.0.clone(), "model-00002.safetensors".into())))
        .collect();
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map}).to_string();
    let shard_bytes = shards.map(|p| std::fs::read(p).unwrap());
    out.push(("safetensors", "sharded-f16-bf16".into(), fuzzing::join(&[config_json.as_bytes(), index.as_bytes(), &shard_bytes[0], &shard_bytes[1]])));

    // Artifacts of every built-in preset (calibrated on a slice of the real calibration text),
    // and one tensor of each codec they use for the decoder.
    let calib = std::fs::read_to_string(util::asset("calib.txt")).unwrap();
    let calib: String = calib.chars().take(48_000).collect();
    let registry = Arc::new(tenpak_plugins::builtins::registry().unwrap());
    let mut codecs_seen = std::collections::BTreeSet::new();
    // llama.cpp's file types on both models: the 32-wide one takes the fallback types, the
    // 256-wide one the K-quants themselves.
    let wide_path = &ggufs[1].1;
    let presets = [
        ("fast", gguf_path),
        ("balanced", gguf_path),
        ("quality", gguf_path),
        ("size", gguf_path),
        ("variety", gguf_path),
        ("q4_0", gguf_path),
        ("q4_k_m", wide_path),
        ("q2_k", wide_path),
        ("iq4_xs", wide_path),
    ];
    for (preset, model) in presets {
        let output = dir.join(format!("{preset}.tenpak"));
        let spec = match preset {
            "variety" => util::inline_preset(VARIETY, "variety"),
            name => PresetSpec::Builtin(name.into()),
        };
        let mut request = util::request(model.clone(), spec, &output);
        request.calib = Some(TextSpec::Inline { name: "calib".into(), text: calib.clone() });
        let manifest = util::pack(&request, &registry).unwrap_or_else(|e| panic!("packing the `{preset}` seed: {e:#}"));
        let mut sections = vec![std::fs::read(output.join("manifest.json")).unwrap()];
        for shard in &manifest.shards {
            sections.push(std::fs::read(output.join(&shard.file)).unwrap());
        }
        let refs: Vec<&[u8]> = sections.iter().map(Vec::as_slice).collect();
        out.push(("artifact", preset.to_owned(), fuzzing::join(&refs)));
        artifact_tensors.insert(preset.to_owned(), manifest.tensors.len());
        let text = tenpak_pack::preset::Preset::builtin(preset).map_or(VARIETY.to_owned(), |(_, text)| text);
        out.push(("preset", preset.to_owned(), text.into_bytes()));

        let artifact = tenpak_pack::artifact::Artifact::open(&output).unwrap();
        for record in &manifest.tensors {
            let Some(codec) = &record.codec else { continue };
            if !codecs_seen.insert((codec.clone(), serde_json::to_string(&record.params).unwrap())) {
                continue;
            }
            let encoded = artifact.encoded(&record.name).unwrap();
            let params = serde_json::to_vec(&encoded.params).unwrap();
            let shape = format!("{} {}", encoded.shape[0], encoded.shape[1]);
            let mut sections: Vec<Vec<u8>> = vec![codec.clone().into_bytes(), params, shape.into_bytes()];
            for part in &encoded.parts {
                let dtype = tenpak_api::DType::ALL.iter().position(|d| *d == part.dtype).unwrap() as u8;
                let dims: Vec<String> = part.shape.iter().map(usize::to_string).collect();
                sections.extend([part.name.clone().into_bytes(), vec![dtype], dims.join(" ").into_bytes(), part.data.clone()]);
            }
            let refs: Vec<&[u8]> = sections.iter().map(Vec::as_slice).collect();
            out.push(("codec_decode", format!("{preset}-{codec}-{}", record.name), fuzzing::join(&refs)));
        }
    }
    (out, tensors.len(), artifact_tensors)
}

/// Every built-in codec and the parameters that change what it stores, on one tiny model.
const VARIETY: &str = r#"
name = "variety"
[calibration]
calibrators = ["act_scale", "gram", "hessian_diag"]
windows = 4
ctx = 64
[allocator]
id = "role_rules"
[codec]
codec = "int4_rtn"
group_size = 32
[[overrides]]
pattern = "*.q_proj.*"
codec = "int4_gptq"
group_size = 32
[[overrides]]
pattern = "*.k_proj.*"
codec = "int4_awq"
bits = 3
group_size = 32
header_bits = 6
super_group = 4
outlier_fraction = 0.01
incoherence = true
rotation_seed = 7
[[overrides]]
pattern = "*.v_proj.*"
codec = "int4_residual"
group_size = 32
residual_bits = 2
residual_group_size = 16
[[overrides]]
pattern = "*.o_proj.*"
codec = "int8"
group_size = 32
[[overrides]]
pattern = "model.layers.1.mlp.*"
codec = "keep"
dtype = "bf16"
[[overrides]]
pattern = "model.layers.0.mlp.down_proj.*"
codec = "int4_awq"
bits = 2
group_size = 16
error_feedback = true
[[overrides]]
pattern = "model.layers.0.mlp.gate_proj.*"
codec = "int4_awq"
group_size = 16
zero_point = "integer"
error_feedback = true
[[overrides]]
pattern = "model.layers.0.mlp.up_proj.*"
codec = "vq"
dim = 1
bits = 3
group_size = 16
incoherence = true
rotation_seed = 5
iterations = 3
[[overrides]]
pattern = "model.layers.1.self_attn.q_proj.*"
codec = "vq"
dim = 4
bits = 2
group_size = 32
iterations = 3
"#;

/// The seeds go through their harnesses without a panic, and reach past the parsers: the GGUF and
/// safetensors seeds open, every artifact seed verifies and decodes, every codec seed decodes to
/// the values the artifact holds.
#[test]
fn fuzz_seeds_reach_the_code_they_are_for() {
    let tmp = tempfile::tempdir().unwrap();
    let (seeds, tensor_count, artifact_tensors) = seeds(tmp.path());
    for (target, name, bytes) in &seeds {
        let harness = TARGETS.iter().find(|(t, _)| t == target).unwrap().1;
        let reached = harness(bytes);
        // What each seed must get all the way through: every tensor of the model or artifact,
        // the tokenizer, the preset, the codec's decode.
        let want = match *target {
            "gguf" => GgufModel::from_bytes(Path::new(name), bytes).unwrap().tensors().len(),
            "safetensors" => tensor_count,
            "artifact" => artifact_tensors[name.as_str()],
            _ => 1,
        };
        assert_eq!(reached, want, "seed {target}/{name} got {reached} of {want} through");
    }
    let count = |t: &str| seeds.iter().filter(|s| s.0 == t).count();
    for (target, _) in TARGETS {
        assert!(count(target) > 0, "no seed for {target}");
    }
    let codecs: std::collections::BTreeSet<&str> =
        seeds.iter().filter(|s| s.0 == "codec_decode").map(|s| std::str::from_utf8(fuzzing::sections(&s.2)[0]).unwrap()).collect();
    eprintln!("codec seeds: {codecs:?}");
    // Every built-in codec (this test binary registers test codecs of its own too).
    let all: std::collections::BTreeSet<&str> = tenpak_plugins::builtins::CODECS.iter().copied().collect();
    assert_eq!(codecs, all, "a codec without a seed");

    if let Some(dir) = std::env::var_os("TENPAK_FUZZ_SEEDS") {
        for (target, name, bytes) in &seeds {
            let dir = Path::new(&dir).join(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
        }
        eprintln!("wrote {} seeds to {}", seeds.len(), Path::new(&dir).display());
    }
}
