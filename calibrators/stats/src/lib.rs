//! TenPak's input-statistics calibrators: what each linear layer saw while the model read the
//! calibration text.
//!
//! | id | statistic | per layer |
//! |---|---|---|
//! | `act_scale` | mean \|x\| per input channel (AWQ's salience) | `cols` values |
//! | `hessian_diag` | mean x² per input channel: the diagonal of XᵀX / n | `cols` values |
//! | `gram` | the full XᵀX / n (the layer-output error of any weight error E is tr(E·G·Eᵀ)) | `cols²` values |
//! | `fisher_diag` | mean squared loss gradient per weight: the diagonal of the empirical Fisher | `rows·cols` values |
//!
//! Sums run in f64 over every observed row, so the order and size of the batches do not change
//! the result beyond f32 rounding of the final division. The Gram matrix of one batch is an f32
//! symmetric rank-k update (OpenBLAS's ssyrk, upper triangle), summed in f32 over runs of 16
//! batches and the runs in f64. [`FisherDiag`] is the exception: it
//! sums in f32 (see there why).
//!
//! q/k/v (and gate/up) receive the same input tensor; [`Gram`] recognizes a batch equal to the
//! one it has just multiplied out and reuses that product instead of computing it again, which
//! cuts its cost per block by more than half. The check compares the values, not addresses.
#![deny(missing_docs)]


use std::collections::HashMap;

use tenpak_api::{Calibrator, Error, LayerInfo, LayerStats, Result, StatKind, WeightView};

/// Sums of one layer's inputs.
#[derive(Clone, Debug, Default)]
struct Sums {
    values: Vec<f64>,
    rows: usize,
}

impl Sums {
    fn new(len: usize) -> Sums {
        Sums { values: vec![0.0; len], rows: 0 }
    }

    /// `values / rows` as f32; errors if nothing was observed for `layer`.
    fn mean(&self, layer: &LayerInfo, id: &str) -> Result<Vec<f32>> {
        if self.rows == 0 {
            return Err(Error::invalid_input(format!("{id}: no inputs were observed for `{}`", layer.name)));
        }
        let n = self.rows as f64;
        Ok(self.values.iter().map(|&v| (v / n) as f32).collect())
    }
}

/// Check a batch against the layer and refuse non-finite activations (a NaN here would silently
/// poison every statistic downstream).
fn check_batch(id: &str, layer: &LayerInfo, inputs: &WeightView<'_>) -> Result<()> {
    if inputs.cols() != layer.cols {
        return Err(Error::invalid_input(format!(
            "{id}: `{}` takes {} input features, the observed batch has {}",
            layer.name,
            layer.cols,
            inputs.cols()
        )));
    }
    // Scan for an all-ones exponent (∞ or NaN) without an early exit, so the scan vectorizes;
    // only a batch that has one is searched for its position.
    let exponent = 0x7f80_0000u32;
    let flagged = inputs.data().chunks(4096).any(|chunk| chunk.iter().fold(false, |bad, v| bad | (v.to_bits() & exponent == exponent)));
    if let Some(i) = flagged.then(|| inputs.data().iter().position(|v| !v.is_finite())).flatten() {
        return Err(Error::invalid_input(format!(
            "{id}: non-finite activation {} at row {}, column {} of the input of `{}`",
            inputs.data()[i],
            i / inputs.cols().max(1),
            i % inputs.cols().max(1),
            layer.name
        )));
    }
    Ok(())
}

/// A per-channel statistic: the mean of `f(x)` over every observed row, per input column.
#[derive(Debug, Default)]
struct ChannelMean {
    layers: HashMap<String, Sums>,
}

impl ChannelMean {
    /// `f` is generic, not a function pointer, so the per-element loop is inlined and vectorized.
    fn observe(&mut self, id: &str, layer: &LayerInfo, inputs: WeightView<'_>, f: impl Fn(f32) -> f64) -> Result<()> {
        check_batch(id, layer, &inputs)?;
        let sums = self.layers.entry(layer.name.clone()).or_insert_with(|| Sums::new(layer.cols));
        for r in 0..inputs.rows() {
            for (acc, &x) in sums.values.iter_mut().zip(inputs.row(r)) {
                *acc += f(x);
            }
        }
        sums.rows += inputs.rows();
        Ok(())
    }

