//! Deterministic test and benchmark matrices: Gaussian, heavy-tailed, LLM-like, adversarial;
//! and the runtimes' reference dequantizations that native forms are held to.
//!
//! A tiny self-contained generator (SplitMix64) rather than `rand`: the same seed gives the same
//! matrix on every platform and every version, so a test failure reproduces exactly, and the
//! library pulls in no random-number crates for the sake of its tests.

/// SplitMix64 (Steele, Lea, Flood 2014): small, fast, and good enough for test data.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x5851_f42d_4c95_7f2d)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // (0, 1]
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// `n` normal values with standard deviation `std`.
    pub fn gaussian_vec(&mut self, n: usize, std: f32) -> Vec<f32> {
        (0..n)
            .map(|_| (self.normal() * f64::from(std)) as f32)
            .collect()
    }

    /// `n` Student-t values with `dof` degrees of freedom (≥ 1, rounded down), times `scale`:
    /// `z / sqrt(χ²_dof / dof)`. Small `dof` gives the heavy tails real weights have.
    pub fn student_t_vec(&mut self, n: usize, dof: f32, scale: f32) -> Vec<f32> {
        let dof = (dof as usize).max(1);
        (0..n)
            .map(|_| {
                let z = self.normal();
                let chi2: f64 = (0..dof).map(|_| self.normal().powi(2)).sum();
                (z / (chi2 / dof as f64).sqrt() * f64::from(scale)) as f32
            })
            .collect()
    }

    /// `n` Laplace values with scale `b` (inverse CDF).
    pub fn laplace_vec(&mut self, n: usize, b: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let u = self.uniform() - 0.5;
                let mag = -(1.0 - 2.0 * u.abs()).max(f64::MIN_POSITIVE).ln();
                (u.signum() * mag * f64::from(b)) as f32
            })
            .collect()
    }
}

/// A named test matrix, row-major.
#[derive(Clone, Debug)]
pub struct TestMatrix {
    /// What it is, for assertion messages.
    pub name: String,
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// `rows * cols` values.
    pub data: Vec<f32>,
}

impl TestMatrix {
    fn new(name: &str, rows: usize, cols: usize, data: Vec<f32>) -> Self {
        assert_eq!(data.len(), rows * cols);
        Self {
            name: name.to_owned(),
            rows,
            cols,
            data,
        }
    }
}

/// Gaussian weights, standard deviation 0.02 (a typical init scale).
pub fn gaussian(rows: usize, cols: usize, seed: u64) -> TestMatrix {
    TestMatrix::new(
        "gaussian",
        rows,
        cols,
        Rng::new(seed).gaussian_vec(rows * cols, 0.02),
    )
}

/// Student-t (3 degrees of freedom) weights: heavy tails, occasional large values.
pub fn student_t(rows: usize, cols: usize, seed: u64) -> TestMatrix {
    TestMatrix::new(
        "student_t3",
        rows,
        cols,
        Rng::new(seed).student_t_vec(rows * cols, 3.0, 0.02),
    )
}

/// Laplace weights (scale 0.015).
pub fn laplace(rows: usize, cols: usize, seed: u64) -> TestMatrix {
    TestMatrix::new(
        "laplace",
        rows,
        cols,
        Rng::new(seed).laplace_vec(rows * cols, 0.015),
    )
}

/// Weights shaped like a trained LLM linear layer: Student-t(4) entries, a log-normal scale per
/// row, and a few input columns (1 in 64) several times larger than the rest, as activation
/// outlier channels leave in trained weights.
pub fn llm_like(rows: usize, cols: usize, seed: u64) -> TestMatrix {
    let mut rng = Rng::new(seed);
    let col_scale: Vec<f32> = (0..cols)
        .map(|_| {
            if rng.next_u64().is_multiple_of(64) {
                4.0
            } else {
                1.0
            }
        })
        .collect();
    let mut data = Vec::with_capacity(rows * cols);
    for _ in 0..rows {
        let row_scale = (rng.normal() * 0.3).exp() as f32;
        let t = rng.student_t_vec(cols, 4.0, 0.02 * row_scale);
        data.extend(t.iter().zip(&col_scale).map(|(v, c)| v * c));
    }
    TestMatrix::new("llm_like", rows, cols, data)
}

