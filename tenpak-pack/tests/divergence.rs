//! KL divergence against a base (`tenpak eval --base`, the pack's record): the statistics against
//! an independent f64 computation from whole-model logits, a model against itself, llama.cpp's
//! stored base file against the lockstep run, and the refusals.

use tenpak_testkit as util;

use std::sync::Arc;

use tenpak_model::runtime::LlamaModel;
use tenpak_model::runtime::kernels::compare_rows_reference;
use tenpak_model::{self as model, tokenize};
use tenpak_pack::eval::{self, BaseSpec, CompareRequest, EvalRequest, PplOptions, Protocol};
use tenpak_pack::limits::Limits;
use tenpak_pack::observe::Silent;
use tenpak_pack::text::TextSpec;
use tenpak_plugins::builtins;
use util::{inline_preset, pack, request, tiny};

const RTN: &str = "name = \"rtn\"\n[allocator]\nid = \"role_rules\"\n[codec]\ncodec = \"int4_rtn\"\ngroup_size = 16\n";

fn registry() -> Arc<tenpak_api::registry::Registry> {
    Arc::new(builtins::registry().unwrap())
}

#[test]
fn divergence_equals_an_independent_computation_and_stored_bases_agree() {
    let t = tiny(31);
    let registry = registry();
    pack(&request(t.model.clone(), inline_preset(RTN, "rtn.toml"), &t.out), &registry).unwrap();
    let options = PplOptions { ctx: 16, samples: Some(6), batch: 1 };
    let compare = |candidate: &std::path::Path, base: BaseSpec, protocol| {
        let request = CompareRequest { candidate: candidate.to_owned().into(), base, text: TextSpec::File(t.eval.clone()), options: options.clone(), protocol };
        eval::compare(&request, &registry, &Silent, &Limits::none()).unwrap()
    };
    let (record, report) = compare(&t.out, BaseSpec::Model(t.model.clone().into()), Protocol::Tenpak);
    let d = record.divergence.clone().expect("a comparison records its divergence");

    // Independent: whole-model logits of both, f64 log-softmax term by term.
    let source = model::open(&t.model).unwrap();
    let tokenizer = tokenize::for_model(source.as_ref()).unwrap();
    let ids = tokenize::encode_file(&tokenizer, &t.eval).unwrap();
    let artifact = tenpak_pack::artifact::ArtifactSource::open(&t.out, registry.clone()).unwrap();
    let base = LlamaModel::load(source.config(), source.as_ref()).unwrap();
    let candidate = LlamaModel::load(tenpak_model::ModelSource::config(&artifact), &artifact).unwrap();
    let vocab = source.config().vocab_size;
    let (mut kld, mut same, mut n) = (Vec::new(), 0usize, 0usize);
    for w in 0..6 {
        let window = &ids[w * 16..(w + 1) * 16];
        let rows = |m: &LlamaModel| m.forward_logits(window, 1, None).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (p, q) = (rows(&base), rows(&candidate));
        let scored = 15 * vocab;
        for c in compare_rows_reference(&p[..scored], &q[..scored], vocab, &window[1..]) {
            kld.push(c.kld);
            same += usize::from(c.same_top);
            n += 1;
        }
    }
    let mean = kld.iter().sum::<f64>() / n as f64;
    assert_eq!(d.tokens, n);
    assert!(mean > 1e-4, "int4 RTN moves the distributions: mean KLD {mean}");
    assert!((d.kld_mean - mean).abs() <= 1e-6 + 1e-4 * mean, "mean KLD {} vs independent {mean}", d.kld_mean);
    assert!((d.same_top_pct - 100.0 * same as f64 / n as f64).abs() < 1e-9, "same top {} vs {}", d.same_top_pct, same);
    let max = kld.iter().cloned().fold(0.0, f64::max);
    assert!((d.kld_max - max).abs() <= 1e-5 + 1e-4 * max && d.kld_p99 <= d.kld_max && d.kld_median <= d.kld_p90);

    // The perplexities are `tenpak eval`'s, bit for bit.
    let eval_of = |model: &std::path::Path, protocol| {
        let request = EvalRequest { model: model.to_owned().into(), text: TextSpec::File(t.eval.clone()), options: options.clone(), protocol };
        eval::run(&request, &registry, &Silent).unwrap().ppl
    };
    assert_eq!(report.ppl, eval_of(&t.out, Protocol::Tenpak));
    assert_eq!(record.compressed_ppl, report.ppl);
    assert_eq!(record.baseline_ppl, eval_of(&t.model, Protocol::Tenpak));

    // A model against itself: nothing moved.
    let (same_record, _) = compare(&t.model, BaseSpec::Model(t.model.clone().into()), Protocol::Tenpak);
    let s = same_record.divergence.unwrap();
    assert!(s.kld_mean.abs() < 1e-7 && s.kld_max < 1e-6 && s.same_top_pct == 100.0 && (s.ppl_ratio - 1.0).abs() < 1e-7, "{s:?}");

    // llama.cpp's protocol: a stored base file gives exactly the lockstep figures.
    let file = t.out.with_extension("kld");
    let stored = eval::store_base(
        &EvalRequest { model: t.model.clone().into(), text: TextSpec::File(t.eval.clone()), options: options.clone(), protocol: Protocol::LlamaCpp },
        &file,
        &registry,
        &Silent,
    )
    .unwrap();
    assert_eq!(stored.ppl, eval_of(&t.model, Protocol::LlamaCpp), "storing scores the base as eval does");
    let (lockstep, _) = compare(&t.out, BaseSpec::Model(t.model.clone().into()), Protocol::LlamaCpp);
    let (from_file, _) = compare(&t.out, BaseSpec::Stored(file.clone()), Protocol::LlamaCpp);
    assert_eq!(lockstep.divergence, from_file.divergence);
    assert_eq!(lockstep.compressed_ppl, from_file.compressed_ppl);
    let l = lockstep.divergence.unwrap();
    assert_eq!(l.tokens, 6 * (16 - 1 - 8), "the second half of each window");
    // Its stored 16-bit log-probabilities move the KLD by far less than the KLD itself.
    let (exact_half, _) = {
        let request = CompareRequest {
            candidate: t.out.clone().into(),
            base: BaseSpec::Model(t.model.clone().into()),
            text: TextSpec::File(t.eval.clone()),
            options: options.clone(),
            protocol: Protocol::LlamaCpp,
        };
        eval::compare(&request, &registry, &Silent, &Limits::none()).unwrap()
    };
    assert!(exact_half.divergence.unwrap().kld_mean > 0.0);

    // Refusals: a stored base by TenPak's protocol, a truncated file, a different ctx.
    let refused = |base: BaseSpec, protocol, ctx| {
        let request = CompareRequest {
            candidate: t.out.clone().into(),
            base,
            text: TextSpec::File(t.eval.clone()),
            options: PplOptions { ctx, ..options.clone() },
            protocol,
        };
        eval::compare(&request, &registry, &Silent, &Limits::none()).unwrap_err().to_string()
    };
    assert!(refused(BaseSpec::Stored(file.clone()), Protocol::Tenpak, 16).contains("--protocol llama-cpp"));
    assert!(refused(BaseSpec::Stored(file.clone()), Protocol::LlamaCpp, 32).contains("--ctx 16"));
    let bytes = std::fs::read(&file).unwrap();
    let truncated = t.out.with_extension("short.kld");
    std::fs::write(&truncated, &bytes[..bytes.len() - 2]).unwrap();
    let err = refused(BaseSpec::Stored(truncated.clone()), Protocol::LlamaCpp, 16);
    assert!(err.contains("truncated") && err.contains("short.kld"), "{err}");
    let other = tiny(32);
    let other_model = other.model.clone();
    std::fs::write(other_model.join("config.json"), util::tiny_llama_config(72, 160, 3, 96).to_hf_config_json()).unwrap();
    let err = refused(BaseSpec::Model(other_model.into()), Protocol::Tenpak, 16);
    assert!(err.contains("is not the base of"), "{err}");
}