    fn take(&mut self, id: &str, layer: &LayerInfo) -> Result<(Vec<f32>, usize)> {
        let sums = self.layers.remove(&layer.name).unwrap_or_default();
        Ok((sums.mean(layer, id)?, sums.rows))
    }
}

/// `act_scale`: mean |x| per input channel.
#[derive(Debug, Default)]
pub struct ActScale(ChannelMean);

impl Calibrator for ActScale {
    fn id(&self) -> &str {
        "act_scale"
    }
    fn provides(&self) -> StatKind {
        StatKind::ActScale
    }
    fn observe_input(&mut self, layer: &LayerInfo, inputs: WeightView<'_>) -> Result<()> {
        self.0.observe("act_scale", layer, inputs, |x| x.abs() as f64)
    }
    fn finish(&mut self, layer: &LayerInfo, stats: &mut LayerStats) -> Result<()> {
        let (mean, rows) = self.0.take("act_scale", layer)?;
        stats.act_scale = Some(mean);
        stats.samples = rows;
        Ok(())
    }
}

/// `hessian_diag`: mean x² per input channel.
#[derive(Debug, Default)]
pub struct HessianDiag(ChannelMean);

impl Calibrator for HessianDiag {
    fn id(&self) -> &str {
        "hessian_diag"
    }
    fn provides(&self) -> StatKind {
        StatKind::HessianDiag
    }
    fn observe_input(&mut self, layer: &LayerInfo, inputs: WeightView<'_>) -> Result<()> {
        self.0.observe("hessian_diag", layer, inputs, |x| (x as f64) * (x as f64))
    }
    fn finish(&mut self, layer: &LayerInfo, stats: &mut LayerStats) -> Result<()> {
        let (mean, rows) = self.0.take("hessian_diag", layer)?;
        stats.hessian_diag = Some(mean);
        stats.samples = rows;
        Ok(())
    }
}

unsafe extern "C" {
    /// cblas.h: C = alpha·AᵀA + beta·C (trans = CblasTrans) on one triangle of C.
    fn cblas_ssyrk(order: i32, uplo: i32, trans: i32, n: i32, k: i32, alpha: f32, a: *const f32, lda: i32, beta: f32, c: *mut f32, ldc: i32);
}

/// The upper triangle (row-major, `j ≥ i`) of XᵀX of one batch, in f32: a symmetric rank-k
/// update in OpenBLAS, half the products of a general matrix product. The lower triangle is zero.
fn batch_gram(inputs: &WeightView<'_>) -> Vec<f32> {
    const ROW_MAJOR: i32 = 101;
    const UPPER: i32 = 121;
    const TRANS: i32 = 112;
    let (rows, cols) = (inputs.rows(), inputs.cols());
    let mut product = vec![0.0f32; cols * cols];
    if rows == 0 || cols == 0 {
        return product;
    }
    let dim = |v: usize| i32::try_from(v).expect("a calibration batch's dimensions fit in a C int");
    // SAFETY: `inputs` is rows × cols row-major (WeightView checks its length); with trans = Trans
    // and lda = cols, A is read as rows × cols and C (cols × cols, ldc = cols) is written in its
    // upper triangle only.
    unsafe {
        cblas_ssyrk(ROW_MAJOR, UPPER, TRANS, dim(cols), dim(rows), 1.0, inputs.data().as_ptr(), dim(cols), 0.0, product.as_mut_ptr(), dim(cols));
    }
    product
}

/// Batches whose f32 products are summed in f32 before the sum is added into f64: few enough
/// that the f32 sum loses nothing that matters (16 · 2⁻²⁴ relative), many enough that the f64
/// pass over a 1536² matrix is rare.
const GRAM_F32_RUN: usize = 16;

/// One layer's Gram sums: the upper triangle only, in an f32 run and an f64 total.
#[derive(Debug)]
struct GramSums {
    cols: usize,
    run: Vec<f32>,
    run_batches: usize,
    total: Vec<f64>,
    rows: usize,
}

impl GramSums {
    fn new(cols: usize) -> GramSums {
        GramSums { cols, run: vec![0.0; cols * cols], run_batches: 0, total: vec![0.0; cols * cols], rows: 0 }
    }

