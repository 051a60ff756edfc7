//! Plugins through the C ABI: the NF4 example loaded from its cdylib and compared bit for bit
//! with the same crate linked statically, and every refusal the loader promises.
//!
//! The libraries are built by this test (once per process) with the same cargo, profile and
//! target directory as the test itself, so a clean checkout needs nothing else. `cargo test`
//! has released its build lock by the time test binaries run, so the nested build does not wait
//! on it.

mod util;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use rand::{SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, Normal};
use tenpak_api::registry::Registry;
use tenpak_api::{Codec, Encoded, Error, ErrorKind, LayerStats, Params, WeightView};
use tenpak_codec_nf4::Nf4;
use tenpak_host::artifact::Artifact;
use tenpak_host::observe::Silent;
use tenpak_host::plan::PresetSpec;
use tenpak_host::unpack::{DenseDType, unpack};
use tenpak_host::{builtins, plugins};

const NF4_PLUGIN: &str = "tenpak_codec_nf4";
const FAULTY_PLUGIN: &str = "tenpak_test_faulty_plugin";
const FUTURE_PLUGIN: &str = "tenpak_test_future_abi_plugin";

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
            .args(["-p", "tenpak-codec-nf4", "-p", "tenpak-test-faulty-plugin", "-p", "tenpak-test-future-abi-plugin"]);
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
