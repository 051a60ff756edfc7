//! The Llama runtime, the tokenizer and perplexity: tiny random models of the real architecture
//! checked against a loop-based reference forward written here, and the real SmolLM2 model
//! checked against reference figures from an independent implementation (tests/reference/).

use tenpak_testkit as util;

use std::collections::HashMap;

use candle_core::Tensor;
use rand::{SeedableRng, rngs::StdRng};
use serde_json::json;
use tenpak_pack::eval::{self, PplOptions};
use tenpak_model::ModelConfig;
use tenpak_model::runtime::{LinearHook, LlamaModel, RopeTables, WeightLoader, rope};
use util::{MapWeights, random_ids, tiny_config, tiny_weights};

// ---------------------------------------------------------------------------------------------
// The loop-based reference forward (f64, no candle)

/// `x Wᵀ + b` for one row.
fn linear_row(x: &[f64], weight: &[f32], bias: Option<&[f32]>, out_features: usize) -> Vec<f64> {
    let in_features = x.len();
    (0..out_features)
        .map(|o| {
            let dot: f64 = (0..in_features).map(|c| x[c] * f64::from(weight[o * in_features + c])).sum();
            dot + bias.map_or(0.0, |b| f64::from(b[o]))
        })
        .collect()
}

fn rms_norm_row(x: &[f64], weight: &[f32], eps: f64) -> Vec<f64> {
    let mean_sq = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let inv = 1.0 / (mean_sq + eps).sqrt();
    x.iter().zip(weight).map(|(v, &w)| v * inv * f64::from(w)).collect()
}

/// Inverse frequencies as the reference computes them from the config (plain RoPE only).
fn reference_inv_freq(config: &ModelConfig) -> Vec<f64> {
    let d = config.head_dim;
    (0..d / 2).map(|i| 1.0 / config.rope_theta.powf((2 * i) as f64 / d as f64)).collect()
}

/// HF "rotate half" RoPE on one head vector at position `t`.
fn rope_head(x: &mut [f64], t: usize, inv_freq: &[f64]) {
    let half = x.len() / 2;
    for i in 0..half {
        let angle = t as f64 * inv_freq[i];
        let (c, s) = (angle.cos(), angle.sin());
        let (a, b) = (x[i], x[i + half]);
        x[i] = a * c - b * s;
        x[i + half] = b * c + a * s;
    }
}

/// What the reference records besides logits: the input of every linear layer, by name.
type Recorded = HashMap<String, Vec<Vec<f64>>>;

/// Logits `[seq][vocab]` of one sequence, computed with nested loops in f64.
fn reference_forward(config: &ModelConfig, w: &MapWeights, ids: &[u32], inv_freq: &[f64], record: &mut Recorded) -> Vec<Vec<f64>> {
    let (h, nh, nkv, d) = (config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim);
    let group = nh / nkv;
    let eps = config.rms_norm_eps;
    let seq = ids.len();
    let embed = w.get("model.embed_tokens.weight");
    let mut x: Vec<Vec<f64>> =
        ids.iter().map(|&id| embed[id as usize * h..(id as usize + 1) * h].iter().map(|&v| f64::from(v)).collect()).collect();
    let bias = |name: String| config.attention_bias.then(|| w.get(&name));
    let mut note = |name: &str, rows: &[Vec<f64>]| record.entry(name.to_owned()).or_default().extend(rows.iter().cloned());
    for layer in 0..config.num_hidden_layers {
        let p = format!("model.layers.{layer}");
        let normed: Vec<Vec<f64>> = x.iter().map(|r| rms_norm_row(r, w.get(&format!("{p}.input_layernorm.weight")), eps)).collect();
        for name in ["q_proj", "k_proj", "v_proj"] {
            note(&format!("{p}.self_attn.{name}.weight"), &normed);
        }
        let project = |name: &str, out: usize, row: &[f64]| {
            linear_row(row, w.get(&format!("{p}.self_attn.{name}.weight")), bias(format!("{p}.self_attn.{name}.bias")), out)
        };
        let mut q: Vec<Vec<f64>> = normed.iter().map(|r| project("q_proj", nh * d, r)).collect();
        let mut k: Vec<Vec<f64>> = normed.iter().map(|r| project("k_proj", nkv * d, r)).collect();
        let v: Vec<Vec<f64>> = normed.iter().map(|r| project("v_proj", nkv * d, r)).collect();
        for t in 0..seq {
            for head in 0..nh {
                rope_head(&mut q[t][head * d..(head + 1) * d], t, inv_freq);
            }
            for head in 0..nkv {
                rope_head(&mut k[t][head * d..(head + 1) * d], t, inv_freq);
            }
        }
        let mut attended = vec![vec![0.0f64; nh * d]; seq];
        for head in 0..nh {
            let kv = head / group;
            for t in 0..seq {
                let scores: Vec<f64> = (0..=t)
                    .map(|s| (0..d).map(|j| q[t][head * d + j] * k[s][kv * d + j]).sum::<f64>() / (d as f64).sqrt())
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = exps.iter().sum();
                for (s, e) in exps.iter().enumerate() {
                    for j in 0..d {
                        attended[t][head * d + j] += e / total * v[s][kv * d + j];
                    }
                }
            }
        }
        note(&format!("{p}.self_attn.o_proj.weight"), &attended);
        for t in 0..seq {
            let o = linear_row(&attended[t], w.get(&format!("{p}.self_attn.o_proj.weight")), None, h);
            for j in 0..h {
                x[t][j] += o[j];
            }
        }
        let normed: Vec<Vec<f64>> =
            x.iter().map(|r| rms_norm_row(r, w.get(&format!("{p}.post_attention_layernorm.weight")), eps)).collect();
        note(&format!("{p}.mlp.gate_proj.weight"), &normed);
        note(&format!("{p}.mlp.up_proj.weight"), &normed);
        let inter = config.intermediate_size;
        let activated: Vec<Vec<f64>> = normed
            .iter()
            .map(|r| {
                let g = linear_row(r, w.get(&format!("{p}.mlp.gate_proj.weight")), None, inter);
                let u = linear_row(r, w.get(&format!("{p}.mlp.up_proj.weight")), None, inter);
                g.iter().zip(&u).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect()
            })
            .collect();
        note(&format!("{p}.mlp.down_proj.weight"), &activated);
        for t in 0..seq {
            let down = linear_row(&activated[t], w.get(&format!("{p}.mlp.down_proj.weight")), None, h);
            for j in 0..h {
                x[t][j] += down[j];
            }
        }
    }
    let normed: Vec<Vec<f64>> = x.iter().map(|r| rms_norm_row(r, w.get("model.norm.weight"), eps)).collect();
    note("lm_head.weight", &normed);
    let head = if config.tie_word_embeddings { w.get("model.embed_tokens.weight") } else { w.get("lm_head.weight") };
    normed.iter().map(|r| linear_row(r, head, None, config.vocab_size)).collect()
}