/// The inputs that break naive quantizers, each `rows × cols` (`cols ≥ 2`): constant rows
/// (zero, positive, negative), a single huge outlier in a Gaussian matrix, values around 1e-30,
/// f32 denormals, rows whose scales differ by 10⁶, all-positive and all-negative rows, and a
/// row of two alternating levels.
pub fn adversarial(rows: usize, cols: usize, seed: u64) -> Vec<TestMatrix> {
    assert!(rows >= 1 && cols >= 2);
    let n = rows * cols;
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();

    let constants = [0.0f32, 0.3, -7.25, 1e-3, 12345.0];
    let data = (0..n)
        .map(|i| constants[(i / cols) % constants.len()])
        .collect();
    out.push(TestMatrix::new("constant_rows", rows, cols, data));

    let mut data = rng.gaussian_vec(n, 0.02);
    data[n / 2 + cols / 3] = 60.0;
    out.push(TestMatrix::new("one_huge_outlier", rows, cols, data));

    let data = rng.gaussian_vec(n, 1.0).iter().map(|v| v * 1e-30).collect();
    out.push(TestMatrix::new("tiny_1e-30", rows, cols, data));

    let data = (0..n)
        .map(|_| f32::from_bits((rng.next_u64() as u32) & 0x807f_ffff))
        .collect();
    out.push(TestMatrix::new("denormals", rows, cols, data));

    let data = (0..n)
        .map(|i| (rng.normal() as f32) * 10f32.powi(((i / cols) % 7) as i32 - 3))
        .collect();
    out.push(TestMatrix::new("row_scales_1e-3_to_1e3", rows, cols, data));

    let data = (0..n)
        .map(|i| {
            if (i / cols).is_multiple_of(2) {
                1.0 + rng.uniform() as f32
            } else {
                -2.0 - rng.uniform() as f32
            }
        })
        .collect();
    out.push(TestMatrix::new("one_signed_rows", rows, cols, data));

    let data = (0..n)
        .map(|i| if i % 2 == 0 { -0.25 } else { 0.75 })
        .collect();
    out.push(TestMatrix::new("two_levels", rows, cols, data));

    out
}

/// The matrices every codec test runs on: random, heavy-tailed, LLM-like and adversarial, with
/// row lengths that exercise non-dividing group sizes (100 with 32, 576 with 256, an odd 101).
pub fn codec_matrices() -> Vec<TestMatrix> {
    let mut all = vec![gaussian(6, 100, 1), student_t(4, 576, 2), laplace(5, 101, 3), llm_like(8, 576, 4)];
    all.extend(adversarial(5, 100, 5));
    all
}

/// Group sizes to try on a matrix with `cols` columns: 8, non-dividing ones, the full row and
/// more than the full row.
pub fn group_sizes(cols: usize) -> Vec<usize> {
    vec![8, 32, 64, 100, 128, 256, cols, cols + 7]
}

/// Encode `m` with `codec` without calibration statistics, panicking with the codec, matrix and
/// parameters in the message (a test helper).
pub fn encode(
    codec: &dyn tenpak_api::Codec,
    m: &TestMatrix,
    params: &tenpak_api::Params,
) -> tenpak_api::Encoded {
    let view = tenpak_api::WeightView::new(&m.data, m.rows, m.cols).unwrap();
    codec
        .encode(view, &tenpak_api::LayerStats::none(), params)
        .unwrap_or_else(|e| panic!("{} {} [{}, {}] {params:?}: {e}", codec.id(), m.name, m.rows, m.cols))
}

/// `(scale, min)` of every group, read straight from an f16 `[.., 2]` header part.
pub fn headers(encoded: &tenpak_api::Encoded, part: &str) -> Vec<(f32, f32)> {
    let values = encoded.part(part).unwrap().to_f16().unwrap();
    values.chunks_exact(2).map(|p| (p[0].to_f32(), p[1].to_f32())).collect()
}

