//! `int4_residual`: never worse than round-to-nearest on any group at equal bits, exact sizes
//! with and without the residual stage, the GGUF native form, errors for bad inputs and damaged
//! data.

mod util;

use tenpak_api::{Codec, ErrorKind, LayerStats, NativeTarget, Params, WeightView};
use tenpak_codec_int4_residual::{Int4Residual, REFINE_METHODS, stored_bits};
use tenpak_quant::ggml::TYPE_Q4_1;
use tenpak_quant::testing::TestMatrix;
use tenpak_quant::testing::{assert_ggml_decodes_to, native_matrices};
use tenpak_quant::{AsymFormat, AsymQuantized, FitOptions, GroupLayout};
use util::{encode, group_errors, group_sizes, matrices, stored_bytes};

fn params(group_size: usize) -> Params {
    Params::new().with("group_size", group_size)
}

/// The `int4_rtn` encoding (min/max round-to-nearest, 4 bits) of `m`: its parts and decoding.
fn rtn(m: &TestMatrix, group_size: usize) -> (Vec<tenpak_api::Part>, Vec<f32>) {
    let format = AsymFormat::new(GroupLayout::new(m.rows, m.cols, group_size).unwrap(), 4).unwrap();
    let q = AsymQuantized::quantize(&m.data, format, &FitOptions::RTN).unwrap();
    (q.to_parts("codes", "scale_min").into(), q.dequantize())
}

fn mse(m: &TestMatrix, decoded: &[f32]) -> f64 {
    m.data
        .iter()
        .zip(decoded)
        .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
        .sum::<f64>()
        / m.data.len().max(1) as f64
}

/// Stage 1 has int4_rtn's parts, byte for byte in size, so "equal bits" is exact.
#[test]
fn storage_is_exactly_int4_rtn_s() {
    for m in matrices() {
        for group_size in group_sizes(m.cols) {
            let encoded = encode(&Int4Residual, &m, &params(group_size));
            let (rtn_parts, _) = rtn(&m, group_size);
            assert_eq!(encoded.parts.len(), rtn_parts.len());
            for (ours, theirs) in encoded.parts.iter().zip(&rtn_parts) {
                assert_eq!(
                    (&ours.name, ours.dtype, &ours.shape, ours.data.len()),
                    (&theirs.name, theirs.dtype, &theirs.shape, theirs.data.len())
                );
            }
            let bits = Int4Residual.size_bits(&encoded);
            assert_eq!(bits, 8 * stored_bytes(&encoded));
            assert_eq!(bits, stored_bits(m.rows, m.cols, group_size, 0, 0));
            assert_eq!(
                bits,
                (m.rows * (8 * m.cols.div_ceil(2) + 32 * m.cols.div_ceil(group_size))) as u64
            );
        }
    }
}

/// Every refine method, on every group of every matrix: squared error ≤ round-to-nearest's.
#[test]
fn no_group_is_worse_than_round_to_nearest() {
    for m in matrices() {
        for group_size in group_sizes(m.cols) {
            let (_, rtn_decoded) = rtn(&m, group_size);
            let rtn_errors = group_errors(&m, &rtn_decoded, group_size);
            for refine in REFINE_METHODS {
                let p = params(group_size).with("refine", *refine);
                let decoded = Int4Residual.decode(&encode(&Int4Residual, &m, &p)).unwrap();
                assert!(decoded.iter().all(|v| v.is_finite()), "{} {refine}", m.name);
                for (g, (ours, theirs)) in group_errors(&m, &decoded, group_size)
                    .iter()
                    .zip(&rtn_errors)
                    .enumerate()
                {
                    assert!(
                        ours <= theirs,
                        "{} g{group_size} {refine}: group {g} error {ours} > rtn {theirs}",
                        m.name
                    );
                }
            }
        }
    }
}

/// On weights that do not already sit on a grid, the default clearly improves on RTN.
#[test]
fn default_search_lowers_error_on_random_and_heavy_tailed_weights() {
    for m in matrices().into_iter().take(4) {
        for group_size in [32, 64, 128] {
            let (_, rtn_decoded) = rtn(&m, group_size);
            let ours = Int4Residual
                .decode(&encode(&Int4Residual, &m, &params(group_size)))
                .unwrap();
            let ratio = mse(&m, &ours) / mse(&m, &rtn_decoded);
            assert!(
                ratio < 0.95,
                "{} g{group_size}: mse ratio to rtn {ratio}",
                m.name
            );
        }
    }
}

#[test]
fn refine_none_is_int4_rtn_byte_for_byte() {
    for m in matrices() {
        let encoded = encode(&Int4Residual, &m, &params(64).with("refine", "none"));
        let (rtn_parts, _) = rtn(&m, 64);
        assert_eq!(encoded.parts, rtn_parts, "{}", m.name);
    }
}