fn log_softmax_nll(logits: &[f64], target: u32) -> f64 {
    let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
    lse - logits[target as usize]
}

fn tensor_rows(t: &Tensor) -> Vec<Vec<f32>> {
    let dims = t.dims().to_vec();
    let width = *dims.last().unwrap();
    let flat: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    flat.chunks(width).map(<[f32]>::to_vec).collect()
}

/// Forward `batch` random sequences through the runtime and the reference; assert the logits
/// agree within `tolerance` and that the logits are not trivially small (the check has teeth).
fn check_against_reference(config: &ModelConfig, seed: u64, batch: usize, seq: usize, tolerance: f64) {
    let weights = tiny_weights(config, seed);
    let model = LlamaModel::load(config, &weights).expect("tiny model loads");
    let mut rng = StdRng::seed_from_u64(seed + 1000);
    let ids = random_ids(&mut rng, batch * seq, config.vocab_size);
    let logits = tensor_rows(&model.forward_logits(&ids, batch, None).expect("forward"));
    assert_eq!(logits.len(), batch * seq);
    let inv_freq = reference_inv_freq(config);
    let mut worst = 0.0f64;
    let mut spread = 0.0f64;
    for b in 0..batch {
        let reference = reference_forward(config, &weights, &ids[b * seq..(b + 1) * seq], &inv_freq, &mut Recorded::new());
        for t in 0..seq {
            for (j, &r) in reference[t].iter().enumerate() {
                worst = worst.max((f64::from(logits[b * seq + t][j]) - r).abs());
                spread = spread.max(r.abs());
            }
        }
    }
    assert!(worst <= tolerance, "runtime and reference logits differ by up to {worst} (tolerance {tolerance})");
    assert!(spread > 1.0, "logits are all below 1 in magnitude ({spread}): the test model is too tame to test anything");
}

// ---------------------------------------------------------------------------------------------
// Tiny-model tests

#[test]
fn tied_model_matches_loop_reference() {
    check_against_reference(&tiny_config(true, false), 1, 2, 19, 1e-4);
}

#[test]
fn qkv_bias_and_separate_lm_head_match_loop_reference() {
    check_against_reference(&tiny_config(false, true), 2, 3, 11, 1e-4);
}

#[test]
fn one_token_and_long_sequences_match_loop_reference() {
    check_against_reference(&tiny_config(true, false), 3, 1, 1, 1e-4);
    check_against_reference(&tiny_config(true, false), 4, 1, 100, 1e-4);
}

#[test]
fn windows_in_a_batch_are_independent() {
    let config = tiny_config(true, false);
    let weights = tiny_weights(&config, 5);
    let model = LlamaModel::load(&config, &weights).unwrap();
    let mut rng = StdRng::seed_from_u64(6);
    let ids = random_ids(&mut rng, 3 * 16, config.vocab_size);
    let together = tensor_rows(&model.forward_logits(&ids, 3, None).unwrap());
    // A window alone and in a batch of three are multiplied as matrices of 16 and 48 rows, which
    // OpenBLAS sums with different kernels: rounding apart (measured: 2.3e-5 at most), where a
    // window seeing another's tokens would move its logits by whole units.
    let mut worst = 0.0f32;
    for b in 0..3 {
        let alone = tensor_rows(&model.forward_logits(&ids[b * 16..(b + 1) * 16], 1, None).unwrap());
        for t in 0..16 {
            for (x, y) in together[b * 16 + t].iter().zip(&alone[t]) {
                worst = worst.max((x - y).abs());
                assert!((x - y).abs() <= 5e-5, "window {b} position {t}: {x} batched vs {y} alone");
            }
        }
    }
    eprintln!("largest difference batched vs alone: {worst:e}");
}

/// Windows through a block several at once (OpenBLAS single-threaded in each) give the same bits
/// as one at a time, in order, at 1 and 2 rayon threads; and so do their NLLs.
#[test]
fn windows_in_parallel_equal_windows_one_at_a_time() {
    let config = tiny_config(true, false);
    let weights = tiny_weights(&config, 9);
    let model = LlamaModel::load(&config, &weights).unwrap();
    let mut rng = StdRng::seed_from_u64(10);
    let windows: Vec<Vec<u32>> = (0..5).map(|_| random_ids(&mut rng, 24, config.vocab_size)).collect();
    let rope = model.rope(24).unwrap();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let mut hidden: Vec<Tensor> = windows.iter().map(|ids| model.embed(ids, 1).unwrap()).collect();
            for block in model.blocks() {
                hidden = tenpak_model::runtime::llama::forward_windows(block, &hidden, &rope).unwrap();
            }
            let ids: Vec<&[u32]> = windows.iter().map(Vec::as_slice).collect();
            let nll = tenpak_model::runtime::llama::token_nll_windows(model.head(), &hidden, &ids).unwrap();
            (hidden.iter().map(tensor_rows).collect::<Vec<_>>(), nll)
        })
    };
    let (one, one_nll) = run(1);
    let (two, two_nll) = run(2);
    let bits = |rows: &Vec<Vec<Vec<f32>>>| rows.iter().flatten().flatten().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&one), bits(&two), "hidden states differ between 1 and 2 threads");
    assert_eq!(one_nll.concat().iter().map(|v| v.to_bits()).collect::<Vec<_>>(), two_nll.concat().iter().map(|v| v.to_bits()).collect::<Vec<_>>());
    for (w, ids) in windows.iter().enumerate() {
        let alone = model.token_nll(ids, 1, None).unwrap();
        assert_eq!(alone, one_nll[w], "window {w}: parallel NLL differs from the model's own forward");
    }
}