    /// Add a batch's upper-triangle product of `rows` rows.
    fn add(&mut self, product: &[f32], rows: usize) {
        let cols = self.cols;
        for i in 0..cols {
            let row = i * cols + i..(i + 1) * cols;
            for (acc, &v) in self.run[row.clone()].iter_mut().zip(&product[row]) {
                *acc += v;
            }
        }
        self.rows += rows;
        self.run_batches += 1;
        if self.run_batches == GRAM_F32_RUN {
            self.fold();
        }
    }

    /// Move the f32 run into the f64 total.
    fn fold(&mut self) {
        let cols = self.cols;
        for i in 0..cols {
            let row = i * cols + i..(i + 1) * cols;
            for (total, run) in self.total[row.clone()].iter_mut().zip(&mut self.run[row]) {
                *total += f64::from(*run);
                *run = 0.0;
            }
        }
        self.run_batches = 0;
    }

    /// The full symmetric mean XᵀX / rows.
    fn mean(mut self) -> Vec<f32> {
        self.fold();
        let (cols, n) = (self.cols, self.rows as f64);
        let mut mean = vec![0.0f32; cols * cols];
        for i in 0..cols {
            for j in i..cols {
                let v = (self.total[i * cols + j] / n) as f32;
                mean[i * cols + j] = v;
                mean[j * cols + i] = v;
            }
        }
        mean
    }
}

/// `gram`: the full XᵀX / n per layer.
#[derive(Debug, Default)]
pub struct Gram {
    layers: HashMap<String, GramSums>,
    /// The last batch multiplied out and its product, reused when the next layer gets the same
    /// input (q/k/v, gate/up).
    last: Option<(Vec<f32>, Vec<f32>)>,
}

impl Calibrator for Gram {
    fn id(&self) -> &str {
        "gram"
    }
    fn provides(&self) -> StatKind {
        StatKind::Gram
    }
    fn observe_input(&mut self, layer: &LayerInfo, inputs: WeightView<'_>) -> Result<()> {
        check_batch("gram", layer, &inputs)?;
        let reuse = matches!(&self.last, Some((data, _)) if data.as_slice() == inputs.data());
        if !reuse {
            let product = batch_gram(&inputs);
            self.last = Some((inputs.data().to_vec(), product));
        }
        let (_, product) = self.last.as_ref().expect("set just above");
        let sums = self.layers.entry(layer.name.clone()).or_insert_with(|| GramSums::new(layer.cols));
        sums.add(product, inputs.rows());
        Ok(())
    }
    fn finish(&mut self, layer: &LayerInfo, stats: &mut LayerStats) -> Result<()> {
        let sums = self.layers.remove(&layer.name).filter(|sums| sums.rows > 0);
        let Some(sums) = sums else {
            return Err(Error::invalid_input(format!("gram: no inputs were observed for `{}`", layer.name)));
        };
        stats.samples = sums.rows;
        stats.gram = Some(tenpak_api::Gram { dim: layer.cols, data: sums.mean() });
        if self.layers.is_empty() {
            self.last = None;
        }
        Ok(())
    }
}

/// Squared gradients of one layer summed, and how many gradients went in.
#[derive(Debug)]
struct SquaredSums {
    values: Vec<f32>,
    gradients: usize,
}

/// `fisher_diag`: the mean squared gradient of the loss with respect to each weight, the
/// diagonal of the empirical Fisher information (one gradient per calibration window, as the
/// host's backward pass delivers them). It ignores layer inputs.
///
/// Sums are f32, unlike the input statistics': they hold one value per weight, and a host that
/// runs the backward pass (blocks top-down) before finishing any layer (the pipeline goes
/// bottom-up) holds them for every block weight of the model at once (SmolLM2-135M: 106 M
/// values, 425 MB in f32, 850 MB in f64). The terms are non-negative, so nothing cancels: the
/// sum of n terms is off by at most about n·2⁻²⁴ relative (6·10⁻⁵ for 1000 windows), far below
/// what an importance weight needs.
#[derive(Debug, Default)]
pub struct FisherDiag {
    layers: HashMap<String, SquaredSums>,
}

