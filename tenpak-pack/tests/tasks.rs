//! Multiple-choice scoring against lm-eval-harness itself: the same requests (context and
//! continuation strings), per-request log-likelihoods within 1e-3 and the same greedy flags, and
//! the same per-item acc / acc_norm, on the first items of HellaSwag, ARC-Easy, ARC-Challenge,
//! PIQA and WinoGrande (tests/reference/tasks.json from scripts/reference/tasks_reference.py,
//! lm-eval on the real model through transformers; the items from scripts/fetch-tasks.sh).

use serde_json::Value;
use tenpak_model::runtime::LlamaModel;
use tenpak_model::{self as model, tokenize};
use tenpak_pack::tasks::{self, Scorer};
use tenpak_testkit as util;

/// Items per task checked here (the reference has more; `tenpak eval --tasks` scores them all).
const ITEMS_PER_TASK: usize = 12;
const LOGLIKELIHOOD_TOLERANCE: f64 = 1e-3;

#[test]
fn task_scores_match_lm_eval_harness() {
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(util::repo_root().join("tests/reference/tasks.json")).unwrap()).unwrap();
    let source = model::open(&util::real_gguf()).unwrap();
    let tokenizer = tokenize::for_model(source.as_ref()).unwrap();
    let loaded = LlamaModel::load(source.config(), source.as_ref()).unwrap();
    let scorer = Scorer::new(&loaded, &tokenizer).unwrap();
    let mut worst = (0.0f64, String::new());
    let mut checked = 0;
    for (task, expected) in reference["tasks"].as_object().expect("tasks") {
        let file = util::asset(&format!("tasks/{task}.jsonl"));
        let items = tasks::read_items(&file, task, Some(ITEMS_PER_TASK)).unwrap();
        let expected_items = expected["items"].as_array().unwrap();
        assert!(items.len() == ITEMS_PER_TASK && expected_items.len() >= ITEMS_PER_TASK, "{task}: {} items", items.len());
        let mut results = Vec::new();
        for (item, want) in items.iter().zip(expected_items) {
            assert_eq!(item.id, want["id"].as_str().unwrap(), "{task}: items in the reference's order");
            let requests = want["requests"].as_array().unwrap();
            assert_eq!(item.requests.len(), requests.len(), "{task} {}: choices", item.id);
            for (request, want) in item.requests.iter().zip(requests) {
                assert_eq!(request.context, want["context"].as_str().unwrap(), "{task} {}: lm-eval's context", item.id);
                assert_eq!(request.continuation, want["continuation"].as_str().unwrap(), "{task} {}: lm-eval's continuation", item.id);
            }
            let result = tasks::score_item(&scorer, item).unwrap();
            for (k, (got, want)) in result.scores.iter().zip(requests).enumerate() {
                let diff = (got.loglikelihood - want["loglikelihood"].as_f64().unwrap()).abs();
                if diff > worst.0 {
                    worst = (diff, format!("{task} {} choice {k}", item.id));
                }
                assert!(diff <= LOGLIKELIHOOD_TOLERANCE, "{task} {} choice {k}: log-likelihood {} vs lm-eval's {want}", item.id, got.loglikelihood);
                assert_eq!(got.is_greedy, want["is_greedy"].as_bool().unwrap(), "{task} {} choice {k}: is_greedy", item.id);
            }
            assert_eq!(u8::from(result.acc), want["acc"].as_u64().unwrap() as u8, "{task} {}: acc", item.id);
            assert_eq!(result.acc_norm.map(u8::from), want["acc_norm"].as_u64().map(|v| v as u8), "{task} {}: acc_norm", item.id);
            results.push(result);
            checked += 1;
        }
        let score = &tasks::summarize(&results)[0];
        eprintln!("{task}: acc {:.3}, acc_norm {:?} on {} items", score.acc, score.acc_norm, score.items);
    }
    assert_eq!(checked, 5 * ITEMS_PER_TASK, "HellaSwag, ARC-Easy, ARC-Challenge, PIQA and WinoGrande");
    eprintln!("largest |log-likelihood − lm-eval's| = {:.2e} ({})", worst.0, worst.1);
}

/// `tenpak pack --tasks`: the manifest's evaluation carries the source's and the artifact's
/// accuracies, equal to scoring each on its own; without an evaluation the request is refused.
#[test]
fn a_pack_records_the_accuracy_of_its_source_and_its_artifact() {
    use std::sync::Arc;
    use tenpak_pack::plan::{PackPlan, PackRequest, TaskSpec};
    use tenpak_pack::text::TextSpec;
    let t = util::tiny(57);
    let registry = Arc::new(tenpak_plugins::builtins::registry().unwrap());
    let words: Vec<String> = std::fs::read_to_string(&t.eval).unwrap().split_whitespace().take(32).map(str::to_owned).collect();
    let file = t.out.with_file_name("toy.jsonl");
    let lines: Vec<String> = (0..4)
        .map(|i| {
            let w = &words[i * 8..i * 8 + 8];
            serde_json::json!({"task": "toy", "context": w[..5].join(" "), "choices": [format!(" {}", w[5]), format!(" {}", w[6]), format!(" {}", w[7])], "gold": i % 3})
                .to_string()
        })
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let preset = "name = \"rtn\"\n[evaluation]\nwindows = 3\nctx = 32\n[allocator]\nid = \"role_rules\"\n[codec]\ncodec = \"int4_rtn\"\ngroup_size = 16\n";
    let tasks = Some(TaskSpec { file: file.clone(), name: "toy.jsonl".into(), limit: None });
    let request = PackRequest {
        eval: Some(TextSpec::File(t.eval.clone())),
        tasks: tasks.clone(),
        ..util::request(t.model.clone(), util::inline_preset(preset, "rtn.toml"), &t.out)
    };
    let manifest = util::pack(&request, &registry).unwrap();
    let recorded = manifest.evaluation.expect("an evaluation");
    let items = tasks::read_items(&file, "toy.jsonl", None).unwrap();
    let alone = |model: &std::path::Path| tasks::run(&model.to_owned().into(), &registry, &items, &mut |_, _| Ok(())).unwrap().scores;
    assert_eq!(recorded.baseline_tasks, alone(&t.model));
    assert_eq!(recorded.tasks, alone(&t.out));
    assert_eq!((recorded.tasks.len(), recorded.tasks[0].items, recorded.tasks[0].acc_norm.is_some()), (1, 4, true));
    let reread = tenpak_pack::artifact::Artifact::open(&t.out).unwrap();
    assert_eq!(reread.manifest().evaluation.as_ref().unwrap().tasks, recorded.tasks);

    let without_eval = PackRequest { tasks, force: true, ..util::request(t.model.clone(), util::inline_preset(preset, "rtn.toml"), &t.out) };
    let err = PackPlan::build(&without_eval, &registry).err().expect("refused").to_string();
    assert!(err.contains("evaluation"), "{err}");
}
