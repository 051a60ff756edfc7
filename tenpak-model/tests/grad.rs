//! The differentiable forward pass and its weight gradients (`runtime::grad`): its loss against
//! the runtime's, its gradients against central finite differences of that loss, on tiny random
//! models of the real architecture (a GQA Llama with an untied head, a Qwen2 with q/k/v biases
//! and a tied head).

use tenpak_testkit as util;

use std::collections::HashMap;

use rand::{SeedableRng, rngs::StdRng};
use tenpak_model::ModelConfig;
use tenpak_model::runtime::LlamaModel;
use tenpak_model::runtime::WeightLoader;
use tenpak_model::runtime::grad::{self, Precision};
use util::{MapWeights, random_ids, tiny_config, tiny_weights};

/// The two tiny models: (what it is, configuration, seed).
fn models() -> [(&'static str, ModelConfig, u64); 2] {
    [("llama, GQA, untied", tiny_config(false, false), 31), ("qwen2, biases, tied", tiny_config(true, true), 37)]
}

/// Each window's mean NLL under the runtime (its fast kernels), averaged as the loss is.
fn runtime_losses(config: &ModelConfig, weights: &MapWeights, ids: &[u32], windows: usize, ctx: usize) -> Vec<f64> {
    let model = LlamaModel::load(config, weights).unwrap();
    (0..windows)
        .map(|w| {
            let nll = model.token_nll(&ids[w * ctx..(w + 1) * ctx], 1, None).unwrap();
            assert_eq!(nll.len(), ctx - 1);
            nll.iter().map(|&v| f64::from(v)).sum::<f64>() / (ctx - 1) as f64
        })
        .collect()
}

/// Every gradient `weight_gradients_as` hands out, by (weight name, window), with the order of
/// the calls.
struct Gradients {
    by_layer: HashMap<(String, usize), (Vec<f32>, usize, usize)>,
    order: Vec<String>,
    losses: Vec<f64>,
}

fn gradients(precision: Precision, config: &ModelConfig, weights: &MapWeights, ids: &[u32], windows: usize, ctx: usize) -> Gradients {
    let mut calls: Vec<(String, Vec<f32>, usize, usize)> = Vec::new();
    let losses = grad::weight_gradients_as(precision, config, weights, ids, windows, ctx, &mut |name, g, rows, cols| {
        calls.push((name.to_owned(), g.to_vec(), rows, cols));
        Ok(())
    })
    .unwrap();
    // Calls come block by block, window by window, seven per window.
    let mut by_layer = HashMap::new();
    let mut order = Vec::new();
    for (i, (name, g, rows, cols)) in calls.into_iter().enumerate() {
        let window = (i / 7) % windows;
        order.push(name.clone());
        assert!(by_layer.insert((name.clone(), window), (g, rows, cols)).is_none(), "{name} visited twice for window {window}");
    }
    Gradients { by_layer, order, losses }
}

#[test]
fn differentiable_loss_equals_the_runtime_nll() {
    let (windows, ctx) = (3, 24);
    for (what, config, seed) in models() {
        let weights = tiny_weights(&config, seed);
        let ids = random_ids(&mut StdRng::seed_from_u64(seed + 1), windows * ctx + 5, config.vocab_size);
        let runtime = runtime_losses(&config, &weights, &ids, windows, ctx);
        let f32_losses = grad::window_losses(Precision::F32, &config, &weights, &ids, windows, ctx).unwrap();
        let f64_losses = grad::window_losses(Precision::F64, &config, &weights, &ids, windows, ctx).unwrap();
        let with_gradients = gradients(Precision::F32, &config, &weights, &ids, windows, ctx).losses;
        for w in 0..windows {
            // The runtime's loss is f32 from kernels that round differently (fused RoPE with the
            // scale on q, a blocked softmax, a running log-sum-exp): 1e-4 relative is f32 noise.
            for (name, loss) in [("f32", f32_losses[w]), ("f64", f64_losses[w]), ("weight_gradients", with_gradients[w])] {
                let relative = (loss - runtime[w]).abs() / runtime[w].abs();
                assert!(relative <= 1e-4, "{what}, window {w}: {name} loss {loss} vs runtime {}", runtime[w]);
            }
            // The loss the gradients belong to is the one `window_losses` reports.
            assert!((with_gradients[w] - f32_losses[w]).abs() <= 1e-6 * f32_losses[w], "{what}, window {w}");
        }
        // The losses are not all alike (the windows really are different text).
        assert!((runtime[0] - runtime[1]).abs() > 1e-3, "{what}: {runtime:?}");
    }
}

#[test]
fn every_layer_gets_one_gradient_per_window_blocks_top_down() {
    let (windows, ctx) = (2, 9);
    for (what, config, seed) in models() {
        let weights = tiny_weights(&config, seed);
        let ids = random_ids(&mut StdRng::seed_from_u64(seed + 2), windows * ctx, config.vocab_size);
        let g = gradients(Precision::F32, &config, &weights, &ids, windows, ctx);
        let linears = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"];
        let expected: Vec<String> = (0..config.num_hidden_layers)
            .rev()
            .flat_map(|b| (0..windows).flat_map(move |_| linears.map(|l| format!("model.layers.{b}.{l}.weight"))))
            .collect();
        assert_eq!(g.order, expected, "{what}");
        for ((name, window), (values, rows, cols)) in &g.by_layer {
            let shape = weights.tensor_shape(name).unwrap();
            assert_eq!(vec![*rows, *cols], shape, "{what}: {name}");
            assert_eq!(values.len(), rows * cols);
            assert!(values.iter().all(|v| v.is_finite()), "{what}: {name}, window {window}");
            assert!(values.iter().any(|&v| v != 0.0), "{what}: {name}, window {window} has an all-zero gradient");
        }
    }
}

/// `base` with one value of one tensor replaced.
struct Perturbed<'a> {
    base: &'a MapWeights,
    name: &'a str,
    index: usize,
    value: f32,
}

