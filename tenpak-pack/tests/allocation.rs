//! The measured bit budget (`bit_budget`): a pack at a target lands at or under it with every
//! block linear's measured bits equal to what the artifact stores, the measurements are cached
//! so a second pack at another target measures nothing, and bad targets are refused clearly.

use tenpak_testkit as util;

use std::sync::Arc;

use tenpak_plugins::builtins;
use tenpak_pack::plan::{PackRequest, PresetSpec};
use tenpak_pack::text::TextSpec;
use util::{Tiny, budget_preset, inline_preset, pack, tiny};

fn job(t: &Tiny, preset: &str, target_bpw: Option<f64>) -> PackRequest {
    PackRequest {
        model: t.model.clone().into(),
        preset: inline_preset(preset, "tiny-budget.toml"),
        output: t.out.clone(),
        force: true,
        calib: Some(TextSpec::File(t.calib.clone())),
        eval: Some(TextSpec::File(t.eval.clone())),
        target_bpw,
        tasks: None,
    }
}

#[test]
fn bit_budget_meets_its_target_with_measured_bits_and_caches_measurements() {
    let t = tiny(61);
    let cache = tempfile::tempdir().unwrap();
    // Only this test in this binary reads the variable.
    unsafe { std::env::set_var("TENPAK_CACHE_DIR", cache.path()) };
    let registry = Arc::new(builtins::registry().unwrap());
    let preset = budget_preset("target_bpw = 6.0", "output");

    let mut previous_error = f64::INFINITY;
    for (run, target) in [5.0, 6.5, 9.0].into_iter().enumerate() {
        let manifest = pack(&job(&t, &preset, Some(target)), &registry).unwrap();
        let allocation = manifest.allocation.as_ref().expect("a measuring allocator records its allocation");
        let linear_bpw = manifest.totals.linear_bits_per_weight;
        assert!(linear_bpw <= target, "target {target}: {linear_bpw} bits per weight on the linears");
        // 14 linears, 5 candidates each: every (layer, candidate) measured once, in the first pack.
        let linears = manifest.tensors.iter().filter(|r| r.role.is_block_linear()).count();
        assert_eq!(linears, 14);
        let expected = if run == 0 { (5 * linears, 0) } else { (0, 5 * linears) };
        assert_eq!((allocation.measured, allocation.cached), expected, "run {run}");
        // The cache file by its name alone: the manifest (served by Studio) shows no directory.
        let file = allocation.cache.as_deref().expect("a cache was used");
        assert!(file.ends_with(".json") && !file.contains('/'), "{file}");
        assert!(cache.path().join("probes").join(file).is_file(), "{file}");
        // What was measured is what was stored: the same codec configuration, the same bits.
        assert_eq!(allocation.layers.len(), linears);
        let mut predicted = 0.0;
        for chosen in &allocation.layers {
            let record = manifest.tensors.iter().find(|r| r.name == chosen.name).unwrap();
            assert_eq!(record.bits, chosen.result.bits, "{}", chosen.name);
            assert_eq!(record.codec.as_deref(), Some("int4_awq"));
            predicted += chosen.result.output_error.expect("output error measured");
        }
        // More bits, less predicted error (the knapsack's optimum can only improve).
        assert!(predicted < previous_error, "target {target}: predicted {predicted} vs {previous_error}");
        previous_error = predicted;
        let evaluation = manifest.evaluation.as_ref().unwrap();
        assert!(evaluation.compressed_ppl.is_finite());
    }

    // Mixed widths are really chosen at an intermediate target.
    let manifest = pack(&job(&t, &preset, Some(7.0)), &registry).unwrap();
    let mut widths: Vec<i64> = manifest
        .tensors
        .iter()
        .filter(|r| r.role.is_block_linear())
        .map(|r| r.params.int_or("bits", 4).unwrap())
        .collect();
    widths.sort();
    widths.dedup();
    assert!(widths.len() >= 2, "one width everywhere at 7.0: {widths:?}");
    unsafe { std::env::remove_var("TENPAK_CACHE_DIR") };
}

#[test]
fn bad_targets_are_refused_with_the_reason() {
    let t = tiny(62);
    let registry = Arc::new(builtins::registry().unwrap());
    let err = |request: &PackRequest| pack(request, &registry).unwrap_err().to_string();

    // Below the cheapest candidate (2-bit codes with f16 headers per 16 weights: 4 bits).
    let e = err(&job(&t, &budget_preset("target_bpw = 1.0", "output"), None));
    assert!(e.contains("cheapest candidates") && e.contains("bits per weight on the block linears"), "{e}");
    // No target at all.
    let e = err(&job(&t, &budget_preset("", "output"), None));
    assert!(e.contains("needs a target"), "{e}");
    // A typo in the sensitivity.
    let e = err(&job(&t, &budget_preset("target_bpw = 4.0", "fischer"), None));
    assert!(e.contains("sensitivity") && e.contains("fisher"), "{e}");
    // --target-bpw on a rule-based preset.
    let request = PackRequest { preset: PresetSpec::Builtin("balanced".into()), ..job(&t, "", Some(4.0)) };
    let e = err(&request);
    assert!(e.contains("target_bpw needs a preset whose allocator measures") && e.contains("role_rules"), "{e}");
}
