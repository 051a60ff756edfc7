//! Tests of the `ggml` codec: block layouts against gguf-py (llama.cpp's own Python reader), the
//! fast sweep against the plain one, error feedback against the weighted fit alone, fallbacks,
//! and the inputs that break quantizers.

use std::process::Command;

use tenpak_api::{Codec, LayerStats, NativeForm, NativeTarget, Params, WeightView};
use tenpak_codec_ggml::fit::{block_error, fit_block, nearest_codes};
use tenpak_codec_ggml::sweep::{Headers, round_to_nearest, sweep, sweep_reference};
use tenpak_codec_ggml::types::{ALL, Header};
use tenpak_codec_ggml::{Ggml, GgmlType};
use tenpak_quant::gptq::hessian::Hessian;
use tenpak_quant::gptq::sweep::InverseFactor;
use tenpak_quant::testing::{self, Rng, TestMatrix};

fn params(ty: GgmlType) -> Params {
    Params::new().with("type", ty.name())
}

/// Layer statistics of correlated, heavy-tailed activations for a `cols`-wide input.
fn stats(cols: usize, seed: u64) -> LayerStats {
    testing::stats_of(&testing::activations(4 * cols, cols, seed), cols)
}

/// A random header and codes for one block of `ty` (every field at random within its range).
fn random_block(ty: GgmlType, rng: &mut Rng) -> (Header, Vec<u8>) {
    let mut header = Header {
        d: half::f16::from_f32((rng.uniform() as f32 - 0.5) * 0.02),
        dmin: half::f16::from_f32(rng.uniform() as f32 * 0.01),
        ..Header::default()
    };
    if !ty.has_mins() && !matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1) {
        header.dmin = half::f16::ZERO;
    }
    if ty.max_sub_code() > 0 {
        for j in 0..ty.subs() {
            header.sc[j] = match ty {
                GgmlType::Q6K => (rng.next_u64() % 256) as u8,
                _ => (rng.next_u64() % (u64::from(ty.max_sub_code()) + 1)) as u8,
            };
            if ty.has_mins() {
                header.mn[j] = (rng.next_u64() % (u64::from(ty.max_sub_code()) + 1)) as u8;
            }
        }
    }
    let codes = (0..ty.block_weights())
        .map(|_| (rng.next_u64() % u64::from(ty.levels())) as u8)
        .collect();
    (header, codes)
}

/// Every type: a block written and read back gives its header and codes, and its reference
/// dequantization is the grid's value of each code, bit for bit.
#[test]
fn blocks_round_trip_and_grids_decode_as_the_reference() {
    let mut rng = Rng::new(7);
    for ty in ALL {
        for _ in 0..200 {
            let (header, codes) = random_block(ty, &mut rng);
            let mut bytes = Vec::new();
            ty.write(&header, &codes, &mut bytes);
            assert_eq!(bytes.len(), ty.block_bytes(), "{}", ty.name());
            let mut back = vec![0u8; ty.block_weights()];
            assert_eq!(ty.read(&bytes, &mut back), header, "{}", ty.name());
            assert_eq!(back, codes, "{}", ty.name());
            let mut y = vec![0f32; ty.block_weights()];
            ty.dequantize(&bytes, &mut y);
            for (i, (&v, &q)) in y.iter().zip(&codes).enumerate() {
                let grid = ty.grid(&header, i / ty.sub_len());
                assert_eq!(
                    v.to_bits(),
                    grid.value(q).to_bits(),
                    "{} weight {i}",
                    ty.name()
                );
            }
        }
    }
}

/// The nearest code is the nearest level, on every type, with exact ties to the smaller code.
#[test]
fn nearest_is_the_nearest_level() {
    let mut rng = Rng::new(8);
    for ty in ALL {
        for _ in 0..50 {
            let (header, _) = random_block(ty, &mut rng);
            for j in 0..ty.subs() {
                let grid = ty.grid(&header, j);
                for _ in 0..20 {
                    let w = (rng.uniform() as f32 - 0.5) * 2.0;
                    let q = grid.nearest(w);
                    let best = (0..grid.levels())
                        .map(|c| (w - grid.value(c as u8)).abs())
                        .fold(f32::INFINITY, f32::min);
                    assert_eq!((w - grid.value(q)).abs(), best, "{} w {w}", ty.name());
                }
            }
        }
    }
}