/// A calibrated pack records the divergence of its evaluation windows, and its perplexities stay
/// those `tenpak eval` computes.
#[test]
fn calibrated_packs_record_divergence() {
    let t = tiny(33);
    let registry = registry();
    let preset = "name = \"cal\"\n[calibration]\ncalibrators = [\"act_scale\"]\nwindows = 4\nctx = 32\n[evaluation]\nwindows = 3\nctx = 32\n\
                  [allocator]\nid = \"role_rules\"\n[codec]\ncodec = \"int4_rtn\"\ngroup_size = 16\n";
    let mut job = request(t.model.clone(), inline_preset(preset, "cal.toml"), &t.out);
    job.calib = Some(TextSpec::File(t.calib.clone()));
    job.eval = Some(TextSpec::File(t.eval.clone()));
    let manifest = pack(&job, &registry).unwrap();
    let e = manifest.evaluation.unwrap();
    let d = e.divergence.expect("the pack ran both paths, so it has the divergence");
    assert_eq!(d.tokens, 3 * 31);
    assert!(d.kld_mean > 0.0 && d.same_top_pct > 50.0, "{d:?}");
    let request = CompareRequest {
        candidate: t.out.clone().into(),
        base: BaseSpec::Model(t.model.clone().into()),
        text: TextSpec::File(t.eval.clone()),
        options: PplOptions { ctx: 32, samples: Some(3), batch: 1 },
        protocol: Protocol::Tenpak,
    };
    let (again, _) = eval::compare(&request, &registry, &Silent, &Limits::none()).unwrap();
    let a = again.divergence.unwrap();
    assert!((a.kld_mean - d.kld_mean).abs() <= 1e-6 * d.kld_mean.max(1e-9) + 1e-9, "pack {} vs eval --base {}", d.kld_mean, a.kld_mean);
    assert_eq!(again.compressed_ppl, e.compressed_ppl);
    assert_eq!(again.baseline_ppl, e.baseline_ppl);
}
