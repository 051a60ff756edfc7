//! Plugins through the C ABI: the NF4 codec, `act_absmax` calibrator and `error_cap` allocator
//! examples loaded from their cdylibs and compared bit for bit with the same sources linked
//! statically, and every refusal the loader promises.
//!
//! The libraries are built by this test (once per process) with the same cargo, profile and
//! target directory as the test itself, so a clean checkout needs nothing else. `cargo test`
//! has released its build lock by the time test binaries run, so the nested build does not wait
//! on it.

mod util;

// The calibrator and allocator examples, compiled into this test as their static builds. (Their
// crates cannot be linked here as rlibs beside nf4's: each exports the same `tenpak_plugin`
// symbol.)
#[path = "../../examples/allocator-plugin-error-cap/src/error_cap.rs"]
mod error_cap;
#[path = "../../examples/calibrator-plugin-absmax/src/absmax.rs"]
mod absmax;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use rand::{SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, Normal};
use tenpak_api::registry::Registry;
use tenpak_api::{
    Allocator, AllocatorConfig, Calibrator, Codec, CodecChoice, Encoded, Error, ErrorKind, LayerInfo, LayerRole, LayerStats, Params,
    Probe, ProbeResult, StatsNeeds, WeightView,
};
use tenpak_codec_nf4::Nf4;
use tenpak_host::artifact::Artifact;
use tenpak_host::observe::Silent;
use tenpak_host::plan::{PresetSpec, TextSpec};
use tenpak_host::unpack::{DenseDType, unpack};
use tenpak_host::{builtins, plugins};

const NF4_PLUGIN: &str = "tenpak_codec_nf4";
const FAULTY_PLUGIN: &str = "tenpak_test_faulty_plugin";
const FUTURE_PLUGIN: &str = "tenpak_test_future_abi_plugin";
const OLD_PLUGIN: &str = "tenpak_test_old_abi_plugin";
const ABSMAX_PLUGIN: &str = "tenpak_calibrator_absmax";
const ERROR_CAP_PLUGIN: &str = "tenpak_alloc_error_cap";

/// `target/<profile>` of this test binary (`target/<profile>/deps/plugins-…`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent().and_then(Path::parent).expect("test binary lives in target/<profile>/deps").to_path_buf()
}

/// Build the plugin libraries (once) and return the directory holding them.
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
            .arg(util::repo_root().join("Cargo.toml"))
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