/// The residual stage's parts are counted, decoding adds it onto stage 1, and it lowers the error.
#[test]
fn residual_stage_is_counted_added_and_helpful() {
    for m in matrices().into_iter().take(4) {
        let plain = encode(&Int4Residual, &m, &params(64));
        let stage1 = Int4Residual.decode(&plain).unwrap();
        for (bits, residual_group_size) in
            [(1u32, 64usize), (2, 128), (2, 33), (4, 256), (8, m.cols)]
        {
            let p = params(64)
                .with("residual_bits", bits as usize)
                .with("residual_group_size", residual_group_size);
            let encoded = encode(&Int4Residual, &m, &p);
            let ctx = format!("{} r{bits} rg{residual_group_size}", m.name);
            let size = Int4Residual.size_bits(&encoded);
            assert_eq!(size, 8 * stored_bytes(&encoded), "{ctx}");
            assert_eq!(
                size,
                stored_bits(m.rows, m.cols, 64, bits, residual_group_size),
                "{ctx}"
            );
            assert_eq!(
                size - Int4Residual.size_bits(&plain),
                (m.rows
                    * (8 * (m.cols * bits as usize).div_ceil(8)
                        + 32 * m.cols.div_ceil(residual_group_size))) as u64,
                "{ctx}"
            );
            // Stage 1 is unchanged by the residual stage.
            assert_eq!(encoded.parts[..2], plain.parts[..], "{ctx}");
            // Decoding = stage 1 + residual, in that order.
            let format = AsymFormat::new(
                GroupLayout::new(m.rows, m.cols, residual_group_size).unwrap(),
                bits,
            )
            .unwrap();
            let residual = AsymQuantized::from_parts(
                format,
                encoded.part("residual_codes").unwrap(),
                encoded.part("residual_scale_min").unwrap(),
            )
            .unwrap();
            let mut expected = stage1.clone();
            residual.dequantize_add(&mut expected).unwrap();
            let decoded = Int4Residual.decode(&encoded).unwrap();
            assert!(
                decoded
                    .iter()
                    .zip(&expected)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{ctx}"
            );
            // Each extra bit of residual should buy at least a factor 2 in squared error
            // (an ideal uniform quantizer buys 4).
            let ratio = mse(&m, &decoded) / mse(&m, &stage1);
            assert!(
                ratio < 0.5f64.powi(bits as i32).max(1e-3) * 1.5,
                "{ctx}: mse ratio {ratio}"
            );
        }
    }
}

/// The residual stage never makes things worse, even where stage 1 is already exact.
#[test]
fn residual_stage_never_hurts_adversarial_inputs() {
    for m in matrices() {
        let p = params(32)
            .with("residual_bits", 1usize)
            .with("residual_group_size", 64usize);
        let with = Int4Residual.decode(&encode(&Int4Residual, &m, &p)).unwrap();
        let without = Int4Residual
            .decode(&encode(&Int4Residual, &m, &params(32)))
            .unwrap();
        assert!(with.iter().all(|v| v.is_finite()), "{}", m.name);
        let (a, b) = (mse(&m, &with), mse(&m, &without));
        assert!(a <= b * (1.0 + 1e-6) + 1e-30, "{}: {a} > {b}", m.name);
    }
}

#[test]
fn recorded_parameters_reproduce_the_encoding() {
    let m = tenpak_quant::testing::llm_like(16, 200, 9);
    let encoded = encode(
        &Int4Residual,
        &m,
        &Params::new().with("residual_bits", 2usize),
    );
    for key in [
        "group_size",
        "refine",
        "iterations",
        "search_steps",
        "residual_bits",
        "residual_group_size",
    ] {
        assert!(encoded.params.get(key).is_some(), "{key} not recorded");
    }
    assert_eq!(encoded.params.str_or("refine", "").unwrap(), "search");
    assert_eq!(encode(&Int4Residual, &m, &encoded.params), encoded);
}

#[test]
fn non_finite_weights_are_refused_with_their_position() {
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut m = tenpak_quant::testing::gaussian(3, 50, 1);
        m.data[50 + 49] = bad;
        let view = WeightView::new(&m.data, 3, 50).unwrap();
        let err = Int4Residual
            .encode(view, &LayerStats::none(), &params(16))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(
            err.message().contains("row 1") && err.message().contains("column 49"),
            "{err}"
        );
    }
}

#[test]
fn zero_size_matrices_encode_to_empty_parts() {
    for (rows, cols) in [(0, 0), (0, 64), (7, 0)] {
        let view = WeightView::new(&[], rows, cols).unwrap();
        let p = params(8).with("residual_bits", 2usize);
        let encoded = Int4Residual.encode(view, &LayerStats::none(), &p).unwrap();
        assert_eq!(encoded.parts.len(), 4);
        assert!(
            encoded.parts.iter().all(|p| p.data.is_empty()),
            "[{rows}, {cols}]"
        );
        assert_eq!(Int4Residual.size_bits(&encoded), 0);
        assert!(Int4Residual.decode(&encoded).unwrap().is_empty());
    }
}