/// Total bytes of all parts.
pub fn stored_bytes(encoded: &tenpak_api::Encoded) -> u64 {
    encoded.parts.iter().map(|p| p.data.len() as u64).sum()
}

/// Σ (w − ŵ)² over each group (row-major over `[rows, groups_per_row]`).
pub fn group_errors(m: &TestMatrix, decoded: &[f32], group_size: usize) -> Vec<f64> {
    let mut out = Vec::new();
    for row in 0..m.rows {
        for start in (0..m.cols).step_by(group_size) {
            let range = row * m.cols + start..row * m.cols + (start + group_size).min(m.cols);
            out.push(
                m.data[range.clone()]
                    .iter()
                    .zip(&decoded[range])
                    .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
                    .sum(),
            );
        }
    }
    out
}

/// `tokens × cols` activations, row-major: per-channel scales log-normal (σ = 1) with one channel
/// in 32 an outlier channel 20× larger (as in LLM residual streams), channels correlated through
/// four shared factors, and per-token magnitudes heavy-tailed (Student-t-like).
pub fn activations(tokens: usize, cols: usize, seed: u64) -> Vec<f32> {
    correlated_activations(tokens, cols, seed, ActivationShape { outlier_every: 32, outlier_at: 7, factors: 4 })
}

/// Where [`correlated_activations`] puts its loud channels and how many shared factors
/// correlate the channels.
#[derive(Clone, Copy, Debug)]
pub struct ActivationShape {
    /// One channel in this many is 20× louder ...
    pub outlier_every: usize,
    /// ... the one at this offset in each run.
    pub outlier_at: usize,
    /// Shared factors every channel loads on (the correlation GPTQ exploits).
    pub factors: usize,
}

/// `tokens × cols` activations, row-major: log-normal channel scales (σ = 1), the loud channels
/// of `shape` 20× larger, channels correlated through `shape.factors` shared factors,
/// heavy-tailed per-token magnitudes.
pub fn correlated_activations(tokens: usize, cols: usize, seed: u64, shape: ActivationShape) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let channel: Vec<f64> = (0..cols)
        .map(|j| rng.normal().exp() * if j % shape.outlier_every == shape.outlier_at { 20.0 } else { 1.0 })
        .collect();
    let loadings: Vec<Vec<f64>> = (0..cols).map(|_| (0..shape.factors).map(|_| rng.normal()).collect()).collect();
    let mut x = Vec::with_capacity(tokens * cols);
    for _ in 0..tokens {
        let factors: Vec<f64> = (0..shape.factors).map(|_| rng.normal()).collect();
        let chi2: f64 = (0..4).map(|_| rng.normal().powi(2)).sum();
        let magnitude = 1.0 / (chi2 / 4.0).sqrt().max(0.2);
        for j in 0..cols {
            let shared: f64 = loadings[j].iter().zip(&factors).map(|(l, f)| l * f).sum();
            x.push((channel[j] * magnitude * (rng.normal() + 0.5 * shared)) as f32);
        }
    }
    x
}

/// What the calibrators compute from `x` (`tokens × cols`): mean |x|, mean x² and XᵀX / n per
/// input column, in f64 then rounded to f32.
pub fn stats_of(x: &[f32], cols: usize) -> tenpak_api::LayerStats {
    let tokens = x.len() / cols;
    let mut act = vec![0f64; cols];
    let mut gram = vec![0f64; cols * cols];
    for t in x.chunks_exact(cols) {
        for i in 0..cols {
            act[i] += f64::from(t[i]).abs();
            let xi = f64::from(t[i]);
            for j in 0..cols {
                gram[i * cols + j] += xi * f64::from(t[j]);
            }
        }
    }
    let n = tokens as f64;
    tenpak_api::LayerStats {
        act_scale: Some(act.iter().map(|v| (v / n) as f32).collect()),
        hessian_diag: Some((0..cols).map(|i| (gram[i * cols + i] / n) as f32).collect()),
        gram: Some(tenpak_api::Gram {
            dim: cols,
            data: gram.iter().map(|v| (v / n) as f32).collect(),
        }),
        fisher_diag: None,
        samples: tokens,
    }
}


