//! Artifacts, presets, planning and the registry, on tiny synthetic models and the real one.

use tenpak_testkit as util;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tenpak_error::Result;
use rand::{Rng, SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, Normal};
use tenpak_pack::artifact::{Artifact, ArtifactSource};
use tenpak_model::{ModelConfig, ModelSource, SourceDType, TensorInfo, TokenizerSource};
use tenpak_pack::observe::Silent;
use tenpak_pack::plan::PresetSpec;
use tenpak_pack::preset::{BUILTIN, Preset};
use tenpak_pack::unpack::{DenseDType, unpack};
use tenpak_plugins::builtins;

/// A tiny Llama-architecture model held in memory.
struct MemModel {
    path: PathBuf,
    config: ModelConfig,
    infos: Vec<TensorInfo>,
    values: Vec<Vec<f32>>,
}

fn tiny_config(hidden: usize, inter: usize, blocks: usize, vocab: usize) -> ModelConfig {
    ModelConfig {
        model_type: "llama".into(),
        hidden_size: hidden,
        intermediate_size: inter,
        num_hidden_layers: blocks,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: hidden / 4,
        vocab_size: vocab,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: None,
        max_position_embeddings: 256,
        tie_word_embeddings: true,
        attention_bias: false,
        bos_token_id: Some(1),
        eos_token_id: Some(2),
    }
}

impl MemModel {
    fn new(seed: u64) -> Self {
        let (hidden, inter, blocks, vocab) = (72, 200, 2, 96);
        let config = tiny_config(hidden, inter, blocks, vocab);
        let kv = hidden / 4 * 2;
        let mut shapes: Vec<(String, Vec<usize>)> = vec![("model.embed_tokens.weight".into(), vec![vocab, hidden])];
        for b in 0..blocks {
            let p = format!("model.layers.{b}");
            shapes.push((format!("{p}.input_layernorm.weight"), vec![hidden]));
            shapes.push((format!("{p}.self_attn.q_proj.weight"), vec![hidden, hidden]));
            shapes.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, hidden]));
            shapes.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, hidden]));
            shapes.push((format!("{p}.self_attn.o_proj.weight"), vec![hidden, hidden]));
            shapes.push((format!("{p}.post_attention_layernorm.weight"), vec![hidden]));
            shapes.push((format!("{p}.mlp.gate_proj.weight"), vec![inter, hidden]));
            shapes.push((format!("{p}.mlp.up_proj.weight"), vec![inter, hidden]));
            shapes.push((format!("{p}.mlp.down_proj.weight"), vec![hidden, inter]));
        }
        shapes.push(("model.norm.weight".into(), vec![hidden]));
        let mut rng = StdRng::seed_from_u64(seed);
        let normal = Normal::new(0.0f32, 0.05).unwrap();
        let values = shapes
            .iter()
            .map(|(name, shape)| {
                let n: usize = shape.iter().product();
                if name.ends_with("norm.weight") {
                    (0..n).map(|_| 1.0 + rng.random_range(-0.1..0.1)).collect()
                } else {
                    (0..n).map(|_| normal.sample(&mut rng)).collect()
                }
            })
            .collect();
        let infos = shapes
            .into_iter()
            .map(|(name, shape)| TensorInfo { name, shape, dtype: SourceDType::Float("f32") })
            .collect();
        Self { path: PathBuf::from("memory://tiny"), config, infos, values }
    }
}

impl ModelSource for MemModel {
    fn path(&self) -> &Path {
        &self.path
    }
    fn format(&self) -> &'static str {
        "memory"
    }
    fn config(&self) -> &ModelConfig {
        &self.config
    }
    fn tensors(&self) -> &[TensorInfo] {
        &self.infos
    }
    fn load_f32(&self, name: &str) -> Result<Vec<f32>> {
        let i = self.infos.iter().position(|t| t.name == name).ok_or_else(|| tenpak_error::err!("no tensor {name}"))?;
        Ok(self.values[i].clone())
    }
    fn tokenizer(&self) -> TokenizerSource {
        TokenizerSource::Missing
    }
    fn config_json(&self) -> Result<String> {
        Ok(serde_json::json!({"model_type": "llama", "hidden_size": self.config.hidden_size}).to_string())
    }
    fn files(&self) -> Vec<PathBuf> {
        Vec::new()
    }
}

fn fast() -> (Preset, String) {
    Preset::builtin("fast").unwrap()
}