/// What `observe_windows` hands over (windows several at once, down_proj's product skipped) is
/// exactly what a hook on a one-at-a-time forward sees: the same names in the same order and the
/// same bits, at 1 and 2 threads.
#[test]
fn observed_windows_equal_a_hooked_forward() {
    let config = tiny_config(false, true);
    let weights = tiny_weights(&config, 12);
    let model = LlamaModel::load(&config, &weights).unwrap();
    let mut rng = StdRng::seed_from_u64(13);
    let hidden: Vec<Tensor> = (0..5).map(|_| model.embed(&random_ids(&mut rng, 20, config.vocab_size), 1).unwrap()).collect();
    let rope = model.rope(20).unwrap();
    let block = &model.blocks()[1];
    let record = |seen: &mut Vec<(String, Vec<u32>)>, name: &str, input: &Tensor| {
        seen.push((name.to_owned(), tensor_rows(input).concat().iter().map(|v| v.to_bits()).collect()));
    };
    let mut want = Vec::new();
    let mut want_outputs = Vec::new();
    for h in &hidden {
        let mut hook = |name: &str, input: &Tensor| -> tenpak_error::Result<()> {
            record(&mut want, name, input);
            Ok(())
        };
        want_outputs.push(tensor_rows(&block.forward(h, &rope, Some(&mut hook)).unwrap()));
    }
    assert_eq!(want.len(), 5 * 7);
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let mut got = Vec::new();
        pool.install(|| {
            tenpak_model::runtime::llama::observe_windows(block, &hidden, &rope, &mut |name, input| {
                record(&mut got, name, input);
                Ok(())
            })
        })
        .unwrap();
        assert!(got == want, "{threads} thread(s): the observed inputs differ from a hooked forward's");
        // The same, with the block's outputs (the measuring pass moves on past the block).
        let mut got = Vec::new();
        let outputs = pool
            .install(|| {
                tenpak_model::runtime::llama::forward_observed_windows(block, &hidden, &rope, &mut |name, input| {
                    record(&mut got, name, input);
                    Ok(())
                })
            })
            .unwrap();
        assert!(got == want, "{threads} thread(s): forward_observed_windows observed other inputs");
        let outputs: Vec<Vec<Vec<f32>>> = outputs.iter().map(tensor_rows).collect();
        let bits = |o: &Vec<Vec<Vec<f32>>>| o.iter().flatten().flatten().map(|v| v.to_bits()).collect::<Vec<u32>>();
        assert!(bits(&outputs) == bits(&want_outputs), "{threads} thread(s): forward_observed_windows' outputs differ from a forward's");
    }
}

#[test]
fn hook_sees_every_linear_input_with_the_right_shape_and_values() {
    let config = tiny_config(false, true);
    let weights = tiny_weights(&config, 7);
    let model = LlamaModel::load(&config, &weights).unwrap();
    let (batch, seq) = (2, 9);
    let mut rng = StdRng::seed_from_u64(8);
    let ids = random_ids(&mut rng, batch * seq, config.vocab_size);
    let mut seen: Vec<(String, Vec<usize>, Vec<Vec<f32>>)> = Vec::new();
    let mut hook = |name: &str, input: &Tensor| -> tenpak_error::Result<()> {
        seen.push((name.to_owned(), input.dims().to_vec(), tensor_rows(input)));
        Ok(())
    };
    model.forward_logits(&ids, batch, Some(&mut hook)).unwrap();

    let mut expected_names = Vec::new();
    for layer in 0..config.num_hidden_layers {
        for name in ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"] {
            expected_names.push(format!("model.layers.{layer}.{name}.weight"));
        }
    }
    expected_names.push("lm_head.weight".to_owned());
    let names: Vec<&str> = seen.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names, expected_names, "the hook sees every linear layer once, in execution order");

    let inv_freq = reference_inv_freq(&config);
    let mut recorded = Recorded::new();
    for b in 0..batch {
        reference_forward(&config, &weights, &ids[b * seq..(b + 1) * seq], &inv_freq, &mut recorded);
    }
    for (name, dims, rows) in &seen {
        let linear_in = weights.tensor_shape(name).map(|s| s[1]).unwrap_or(config.hidden_size);
        assert_eq!(dims, &vec![batch * seq, linear_in], "{name}: input shape");
        let reference = &recorded[name];
        assert_eq!(reference.len(), rows.len());
        for (row, reference_row) in rows.iter().zip(reference) {
            for (&a, &b) in row.iter().zip(reference_row) {
                assert!((f64::from(a) - b).abs() < 1e-4, "{name}: hook input {a} vs reference {b}");
            }
        }
    }

    // token_nll reports lm_head's input too, and a hook error stops the pass with its name.
    let mut count = 0;
    let mut failing = |name: &str, _: &Tensor| -> tenpak_error::Result<()> {
        count += 1;
        if name.ends_with("mlp.up_proj.weight") { tenpak_error::bail!("calibrator full") } else { Ok(()) }
    };
    let err = model.token_nll(&ids, batch, Some(&mut failing)).unwrap_err();
    let message = format!("{err:#}");
    assert!(message.contains("model.layers.0.mlp.up_proj.weight") && message.contains("calibrator full"), "{message}");
    assert_eq!(count, 6, "the pass stopped at the failing hook");
}

