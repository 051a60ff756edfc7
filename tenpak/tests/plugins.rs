//! Plugins through the `tenpak` binary (`--plugin`): a pack, an unpack and `tenpak codecs` with
//! the NF4 codec, `act_absmax` calibrator and `error_cap` allocator libraries give what the same
//! sources linked statically into this test give, bit for bit. (The loader's own refusals are
//! tested in `tenpak-plugins`.)

// The calibrator and allocator examples, compiled into this test as their static builds; nf4
// is linked as a crate (dev-dependency), so the built-in registry of this test finds it.
#[path = "../../examples/allocator-plugin-error-cap/src/error_cap.rs"]
mod error_cap;
#[path = "../../examples/calibrator-plugin-absmax/src/absmax.rs"]
mod absmax;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use tenpak_codec_nf4 as _;
use tenpak_pack::artifact::Artifact;
use tenpak_pack::observe::Silent;
use tenpak_pack::plan::PresetSpec;
use tenpak_pack::text::TextSpec;
use tenpak_pack::unpack::{DenseDType, unpack};
use tenpak_plugins::builtins;
use tenpak_testkit as util;

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
    let nf4 = util::plugin_library("tenpak_codec_nf4");
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
    let hashes = |m: &tenpak_pack::artifact::Manifest| m.shards.iter().map(|s| s.sha256.clone()).collect::<Vec<_>>();
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
    let out = tenpak(&["--plugin".as_ref(), util::plugin_library("tenpak_test_future_abi_plugin").as_os_str(), "codecs".as_ref()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let v = tenpak_api::abi::ABI_VERSION;
    assert!(stderr.contains(&format!("ABI version {}", v + 1)) && stderr.contains(&format!("ABI version {v}")), "{stderr}");
}

#[test]
fn pack_with_calibrator_and_allocator_plugins_equals_the_static_build() {
    // 3 bits lands at 0.0036-0.0096 on these layers, the closest within 1.2 % of this cap on
    // either side.
    const CAP: f64 = 0.00905;
    let (absmax_lib, error_cap_lib) = (util::plugin_library("tenpak_calibrator_absmax"), util::plugin_library("tenpak_alloc_error_cap"));
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
    let bits_of = |m: &tenpak_pack::artifact::Manifest| -> Vec<i64> {
        m.tensors.iter().filter(|r| r.role.is_block_linear()).map(|r| r.params.int_or("bits", 0).unwrap()).collect()
    };
    let chosen = bits_of(&static_manifest);
    assert!(chosen.iter().collect::<std::collections::BTreeSet<_>>().len() > 1, "a cap that picks one width for all tests little: {chosen:?}");
    assert_eq!(chosen, bits_of(&plugin_manifest));
    for (s, p) in static_manifest.tensors.iter().zip(&plugin_manifest.tensors) {
        assert_eq!((&s.name, &s.codec, &s.params, s.bits), (&p.name, &p.codec, &p.params, p.bits));
    }
    let hashes = |m: &tenpak_pack::artifact::Manifest| m.shards.iter().map(|s| s.sha256.clone()).collect::<Vec<_>>();
    assert_eq!(hashes(&static_manifest), hashes(&plugin_manifest));

    // `tenpak codecs` lists both with their library.
    let out = tenpak(&["--plugin".as_ref(), absmax_lib.as_os_str(), "--plugin".as_ref(), error_cap_lib.as_os_str(), "codecs".as_ref()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for (id, lib) in [("act_absmax", &absmax_lib), ("error_cap", &error_cap_lib)] {
        let line = stdout.lines().find(|l| l.trim_start().starts_with(id)).unwrap_or_else(|| panic!("{stdout}"));
        assert!(line.contains(&lib.display().to_string()), "{line}");
    }
}