fn tiny_source() -> tenpak_pack::plan::ModelSpec {
    tenpak_pack::plan::ModelSpec::Source(Arc::new(MemModel::new(7)))
}

fn pack_tiny(dir: &Path, preset: &Preset, text: &str) -> tenpak_pack::artifact::Manifest {
    let registry = Arc::new(builtins::registry().unwrap());
    util::pack(&util::request(tiny_source(), util::inline_preset(text, &preset.name), dir), &registry).unwrap()
}

#[test]
fn registry_has_every_builtin() {
    let registry = Arc::new(builtins::registry().unwrap());
    for id in builtins::CODECS {
        registry.codec(id).unwrap_or_else(|e| panic!("{e}"));
    }
    for id in builtins::ALLOCATORS {
        registry.allocator(id).unwrap();
    }
    for id in builtins::CALIBRATORS {
        assert_eq!(registry.calibrator(id).unwrap().id(), *id);
    }
    let err = registry.codec("int3_magic").err().unwrap().to_string();
    for id in builtins::CODECS {
        assert!(err.contains(id), "unknown-id error should list `{id}`: {err}");
    }
}

#[test]
fn builtin_presets_parse_and_validate() {
    let registry = Arc::new(builtins::registry().unwrap());
    for (name, text) in BUILTIN {
        let preset = Preset::parse(text, name).unwrap();
        assert_eq!(&preset.name, name);
        preset.validate(&registry).unwrap_or_else(|e| panic!("built-in preset `{name}`: {e:#}"));
    }
}

#[test]
fn preset_errors_name_the_fault() {
    let registry = Arc::new(builtins::registry().unwrap());
    let base = BUILTIN.iter().find(|(n, _)| *n == "fast").unwrap().1;
    // An unknown top-level key: the TOML error names it.
    let err = Preset::parse(&format!("colour = 3\n{base}"), "bad.toml").unwrap_err().to_string();
    assert!(err.contains("bad.toml") && err.contains("colour"), "{err}");
    // A wrong type.
    let err = Preset::parse(&base.replace("windows = 16", "windows = \"many\""), "bad.toml").unwrap_err().to_string();
    assert!(err.contains("windows"), "{err}");
    // An unknown codec lists the known ones.
    let p = Preset::parse(&base.replace("codec = \"int4_residual\"", "codec = \"int5_dream\""), "x").unwrap();
    let err = format!("{:#}", p.validate(&registry).unwrap_err());
    assert!(err.contains("int5_dream") && err.contains("int4_rtn"), "{err}");
    // An unknown codec parameter lists the accepted ones.
    let p = Preset::parse(&base.replace("group_size = 64", "group_size = 64\ngroup_sise = 3"), "x").unwrap();
    let err = format!("{:#}", p.validate(&registry).unwrap_err());
    assert!(err.contains("group_sise") && err.contains("group_size"), "{err}");
    // A parameter of the wrong type.
    let p = Preset::parse(&base.replace("group_size = 64", "group_size = \"64\""), "x").unwrap();
    let err = format!("{:#}", p.validate(&registry).unwrap_err());
    assert!(err.contains("group_size") && err.contains("int"), "{err}");
    // A missing preset names the built-ins.
    let err = PresetSpec::from_cli("no/such/preset.toml").load().unwrap_err().to_string();
    assert!(err.contains("balanced") && err.contains("fast"), "{err}");
}