#[test]
fn block_by_block_equals_full_forward() {
    let config = tiny_config(true, false);
    let weights = tiny_weights(&config, 9);
    let model = LlamaModel::load(&config, &weights).unwrap();
    let mut rng = StdRng::seed_from_u64(10);
    let ids = random_ids(&mut rng, 2 * 13, config.vocab_size);
    let full = tensor_rows(&model.forward_logits(&ids, 2, None).unwrap());

    let mut hidden = model.embed(&ids, 2).unwrap();
    let rope = RopeTables::new(&config, 13).unwrap();
    for block in model.blocks() {
        hidden = block.forward(&hidden, &rope, None).unwrap();
    }
    let stepped = tensor_rows(&model.head().logits(&hidden, None).unwrap());
    assert_eq!(full, stepped, "running the blocks one by one gives the same logits, bit for bit");

    // Blocks loaded on their own (the pipeline's bounded-memory path) behave the same.
    let mut hidden = model.embed(&ids, 2).unwrap();
    for index in 0..config.num_hidden_layers {
        let block = tenpak_model::runtime::Block::load(&config, index, &weights).unwrap();
        hidden = block.forward(&hidden, &rope, None).unwrap();
    }
    let head = tenpak_model::runtime::Head::load(&config, &weights, None).unwrap();
    assert_eq!(full, tensor_rows(&head.logits(&hidden, None).unwrap()));
}

#[test]
fn replaced_weights_take_effect() {
    let config = tiny_config(true, false);
    let mut weights = tiny_weights(&config, 11);
    let mut model = LlamaModel::load(&config, &weights).unwrap();
    let name = "model.layers.1.mlp.down_proj.weight";
    let new_values: Vec<f32> = weights.get(name).iter().map(|v| -0.5 * v).collect();
    model.blocks_mut()[1].linear_mut(name).unwrap().set_weight(new_values.clone()).unwrap();
    weights.0.get_mut(name).unwrap().1 = new_values;
    let mut rng = StdRng::seed_from_u64(12);
    let ids = random_ids(&mut rng, 10, config.vocab_size);
    let logits = tensor_rows(&model.forward_logits(&ids, 1, None).unwrap());
    let reference = reference_forward(&config, &weights, &ids, &reference_inv_freq(&config), &mut Recorded::new());
    for (row, reference_row) in logits.iter().zip(&reference) {
        for (&a, &b) in row.iter().zip(reference_row) {
            assert!((f64::from(a) - b).abs() < 1e-4);
        }
    }
    let err = model.blocks_mut()[0].linear_mut("model.layers.0.self_attn.q_proj.weight").unwrap().set_weight(vec![0.0; 3]).unwrap_err();
    assert!(err.to_string().contains("model.layers.0.self_attn.q_proj.weight"), "{err}");
}

#[test]
fn token_nll_is_the_reference_log_softmax() {
    let mut config = tiny_config(false, true);
    config.max_position_embeddings = 512;
    let weights = tiny_weights(&config, 13);
    let model = LlamaModel::load(&config, &weights).unwrap();
    let (batch, seq) = (2, 300);
    let mut rng = StdRng::seed_from_u64(14);
    let ids = random_ids(&mut rng, batch * seq, config.vocab_size);
    // 300 positions: more than one logits chunk per window.
    let nll = model.token_nll(&ids, batch, None).unwrap();
    assert_eq!(nll.len(), batch * (seq - 1));
    let inv_freq = reference_inv_freq(&config);
    for b in 0..batch {
        let window = &ids[b * seq..(b + 1) * seq];
        let logits = reference_forward(&config, &weights, window, &inv_freq, &mut Recorded::new());
        for t in 0..seq - 1 {
            let expected = log_softmax_nll(&logits[t], window[t + 1]);
            let got = f64::from(nll[b * (seq - 1) + t]);
            assert!((got - expected).abs() < 1e-4, "window {b} position {}: nll {got} vs reference {expected}", t + 1);
        }
    }
}

#[test]
fn perplexity_follows_the_protocol() {
    let config = tiny_config(true, false);
    let weights = tiny_weights(&config, 15);
    let model = LlamaModel::load(&config, &weights).unwrap();
    let mut rng = StdRng::seed_from_u64(16);
    // 5 whole windows of 24 and 7 spare tokens.
    let ids = random_ids(&mut rng, 5 * 24 + 7, config.vocab_size);
    let options = PplOptions { ctx: 24, samples: Some(3), batch: 2 };
    let mut calls = Vec::new();
    let report = eval::perplexity(&model, &ids, "tiny.txt", &options, &mut |done, total| calls.push((done, total))).unwrap();
    assert_eq!((report.windows, report.windows_available, report.tokens_scored, report.text_tokens), (3, 5, 3 * 23, 127));
    assert_eq!(calls, vec![(2, 3), (3, 3)]);
    // The figure is exp(mean NLL) over the first three windows, each scored on its own.
    let mut sum = 0.0f64;
    for w in 0..3 {
        sum += model.token_nll(&ids[w * 24..(w + 1) * 24], 1, None).unwrap().iter().map(|&v| f64::from(v)).sum::<f64>();
    }
    let expected = (sum / 69.0).exp();
    assert!((report.ppl - expected).abs() < 1e-4 * expected, "ppl {} vs {expected}", report.ppl);
    assert!(report.protocol.contains("tiny.txt") && report.protocol.contains("24-token"), "{}", report.protocol);

    // Batch size does not change the figure; asking for more windows than exist takes them all.
    let all = eval::perplexity(&model, &ids, "tiny.txt", &PplOptions { ctx: 24, samples: Some(99), batch: 1 }, &mut |_, _| {}).unwrap();
    let all_batched = eval::perplexity(&model, &ids, "tiny.txt", &PplOptions { ctx: 24, samples: None, batch: 3 }, &mut |_, _| {}).unwrap();
    assert_eq!(all.windows, 5);
    assert!((all.ppl - all_batched.ppl).abs() < 1e-5 * all.ppl);
}