/// Matrices for native-form tests, every row 512 long (two Q4_K super-blocks, sixteen blocks of
/// 32): LLM-like, heavy-tailed, one with a zero row, a constant row and a single huge outlier,
/// and the [`adversarial`] set.
pub fn native_matrices() -> Vec<TestMatrix> {
    let mut all = vec![llm_like(16, 512, 11), student_t(8, 512, 12)];
    let mut m = llm_like(8, 512, 13);
    m.data[..512].fill(0.0);
    m.data[512..1024].fill(0.3);
    m.data[2 * 512 + 77] = 5e3;
    m.name = "zero_row_constant_row_huge_outlier".into();
    all.push(m);
    all.extend(adversarial(8, 512, 14));
    all
}

/// llama.cpp's reference dequantization of GGML data of type `ggml_type` (ggml.h's ids: 0 F32,
/// 1 F16, 3 Q4_1, 8 Q8_0, 12 Q4_K, 30 BF16), written from `dequantize_row_q4_1`,
/// `dequantize_row_q8_0` and `dequantize_row_q4_K` (`ggml-quants.c`, with `get_scale_min_k4`)
/// straight on the bytes, independently of [`crate::ggml`]: what a native form is held to.
/// Panics on another type or a length that is not whole blocks.
pub fn ggml_reference_dequantize(ggml_type: u32, data: &[u8]) -> Vec<f32> {
    let f16_at = |b: &[u8], i: usize| half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32();
    let mut y = Vec::new();
    match ggml_type {
        0 => y.extend(
            data.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        1 => y.extend((0..data.len() / 2).map(|i| f16_at(data, 2 * i))),
        30 => y.extend(
            data.chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
        3 => {
            // block_q4_1 { half d; half m; uint8_t qs[16]; }: y = x0*d + m
            assert!(
                data.len().is_multiple_of(20),
                "Q4_1 data of {} bytes",
                data.len()
            );
            for x in data.chunks_exact(20) {
                let (d, m) = (f16_at(x, 0), f16_at(x, 2));
                let qs = &x[4..];
                let mut block = [0f32; 32];
                for j in 0..16 {
                    let x0 = i32::from(qs[j] & 0x0F);
                    let x1 = i32::from(qs[j] >> 4);
                    block[j] = x0 as f32 * d + m;
                    block[j + 16] = x1 as f32 * d + m;
                }
                y.extend(block);
            }
        }
        8 => {
            // block_q8_0 { half d; int8_t qs[32]; }: y = qs[j]*d
            assert!(
                data.len().is_multiple_of(34),
                "Q8_0 data of {} bytes",
                data.len()
            );
            for x in data.chunks_exact(34) {
                let d = f16_at(x, 0);
                y.extend(x[2..].iter().map(|&q| f32::from(q as i8) * d));
            }
        }
        12 => {
            // block_q4_K { half d; half dmin; uint8_t scales[12]; uint8_t qs[128]; }
            assert!(
                data.len().is_multiple_of(144),
                "Q4_K data of {} bytes",
                data.len()
            );
            let get_scale_min_k4 = |j: usize, q: &[u8]| -> (u8, u8) {
                if j < 4 {
                    (q[j] & 63, q[j + 4] & 63)
                } else {
                    (
                        (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
                        (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
                    )
                }
            };
            for x in data.chunks_exact(144) {
                let (d, min) = (f16_at(x, 0), f16_at(x, 2));
                let scales = &x[4..16];
                let mut q = &x[16..];
                let mut is = 0;
                for _ in (0..256).step_by(64) {
                    let (sc, m) = get_scale_min_k4(is, scales);
                    let (d1, m1) = (d * f32::from(sc), min * f32::from(m));
                    let (sc, m) = get_scale_min_k4(is + 1, scales);
                    let (d2, m2) = (d * f32::from(sc), min * f32::from(m));
                    y.extend((0..32).map(|l| d1 * f32::from(q[l] & 0xF) - m1));
                    y.extend((0..32).map(|l| d2 * f32::from(q[l] >> 4) - m2));
                    q = &q[32..];
                    is += 2;
                }
            }
        }
        other => panic!("no reference dequantization for GGML type {other}"),
    }
    y
}

/// Assert that `form` is GGML data of type `ggml_type` that llama.cpp dequantizes to `decoded`
/// bit for bit (`what` names the case in the message).
pub fn assert_ggml_decodes_to(
    form: &tenpak_api::NativeForm,
    ggml_type: u32,
    decoded: &[f32],
    what: &str,
) {
    let tenpak_api::NativeForm::Ggml {
        ggml_type: got,
        data,
    } = form
    else {
        panic!("{what}: expected GGML data, got {form:?}");
    };
    assert_eq!(*got, ggml_type, "{what}: GGML type");
    let values = ggml_reference_dequantize(ggml_type, data);
    assert_eq!(values.len(), decoded.len(), "{what}: values");
    if let Some(i) = (0..values.len()).find(|&i| values[i].to_bits() != decoded[i].to_bits()) {
        panic!(
            "{what}: weight {i} dequantizes to {} where the codec decodes {}",
            values[i], decoded[i]
        );
    }
}

/// Assert that `form` is integer groups of `bits` and `group_size` on a `cols`-wide matrix whose
/// `(code − zero_point)·scale`, rounded to f16 as compressed-tensors computes it, equals
/// `decoded` rounded to f16, weight for weight.
pub fn assert_int_groups_decode_to(
    form: &tenpak_api::NativeForm,
    bits: u32,
    group_size: usize,
    cols: usize,
    decoded: &[f32],
    what: &str,
) {
    let tenpak_api::NativeForm::IntGroups {
        bits: b,
        group_size: g,
        codes,
        scales,
        zero_points,
    } = form
    else {
        panic!("{what}: expected integer groups, got {form:?}");
    };
    assert_eq!((*b, *g), (bits, group_size), "{what}: bits, group size");
    assert_eq!(codes.len(), decoded.len(), "{what}: codes");
    let groups = cols / group_size;
    assert_eq!(
        scales.len(),
        decoded.len() / cols * groups,
        "{what}: scales"
    );
    assert_eq!(zero_points.len(), scales.len(), "{what}: zero points");
    for (i, &w) in decoded.iter().enumerate() {
        let (r, c) = (i / cols, i % cols);
        let (q, z, s) = (
            codes[i],
            zero_points[r * groups + c / group_size],
            scales[r * groups + c / group_size],
        );
        assert!(
            u32::from(q) < 1 << bits && u32::from(z) < 1 << bits,
            "{what}: code {q} or zero point {z} at {i}"
        );
        let runtime = half::f16::from_f32((i32::from(q) - i32::from(z)) as f32 * s.to_f32());
        assert_eq!(
            runtime.to_bits(),
            half::f16::from_f32(w).to_bits(),
            "{what}: weight {i}: ({q} − {z})·{s} vs {w}"
        );
    }
}

/// The Python interpreter with llama.cpp's `gguf` package (PyPI gguf, which ships with llama.cpp
/// as gguf-py) and numpy, from the project's `scripts/python-gguf.sh` (which installs them on
/// first use): the independent GGUF reader tests hold TenPak's blocks and files to. Panics, saying
/// why, if the script fails.
pub fn python_gguf() -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let script = root.join("scripts/python-gguf.sh");
    let output = std::process::Command::new("bash").arg(&script).output().unwrap();
    assert!(
        output.status.success(),
        "{} failed (it needs PyPI): {}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    std::path::PathBuf::from(stdout.lines().last().expect("the script prints the interpreter").trim())
}