#[test]
fn tiny_round_trip_unpack_equals_decode() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny.tenpak");
    let (preset, text) = fast();
    let manifest = pack_tiny(&dir, &preset, &text);
    let registry = Arc::new(builtins::registry().unwrap());
    let artifact = Artifact::open(&dir).unwrap();
    let model = MemModel::new(7);
    // Totals are the sums of the records; every record's bits are the bytes stored.
    let bits: u64 = manifest.tensors.iter().map(|t| t.bits).sum();
    assert_eq!(bits, manifest.totals.bits);
    for t in &manifest.tensors {
        let stored: u64 = match &t.codec {
            Some(_) => artifact.encoded(&t.name).unwrap().stored_bits(),
            None => t.numel() as u64 * 32,
        };
        assert_eq!(stored, t.bits, "{}", t.name);
        let original = model.load_f32(&t.name).unwrap();
        let decoded = artifact.load_f32(&t.name, &registry).unwrap();
        match &t.codec {
            None => assert_eq!(decoded, original, "raw tensor {} must be exact", t.name),
            Some(id) => {
                let codec = registry.codec(id).unwrap();
                let again = codec.decode(&artifact.encoded(&t.name).unwrap()).unwrap();
                assert_eq!(decoded, again);
                let (rel, _) = tenpak_pack::encode::reconstruction_error(&original, &decoded);
                assert!((rel - t.rel_mse).abs() <= 1e-12 * rel.max(1.0), "{}: {rel} vs {}", t.name, t.rel_mse);
                assert!(rel < 0.02, "{}: 4-bit relative MSE of a gaussian should be ~0.5%, got {rel}", t.name);
            }
        }
    }
    // Unpack: the dense tensors equal the codec's decode of the stored parts.
    let out = tmp.path().join("dense");
    unpack(&artifact, &registry, &out, DenseDType::F32, false, &Silent).unwrap();
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let dense = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for t in &manifest.tensors {
        let view = dense.tensor(&t.name).unwrap();
        assert_eq!(view.shape(), t.shape.as_slice());
        let got: Vec<f32> = view.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        assert_eq!(got, artifact.load_f32(&t.name, &registry).unwrap(), "{}", t.name);
    }
    assert!(out.join("config.json").exists());
    // The artifact reads as a model source too.
    let source = ArtifactSource::open(&dir, registry.clone()).unwrap();
    assert_eq!(source.config().hidden_size, 72);
    assert_eq!(source.tensors().len(), manifest.tensors.len());
}

#[test]
fn corrupt_and_truncated_shards_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny.tenpak");
    let (preset, text) = fast();
    pack_tiny(&dir, &preset, &text);
    let shard = dir.join("weights/shard_0.safetensors");
    let original = std::fs::read(&shard).unwrap();

    let mut flipped = original.clone();
    let at = flipped.len() - 100;
    flipped[at] ^= 0x01;
    std::fs::write(&shard, &flipped).unwrap();
    let err = format!("{:#}", Artifact::open(&dir).err().unwrap());
    assert!(err.contains("shard_0.safetensors") && err.contains("sha256"), "{err}");

    std::fs::write(&shard, &original[..original.len() - 10]).unwrap();
    let err = format!("{:#}", Artifact::open(&dir).err().unwrap());
    assert!(err.contains("shard_0.safetensors") && err.contains("truncated"), "{err}");

    std::fs::write(&shard, &original).unwrap();
    Artifact::open(&dir).unwrap();

    // A manifest of another version is refused by name.
    let manifest_path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&manifest_path).unwrap();
    std::fs::write(&manifest_path, text.replace("\"format_version\": 1", "\"format_version\": 9")).unwrap();
    let err = format!("{:#}", Artifact::open(&dir).err().unwrap());
    assert!(err.contains("version 9"), "{err}");
}

#[test]
fn an_interrupted_write_leaves_no_artifact() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("half.tenpak");
    let writer = tenpak_pack::artifact::ArtifactWriter::create(&dest, false).unwrap();
    let temp = writer.temp_dir().to_owned();
    assert!(temp.exists());
    // Simulate a crash: the process dies without running destructors.
    std::mem::forget(writer);
    assert!(!dest.exists(), "nothing may appear at the destination before commit");
    assert!(Artifact::open(&dest).is_err());
    let hidden = temp.file_name().unwrap().to_str().unwrap();
    assert!(hidden.starts_with('.') && hidden.contains(".tmp-"), "{hidden}");
    // And an abandoned (dropped) writer cleans up after itself.
    let writer = tenpak_pack::artifact::ArtifactWriter::create(&dest, false).unwrap();
    let temp = writer.temp_dir().to_owned();
    drop(writer);
    assert!(!temp.exists() && !dest.exists());

    // What a kill -9 leaves (a temporary of a process that is gone) is removed by the next
    // writer of the same destination; a live process's temporary and other names are kept.
    let dead = tmp.path().join(".half.tenpak.tmp-4000000000");
    let alive = tmp.path().join(format!(".half.tenpak.tmp-{}", std::os::unix::process::parent_id()));
    let other = tmp.path().join(".other.tenpak.tmp-4000000000");
    for dir in [&dead, &alive, &other] {
        std::fs::create_dir_all(dir.join("weights")).unwrap();
    }
    let writer = tenpak_pack::artifact::ArtifactWriter::create(&dest, false).unwrap();
    assert!(!dead.exists() && alive.exists() && other.exists());
    drop(writer);
}