/// Block by block (what `tenpak eval` runs, one block in memory) is the whole-model forward on
/// the same values: the same figure bit for bit, by either protocol, batched or not, tied or not.
#[test]
fn streamed_perplexity_equals_the_whole_model_forward() {
    use tenpak_pack::eval::Protocol;
    for (tied, bias) in [(true, false), (false, true)] {
        let config = tiny_config(tied, bias);
        let weights = tiny_weights(&config, 17);
        let model = LlamaModel::load(&config, &weights).unwrap();
        let mut rng = StdRng::seed_from_u64(18);
        let ids = random_ids(&mut rng, 5 * 24 + 3, config.vocab_size);
        for (batch, protocol, bos) in [(1, Protocol::Tenpak, None), (2, Protocol::Tenpak, None), (2, Protocol::LlamaCpp, Some(1))] {
            let options = PplOptions { ctx: 24, samples: Some(4), batch };
            let whole = eval::perplexity_by(&model, &ids, "t", &options, protocol, bos, &mut |_, _| Ok(())).unwrap();
            let mut steps = Vec::new();
            let streamed = eval::perplexity_streamed(&config, &weights, &ids, "t", &options, protocol, bos, &mut |d, t| {
                steps.push((d, t));
                Ok(())
            })
            .unwrap();
            assert_eq!(whole.ppl.to_bits(), streamed.ppl.to_bits(), "tied {tied}, batch {batch}, {protocol:?}");
            assert_eq!(streamed.tokens_scored, whole.tokens_scored);
            assert_eq!(steps.last(), Some(&(config.num_hidden_layers + 1, config.num_hidden_layers + 1)));
        }
        // llama.cpp's protocol scores the second half of each window: positions 13..23 of 24.
        let options = PplOptions { ctx: 24, samples: Some(4), batch: 1 };
        let half = eval::perplexity_by(&model, &ids, "t", &options, Protocol::LlamaCpp, None, &mut |_, _| Ok(())).unwrap();
        assert_eq!(half.tokens_scored, 4 * 11);
        let mut sum = 0f64;
        for w in 0..4 {
            let nll = model.token_nll(&ids[w * 24..(w + 1) * 24], 1, None).unwrap();
            sum += nll[12..].iter().map(|&v| f64::from(v)).sum::<f64>();
        }
        assert!((half.ppl - (sum / 44.0).exp()).abs() < 1e-9 * half.ppl);
    }
}

#[test]
fn perplexity_rejects_bad_requests_clearly() {
    let config = tiny_config(true, false);
    let model = LlamaModel::load(&config, &tiny_weights(&config, 17)).unwrap();
    let ids: Vec<u32> = (0..50).collect();
    let run = |ctx: usize, samples: Option<usize>| {
        eval::perplexity(&model, &ids, "short.txt", &PplOptions { ctx, samples, batch: 1 }, &mut |_, _| {}).unwrap_err().to_string()
    };
    let message = run(64, None);
    assert!(message.contains("short.txt") && message.contains("50 tokens") && message.contains("64"), "{message}");
    assert!(run(1, None).contains("ctx"), "ctx 1 scores nothing");
    assert!(run(10, Some(0)).contains("samples"));
    // ctx past the trained context (128 positions) is refused, not extrapolated.
    let long: Vec<u32> = (0..300).map(|i| i % 100).collect();
    let err = eval::perplexity(&model, &long, "long.txt", &PplOptions { ctx: 200, samples: None, batch: 1 }, &mut |_, _| {}).unwrap_err();
    assert!(err.to_string().contains("max_position_embeddings"), "{err}");
    // A token outside the vocabulary is named.
    let err = model.token_nll(&[1, 2, 100, 3], 1, None).unwrap_err();
    assert!(err.to_string().contains("token id 100"), "{err}");
}

#[test]
fn non_finite_weights_are_an_error_not_a_figure() {
    let config = tiny_config(true, false);
    let mut weights = tiny_weights(&config, 18);
    weights.0.get_mut("model.layers.1.mlp.up_proj.weight").unwrap().1[5] = f32::NAN;
    let model = LlamaModel::load(&config, &weights).unwrap();
    let ids: Vec<u32> = (0..40).map(|i| i % 100).collect();
    let err = eval::perplexity(&model, &ids, "t.txt", &PplOptions { ctx: 20, samples: None, batch: 1 }, &mut |_, _| {}).unwrap_err();
    assert!(err.to_string().contains("non-finite"), "{err}");
}

#[test]
fn missing_or_misshapen_tensors_are_named() {
    let config = tiny_config(true, true);
    let mut weights = tiny_weights(&config, 19);
    weights.0.remove("model.layers.1.self_attn.k_proj.bias");
    let err = LlamaModel::load(&config, &weights).unwrap_err();
    assert!(err.to_string().contains("model.layers.1.self_attn.k_proj.bias"), "{err}");

    let mut weights = tiny_weights(&config, 19);
    let entry = weights.0.get_mut("model.layers.0.mlp.gate_proj.weight").unwrap();
    entry.0 = vec![64, 96];
    let err = LlamaModel::load(&config, &weights).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("model.layers.0.mlp.gate_proj.weight") && message.contains("[96, 64]"), "{message}");
}

#[test]
fn rope_scaling_llama3_rescales_low_frequencies_only() {
    let mut config = tiny_config(true, false);
    config.head_dim = 128;
    config.rope_theta = 500_000.0;
    let plain = rope::inverse_frequencies(&config).unwrap();
    config.rope_scaling = Some(json!({
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192
    }));
    let scaled = rope::inverse_frequencies(&config).unwrap();
    let two_pi = 2.0 * std::f64::consts::PI;
    let (mut high, mut low, mut middle) = (0, 0, 0);
    for (&p, &s) in plain.iter().zip(&scaled) {
        let wavelen = two_pi / p;
        if wavelen < 8192.0 / 4.0 {
            assert_eq!(s, p, "short wavelengths keep their frequency");
            high += 1;
        } else if wavelen > 8192.0 {
            assert!((s - p / 8.0).abs() < 1e-12 * p, "long wavelengths are divided by the factor");
            low += 1;
        } else {
            assert!(s < p && s > p / 8.0, "the middle band blends: {s} between {p}/8 and {p}");
            middle += 1;
        }
    }
    assert!(high > 0 && low > 0 && middle > 0, "all three bands exercised ({high}, {middle}, {low})");
    // The "no scaling" spellings leave RoPE alone; linear divides; unknown types are refused.
    config.rope_scaling = Some(json!({"rope_type": "default"}));
    assert_eq!(rope::inverse_frequencies(&config).unwrap(), plain);
    config.rope_scaling = Some(json!({"type": "linear", "factor": 4.0}));
    let linear = rope::inverse_frequencies(&config).unwrap();
    assert!(linear.iter().zip(&plain).all(|(l, p)| (l - p / 4.0).abs() < 1e-15));
    config.rope_scaling = Some(json!({"rope_type": "yarn", "factor": 4.0}));
    let err = rope::inverse_frequencies(&config).unwrap_err();
    assert!(err.to_string().contains("yarn"), "{err}");
}