impl WeightLoader for Perturbed<'_> {
    fn tensor_shape(&self, name: &str) -> Option<Vec<usize>> {
        self.base.tensor_shape(name)
    }
    fn tensor_f32(&self, name: &str) -> tenpak_error::Result<Vec<f32>> {
        let mut values = self.base.tensor_f32(name)?;
        if name == self.name {
            values[self.index] = self.value;
        }
        Ok(values)
    }
}

/// d(loss of each window)/d(weight `name`[`index`]) by central differences of the f64 loss.
/// The weights are f32, so the step is whatever `w ± step` rounds to, and the quotient divides
/// by that exact difference.
fn central_difference(config: &ModelConfig, weights: &MapWeights, ids: &[u32], windows: usize, ctx: usize, name: &str, index: usize) -> Vec<f64> {
    let w = weights.get(name)[index];
    let step = 1e-4f32;
    let (plus, minus) = (w + step, w - step);
    let loss = |value: f32| {
        let perturbed = Perturbed { base: weights, name, index, value };
        grad::window_losses(Precision::F64, config, &perturbed, ids, windows, ctx).unwrap()
    };
    let (up, down) = (loss(plus), loss(minus));
    up.iter().zip(&down).map(|(u, d)| (u - d) / f64::from(plus - minus)).collect()
}

/// Relative difference of two vectors, ‖a − b‖ / ‖b‖.
fn relative_norm(a: &[f32], b: &[f32]) -> f64 {
    let diff: f64 = a.iter().zip(b).map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2)).sum();
    let norm: f64 = b.iter().map(|&y| f64::from(y).powi(2)).sum();
    (diff / norm).sqrt()
}

#[test]
fn gradients_match_central_differences() {
    let (windows, ctx) = (2, 16);
    let checked = [
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.self_attn.k_proj.weight",
        "model.layers.0.self_attn.v_proj.weight",
        "model.layers.1.self_attn.o_proj.weight",
        "model.layers.0.mlp.gate_proj.weight",
        "model.layers.1.mlp.up_proj.weight",
        "model.layers.0.mlp.down_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
    ];
    for (what, config, seed) in models() {
        let weights = tiny_weights(&config, seed);
        let ids = random_ids(&mut StdRng::seed_from_u64(seed + 3), windows * ctx, config.vocab_size);
        let exact = gradients(Precision::F64, &config, &weights, &ids, windows, ctx);
        let fast = gradients(Precision::F32, &config, &weights, &ids, windows, ctx);
        for name in checked {
            for window in 0..windows {
                let (g64, ..) = &exact.by_layer[&(name.to_owned(), window)];
                let (g32, ..) = &fast.by_layer[&(name.to_owned(), window)];
                let largest = g64.iter().fold(0f32, |m, v| m.max(v.abs()));
                // The f32 pass against the f64 one, every entry: f32 rounding through two blocks
                // and a softmax costs a few 1e-6 (measured: at most 2.8e-6 over these layers);
                // 3e-5 leaves a factor 10, and a real error (a wrong sign, a missed path) shows
                // at 1e-2 and above.
                let relative = relative_norm(g32, g64);
                assert!(relative <= 3e-5, "{what}: {name}, window {window}: f32 gradient off by {relative:.2e} (norm-relative)");
                // The largest entry and two arbitrary ones, against central differences.
                let n = g64.len();
                let largest_at = g64.iter().position(|v| v.abs() == largest).unwrap();
                for index in [largest_at, (n * 3) / 7, (n * 5) / 11 + 1] {
                    let fd = central_difference(&config, &weights, &ids, windows, ctx, name, index)[window];
                    let (analytic, fast) = (f64::from(g64[index]), f64::from(g32[index]));
                    // Central differences in f64 err by h²·f‴/6 (measured: 6.7e-6 of the layer's
                    // largest entry at h = 1e-3, 5.7e-8 at h = 1e-4: the h² law, so the rest is
                    // the step, not the gradient) and by about 1e-15/h of rounding; the f64
                    // gradient reaches us rounded to f32 (6e-8 relative). 1e-6 of the largest
                    // entry is a factor 15 above the worst measured case.
                    let scale = f64::from(largest);
                    assert!(
                        (analytic - fd).abs() <= 1e-6 * scale,
                        "{what}: {name}[{index}], window {window}: f64 gradient {analytic:e} vs central difference {fd:e} (largest {scale:e})"
                    );
                    // The production f32 gradient entry by entry: f32 rounding as above
                    // (measured: at most 1.6e-6 of the largest entry), so 3e-5.
                    assert!(
                        (fast - fd).abs() <= 3e-5 * scale,
                        "{what}: {name}[{index}], window {window}: f32 gradient {fast:e} vs central difference {fd:e} (largest {scale:e})"
                    );
                }
            }
        }
    }
}