#[test]
fn validate_rejects_bad_parameters() {
    assert!(Int4Residual.validate(&Params::new()).is_ok());
    for method in REFINE_METHODS {
        assert!(
            Int4Residual
                .validate(&Params::new().with("refine", *method))
                .is_ok()
        );
    }
    let bad = [
        (params(7), "group_size"),
        (Params::new().with("refine", "fancy"), "search, lsq_iter"),
        (Params::new().with("refine", true), "refine"),
        (Params::new().with("iterations", 1000usize), "iterations"),
        (Params::new().with("search_steps", 0usize), "search_steps"),
        (Params::new().with("residual_bits", 9usize), "residual_bits"),
        (
            Params::new().with("residual_group_size", 4usize),
            "residual_group_size",
        ),
        (Params::new().with("residual", 2usize), "`residual`"),
    ];
    for (p, mentions) in bad {
        let err = Int4Residual.validate(&p).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidParam, "{p:?}");
        assert!(err.message().contains(mentions), "{p:?}: {err}");
    }
}

#[test]
fn damaged_encodings_are_corrupt() {
    let m = tenpak_quant::testing::gaussian(4, 100, 3);
    let good = encode(
        &Int4Residual,
        &m,
        &params(32)
            .with("residual_bits", 2usize)
            .with("residual_group_size", 64usize),
    );
    let mut cases = Vec::new();
    let mut e = good.clone();
    e.parts.truncate(2);
    cases.push(("residual parts missing", e));
    let mut e = good.clone();
    e.params.set("residual_bits", 0usize);
    cases.push(("residual parts unexpected", e));
    let mut e = good.clone();
    e.params.set("residual_bits", 3usize);
    cases.push(("other residual width", e));
    let mut e = good.clone();
    e.parts[2].data.pop();
    e.parts[2].shape = vec![e.parts[2].data.len()];
    cases.push(("truncated residual codes", e));
    let mut e = good.clone();
    e.parts[1].data.extend([0, 0, 0, 0]);
    e.parts[1].shape = vec![e.parts[1].data.len() / 2];
    cases.push(("long scale_min", e));
    let mut e = good.clone();
    e.params.set("refine", "magic");
    cases.push(("unknown refine", e));
    let mut e = good.clone();
    e.codec = "int4_rtn".into();
    cases.push(("other codec", e));
    for (what, encoded) in cases {
        let err = Int4Residual.decode(&encoded).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{what}: {err}");
    }
}

#[test]
fn encoding_is_deterministic_across_thread_counts() {
    let m = tenpak_quant::testing::llm_like(48, 576, 12);
    let p = params(64).with("residual_bits", 2usize);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| encode(&Int4Residual, &m, &p))
    };
    let one = run(1);
    assert_eq!(one, run(2));
    assert_eq!(one, run(2));
}

/// Stage 1 alone has GGUF's Q4_1 as its native form where rows are whole blocks of 32 and groups
/// a multiple of 32 or the whole row, decoding as llama.cpp does to the codec's decode bit for
/// bit, for every range-fit method; a residual stage (a sum of two grids) has none, nor has
/// compressed-tensors.
#[test]
fn native_form_is_q4_1_for_stage_1_alone() {
    for m in native_matrices().into_iter().chain([matrices().remove(0)]) {
        for group_size in [32, 64, 100, m.cols] {
            for refine in REFINE_METHODS {
                let what = format!("{} [{}, {}] g{group_size} {refine}", m.name, m.rows, m.cols);
                let p = params(group_size).with("refine", *refine);
                let encoded = encode(&Int4Residual, &m, &p);
                let decoded = Int4Residual.decode(&encoded).unwrap();
                let fits = m.cols.is_multiple_of(32)
                    && (group_size.is_multiple_of(32) || group_size >= m.cols);
                match Int4Residual.native(&encoded, NativeTarget::Gguf).unwrap() {
                    Some(form) => {
                        assert!(fits, "{what}: a Q4_1 form where the blocks do not fit");
                        assert_ggml_decodes_to(&form, TYPE_Q4_1, &decoded, &what);
                    }
                    None => assert!(!fits, "{what}: no Q4_1 form"),
                }
                let ct = NativeTarget::CompressedTensors { group_size: 32 };
                assert_eq!(Int4Residual.native(&encoded, ct), Ok(None), "{what}");
            }
            let with_residual = encode(
                &Int4Residual,
                &m,
                &params(group_size).with("residual_bits", 2usize),
            );
            assert_eq!(
                Int4Residual.native(&with_residual, NativeTarget::Gguf),
                Ok(None),
                "{} residual",
                m.name
            );
        }
    }
}

#[test]
fn registered_under_its_id() {
    let registry = tenpak_api::registry::Registry::from_static().unwrap();
    assert_eq!(
        registry.codec("int4_residual").unwrap().id(),
        "int4_residual"
    );
}