#[test]
fn rope_tables_follow_the_hf_angles() {
    let config = tiny_config(true, false);
    let tables = RopeTables::new(&config, 50).unwrap();
    let inv_freq = reference_inv_freq(&config);
    // The runtime rounds the frequencies to f32 first, as transformers does: at position 49 that
    // moves an angle by at most 49 · 2^-24 ≈ 3e-6.
    for t in 0..50 {
        for i in 0..tables.half {
            let angle = t as f64 * inv_freq[i];
            assert!((f64::from(tables.cos[t * tables.half + i]) - angle.cos()).abs() < 1e-5);
            assert!((f64::from(tables.sin[t * tables.half + i]) - angle.sin()).abs() < 1e-5);
        }
    }
}

#[test]
fn tokenizer_errors_name_the_source() {
    use tenpak_model::TokenizerSource;
    use tenpak_model::tokenize;
    let err = tokenize::load(&TokenizerSource::Missing, "models/x").unwrap_err();
    assert!(err.to_string().contains("models/x") && err.to_string().contains("no tokenizer"), "{err}");
    let err = tokenize::load(&TokenizerSource::Json("{\"not\": \"a tokenizer\"}".into()), "m.gguf").unwrap_err();
    assert!(err.to_string().contains("m.gguf"), "{err}");
    // A tokenizer.json beside the model is named by the model as shown (a server's root/path)
    // and the file's name, never by its full path.
    let missing = std::path::PathBuf::from("/nonexistent/tokenizer.json");
    let err = tokenize::load(&TokenizerSource::File(missing), "models/m").unwrap_err();
    assert!(err.to_string().contains("models/m: cannot load its tokenizer (tokenizer.json)"), "{err}");
    assert!(!err.to_string().contains("/nonexistent"), "{err}");
}

/// Decoding with the key/value cache (a prompt, then one token or a few at a time) gives the
/// logits of recomputing the whole sequence, position by position, with and without biases.
#[test]
fn kv_cache_equals_recomputation() {
    for (seed, config) in [(41, tiny_config(true, false)), (42, tiny_config(false, true))] {
        let weights = tiny_weights(&config, seed);
        let model = LlamaModel::load(&config, &weights).unwrap();
        let mut rng = StdRng::seed_from_u64(seed);
        let ids = random_ids(&mut rng, 37, config.vocab_size);
        let whole = tensor_rows(&model.forward_logits(&ids, 1, None).unwrap());
        let rope = RopeTables::new(&config, ids.len()).unwrap();
        let mut cache = model.new_cache();
        let mut rows = Vec::new();
        // Prompt of 10, then single tokens, then a chunk of 5, then single tokens.
        let mut start = 0;
        for len in [10].into_iter().chain(std::iter::repeat_n(1, 12)).chain([5]).chain(std::iter::repeat_n(1, 10)) {
            let logits = model.forward_cached(&ids[start..start + len], &rope, &mut cache).unwrap();
            rows.extend(tensor_rows(&logits.unsqueeze(0).unwrap()));
            start += len;
        }
        assert_eq!(start, ids.len());
        assert_eq!(cache[0].len(), ids.len());
        let worst = whole.iter().flatten().zip(rows.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst < 1e-4, "seed {seed}: cached and recomputed logits differ by {worst}");
        // Past the tables: an error, not a wrong answer.
        let err = model.forward_cached(&ids[..1], &rope, &mut cache).unwrap_err().to_string();
        assert!(err.contains("exceed"), "{err}");
    }
}

/// Greedy generation through the cache picks, at every step, the argmax of a full recomputation;
/// it stops at the end-of-sequence token when the model produces it, else at the length limit.
#[test]
fn greedy_generation_equals_argmax_of_recomputation() {
    use tenpak_pack::generate::{Generator, Sampling, Stop};
    let mut config = tiny_config(true, false);
    let weights = tiny_weights(&config, 43);
    let model = LlamaModel::load(&config, &weights).unwrap();
    let prompt = [3u32, 17, 5, 9];
    let argmax = |row: &[f32]| row.iter().enumerate().fold(0, |b, (i, &v)| if v > row[b] { i } else { b }) as u32;
    let mut expected = prompt.to_vec();
    for _ in 0..20 {
        let rows = tensor_rows(&model.forward_logits(&expected, 1, None).unwrap());
        expected.push(argmax(rows.last().unwrap()));
    }
    let tokenizer = tokenizers::Tokenizer::new(tokenizers::models::wordlevel::WordLevel::default());
    let generator = Generator::new(model.clone(), tokenizer.clone(), "tiny", None);
    let mut streamed = Vec::new();
    let out = generator.generate(&prompt, 20, Sampling::Greedy, &mut |t| {
        streamed.push(t);
        Ok(())
    });
    let out = out.unwrap();
    assert_eq!(out.stop, Stop::Length);
    assert_eq!(out.tokens, expected[prompt.len()..], "cached greedy decoding vs recomputation");
    assert_eq!(streamed, out.tokens);
    // Make the 5th generated token the end-of-sequence token: generation stops there, with it.
    config.eos_token_id = Some(expected[prompt.len() + 4]);
    let model = LlamaModel::load(&config, &weights).unwrap();
    let first_eos = expected[prompt.len()..].iter().position(|&t| Some(t) == config.eos_token_id).unwrap();
    let out = Generator::new(model, tokenizer, "tiny", None).generate(&prompt, 20, Sampling::Greedy, &mut |_| Ok(())).unwrap();
    assert_eq!(out.stop, Stop::Eos);
    assert_eq!(out.tokens, expected[prompt.len()..prompt.len() + first_eos + 1]);
}