#[test]
fn existing_output_is_not_overwritten_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny.tenpak");
    let (preset, text) = fast();
    pack_tiny(&dir, &preset, &text);
    let registry = Arc::new(builtins::registry().unwrap());
    let mut job = util::request(tiny_source(), util::inline_preset(&text, &preset.name), &dir);
    let err = util::pack(&job, &registry).unwrap_err();
    assert_eq!(err.kind(), tenpak_error::Kind::BadRequest);
    assert!(err.to_string().contains("already exists"), "{err}");
    job.force = true;
    util::pack(&job, &registry).unwrap();
    Artifact::open(&dir).unwrap();
}

fn real_model_path() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.exists(), "{} is missing: run scripts/fetch-assets.sh", path.display());
    path
}

/// Issue 2's promise: without calibration, int4_residual beats int4_rtn at equal bits on every
/// linear layer of the real model. Group 64 and 128 only: at divisors of 32 both reproduce the
/// source's Q4_1 grid exactly, which would make the comparison meaningless.
#[test]
fn real_model_int4_residual_beats_rtn_on_every_linear() {
    let model = tenpak_model::open(&real_model_path()).unwrap();
    let registry = Arc::new(builtins::registry().unwrap());
    let (rtn, residual) = (registry.codec("int4_rtn").unwrap(), registry.codec("int4_residual").unwrap());
    let mut checked = 0;
    for info in model.tensors() {
        let (role, _) = tenpak_model::roles::classify(&info.name, &info.shape);
        if !role.is_block_linear() {
            continue;
        }
        let values = model.load_f32(&info.name).unwrap();
        let view = tenpak_api::WeightView::new(&values, info.shape[0], info.shape[1]).unwrap();
        for group_size in [64usize, 128] {
            let params = tenpak_api::Params::new().with("group_size", group_size);
            let stats = tenpak_api::LayerStats::none();
            let a = rtn.encode(view, &stats, &params).unwrap();
            let b = residual.encode(view, &stats, &params).unwrap();
            assert_eq!(rtn.size_bits(&a), residual.size_bits(&b), "{}: equal bits", info.name);
            let (err_a, _) = tenpak_pack::encode::reconstruction_error(&values, &rtn.decode(&a).unwrap());
            let (err_b, _) = tenpak_pack::encode::reconstruction_error(&values, &residual.decode(&b).unwrap());
            assert!(err_b < err_a, "{} g{group_size}: int4_residual {err_b:.4e} >= int4_rtn {err_a:.4e}", info.name);
        }
        checked += 1;
    }
    assert_eq!(checked, 210, "SmolLM2 has 30 blocks x 7 linears");
}

/// The fast preset on the real model: the README's main job, checked against recomputed values.
#[test]
fn real_model_fast_pack_round_trip() {
    let model = tenpak_model::open(&real_model_path()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("smollm2.tenpak");
    let (preset, text) = fast();
    let registry = Arc::new(builtins::registry().unwrap());
    let job = util::request(real_model_path(), util::inline_preset(&text, &preset.name), &dir);
    let manifest = util::pack(&job, &registry).unwrap();
    assert_eq!(manifest.tensors.len(), 272);
    // 4-bit codes + f16 scale and min per 64 weights: exactly 4.5 bits on the block linears.
    assert_eq!(manifest.totals.linear_bits_per_weight, 4.5);
    let artifact = Artifact::open(&dir).unwrap();
    for name in ["model.layers.0.self_attn.q_proj.weight", "model.layers.29.mlp.down_proj.weight", "model.embed_tokens.weight"] {
        let record = artifact.record(name).unwrap();
        let codec = registry.codec(record.codec.as_deref().unwrap()).unwrap();
        let decoded = codec.decode(&artifact.encoded(name).unwrap()).unwrap();
        assert_eq!(decoded, artifact.load_f32(name, &registry).unwrap());
        let (rel, _) = tenpak_pack::encode::reconstruction_error(&model.load_f32(name).unwrap(), &decoded);
        assert_eq!(rel, record.rel_mse, "{name}: recorded error must be recomputable");
    }
    let source_hash = &manifest.source.files[0].sha256;
    assert_eq!(source_hash, &tenpak_pack::artifact::safetensors_writer::sha256_file(&real_model_path()).unwrap());
}