impl FisherDiag {
    /// Refuse a gradient whose shape is not the layer's or that holds a non-finite value.
    fn check(layer: &LayerInfo, gradient: &WeightView<'_>) -> Result<()> {
        if (gradient.rows(), gradient.cols()) != (layer.rows, layer.cols) {
            return Err(Error::invalid_input(format!(
                "fisher_diag: `{}` is {}×{}, the observed gradient is {}×{}",
                layer.name,
                layer.rows,
                layer.cols,
                gradient.rows(),
                gradient.cols()
            )));
        }
        if let Some(i) = gradient.data().iter().position(|v| !v.is_finite()) {
            return Err(Error::invalid_input(format!(
                "fisher_diag: non-finite gradient {} at row {}, column {} of `{}`",
                gradient.data()[i],
                i / layer.cols.max(1),
                i % layer.cols.max(1),
                layer.name
            )));
        }
        Ok(())
    }
}

impl Calibrator for FisherDiag {
    fn id(&self) -> &str {
        "fisher_diag"
    }
    fn provides(&self) -> StatKind {
        StatKind::FisherDiag
    }
    fn needs_gradients(&self) -> bool {
        true
    }
    fn observe_input(&mut self, _layer: &LayerInfo, _inputs: WeightView<'_>) -> Result<()> {
        Ok(())
    }
    fn observe_gradient(&mut self, layer: &LayerInfo, gradient: WeightView<'_>) -> Result<()> {
        Self::check(layer, &gradient)?;
        let sums = self
            .layers
            .entry(layer.name.clone())
            .or_insert_with(|| SquaredSums { values: vec![0.0; layer.rows * layer.cols], gradients: 0 });
        for (acc, &g) in sums.values.iter_mut().zip(gradient.data()) {
            *acc += g * g;
        }
        sums.gradients += 1;
        Ok(())
    }
    /// Writes `fisher_diag` and leaves `samples` alone: it counts input vectors (tokens), and a
    /// gradient is one per window.
    fn finish(&mut self, layer: &LayerInfo, stats: &mut LayerStats) -> Result<()> {
        let Some(sums) = self.layers.remove(&layer.name) else {
            return Err(Error::invalid_input(format!(
                "fisher_diag: no gradients were observed for `{}` (the host must run a backward pass for this calibrator)",
                layer.name
            )));
        };
        let n = sums.gradients as f32;
        stats.fisher_diag = Some(sums.values.into_iter().map(|v| v / n).collect());
        Ok(())
    }
}

tenpak_api::register_calibrator!("act_scale", ActScale);
tenpak_api::register_calibrator!("hessian_diag", HessianDiag);
tenpak_api::register_calibrator!("gram", Gram);
tenpak_api::register_calibrator!("fisher_diag", FisherDiag);

#[cfg(test)]
mod tests {
    use super::*;
    use tenpak_api::LayerRole;

    fn layer(name: &str, cols: usize) -> LayerInfo {
        LayerInfo { name: name.into(), role: LayerRole::AttnQ, block: Some(0), rows: 4, cols }
    }