/// Greedy tokens equal transformers' `generate` on tiny random checkpoints that transformers
/// itself writes (scripts/reference/tiny_generate.py, run here with the Python of
/// scripts/python-hf.sh): Llama, Llama with llama3 rope scaling in transformers 5's
/// `rope_parameters` and tied embeddings, Mistral, and Qwen2 with its biases and tied embeddings,
/// read from their HF directories, token for token, stopping where transformers stops (each
/// checkpoint's EOS is a token its first prompt's greedy path reaches). The script keeps every
/// greedy step at least 1e-3 from a tie, so a last-bit difference cannot decide a token.
#[test]
fn greedy_generation_matches_transformers_on_tiny_random_models() {
    use std::process::Command;
    use tenpak_pack::generate::{Generator, Sampling, Stop};
    let script = util::repo_root().join("scripts/python-hf.sh");
    let venv = Command::new("bash").arg(&script).output().unwrap();
    assert!(venv.status.success(), "{} failed (it needs PyPI): {}", script.display(), String::from_utf8_lossy(&venv.stderr));
    let python = String::from_utf8(venv.stdout).unwrap().lines().last().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(python)
        .arg(util::repo_root().join("scripts/reference/tiny_generate.py"))
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "tiny_generate.py failed: {}", String::from_utf8_lossy(&output.stderr));
    let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("generate.json")).unwrap()).unwrap();
    let max = reference["max_new_tokens"].as_u64().unwrap() as usize;
    let ids = |v: &serde_json::Value| -> Vec<u32> { v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect() };
    let cases = reference["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 4, "llama, llama3 rope, mistral, qwen2");
    let mut stops = Vec::new();
    for case in cases {
        let name = case["case"].as_str().unwrap();
        let source = tenpak_model::open(&dir.path().join(name)).unwrap();
        assert_eq!(source.config().eos_token_id, Some(case["eos_token_id"].as_u64().unwrap() as u32), "{name}");
        let model = LlamaModel::load(source.config(), source.as_ref()).unwrap();
        let tokenizer = tokenizers::Tokenizer::new(tokenizers::models::wordlevel::WordLevel::default());
        let generator = Generator::new(model, tokenizer, name, None);
        for prompt in case["prompts"].as_array().unwrap() {
            let out = generator.generate(&ids(&prompt["prompt_ids"]), max, Sampling::Greedy, &mut |_| Ok(())).unwrap();
            assert_eq!(out.tokens, ids(&prompt["new_ids"]), "{name}: greedy continuation of {}", prompt["prompt_ids"]);
            stops.push(out.stop);
        }
    }
    assert!(stops.contains(&Stop::Eos) && stops.contains(&Stop::Length), "the cases cover both stops: {stops:?}");
}

#[allow(dead_code)]
fn assert_hook_object_safe(_: &mut dyn LinearHook) {}

// ---------------------------------------------------------------------------------------------
// The real model against the independent reference (scripts/reference/reference.py:
// transformers loading the same GGUF, f32 model, f64 log-softmax; figures in tests/reference/)

mod real {
    use std::sync::OnceLock;

    use serde_json::Value;
    use tenpak_pack::eval::{self, PplOptions};
    use tenpak_model::runtime::LlamaModel;
    use tenpak_model as model;
use tenpak_model::tokenize;

    use super::util;

    /// PPL of transformers on the first 8 windows of 512 tokens of assets/eval.txt
    /// (tests/reference/ppl.json, `windows_8`).
    const REFERENCE_PPL_8_WINDOWS: f64 = 21.978543223094068;
    /// Issue 3's tolerances: PPL within 0.2 %, every log-probability within 1e-3 absolute.
    const PPL_RELATIVE_TOLERANCE: f64 = 0.002;
    const LOG_PROB_TOLERANCE: f64 = 1e-3;
    const WINDOWS: usize = 8;
    const CTX: usize = 512;