fn library(name: &str) -> PathBuf {
    let path = plugin_dir().join(format!("{}{name}{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX));
    assert!(path.is_file(), "{} was not built", path.display());
    path.canonicalize().unwrap()
}

fn random_matrix(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, 0.02).unwrap();
    (0..rows * cols).map(|_| normal.sample(&mut rng)).collect()
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

fn same_error(a: &Error, b: &Error) {
    assert_eq!(a.kind(), b.kind(), "{a} vs {b}");
    assert_eq!(a.message(), b.message());
}

#[test]
fn static_nf4_is_registered_through_inventory() {
    let registry = std::sync::Arc::new(builtins::registry().unwrap());
    assert_eq!(registry.codec_source("nf4"), Some("tenpak-codec-nf4 0.1.0"));
    // The static build answers through the registry exactly as the type does.
    let codec = registry.codec("nf4").unwrap();
    let weight = random_matrix(3, 70, 1);
    let view = WeightView::new(&weight, 3, 70).unwrap();
    assert_eq!(
        codec.encode(view, &LayerStats::none(), &Params::new()).unwrap(),
        Nf4.encode(view, &LayerStats::none(), &Params::new()).unwrap()
    );
}

#[test]
fn plugin_nf4_matches_the_static_build_bit_for_bit() {
    let path = library(NF4_PLUGIN);
    let mut registry = Registry::new();
    let plugin = plugins::load_into(&mut registry, &path).unwrap();
    assert_eq!(plugin.name(), "tenpak-codec-nf4 0.1.0");
    let source = registry.codec_source("nf4").unwrap();
    assert!(source.contains(&path.display().to_string()) && source.contains("tenpak-codec-nf4 0.1.0"), "{source}");
    let dynamic = registry.codec("nf4").unwrap();
    let fixed = Nf4;

    // Metadata crosses whole.
    assert_eq!(dynamic.description(), fixed.description());
    assert_eq!(dynamic.needs(), fixed.needs());
    let (dp, sp) = (dynamic.params(), fixed.params());
    assert_eq!(dp.len(), sp.len());
    for (d, s) in dp.iter().zip(sp) {
        assert_eq!((d.name, d.ty, d.default, d.doc), (s.name, s.ty, s.default, s.doc));
    }

    let shapes = [(1, 1), (3, 64), (5, 200), (17, 333), (64, 576), (0, 8)];
    let groups: [Option<usize>; 4] = [None, Some(40), Some(1), Some(1000)];
    for (i, &(rows, cols)) in shapes.iter().enumerate() {
        for (j, group) in groups.iter().enumerate() {
            let weight = random_matrix(rows, cols, (i * 10 + j) as u64);
            let view = WeightView::new(&weight, rows, cols).unwrap();
            let params = group.map_or_else(Params::new, |g| Params::new().with("group_size", g));
            dynamic.validate(&params).unwrap();
            let a: Encoded = dynamic.encode(view, &LayerStats::none(), &params).unwrap();
            let b: Encoded = fixed.encode(view, &LayerStats::none(), &params).unwrap();
            assert_eq!(a, b, "encodings differ for [{rows}, {cols}], group {group:?}");
            assert_eq!(dynamic.size_bits(&a), fixed.size_bits(&b));
            let (da, db) = (dynamic.decode(&a).unwrap(), fixed.decode(&b).unwrap());
            assert_eq!(bits(&da), bits(&db), "decodings differ for [{rows}, {cols}], group {group:?}");
            assert_eq!(da.len(), rows * cols);
        }
    }

    // Refusals are the same errors, kind and message, from both builds.
    let weight = [0.5, f32::NAN, 1.0];
    let view = WeightView::new(&weight, 1, 3).unwrap();
    same_error(
        &dynamic.encode(view, &LayerStats::none(), &Params::new()).unwrap_err(),
        &fixed.encode(view, &LayerStats::none(), &Params::new()).unwrap_err(),
    );
    for params in [
        Params::new().with("group_size", 0usize),
        Params::new().with("group_size", "64"),
        Params::new().with("grup_size", 64usize),
    ] {
        same_error(&dynamic.validate(&params).unwrap_err(), &fixed.validate(&params).unwrap_err());
    }
    let mut broken = fixed.encode(WeightView::new(&[1.0; 8], 2, 4).unwrap(), &LayerStats::none(), &Params::new()).unwrap();
    broken.parts.retain(|p| p.name != "scales");
    same_error(&dynamic.decode(&broken).unwrap_err(), &fixed.decode(&broken).unwrap_err());

    // Loading the same library again reuses it.
    let again = plugins::load(&path).unwrap();
    assert!(Arc::ptr_eq(&again, &plugin));
}

#[test]
fn a_plugin_from_another_abi_version_is_refused_with_both_versions() {
    let path = library(FUTURE_PLUGIN);
    let mut registry = Registry::new();
    let err = format!("{:#}", plugins::load_into(&mut registry, &path).err().unwrap());
    let v = tenpak_api::abi::ABI_VERSION;
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains(&format!("ABI version {}", v + 1)) && err.contains(&format!("ABI version {v}")), "{err}");
    assert_eq!(registry.codecs().count(), 0);
    // Refused again on a second try (nothing was cached as loaded).
    assert!(plugins::load(&path).is_err());

    // A library built for version 1 (codecs only, the same descriptor layout) is refused by
    // version too, not half-read.
    let path = library(OLD_PLUGIN);
    let err = format!("{:#}", plugins::load_into(&mut registry, &path).err().unwrap());
    assert!(err.contains("ABI version 1,") && err.contains(&format!("speaks ABI version {v}")), "{err}");
    assert!(err.contains("rebuild the plugin"), "{err}");
    assert_eq!(registry.codecs().count(), 0);
}

#[test]
fn a_panic_in_a_plugin_is_an_error_and_the_host_goes_on() {
    let path = library(FAULTY_PLUGIN);
    let mut registry = Registry::new();
    plugins::load_into(&mut registry, &path).unwrap();
    let codec = registry.codec("panicky").unwrap();
    let negative = [-1.0f32, 2.0, 3.0, 4.0];
    let err = codec.encode(WeightView::new(&negative, 2, 2).unwrap(), &LayerStats::none(), &Params::new()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Other);
    let message = err.message();
    assert!(message.contains("panicked in encode") && message.contains("negative first weight"), "{message}");
    assert!(message.contains("codec `panicky`") && message.contains(&path.display().to_string()), "{message}");
    // The same instance keeps working, again and again.
    for _ in 0..3 {
        assert!(codec.encode(WeightView::new(&negative, 2, 2).unwrap(), &LayerStats::none(), &Params::new()).is_err());
        let positive = [1.0f32, 2.0, 3.0, 4.0];
        let encoded = codec.encode(WeightView::new(&positive, 2, 2).unwrap(), &LayerStats::none(), &Params::new()).unwrap();
        assert_eq!(codec.decode(&encoded).unwrap(), positive);
    }
}

#[test]
fn malformed_plugin_results_are_caught_by_the_host() {
    let path = library(FAULTY_PLUGIN);
    let mut registry = Registry::new();
    plugins::load_into(&mut registry, &path).unwrap();
    let weight = random_matrix(3, 5, 9);
    let view = WeightView::new(&weight, 3, 5).unwrap();

    // A part one byte short of its shape.
    let err = registry.codec("malformed").unwrap().encode(view, &LayerStats::none(), &Params::new()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    let message = err.message();
    assert!(message.contains("malformed encode result") && message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("part `values`") && message.contains("needs 60 bytes, got 59"), "{message}");

    // A decode one value short.
    let codec = registry.codec("short_decode").unwrap();
    let encoded = codec.encode(view, &LayerStats::none(), &Params::new()).unwrap();
    let err = codec.decode(&encoded).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert!(err.message().contains("14 values for a [3, 5] matrix"), "{err}");
}

#[test]
fn duplicate_ids_are_refused_naming_both_sources() {
    // The static nf4 (linked into this test binary) is in the built-in registry already.
    let path = library(NF4_PLUGIN);
    let mut registry = builtins::registry().unwrap();
    let err = format!("{:#}", plugins::load_into(&mut registry, &path).err().unwrap());
    assert!(err.contains("`nf4`") && err.contains("tenpak-codec-nf4 0.1.0") && err.contains(&path.display().to_string()), "{err}");
    assert_eq!(registry.codec_source("nf4"), Some("tenpak-codec-nf4 0.1.0"), "the static codec stays");

    // A library is all or nothing: one taken id refuses every codec in it.
    let faulty = library(FAULTY_PLUGIN);
    let mut registry = Registry::new();
    registry.add_codec(Arc::new(Nf4Named("short_decode")), "some-other-crate 2.0").unwrap();
    let err = format!("{:#}", plugins::load_into(&mut registry, &faulty).err().unwrap());
    assert!(err.contains("`short_decode`") && err.contains("some-other-crate 2.0") && err.contains(&faulty.display().to_string()), "{err}");
    assert!(registry.codec("panicky").is_err() && registry.codec("malformed").is_err());

    // The same library twice into one registry.
    let mut registry = Registry::new();
    plugins::load_into(&mut registry, &faulty).unwrap();
    let err = format!("{:#}", plugins::load_into(&mut registry, &faulty).err().unwrap());
    assert!(err.contains("already loaded"), "{err}");
}

/// NF4 under another id, to collide with.
struct Nf4Named(&'static str);
impl Codec for Nf4Named {
    fn id(&self) -> &str {
        self.0
    }
    fn encode(&self, w: WeightView<'_>, s: &LayerStats, p: &Params) -> tenpak_api::Result<Encoded> {
        Nf4.encode(w, s, p)
    }
    fn decode(&self, e: &Encoded) -> tenpak_api::Result<Vec<f32>> {
        Nf4.decode(e)
    }
}

#[test]
fn what_is_not_a_plugin_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let text = tmp.path().join("libnot_a_plugin.so");
    std::fs::write(&text, "not a library").unwrap();
    let err = format!("{:#}", plugins::load(&text).err().unwrap());
    assert!(err.contains("libnot_a_plugin.so") && err.contains("cannot load"), "{err}");
    let missing = tmp.path().join("missing.so");
    let err = format!("{:#}", plugins::load(&missing).err().unwrap());
    assert!(err.contains("missing.so"), "{err}");
}

const PRESET: &str = r#"
name = "nf4-test"
description = "NF4 everywhere, with a group size that does not divide the MLP widths"

[allocator]
id = "role_rules"

[codec]
codec = "nf4"
group_size = 64

[roles.mlp]
group_size = 40
"#;

fn write_tiny_model(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let config = util::tiny_llama_config(72, 200, 2, 96);
    std::fs::write(dir.join("config.json"), config.to_hf_config_json()).unwrap();
    let tensors = util::tiny_llama_tensors(&config, 5);
    util::write_safetensors(&dir.join("model.safetensors"), &tensors, |_| util::StoreAs::F32);
}

fn tenpak(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tenpak")).args(args).env_remove("TENPAK_PROGRESS").output().expect("run tenpak")
}

#[test]
fn pack_with_the_plugin_equals_pack_with_the_static_build() {
    let nf4 = library(NF4_PLUGIN);
    let tmp = tempfile::tempdir().unwrap();
    let model_dir = tmp.path().join("tiny");
    write_tiny_model(&model_dir);
    let preset_path = tmp.path().join("nf4.toml");
    std::fs::write(&preset_path, PRESET).unwrap();

    // Static: in this process, nf4 found through inventory.
    let registry = std::sync::Arc::new(builtins::registry().unwrap());
    let static_dir = tmp.path().join("static.tenpak");
    let job = util::request(model_dir.clone(), PresetSpec::File(preset_path.clone()), &static_dir);
    let static_manifest = util::pack(&job, &registry).unwrap();

    // Dynamic: the tenpak binary, which links no nf4, with the library.
    let plugin_dir = tmp.path().join("plugin.tenpak");
    let out = tenpak(&[
        "--plugin".as_ref(),
        nf4.as_os_str(),
        "pack".as_ref(),
        model_dir.as_os_str(),
        "--preset".as_ref(),
        preset_path.as_os_str(),
        "-o".as_ref(),
        plugin_dir.as_os_str(),
        // The tiny model has no tokenizer to evaluate with.
        "--no-eval".as_ref(),
    ]);
    assert!(out.status.success(), "tenpak pack with the plugin failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let plugin_artifact = Artifact::open(&plugin_dir).unwrap();
    let plugin_manifest = plugin_artifact.manifest();

    // Same tensors, same codecs and parameters, same sizes and the same errors; the stored bytes
    // are identical, so the shard hashes are too. Only the recorded codec source differs.
    assert_eq!(static_manifest.tensors.len(), plugin_manifest.tensors.len());
    let mut encoded = 0;
    for (s, p) in static_manifest.tensors.iter().zip(&plugin_manifest.tensors) {
        assert_eq!((&s.name, &s.codec, &s.params, s.bits), (&p.name, &p.codec, &p.params, p.bits));
        assert_eq!(s.rel_mse.to_bits(), p.rel_mse.to_bits(), "{}: reconstruction error differs", s.name);
        if s.codec.is_some() {
            encoded += 1;
            assert_eq!(s.codec_source.as_deref(), Some("tenpak-codec-nf4 0.1.0"));
            let recorded = p.codec_source.as_deref().unwrap();
            assert!(recorded.contains(&nf4.display().to_string()), "{recorded}");
        }
    }
    assert!(encoded >= 14, "every 2-D weight should be nf4, got {encoded}");
    let hashes = |m: &tenpak_host::artifact::Manifest| m.shards.iter().map(|s| s.sha256.clone()).collect::<Vec<_>>();
    assert_eq!(hashes(&static_manifest), hashes(plugin_manifest));

    // Unpack the plugin-made artifact in a fresh process: the dense weights equal the static
    // build's decode of its own artifact, byte for byte.
    let dense = tmp.path().join("dense");
    let out = tenpak(&[
        "--plugin".as_ref(),
        nf4.as_os_str(),
        "unpack".as_ref(),
        plugin_dir.as_os_str(),
        "-o".as_ref(),
        dense.as_os_str(),
    ]);
    assert!(out.status.success(), "tenpak unpack with the plugin failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let static_dense = tmp.path().join("static-dense");
    unpack(&Artifact::open(&static_dir).unwrap(), &registry, &static_dense, DenseDType::F32, false, &Silent).unwrap();
    assert_eq!(
        std::fs::read(dense.join("model.safetensors")).unwrap(),
        std::fs::read(static_dense.join("model.safetensors")).unwrap()
    );

    // Without the plugin, reading the artifact fails and says which library it needs.
    let out = tenpak(&["unpack".as_ref(), plugin_dir.as_os_str(), "-o".as_ref(), tmp.path().join("x").as_os_str()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("`nf4`") && stderr.contains(&nf4.display().to_string()), "{stderr}");

    // `tenpak codecs` names the library as the source.
    let out = tenpak(&["--plugin".as_ref(), nf4.as_os_str(), "codecs".as_ref()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().find(|l| l.trim_start().starts_with("nf4 ")).unwrap_or_else(|| panic!("{stdout}"));
    assert!(line.contains(&nf4.display().to_string()), "{line}");

    // A refused plugin on the command line is an error (exit 1) naming both versions.
    let out = tenpak(&["--plugin".as_ref(), library(FUTURE_PLUGIN).as_os_str(), "codecs".as_ref()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let v = tenpak_api::abi::ABI_VERSION;
    assert!(stderr.contains(&format!("ABI version {}", v + 1)) && stderr.contains(&format!("ABI version {v}")), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// Calibrators and allocators

/// Random inputs for `layer`, a few with a large outlier channel.
fn batches(layer: &LayerInfo, seed: u64) -> Vec<(usize, Vec<f32>)> {
    [7usize, 1, 33]
        .iter()
        .enumerate()
        .map(|(i, &rows)| {
            let mut data = random_matrix(rows, layer.cols, seed + i as u64);
            data[(rows - 1) * layer.cols] = 40.0 * (i as f32 + 1.0);
            (rows, data)
        })
        .collect()
}

fn layer(name: &str, role: LayerRole, block: Option<usize>, rows: usize, cols: usize) -> LayerInfo {
    LayerInfo { name: name.into(), role, block, rows, cols }
}

#[test]
fn plugin_calibrator_matches_the_static_build_bit_for_bit() {
    let path = library(ABSMAX_PLUGIN);
    let mut registry = Registry::new();
    let plugin = plugins::load_into(&mut registry, &path).unwrap();
    assert_eq!(plugin.name(), "tenpak-calibrator-absmax 0.1.0");
    assert_eq!(plugin.calibrators().len(), 1);
    let source = registry.calibrator_source("act_absmax").unwrap();
    assert!(source.contains(&path.display().to_string()), "{source}");

    let mut dynamic = registry.calibrator("act_absmax").unwrap();
    let mut fixed = absmax::ActAbsMax::default();
    assert_eq!((dynamic.id(), dynamic.provides(), dynamic.needs_gradients()), (fixed.id(), fixed.provides(), fixed.needs_gradients()));
    let layers = [layer("a", LayerRole::AttnQ, Some(0), 4, 576), layer("b", LayerRole::MlpDown, Some(3), 2, 17)];
    // Interleaved across layers, as the pipeline feeds them.
    let fed: Vec<_> = layers.iter().enumerate().map(|(i, l)| batches(l, 10 * i as u64)).collect();
    for step in 0..3 {
        for (l, layer) in layers.iter().enumerate() {
            let (rows, data) = &fed[l][step];
            let view = WeightView::new(data, *rows, layer.cols).unwrap();
            dynamic.observe_input(layer, view).unwrap();
            fixed.observe_input(layer, view).unwrap();
        }
    }
    for layer in &layers {
        let (mut a, mut b) = (LayerStats { samples: 99, ..LayerStats::none() }, LayerStats { samples: 99, ..LayerStats::none() });
        dynamic.finish(layer, &mut a).unwrap();
        fixed.finish(layer, &mut b).unwrap();
        assert_eq!(bits(a.act_scale.as_ref().unwrap()), bits(b.act_scale.as_ref().unwrap()), "{}", layer.name);
        assert_eq!((a.samples, b.samples), (41, 41));
        assert_eq!((a.hessian_diag, a.gram, a.fisher_diag), (None, None, None));
        assert_eq!(a.act_scale.unwrap()[0], 120.0, "the outlier of the last batch");
    }

    // Refusals are the same errors from both builds, and each run gets a fresh instance.
    let poisoned = [0.5, f32::NAN, 1.0];
    let tiny = layer("c", LayerRole::AttnK, Some(1), 1, 3);
    same_error(
        &dynamic.observe_input(&tiny, WeightView::new(&poisoned, 1, 3).unwrap()).unwrap_err(),
        &fixed.observe_input(&tiny, WeightView::new(&poisoned, 1, 3).unwrap()).unwrap_err(),
    );
    let mut fresh = registry.calibrator("act_absmax").unwrap();
    same_error(
        &fresh.finish(&layers[0], &mut LayerStats::none()).unwrap_err(),
        &absmax::ActAbsMax::default().finish(&layers[0], &mut LayerStats::none()).unwrap_err(),
    );
}

/// A probe whose answers depend only on the layer and the parameters, logging every call.
#[derive(Default)]
struct ScriptedProbe(Vec<(usize, String, Params)>);

impl Probe for ScriptedProbe {
    fn try_codec(&mut self, index: usize, codec: &str, params: &Params) -> tenpak_api::Result<ProbeResult> {
        self.0.push((index, codec.to_owned(), params.clone()));
        let bits = if codec == "int8" { 8 } else { params.int_or("bits", 4)? as u64 };
        let error = 0.1 / (1u64 << bits) as f64 * (1.0 + (index % 3) as f64);
        Ok(ProbeResult { bits: 1000 * bits + index as u64, rel_mse: error / 3.0, output_error: Some(error), loss_error: None })
    }
}

/// `error_cap` at 0.004 over int4_rtn g32 at 3, 4 and 5 bits, and int8; int8 embeddings.
fn error_cap_config() -> AllocatorConfig {
    let choice = |codec: Option<&str>, params: Params| CodecChoice { codec: codec.map(str::to_owned), params };
    let mut config = AllocatorConfig {
        default: choice(Some("int4_rtn"), Params::new().with("group_size", 32usize)),
        ..AllocatorConfig::default()
    };
    config.roles.insert("embedding".into(), choice(Some("int8"), Params::new()));
    config.params.set("max_error", 0.004);
    for bits in [3usize, 4, 5] {
        config.candidates.push(choice(None, Params::new().with("bits", bits)));
    }
    config.candidates.push(choice(Some("int8"), Params::new()));
    config
}

/// Another allocator under a taken id, to collide with.
struct Named(&'static str);
impl Allocator for Named {
    fn id(&self) -> &str {
        self.0
    }
    fn plan(&self, layers: &[LayerInfo], config: &AllocatorConfig, probe: &mut dyn Probe) -> tenpak_api::Result<tenpak_api::Plan> {
        error_cap::ErrorCap.plan(layers, config, probe)
    }
}

#[test]
fn plugin_allocator_matches_the_static_build() {
    let path = library(ERROR_CAP_PLUGIN);
    let mut registry = Registry::new();
    let plugin = plugins::load_into(&mut registry, &path).unwrap();
    assert_eq!(plugin.allocators().len(), 1);
    assert!(registry.allocator_source("error_cap").unwrap().contains(&path.display().to_string()));
    let dynamic = registry.allocator("error_cap").unwrap();
    let fixed = error_cap::ErrorCap;
    assert_eq!(dynamic.description(), fixed.description());
    let (dp, sp) = (dynamic.params(), fixed.params());
    assert_eq!(dp.len(), sp.len());
    for (d, s) in dp.iter().zip(sp) {
        assert_eq!((d.name, d.ty, d.default, d.doc), (s.name, s.ty, s.default, s.doc));
    }

    let config = error_cap_config();
    let layers: Vec<LayerInfo> = (0..4)
        .flat_map(|b| {
            [
                layer(&format!("blk.{b}.q"), LayerRole::AttnQ, Some(b), 64, 64),
                layer(&format!("blk.{b}.down"), LayerRole::MlpDown, Some(b), 64, 160),
            ]
        })
        .chain([layer("embed", LayerRole::Embedding, None, 96, 64)])
        .collect();
    for measure in ["output", "weight"] {
        let mut config = config.clone();
        config.params.set("measure", measure);
        assert_eq!(dynamic.needs(&config), fixed.needs(&config), "{measure}");
        let (mut a, mut b) = (ScriptedProbe::default(), ScriptedProbe::default());
        let plan_a = dynamic.plan(&layers, &config, &mut a).unwrap();
        let plan_b = fixed.plan(&layers, &config, &mut b).unwrap();
        assert_eq!(plan_a, plan_b, "{measure}");
        assert_eq!(a.0, b.0, "the same probes, in the same order, with the same parameters");
        // It does what it says: the smallest candidate under the cap.
        let chosen: Vec<String> = plan_a.layers.iter().map(|l| format!("{}:{}", l.codec, l.params.int_or("bits", 0).unwrap())).collect();
        let expected = if measure == "output" { ["int4_rtn:5", "int8:0", "int8:0"] } else { ["int4_rtn:4", "int4_rtn:5", "int4_rtn:5"] };
        assert_eq!(&chosen[..3], &expected[..], "{measure}");
        assert_eq!(chosen[8], "int8:0", "the embedding keeps its resolved plan");
    }
    assert_eq!(dynamic.needs(&config), StatsNeeds { gram: true, ..StatsNeeds::NONE });

    // Refusals, the same from both builds.
    let mut bad = config.clone();
    bad.candidates.clear();
    same_error(&dynamic.validate(&bad).unwrap_err(), &fixed.validate(&bad).unwrap_err());
    bad = config.clone();
    bad.params.set("measure", "vibes");
    same_error(&dynamic.validate(&bad).unwrap_err(), &fixed.validate(&bad).unwrap_err());
    bad.params.set("max_error", -1.0);
    same_error(
        &dynamic.plan(&layers, &bad, &mut ScriptedProbe::default()).unwrap_err(),
        &fixed.plan(&layers, &bad, &mut ScriptedProbe::default()).unwrap_err(),
    );
    // The host probe's own error reaches the host through the plugin, kind and message intact.
    struct Refusing;
    impl Probe for Refusing {
        fn try_codec(&mut self, index: usize, _: &str, _: &Params) -> tenpak_api::Result<ProbeResult> {
            Err(Error::invalid_param(format!("no measuring layer {index} today")))
        }
    }
    let err = dynamic.plan(&layers, &config, &mut Refusing).unwrap_err();
    assert_eq!((err.kind(), err.message()), (ErrorKind::InvalidParam, "no measuring layer 0 today"));
}

#[test]
fn pack_with_calibrator_and_allocator_plugins_equals_the_static_build() {
    // 3 bits lands at 0.0036-0.0096 on these layers, the closest within 1.2 % of this cap on
    // either side.
    const CAP: f64 = 0.00905;
    let (absmax_lib, error_cap_lib) = (library(ABSMAX_PLUGIN), library(ERROR_CAP_PLUGIN));
    let t = util::tiny(71);
    let cache = tempfile::tempdir().unwrap();
    // Only this test in this binary measures, and the CLI below gets the variable explicitly.
    unsafe { std::env::set_var("TENPAK_CACHE_DIR", cache.path()) };
    // Random weights give every layer about the same error; this cap splits the layers between
    // two widths (checked below).
    let preset = util::measuring_preset("act_absmax", &format!("id = \"error_cap\"\nmax_error = {CAP}"));
    let preset_path = t._tmp.path().join("error-cap.toml");
    std::fs::write(&preset_path, preset).unwrap();

    // Static: both sources registered in this process.
    let mut registry = builtins::registry().unwrap();
    registry.add_calibrator("act_absmax", Arc::new(|| Box::new(absmax::ActAbsMax::default())), "static absmax").unwrap();
    registry.add_allocator(Arc::new(error_cap::ErrorCap), "static error_cap").unwrap();
    let registry = Arc::new(registry);
    let static_dir = t._tmp.path().join("static.tenpak");
    let mut job = util::request(t.model.clone(), PresetSpec::File(preset_path.clone()), &static_dir);
    job.calib = Some(TextSpec::File(t.calib.clone()));
    let static_manifest = util::pack(&job, &registry).unwrap();

    // Dynamic: the tenpak binary with both libraries.
    let plugin_dir = t._tmp.path().join("plugin.tenpak");
    let out = Command::new(env!("CARGO_BIN_EXE_tenpak"))
        .env_remove("TENPAK_PROGRESS")
        .env("TENPAK_CACHE_DIR", cache.path().join("cli"))
        .args(["--plugin".as_ref(), absmax_lib.as_os_str(), "--plugin".as_ref(), error_cap_lib.as_os_str()])
        .args(["pack".as_ref(), t.model.as_os_str(), "--preset".as_ref(), preset_path.as_os_str()])
        .args(["--calib".as_ref(), t.calib.as_os_str(), "-o".as_ref(), plugin_dir.as_os_str(), "--no-eval".as_ref()])
        .output()
        .unwrap();
    assert!(out.status.success(), "tenpak pack with the plugins failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let plugin_manifest = Artifact::open(&plugin_dir).unwrap().manifest().clone();

    // The same statistics (act_absmax feeds int4_awq's column scales) and the same plan give the
    // same bytes.
    for m in [&static_manifest, &plugin_manifest] {
        // act_absmax stands in for act_scale; int4_awq's other statistics come from built-ins.
        let calibrators = &m.calibration.as_ref().unwrap().calibrators;
        assert!(calibrators.contains(&"act_absmax".to_owned()) && !calibrators.contains(&"act_scale".to_owned()), "{calibrators:?}");
        let allocation = m.allocation.as_ref().expect("error_cap measures, so it plans inside the pack");
        assert_eq!(allocation.allocator, "error_cap");
        assert_eq!(allocation.layers.len(), 14);
        for chosen in &allocation.layers {
            let record = m.tensors.iter().find(|r| r.name == chosen.name).unwrap();
            let most_accurate = record.params.int_or("bits", 0).unwrap() == 8;
            assert!(chosen.result.output_error.unwrap() <= CAP || most_accurate, "{}: {:?}", chosen.name, chosen.result);
        }
    }
    let bits_of = |m: &tenpak_host::artifact::Manifest| -> Vec<i64> {
        m.tensors.iter().filter(|r| r.role.is_block_linear()).map(|r| r.params.int_or("bits", 0).unwrap()).collect()
    };
    let chosen = bits_of(&static_manifest);
    assert!(chosen.iter().collect::<std::collections::BTreeSet<_>>().len() > 1, "a cap that picks one width for all tests little: {chosen:?}");
    assert_eq!(chosen, bits_of(&plugin_manifest));
    for (s, p) in static_manifest.tensors.iter().zip(&plugin_manifest.tensors) {
        assert_eq!((&s.name, &s.codec, &s.params, s.bits), (&p.name, &p.codec, &p.params, p.bits));
    }
    let hashes = |m: &tenpak_host::artifact::Manifest| m.shards.iter().map(|s| s.sha256.clone()).collect::<Vec<_>>();
    assert_eq!(hashes(&static_manifest), hashes(&plugin_manifest));

    // `tenpak codecs` lists both with their library.
    let out = tenpak(&["--plugin".as_ref(), absmax_lib.as_os_str(), "--plugin".as_ref(), error_cap_lib.as_os_str(), "codecs".as_ref()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for (id, lib) in [("act_absmax", &absmax_lib), ("error_cap", &error_cap_lib)] {
        let line = stdout.lines().find(|l| l.trim_start().starts_with(id)).unwrap_or_else(|| panic!("{stdout}"));
        assert!(line.contains(&lib.display().to_string()), "{line}");
    }
}

#[test]
fn faulty_calibrators_and_allocators_are_errors_and_the_host_goes_on() {
    let path = library(FAULTY_PLUGIN);
    let mut registry = Registry::new();
    plugins::load_into(&mut registry, &path).unwrap();
    let lib = path.display().to_string();
    let q = layer("q", LayerRole::AttnQ, Some(0), 2, 3);

    // A panic in observe_input; the same instance goes on working.
    let mut calibrator = registry.calibrator("panicky_calibrator").unwrap();
    let err = calibrator.observe_input(&q, WeightView::new(&[-1.0, 2.0, 3.0], 1, 3).unwrap()).unwrap_err();
    assert!(err.message().contains("calibrator `panicky_calibrator`") && err.message().contains("panicked in observe_input"), "{err}");
    assert!(err.message().contains("negative first input") && err.message().contains(&lib), "{err}");
    calibrator.observe_input(&q, WeightView::new(&[1.0, -2.0, 3.0], 1, 3).unwrap()).unwrap();
    let mut stats = LayerStats::none();
    calibrator.finish(&q, &mut stats).unwrap();
    assert_eq!(stats.act_scale, Some(vec![1.0, 2.0, 3.0]));

    // A calibrator that writes a statistic it does not provide.
    let mut calibrator = registry.calibrator("wrong_statistic").unwrap();
    calibrator.observe_input(&q, WeightView::new(&[1.0, 2.0, 3.0], 1, 3).unwrap()).unwrap();
    let mut stats = LayerStats::none();
    let err = calibrator.finish(&q, &mut stats).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert!(err.message().contains("malformed finish result") && err.message().contains("wrote [act_scale, hessian_diag]"), "{err}");
    assert_eq!(stats, LayerStats::none(), "nothing of a malformed answer is kept");

    // A panic in plan, then an honest plan that probes through the host.
    let allocator = registry.allocator("panicky_allocator").unwrap();
    let config = AllocatorConfig {
        default: CodecChoice { codec: Some("keep".into()), params: Params::new() },
        ..AllocatorConfig::default()
    };
    let err = allocator.plan(&[], &config, &mut ScriptedProbe::default()).unwrap_err();
    assert!(err.message().contains("panicked in plan") && err.message().contains("given no layers"), "{err}");
    let mut probe = ScriptedProbe::default();
    let plan = allocator.plan(std::slice::from_ref(&q), &config, &mut probe).unwrap();
    assert_eq!((plan.layers.len(), probe.0.len()), (1, 1));

    // A plan one layer short.
    let allocator = registry.allocator("short_plan").unwrap();
    let err = allocator.plan(&[q.clone(), layer("k", LayerRole::AttnK, Some(0), 2, 3)], &config, &mut probe).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert!(err.message().contains("1 layers planned for 2 given") && err.message().contains(&lib), "{err}");
}

#[test]
fn duplicate_calibrator_and_allocator_ids_are_refused_naming_both_sources() {
    let absmax_lib = library(ABSMAX_PLUGIN);
    let mut registry = Registry::new();
    registry.add_calibrator("act_absmax", Arc::new(|| Box::new(absmax::ActAbsMax::default())), "some-other-crate 2.0").unwrap();
    let err = format!("{:#}", plugins::load_into(&mut registry, &absmax_lib).err().unwrap());
    assert!(err.contains("calibrator id `act_absmax`") && err.contains("some-other-crate 2.0") && err.contains(&absmax_lib.display().to_string()), "{err}");

    // All or nothing: the faulty library's codecs are not registered when one allocator id is taken.
    let faulty = library(FAULTY_PLUGIN);
    let mut registry = Registry::new();
    registry.add_allocator(Arc::new(Named("short_plan")), "another-crate 1.0").unwrap();
    let err = format!("{:#}", plugins::load_into(&mut registry, &faulty).err().unwrap());
    assert!(err.contains("allocator id `short_plan`") && err.contains("another-crate 1.0"), "{err}");
    assert!(registry.codec("panicky").is_err() && registry.calibrator("panicky_calibrator").is_err());
}