    /// Deterministic pseudo-random inputs with one large channel, as real activations have.
    fn inputs(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..rows * cols)
            .map(|i| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let u = ((state >> 33) as f64 / (1u64 << 31) as f64 - 0.5) as f32;
                if i % cols == 3 { 40.0 * u } else { u }
            })
            .collect()
    }

    /// Direct computations over all rows at once, in f64.
    fn direct(x: &[f32], cols: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let rows = x.len() / cols;
        let (mut abs, mut sq, mut gram) = (vec![0f64; cols], vec![0f64; cols], vec![0f64; cols * cols]);
        for r in 0..rows {
            let row = &x[r * cols..(r + 1) * cols];
            for i in 0..cols {
                abs[i] += row[i].abs() as f64;
                sq[i] += (row[i] as f64).powi(2);
                for j in 0..cols {
                    gram[i * cols + j] += row[i] as f64 * row[j] as f64;
                }
            }
        }
        let n = rows as f64;
        let scale = |v: Vec<f64>| v.into_iter().map(|s| s / n).collect();
        (scale(abs), scale(sq), scale(gram))
    }

    fn assert_close(got: &[f32], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!((g as f64 - w).abs() <= 1e-5 * w.abs().max(1e-3), "{what}[{i}]: {g} vs {w}");
        }
    }

    #[test]
    fn statistics_equal_direct_computation_over_uneven_batches() {
        let cols = 9;
        let x = inputs(37, cols, 7);
        let l = layer("model.layers.0.self_attn.q_proj.weight", cols);
        let (mut a, mut h, mut g) = (ActScale::default(), HessianDiag::default(), Gram::default());
        // Batches of 5, 16 and 16 rows: the statistic must not depend on the split.
        for chunk in [&x[..5 * cols], &x[5 * cols..21 * cols], &x[21 * cols..]] {
            let view = WeightView::new(chunk, chunk.len() / cols, cols).unwrap();
            a.observe_input(&l, view).unwrap();
            h.observe_input(&l, view).unwrap();
            g.observe_input(&l, view).unwrap();
        }
        let mut stats = LayerStats::none();
        a.finish(&l, &mut stats).unwrap();
        h.finish(&l, &mut stats).unwrap();
        g.finish(&l, &mut stats).unwrap();
        let (abs, sq, gram) = direct(&x, cols);
        assert_close(stats.act_scale.as_ref().unwrap(), &abs, "act_scale");
        assert_close(stats.hessian_diag.as_ref().unwrap(), &sq, "hessian_diag");
        let gram_stat = stats.gram.as_ref().unwrap();
        assert_eq!(gram_stat.dim, cols);
        assert_close(&gram_stat.data, &gram, "gram");
        assert_eq!(stats.samples, 37);
        // The Gram diagonal is the Hessian diagonal.
        let diag: Vec<f64> = (0..cols).map(|i| gram_stat.data[i * cols + i] as f64).collect();
        assert_close(stats.hessian_diag.as_ref().unwrap(), &diag, "gram diagonal");
    }

    /// More batches than one f32 run (and a partial last run), a width that is no multiple of a
    /// vector: the Gram matrix still equals the direct f64 computation, and is symmetric exactly.
    #[test]
    fn gram_over_many_batches_equals_direct_computation() {
        let cols = 13;
        let rows_each = 3;
        let batches = 2 * GRAM_F32_RUN + 5;
        let x = inputs(batches * rows_each, cols, 11);
        let l = layer("model.layers.0.mlp.down_proj.weight", cols);
        let mut g = Gram::default();
        for chunk in x.chunks(rows_each * cols) {
            g.observe_input(&l, WeightView::new(chunk, rows_each, cols).unwrap()).unwrap();
        }
        let mut stats = LayerStats::none();
        g.finish(&l, &mut stats).unwrap();
        let gram = stats.gram.unwrap().data;
        // f32 sums of 3 rows, then of 16 batches: the classic bound for summing k terms in f32,
        // (k − 1)·2⁻²⁴ of the sum of the terms' magnitudes (not of the result, which may cancel),
        // with k = 3 + 16, and one more rounding to f32 at the end.
        let want = direct(&x, cols).2;
        for i in 0..cols {
            for j in 0..cols {
                let magnitude: f64 = x.chunks(cols).map(|row| (row[i] as f64 * row[j] as f64).abs()).sum::<f64>() / (batches * rows_each) as f64;
                let (got, want) = (gram[i * cols + j] as f64, want[i * cols + j]);
                assert!((got - want).abs() <= 19.0 * 2f64.powi(-24) * magnitude + 1e-12, "gram[{i}, {j}]: {got} vs {want}");
            }
        }
        for i in 0..cols {
            for j in 0..i {
                assert_eq!(gram[i * cols + j].to_bits(), gram[j * cols + i].to_bits(), "({i}, {j})");
            }
        }
        assert_eq!(stats.samples, batches * rows_each);
    }

    #[test]
    fn gram_reuse_across_layers_sharing_an_input_is_exact() {
        let cols = 6;
        let (x1, x2) = (inputs(8, cols, 1), inputs(8, cols, 2));
        let (q, k) = (layer("q", cols), layer("k", cols));
        let mut shared = Gram::default();
        for x in [&x1, &x2] {
            let view = WeightView::new(x, 8, cols).unwrap();
            shared.observe_input(&q, view).unwrap();
            shared.observe_input(&k, view).unwrap();
        }
        let mut alone = Gram::default();
        for x in [&x1, &x2] {
            alone.observe_input(&k, WeightView::new(x, 8, cols).unwrap()).unwrap();
        }
        let (mut s1, mut s2, mut s3) = (LayerStats::none(), LayerStats::none(), LayerStats::none());
        shared.finish(&q, &mut s1).unwrap();
        shared.finish(&k, &mut s2).unwrap();
        alone.finish(&k, &mut s3).unwrap();
        assert_eq!(s1.gram, s3.gram);
        assert_eq!(s2.gram, s3.gram);
    }

    #[test]
    fn fisher_diag_is_the_mean_squared_gradient() {
        let l = LayerInfo { name: "model.layers.1.mlp.gate_proj.weight".into(), role: LayerRole::MlpGate, block: Some(1), rows: 2, cols: 3 };
        // Dyadic values: every square, sum and halving is exact in f32, so the mean must be too.
        let first = [0.5, -1.5, 3.0, 0.0, 0.25, -2.0];
        let second = [1.0, 0.5, -1.0, 4.0, -0.75, 2.0];
        let mut fisher = FisherDiag::default();
        assert!(fisher.needs_gradients());
        // Inputs are ignored, whatever their shape.
        fisher.observe_input(&l, WeightView::new(&[9.0; 5], 1, 5).unwrap()).unwrap();
        for g in [&first, &second] {
            fisher.observe_gradient(&l, WeightView::new(g, 2, 3).unwrap()).unwrap();
        }
        let mut stats = LayerStats { samples: 7, ..LayerStats::none() };
        fisher.finish(&l, &mut stats).unwrap();
        let want: Vec<f32> = first.iter().zip(&second).map(|(a, b)| (a * a + b * b) / 2.0).collect();
        assert_eq!(want, [0.625, 1.25, 5.0, 8.0, 0.3125, 4.0]);
        assert_eq!(stats.fisher_diag.as_deref(), Some(want.as_slice()));
        assert_eq!(stats.samples, 7, "samples counts tokens, which fisher_diag does not see");
        // The accumulator is gone: a second finish has nothing to report.
        let err = fisher.finish(&l, &mut LayerStats::none()).unwrap_err();
        assert!(err.message().contains("no gradients were observed"), "{err}");
    }

    #[test]
    fn fisher_diag_refuses_wrong_shapes_and_missing_gradients() {
        let l = LayerInfo { name: "model.layers.0.self_attn.o_proj.weight".into(), role: LayerRole::AttnO, block: Some(0), rows: 2, cols: 3 };
        let mut fisher = FisherDiag::default();
        // Same number of values, transposed shape.
        let err = fisher.observe_gradient(&l, WeightView::new(&[1.0; 6], 3, 2).unwrap()).unwrap_err();
        assert!(err.message().contains("o_proj") && err.message().contains("2×3") && err.message().contains("3×2"), "{err}");
        let err = fisher.observe_gradient(&l, WeightView::new(&[1.0, 2.0, f32::NAN, 0.0, 0.0, 0.0], 2, 3).unwrap()).unwrap_err();
        assert!(err.message().contains("row 0, column 2"), "{err}");
        // Refused gradients leave nothing behind, so finishing is an error that names the layer.
        let err = fisher.finish(&l, &mut LayerStats::none()).unwrap_err();
        assert!(err.message().contains("no gradients were observed") && err.message().contains("o_proj"), "{err}");
    }

    #[test]
    fn bad_inputs_are_named() {
        let l = layer("model.layers.2.mlp.down_proj.weight", 3);
        let mut a = ActScale::default();
        let err = a.observe_input(&l, WeightView::new(&[1.0, f32::NAN, 2.0], 1, 3).unwrap()).unwrap_err();
        assert!(err.message().contains("down_proj") && err.message().contains("column 1"), "{err}");
        let err = a.observe_input(&l, WeightView::new(&[1.0, 2.0], 1, 2).unwrap()).unwrap_err();
        assert!(err.message().contains("3 input features"), "{err}");
        let err = Gram::default().finish(&l, &mut LayerStats::none()).unwrap_err();
        assert!(err.message().contains("no inputs were observed"), "{err}");
    }
}