    fn reference(name: &str) -> Value {
        let path = util::repo_root().join("tests/reference").join(name);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run scripts/reference/reference.py to produce it)", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn ids_of(value: &Value) -> Vec<u32> {
        value.as_array().expect("an id list").iter().map(|v| v.as_u64().expect("an id") as u32).collect()
    }

    struct Run {
        text_ids: Vec<u32>,
        nll: Vec<f32>,
        ppl: eval::PplReport,
    }

    /// The real model's NLL on the first 8 windows of the evaluation text, computed once for
    /// every test here (about 10 s on two cores).
    fn run() -> &'static Run {
        static RUN: OnceLock<Run> = OnceLock::new();
        RUN.get_or_init(|| {
            let source = model::open(&util::real_gguf()).expect("the real GGUF opens");
            let model = LlamaModel::load(source.config(), source.as_ref()).expect("the real model loads");
            let tokenizer = tokenize::for_model(source.as_ref()).expect("the GGUF tokenizer loads");
            let text_ids = tokenize::encode_file(&tokenizer, &util::asset("eval.txt")).expect("eval.txt tokenizes");
            let options = PplOptions { ctx: CTX, samples: Some(WINDOWS), batch: 1 };
            let ppl = eval::perplexity(&model, &text_ids, "assets/eval.txt", &options, &mut |_, _| {}).expect("ppl");
            let nll = model.token_nll(&text_ids[..CTX], 1, None).expect("window 0");
            Run { text_ids, nll, ppl }
        })
    }

    #[test]
    fn tokenizer_matches_reference_ids() {
        let source = model::open(&util::real_gguf()).expect("the real GGUF opens");
        let tokenizer = tokenize::for_model(source.as_ref()).expect("the GGUF tokenizer loads");
        let reference = reference("tokens.json");
        for case in reference["cases"].as_array().expect("cases") {
            let text = case["text"].as_str().expect("case text");
            let ids = tokenize::encode(&tokenizer, text).unwrap();
            assert_eq!(ids, ids_of(&case["ids"]), "tokenization of {text:?}");
        }
        let text = reference["text"].as_str().expect("text");
        assert!(text.chars().count() >= 3000, "the reference text covers a few thousand characters");
        assert_eq!(tokenize::encode(&tokenizer, text).unwrap(), ids_of(&reference["ids"]), "the whole reference text");
    }

    #[test]
    fn log_probs_of_window_0_match_reference() {
        let reference = reference("logprobs_window0.json");
        let run = run();
        assert_eq!(&run.text_ids[..CTX], ids_of(&reference["ids"]).as_slice(), "window 0 tokenizes as in the reference");
        let expected: Vec<f64> = reference["logprobs"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(expected.len(), CTX - 1);
        let mut worst = (0.0f64, 0);
        for (t, (&nll, &log_prob)) in run.nll.iter().zip(&expected).enumerate() {
            let diff = (-f64::from(nll) - log_prob).abs();
            if diff > worst.0 {
                worst = (diff, t);
            }
        }
        eprintln!("window 0: largest |log p − reference| = {:.2e} at position {}", worst.0, worst.1 + 1);
        assert!(worst.0 <= LOG_PROB_TOLERANCE, "log-probability at position {} differs by {}", worst.1 + 1, worst.0);
    }

    /// `tenpak generate`'s greedy tokens equal transformers' `generate` on the real model
    /// (tests/reference/generate.json), token for token, stopping where it stops.
    #[test]
    fn greedy_generation_matches_transformers() {
        use tenpak_pack::generate::{Generator, Sampling, Stop};
        let reference = reference("generate.json");
        let source = model::open(&util::real_gguf()).expect("the real GGUF opens");
        let model = LlamaModel::load(source.config(), source.as_ref()).expect("the real model loads");
        let tokenizer = tokenize::for_model(source.as_ref()).expect("the GGUF tokenizer loads");
        let generator = Generator::new(model, tokenizer, "real", None);
        let max = reference["max_new_tokens"].as_u64().unwrap() as usize;
        let mut stops = Vec::new();
        for case in reference["cases"].as_array().expect("cases") {
            let prompt = case["prompt"].as_str().unwrap();
            let ids = generator.encode(prompt).unwrap();
            assert_eq!(ids, ids_of(&case["prompt_ids"]), "prompt {prompt:?} tokenizes as transformers does");
            let out = generator.generate(&ids, max, Sampling::Greedy, &mut |_| Ok(())).unwrap();
            assert_eq!(out.tokens, ids_of(&case["new_ids"]), "greedy continuation of {prompt:?}");
            stops.push(out.stop);
        }
        assert!(stops.contains(&Stop::Eos) && stops.contains(&Stop::Length), "the cases cover both stops: {stops:?}");
    }

    /// `tenpak generate --chat`: the GGUF's chat template renders each conversation to the text
    /// transformers' `apply_chat_template` renders, the same token ids, and the same greedy
    /// reply (tests/reference/chat.json from `reference.py --steps chat`).
    #[test]
    fn chat_generation_matches_transformers() {
        use tenpak_model::chat::Message;
        use tenpak_pack::generate::{Generator, Sampling};
        let reference = reference("chat.json");
        let source = model::open(&util::real_gguf()).expect("the real GGUF opens");
        let chat = source.chat_template().expect("the template reads");
        assert_eq!(chat.as_ref().map(|c| c.template.as_str()), reference["chat_template"].as_str(), "the GGUF's template is transformers'");
        let model = LlamaModel::load(source.config(), source.as_ref()).expect("the real model loads");
        let tokenizer = tokenize::for_model(source.as_ref()).expect("the GGUF tokenizer loads");
        let generator = Generator::new(model, tokenizer, "real", chat);
        let template = generator.chat_template().expect("the template compiles");
        let max = reference["max_new_tokens"].as_u64().unwrap() as usize;
        for case in reference["cases"].as_array().expect("cases") {
            let messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
            assert_eq!(template.render(&messages, true).unwrap(), case["text"].as_str().unwrap(), "rendering {messages:?}");
            let ids = generator.encode_chat(&template, &messages).unwrap();
            assert_eq!(ids, ids_of(&case["prompt_ids"]), "token ids of {messages:?}");
            let out = generator.generate(&ids, max, Sampling::Greedy, &mut |_| Ok(())).unwrap();
            assert_eq!(out.tokens, ids_of(&case["new_ids"]), "greedy reply to {messages:?}");
        }
    }

    #[test]
    fn ppl_of_8_windows_matches_reference() {
        let reference = reference("ppl.json");
        assert_eq!(reference["windows_8"]["ppl"].as_f64(), Some(REFERENCE_PPL_8_WINDOWS), "tests/reference/ppl.json changed");
        let run = run();
        assert_eq!(run.text_ids.len() as u64, reference["total_tokens"].as_u64().unwrap(), "token count of eval.txt");
        assert_eq!(run.ppl.tokens_scored as u64, reference["windows_8"]["tokens_scored"].as_u64().unwrap());
        let relative = (run.ppl.ppl - REFERENCE_PPL_8_WINDOWS).abs() / REFERENCE_PPL_8_WINDOWS;
        eprintln!(
            "PPL {:.6} vs reference {REFERENCE_PPL_8_WINDOWS:.6} ({:.4} %), {:.1} tokens/s",
            run.ppl.ppl,
            relative * 100.0,
            run.ppl.tokens_per_second
        );
        assert!(relative <= PPL_RELATIVE_TOLERANCE, "PPL {} vs reference {REFERENCE_PPL_8_WINDOWS}", run.ppl.ppl);
    }
}
