//! Plugins through the C ABI: the NF4 codec, `act_absmax` calibrator and `error_cap` allocator
//! examples loaded from their cdylibs and compared bit for bit with the same sources linked
//! statically, and every refusal the loader promises. (The same through the `tenpak` binary's
//! `--plugin` is tested in the `tenpak` crate.)
//!
//! The libraries are built by the test (`tenpak_testkit::plugin_library`, once per process)
//! with the same cargo, profile and target directory as the test itself, so a clean checkout
//! needs nothing else.

use tenpak_testkit as util;

// The calibrator and allocator examples, compiled into this test as their static builds. (Their
// crates cannot be linked here as rlibs beside nf4's: each exports the same `tenpak_plugin`
// symbol.)
#[path = "../../examples/allocator-plugin-error-cap/src/error_cap.rs"]
mod error_cap;
#[path = "../../examples/calibrator-plugin-absmax/src/absmax.rs"]
mod absmax;

use std::path::PathBuf;
use std::sync::Arc;

use rand::{SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, Normal};
use tenpak_api::registry::Registry;
use tenpak_api::{
    Allocator, AllocatorConfig, Calibrator, Codec, CodecChoice, Encoded, Error, ErrorKind, LayerInfo, LayerRole, LayerStats, Params,
    Probe, ProbeResult, StatsNeeds, WeightView,
};
use tenpak_codec_nf4::Nf4;
use tenpak_plugins::{builtins, dynamic};

const NF4_PLUGIN: &str = "tenpak_codec_nf4";
const FAULTY_PLUGIN: &str = "tenpak_test_faulty_plugin";
const FUTURE_PLUGIN: &str = "tenpak_test_future_abi_plugin";
const OLD_PLUGIN: &str = "tenpak_test_old_abi_plugin";
const ABSMAX_PLUGIN: &str = "tenpak_calibrator_absmax";
const ERROR_CAP_PLUGIN: &str = "tenpak_alloc_error_cap";

fn library(name: &str) -> PathBuf {
    util::plugin_library(name)
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
    let plugin = dynamic::load_into(&mut registry, &path).unwrap();
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
    let again = dynamic::load(&path).unwrap();
    assert!(Arc::ptr_eq(&again, &plugin));
}

#[test]
fn a_plugin_from_another_abi_version_is_refused_with_both_versions() {
    let path = library(FUTURE_PLUGIN);
    let mut registry = Registry::new();
    let err = format!("{:#}", dynamic::load_into(&mut registry, &path).err().unwrap());
    let v = tenpak_api::abi::ABI_VERSION;
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains(&format!("ABI version {}", v + 1)) && err.contains(&format!("ABI version {v}")), "{err}");
    assert_eq!(registry.codecs().count(), 0);
    // Refused again on a second try (nothing was cached as loaded).
    assert!(dynamic::load(&path).is_err());

    // A library built for version 1 (codecs only, the same descriptor layout) is refused by
    // version too, not half-read.
    let path = library(OLD_PLUGIN);
    let err = format!("{:#}", dynamic::load_into(&mut registry, &path).err().unwrap());
    assert!(err.contains("ABI version 1,") && err.contains(&format!("speaks ABI version {v}")), "{err}");
    assert!(err.contains("rebuild the plugin"), "{err}");
    assert_eq!(registry.codecs().count(), 0);
}

#[test]
fn a_panic_in_a_plugin_is_an_error_and_the_host_goes_on() {
    let path = library(FAULTY_PLUGIN);
    let mut registry = Registry::new();
    dynamic::load_into(&mut registry, &path).unwrap();
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
    dynamic::load_into(&mut registry, &path).unwrap();
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
    let err = format!("{:#}", dynamic::load_into(&mut registry, &path).err().unwrap());
    assert!(err.contains("`nf4`") && err.contains("tenpak-codec-nf4 0.1.0") && err.contains(&path.display().to_string()), "{err}");
    assert_eq!(registry.codec_source("nf4"), Some("tenpak-codec-nf4 0.1.0"), "the static codec stays");

    // A library is all or nothing: one taken id refuses every codec in it.
    let faulty = library(FAULTY_PLUGIN);
    let mut registry = Registry::new();
    registry.add_codec(Arc::new(Nf4Named("short_decode")), "some-other-crate 2.0").unwrap();
    let err = format!("{:#}", dynamic::load_into(&mut registry, &faulty).err().unwrap());
    assert!(err.contains("`short_decode`") && err.contains("some-other-crate 2.0") && err.contains(&faulty.display().to_string()), "{err}");
    assert!(registry.codec("panicky").is_err() && registry.codec("malformed").is_err());

    // The same library twice into one registry.
    let mut registry = Registry::new();
    dynamic::load_into(&mut registry, &faulty).unwrap();
    let err = format!("{:#}", dynamic::load_into(&mut registry, &faulty).err().unwrap());
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
    let err = format!("{:#}", dynamic::load(&text).err().unwrap());
    assert!(err.contains("libnot_a_plugin.so") && err.contains("cannot load"), "{err}");
    let missing = tmp.path().join("missing.so");
    let err = format!("{:#}", dynamic::load(&missing).err().unwrap());
    assert!(err.contains("missing.so"), "{err}");
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
    let plugin = dynamic::load_into(&mut registry, &path).unwrap();
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
    let plugin = dynamic::load_into(&mut registry, &path).unwrap();
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
fn faulty_calibrators_and_allocators_are_errors_and_the_host_goes_on() {
    let path = library(FAULTY_PLUGIN);
    let mut registry = Registry::new();
    dynamic::load_into(&mut registry, &path).unwrap();
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
    let err = format!("{:#}", dynamic::load_into(&mut registry, &absmax_lib).err().unwrap());
    assert!(err.contains("calibrator id `act_absmax`") && err.contains("some-other-crate 2.0") && err.contains(&absmax_lib.display().to_string()), "{err}");

    // All or nothing: the faulty library's codecs are not registered when one allocator id is taken.
    let faulty = library(FAULTY_PLUGIN);
    let mut registry = Registry::new();
    registry.add_allocator(Arc::new(Named("short_plan")), "another-crate 1.0").unwrap();
    let err = format!("{:#}", dynamic::load_into(&mut registry, &faulty).err().unwrap());
    assert!(err.contains("allocator id `short_plan`") && err.contains("another-crate 1.0"), "{err}");
    assert!(registry.codec("panicky").is_err() && registry.calibrator("panicky_calibrator").is_err());
}