#[test]
fn errors_name_the_layer_and_the_input() {
    let config = tiny_config(false, false);
    let weights = tiny_weights(&config, 41);
    let ids = random_ids(&mut StdRng::seed_from_u64(42), 20, config.vocab_size);
    let err = grad::weight_gradients(&config, &weights, &ids, 2, 10, &mut |name, _, _, _| {
        tenpak_error::ensure!(!name.contains("layers.0.mlp.up_proj"), "refused");
        Ok(())
    })
    .unwrap_err();
    let message = format!("{err:#}");
    assert!(message.contains("model.layers.0.mlp.up_proj.weight") && message.contains("window 0") && message.contains("refused"), "{message}");
    let err = grad::weight_gradients(&config, &weights, &ids, 3, 10, &mut |_, _, _, _| Ok(())).unwrap_err();
    assert!(format!("{err:#}").contains("fewer than 3 windows"), "{err:#}");
    let mut bad = ids.clone();
    bad[13] = 100;
    let err = grad::window_losses(Precision::F32, &config, &weights, &bad, 2, 10).unwrap_err();
    assert!(format!("{err:#}").contains("window 1") && format!("{err:#}").contains("token id 100"), "{err:#}");
}

/// Peak resident memory of this process so far, in MiB (Linux `VmHWM`).
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok());
    kib.unwrap_or(0.0) / 1024.0
}

#[test]
fn real_model_gradients_for_one_window() {
    use tenpak_model as model;
use tenpak_model::tokenize;
    const CTX: usize = 512;
    let source = model::open(&util::real_gguf()).expect("the real GGUF opens");
    let config = source.config().clone();
    let tokenizer = tokenize::for_model(source.as_ref()).expect("the GGUF tokenizer loads");
    let ids = tokenize::encode_file_prefix(&tokenizer, &util::asset("calib.txt"), CTX).expect("calib.txt tokenizes");
    let before = peak_rss_mib();
    let started = std::time::Instant::now();
    let mut layers = Vec::new();
    let losses = grad::weight_gradients(&config, source.as_ref(), &ids, 1, CTX, &mut |name, g, rows, cols| {
        tenpak_error::ensure!(g.len() == rows * cols && g.iter().all(|v| v.is_finite()), "{name}: bad gradient");
        tenpak_error::ensure!(g.iter().any(|&v| v != 0.0), "{name}: all-zero gradient");
        layers.push(name.to_owned());
        Ok(())
    })
    .unwrap();
    eprintln!(
        "weight_gradients, 1 window of {CTX} tokens: {:.2} s, loss {:.4}, peak RSS {:.0} MiB (before: {before:.0} MiB)",
        started.elapsed().as_secs_f64(),
        losses[0],
        peak_rss_mib()
    );
    assert_eq!(layers.len(), 7 * config.num_hidden_layers);
    let model = LlamaModel::load(&config, source.as_ref()).unwrap();
    let nll = model.token_nll(&ids[..CTX], 1, None).unwrap();
    let runtime = nll.iter().map(|&v| f64::from(v)).sum::<f64>() / (CTX - 1) as f64;
    assert!((losses[0] - runtime).abs() <= 1e-4 * runtime, "loss {} vs the runtime's {runtime}", losses[0]);
}