/// Matrices for the gguf-py check, rows of 512 (two super-blocks): LLM-like weights, and the
/// adversarial set (constant rows, a huge outlier, tiny values, denormals, mixed scales).
fn check_matrices() -> Vec<TestMatrix> {
    let mut all = testing::native_matrices();
    all.truncate(4);
    all.extend(testing::adversarial(4, 512, 21));
    all
}

/// Every type, encoded from LLM-like and adversarial matrices: gguf-py dequantizes the stored
/// blocks to exactly what the codec decodes, and the native form is those blocks.
#[test]
fn gguf_py_dequantizes_every_type_to_the_codec_decode() {
    let dir = std::env::temp_dir().join(format!("tenpak-ggml-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut jobs = Vec::new();
    let mut expected = Vec::new();
    for ty in ALL {
        for (k, m) in check_matrices().iter().enumerate() {
            let w = WeightView::new(&m.data, m.rows, m.cols).unwrap();
            let p = params(ty).with("error_feedback", false);
            let encoded = Ggml.encode(w, &LayerStats::none(), &p).unwrap();
            let decoded = Ggml.decode(&encoded).unwrap();
            let Some(NativeForm::Ggml { ggml_type, data }) =
                Ggml.native(&encoded, NativeTarget::Gguf).unwrap()
            else {
                panic!("{}: no GGML form", ty.name());
            };
            assert_eq!(ggml_type, ty.type_id());
            assert_eq!(data, encoded.part("blocks").unwrap().as_u8().unwrap());
            let file = dir.join(format!("{}-{k}.bin", ty.name()));
            std::fs::write(&file, &data).unwrap();
            jobs.push(format!(
                "{}\t{}\t{}",
                file.display(),
                ty.name().to_uppercase(),
                m.rows
            ));
            expected.push((file, decoded, format!("{} {}", ty.name(), m.name)));
        }
    }
    let list = dir.join("jobs.txt");
    std::fs::write(&list, jobs.join("\n")).unwrap();
    let script = r#"
import sys, numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize
for line in open(sys.argv[1]).read().splitlines():
    path, name, rows = line.split("\t")
    data = np.fromfile(path, dtype=np.uint8).reshape(int(rows), -1)
    dequantize(data, T[name]).astype(np.float32).tofile(path + ".f32")
"#;
    let output = Command::new(testing::python_gguf())
        .arg("-c")
        .arg(script)
        .arg(&list)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "gguf-py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    for (file, decoded, what) in expected {
        let raw = std::fs::read(file.with_extension("bin.f32")).unwrap();
        let values: Vec<f32> = raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(values.len(), decoded.len(), "{what}");
        if let Some(i) = (0..values.len()).find(|&i| values[i].to_bits() != decoded[i].to_bits()) {
            panic!(
                "{what}: gguf-py gives {} at weight {i}, the codec decodes {}",
                values[i], decoded[i]
            );
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// The weighted header fit is never worse, on its own objective, than llama.cpp's plain choice
/// (`d = max / −nmax` for the symmetric types, min/max for the others) rounded to nearest.
#[test]
fn weighted_fit_beats_the_plain_header() {
    let m = testing::llm_like(16, 512, 3);
    let h: Vec<f32> = stats(512, 4).hessian_diag.unwrap();
    for ty in ALL {
        let bw = ty.block_weights();
        let (mut fitted, mut plain) = (0f64, 0f64);
        for (b, x) in m.data.chunks_exact(bw).enumerate() {
            let hb = &h[(b * bw) % 512..(b * bw) % 512 + bw];
            let header = fit_block(ty, x, hb);
            fitted += block_error(ty, x, hb, &header);
            plain += block_error(ty, x, hb, &plain_header(ty, x));
        }
        assert!(
            fitted <= plain,
            "{}: weighted fit {fitted:.4e} vs plain {plain:.4e}",
            ty.name()
        );
        eprintln!(
            "{}: weighted error {:.4} of the plain header's",
            ty.name(),
            fitted / plain
        );
    }
}

/// The simplest header of each type: llama.cpp's reference quantizers without a search.
fn plain_header(ty: GgmlType, x: &[f32]) -> Header {
    let mut header = fit_block(ty, x, &vec![1.0; x.len()]);
    let amax = x
        .iter()
        .fold(0f32, |a, &v| if v.abs() > a.abs() { v } else { a });
    if matches!(ty, GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0) {
        let half = f32::from(ty.levels() / 2);
        header.d = half::f16::from_f32(amax / -half);
    }
    if ty == GgmlType::Iq4Nl {
        header.d = half::f16::from_f32(amax / -127.0);
    }
    header
}

/// The fast sweep (lazy batches, rows in parallel chunks) chooses the codes the plain
/// one-column-at-a-time sweep chooses, with either kind of headers, on every type.
#[test]
fn fast_sweep_matches_the_reference_sweep() {
    let cols = 512;
    let st = stats(cols, 5);
    let hessian = Hessian::from_stats(&st, cols).unwrap();
    let factor = InverseFactor::new(&hessian, 0.01).unwrap();
    let h = st.hessian_diag.clone().unwrap();
    let m = testing::llm_like(40, cols, 6);
    for ty in ALL {
        let rtn = round_to_nearest(ty, &m.data, cols, &h);
        for (kind, headers) in [
            ("dynamic", Headers::Dynamic),
            ("static", Headers::Static(&rtn.headers)),
        ] {
            let reference = sweep_reference(ty, &m.data, cols, &h, &factor, headers);
            for block_size in [64, 128, 512] {
                let fast = sweep(ty, &m.data, cols, &h, &factor, headers, block_size);
                let differ = fast
                    .codes
                    .iter()
                    .zip(&reference.codes)
                    .filter(|(a, b)| a != b)
                    .count();
                // The two apply the same updates in another order; a code may flip where the
                // updated weight lands within rounding of a level boundary.
                assert!(
                    differ * 2000 <= fast.codes.len(),
                    "{} {kind} block {block_size}: {differ} of {} codes differ",
                    ty.name(),
                    fast.codes.len()
                );
                let (a, b): (f64, f64) = (
                    fast.row_errors.iter().sum(),
                    reference.row_errors.iter().sum(),
                );
                assert!(
                    (a - b).abs() <= 1e-3 * b,
                    "{} {kind}: error {a} vs {b}",
                    ty.name()
                );
            }
        }
    }
}

/// Error feedback lowers the layer's output error `tr(E G Eᵀ)` well below the weighted fit
/// alone on correlated activations, for every type; the record says so.
#[test]
fn error_feedback_lowers_the_output_error() {
    let (rows, cols) = (64, 512);
    let st = stats(cols, 9);
    let m = testing::llm_like(rows, cols, 10);
    for ty in ALL {
        let w = WeightView::new(&m.data, rows, cols).unwrap();
        let report = Ggml.encode_report(w, &st, &params(ty)).unwrap();
        let ratio = report.output_error / report.rtn_output_error;
        eprintln!(
            "{}: error feedback {ratio:.3} of the weighted fit's output error",
            ty.name()
        );
        assert!(ratio < 0.8, "{}: output error ratio {ratio}", ty.name());
        let rel = report
            .encoded
            .params
            .float_or("output_error", -1.0)
            .unwrap();
        assert!(
            rel > 0.0 && rel < 1.0,
            "{}: recorded output_error {rel}",
            ty.name()
        );
        assert_eq!(report.ty, ty);
    }
}

/// Rows that are not whole super-blocks take llama.cpp's fallback type, recorded as the stored
/// type; without fallback, or where no type fits, the error names the type and the row length.
#[test]
fn fallbacks_and_shape_errors() {
    let m = testing::llm_like(8, 576, 12);
    let w = WeightView::new(&m.data, 8, 576).unwrap();
    for (ty, expect) in [
        (GgmlType::Q4K, GgmlType::Q5_0),
        (GgmlType::Q5K, GgmlType::Q5_1),
        (GgmlType::Q6K, GgmlType::Q8_0),
        (GgmlType::Q3K, GgmlType::Q4_0),
        (GgmlType::Q2K, GgmlType::Q4_0),
        (GgmlType::Iq4Xs, GgmlType::Iq4Nl),
    ] {
        let p = params(ty).with("error_feedback", false);
        let encoded = Ggml.encode(w, &LayerStats::none(), &p).unwrap();
        assert_eq!(encoded.params.str_or("type", "").unwrap(), expect.name());
        let decoded = Ggml.decode(&encoded).unwrap();
        assert_eq!(decoded.len(), m.data.len());
        let err = Ggml
            .encode(w, &LayerStats::none(), &p.with("fallback", false))
            .unwrap_err();
        assert!(
            err.message().contains("576") && err.message().contains(ty.name()),
            "{err}"
        );
    }
    let odd = testing::gaussian(4, 48, 1);
    let w = WeightView::new(&odd.data, 4, 48).unwrap();
    let err = Ggml
        .encode(
            w,
            &LayerStats::none(),
            &params(GgmlType::Q4K).with("error_feedback", false),
        )
        .unwrap_err();
    assert!(
        err.message().contains("48") && err.message().contains("q5_0"),
        "{err}"
    );
    let err = Ggml
        .encode(
            w,
            &LayerStats::none(),
            &params(GgmlType::Q4_0).with("error_feedback", false),
        )
        .unwrap_err();
    assert!(
        err.message().contains("48") && err.message().contains("q4_0"),
        "{err}"
    );
}

/// NaN and infinity are refused by name; error feedback without the Gram matrix is a missing
/// statistic; an unknown type lists the known ones.
#[test]
fn bad_inputs_are_clear_errors() {
    let mut m = testing::gaussian(2, 32, 2);
    m.data[5] = f32::NAN;
    let w = WeightView::new(&m.data, 2, 32).unwrap();
    let err = Ggml
        .encode(
            w,
            &LayerStats::none(),
            &params(GgmlType::Q4_0).with("error_feedback", false),
        )
        .unwrap_err();
    assert!(
        err.message().to_lowercase().contains("nan") || err.message().contains("finite"),
        "{err}"
    );
    let ok = testing::gaussian(2, 32, 2);
    let w = WeightView::new(&ok.data, 2, 32).unwrap();
    let err = Ggml
        .encode(w, &LayerStats::none(), &params(GgmlType::Q4_0))
        .unwrap_err();
    assert_eq!(err.kind(), tenpak_api::ErrorKind::MissingStats, "{err}");
    let err = Ggml
        .validate(&Params::new().with("type", "q4_z"))
        .unwrap_err();
    assert!(
        err.message().contains("q4_k") && err.message().contains("q4_z"),
        "{err}"
    );
}

/// Constant rows, a single block, a single huge outlier: each weight within half a step of its
/// level where the grid covers it, constant blocks exact where the type can hold them, and no
/// NaN anywhere.
#[test]
fn constant_rows_single_blocks_and_outliers() {
    for ty in ALL {
        let bw = ty.block_weights();
        let mut data = vec![0.25f32; bw];
        data.extend(vec![0.0f32; bw]);
        let mut spike = testing::gaussian(1, bw, 3).data;
        spike[bw / 3] = 300.0;
        data.extend(&spike);
        let w = WeightView::new(&data, 3, bw).unwrap();
        let encoded = Ggml
            .encode(
                w,
                &LayerStats::none(),
                &params(ty).with("error_feedback", false),
            )
            .unwrap();
        let decoded = Ggml.decode(&encoded).unwrap();
        assert!(decoded.iter().all(|v| v.is_finite()), "{}", ty.name());
        // A zero row decodes to zero on every type.
        assert!(
            decoded[bw..2 * bw].iter().all(|&v| v == 0.0),
            "{}: zero row",
            ty.name()
        );
        // A constant row: within 1 % (f16 scales and integer sub-scales).
        for &v in &decoded[..bw] {
            assert!(
                (v - 0.25).abs() <= 0.0025 + 1e-6,
                "{}: constant 0.25 decodes to {v}",
                ty.name()
            );
        }
        // The outlier keeps its magnitude within one step of the block's grid.
        let o = decoded[2 * bw + bw / 3];
        assert!(
            (o - 300.0).abs() <= 300.0 * 0.08,
            "{}: outlier 300 decodes to {o}",
            ty.name()
        );
        // The codes the decode implies are the nearest ones under the stored headers.
        let bytes = encoded.part("blocks").unwrap().as_u8().unwrap();
        let mut codes = vec![0u8; bw];
        let header = ty.read(
            &bytes[2 * ty.block_bytes()..3 * ty.block_bytes()],
            &mut codes,
        );
        let mut nearest = vec![0u8; bw];
        nearest_codes(ty, &header, &spike, &mut nearest);
        assert_eq!(codes, nearest, "{}", ty.name());
    }
}
