//! `keep` and `int8`: error bounds from each format, exact sizes, the GGUF native forms, errors
//! for bad inputs and damaged data.

mod util;

use tenpak_api::{Codec, DType, ErrorKind, LayerStats, NativeTarget, Params, WeightView};
use tenpak_codec_basic::{Int8, Keep, int8_stored_bits, keep_stored_bits};
use tenpak_quant::ggml::{TYPE_BF16, TYPE_F16, TYPE_F32, TYPE_Q8_0};
use tenpak_quant::testing::{assert_ggml_decodes_to, native_matrices};
use util::{encode, matrices, stored_bytes};

fn dtype(name: &str) -> Params {
    Params::new().with("dtype", name)
}

#[test]
fn keep_f32_is_exact() {
    for m in matrices() {
        let encoded = encode(&Keep, &m, &dtype("f32"));
        let decoded = Keep.decode(&encoded).unwrap();
        assert!(
            m.data
                .iter()
                .zip(&decoded)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{}",
            m.name
        );
    }
}

/// f16 / bf16 round to nearest: half an ulp relative to |w| (10 and 7 fraction bits), or half
/// the subnormal step in absolute terms (2^-24 for f16; 2^-133 for bf16, whose subnormals have
/// f32's exponent but only 7 fraction bits).
#[test]
fn keep_f16_and_bf16_round_to_nearest() {
    for m in matrices() {
        for (name, rel, abs) in [
            ("f16", 2f32.powi(-11), 2f32.powi(-25)),
            ("bf16", 2f32.powi(-8), f32::from_bits(0x8000)),
        ] {
            let encoded = match Keep.encode(
                WeightView::new(&m.data, m.rows, m.cols).unwrap(),
                &LayerStats::none(),
                &dtype(name),
            ) {
                Ok(e) => e,
                // Only values beyond f16's range may be refused, and only by f16.
                Err(err) => {
                    assert!(
                        name == "f16" && m.data.iter().any(|v| v.abs() > 65504.0),
                        "{} {name}: {err}",
                        m.name
                    );
                    continue;
                }
            };
            let decoded = Keep.decode(&encoded).unwrap();
            for (&w, &w_hat) in m.data.iter().zip(&decoded) {
                assert!(
                    (w - w_hat).abs() <= (rel * w.abs()).max(abs),
                    "{} {name}: {w} -> {w_hat}",
                    m.name
                );
            }
        }
    }
}

#[test]
fn keep_sizes_are_exact_and_default_is_f16() {
    for m in matrices() {
        for (name, dt) in [
            ("f32", DType::F32),
            ("f16", DType::F16),
            ("bf16", DType::BF16),
        ] {
            let encoded = encode(&Keep, &m, &dtype(name));
            assert_eq!(Keep.size_bits(&encoded), 8 * stored_bytes(&encoded));
            assert_eq!(
                Keep.size_bits(&encoded),
                keep_stored_bits(m.rows, m.cols, dt)
            );
            assert_eq!(encoded.parts[0].dtype, dt);
        }
        let encoded = encode(&Keep, &m, &Params::new());
        assert_eq!(
            (
                encoded.parts[0].dtype,
                encoded.params.str_or("dtype", "").unwrap()
            ),
            (DType::F16, "f16")
        );
    }
}

#[test]
fn keep_refuses_values_that_would_become_infinite() {
    let mut data = vec![0.5f32; 3 * 10];
    data[2 * 10 + 7] = 70000.0;
    let view = WeightView::new(&data, 3, 10).unwrap();
    let err = Keep
        .encode(view, &LayerStats::none(), &dtype("f16"))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(
        err.message().contains("row 2, column 7") && err.message().contains("f16"),
        "{err}"
    );
    assert!(
        Keep.encode(view, &LayerStats::none(), &dtype("bf16"))
            .is_ok()
    );
    data[2 * 10 + 7] = f32::MAX;
    let view = WeightView::new(&data, 3, 10).unwrap();
    let err = Keep
        .encode(view, &LayerStats::none(), &dtype("bf16"))
        .unwrap_err();
    assert!(
        err.message().contains("row 2, column 7") && err.message().contains("bf16"),
        "{err}"
    );
    assert!(
        Keep.encode(view, &LayerStats::none(), &dtype("f32"))
            .is_ok()
    );
}

/// int8: every weight within half a step of the grid, nothing clipped, codes in [−127, 127].
#[test]
fn int8_round_trip_error_is_within_half_a_step() {
    for m in matrices() {
        for group_size in [0, 8, 32, 100, m.cols, m.cols + 3] {
            let encoded = encode(&Int8, &m, &Params::new().with("group_size", group_size));
            let decoded = Int8.decode(&encoded).unwrap();
            let scales = encoded.part("scales").unwrap().to_f16().unwrap();
            let codes = &encoded.part("codes").unwrap().data;
            assert!(
                codes.iter().all(|&c| c as i8 >= -127),
                "{}: code -128",
                m.name
            );
            let effective = if group_size == 0 { m.cols } else { group_size };
            let groups_per_row = m.cols.div_ceil(effective);
            assert_eq!(scales.len(), m.rows * groups_per_row);
            for row in 0..m.rows {
                for col in 0..m.cols {
                    let scale = scales[row * groups_per_row + col / effective].to_f32();
                    let (w, w_hat) = (m.data[row * m.cols + col], decoded[row * m.cols + col]);
                    assert!(
                        w.abs() <= 127.0 * scale,
                        "{} g{group_size}: {w} clipped by scale {scale}",
                        m.name
                    );
                    let slack = 2.0 * f32::EPSILON * w.abs();
                    assert!(
                        (w - w_hat).abs() <= scale / 2.0 + slack,
                        "{} g{group_size} [{row}, {col}]: {w} -> {w_hat}",
                        m.name
                    );
                }
            }
        }
    }
}

#[test]
fn int8_sizes_are_exact() {
    for m in matrices() {
        for group_size in [0, 8, 32, 100, m.cols, m.cols + 3] {
            let encoded = encode(&Int8, &m, &Params::new().with("group_size", group_size));
            let bits = Int8.size_bits(&encoded);
            assert_eq!(bits, 8 * stored_bytes(&encoded));
            assert_eq!(bits, int8_stored_bits(m.rows, m.cols, group_size));
            let groups = if group_size == 0 {
                1
            } else {
                m.cols.div_ceil(group_size)
            };
            assert_eq!(bits, (m.rows * (8 * m.cols + 16 * groups)) as u64);
        }
    }
}

#[test]
fn non_finite_weights_are_refused_with_their_position() {
    for codec in [&Keep as &dyn Codec, &Int8] {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut data = vec![0.25f32; 4 * 9];
            data[3 * 9 + 1] = bad;
            let view = WeightView::new(&data, 4, 9).unwrap();
            let err = codec
                .encode(view, &LayerStats::none(), &Params::new())
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{}", codec.id());
            assert!(
                err.message().contains("row 3") && err.message().contains("column 1"),
                "{err}"
            );
        }
    }
}

#[test]
fn zero_size_matrices_encode_to_empty_parts() {
    for codec in [&Keep as &dyn Codec, &Int8] {
        for (rows, cols) in [(0, 0), (0, 64), (7, 0)] {
            let view = WeightView::new(&[], rows, cols).unwrap();
            let encoded = codec
                .encode(view, &LayerStats::none(), &Params::new())
                .unwrap();
            assert!(
                encoded.parts.iter().all(|p| p.data.is_empty()),
                "{} [{rows}, {cols}]",
                codec.id()
            );
            assert_eq!(codec.size_bits(&encoded), 0);
            assert!(codec.decode(&encoded).unwrap().is_empty());
        }
    }
}

#[test]
fn validate_rejects_bad_parameters() {
    assert!(
        Int8.validate(&Params::new().with("group_size", 0usize))
            .is_ok()
    );
    assert!(
        Int8.validate(&Params::new().with("group_size", 8usize))
            .is_ok()
    );
    for p in [
        Params::new().with("group_size", 5usize),
        Params::new().with("group", 64usize),
        Params::new().with("group_size", 1.5),
    ] {
        assert_eq!(
            Int8.validate(&p).unwrap_err().kind(),
            ErrorKind::InvalidParam,
            "{p:?}"
        );
    }
    for p in [
        dtype("f8"),
        Params::new().with("dtype", 16usize),
        Params::new().with("type", "f16"),
    ] {
        assert_eq!(
            Keep.validate(&p).unwrap_err().kind(),
            ErrorKind::InvalidParam,
            "{p:?}"
        );
    }
    let err = Keep.validate(&dtype("fp16")).unwrap_err();
    assert!(err.message().contains("f32, f16, bf16"), "{err}");
}

#[test]
fn damaged_encodings_are_corrupt() {
    let m = tenpak_quant::testing::gaussian(4, 50, 2);
    let keep = encode(&Keep, &m, &dtype("f16"));
    let int8 = encode(&Int8, &m, &Params::new().with("group_size", 16usize));
    let mut cases: Vec<(&dyn Codec, &str, tenpak_api::Encoded)> = Vec::new();
    let mut e = keep.clone();
    e.params = dtype("bf16");
    cases.push((&Keep, "dtype differs from the part", e));
    let mut e = keep.clone();
    e.parts[0].data.truncate(10);
    e.parts[0].shape = vec![5];
    cases.push((&Keep, "truncated", e));
    let mut e = keep.clone();
    e.shape = [5, 50];
    cases.push((&Keep, "other shape", e));
    let mut e = keep.clone();
    e.codec = "int8".into();
    cases.push((&Keep, "other codec", e));
    let mut e = int8.clone();
    e.params.set("group_size", 32usize);
    cases.push((&Int8, "other group size", e));
    let mut e = int8.clone();
    e.parts[0].dtype = DType::U8;
    cases.push((&Int8, "codes not i8", e));
    let mut e = int8.clone();
    e.parts.remove(1);
    cases.push((&Int8, "scales missing", e));
    for (codec, what, encoded) in cases {
        let err = codec.decode(&encoded).unwrap_err();
        assert_eq!(
            err.kind(),
            ErrorKind::Corrupt,
            "{} {what}: {err}",
            codec.id()
        );
    }
}

#[test]
fn encoding_is_deterministic_across_thread_counts() {
    let m = tenpak_quant::testing::llm_like(300, 576, 8);
    for (codec, p) in [
        (&Keep as &dyn Codec, dtype("bf16")),
        (&Int8, Params::new().with("group_size", 64usize)),
    ] {
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| encode(codec, &m, &p))
        };
        assert_eq!(run(1), run(2), "{}", codec.id());
    }
}

/// GGUF holds `keep`'s element types as they are: F32, F16 (the default) and BF16, which llama.cpp
/// reads back to the decode bit for bit; compressed-tensors has no native form for it.
#[test]
fn keep_native_forms_are_its_element_types() {
    for m in native_matrices().into_iter().chain(matrices()) {
        for (name, ggml_type) in [("f32", TYPE_F32), ("f16", TYPE_F16), ("bf16", TYPE_BF16)] {
            let view = WeightView::new(&m.data, m.rows, m.cols).unwrap();
            let Ok(encoded) = Keep.encode(view, &LayerStats::none(), &dtype(name)) else {
                continue; // beyond f16's range
            };
            let what = format!("{} {name}", m.name);
            let form = Keep
                .native(&encoded, NativeTarget::Gguf)
                .unwrap()
                .expect("keep has a GGUF form");
            assert_ggml_decodes_to(&form, ggml_type, &Keep.decode(&encoded).unwrap(), &what);
            let ct = NativeTarget::CompressedTensors { group_size: 32 };
            assert_eq!(Keep.native(&encoded, ct), Ok(None), "{what}");
        }
    }
    let m = &native_matrices()[0];
    let encoded = encode(&Keep, m, &Params::new());
    let form = Keep.native(&encoded, NativeTarget::Gguf).unwrap().unwrap();
    assert_ggml_decodes_to(
        &form,
        TYPE_F16,
        &Keep.decode(&encoded).unwrap(),
        "default dtype",
    );
}

/// `int8` is GGUF's Q8_0 (`d·q`, the group's scale in each of its blocks) where rows are whole
/// blocks of 32 and groups a multiple of 32 or the whole row, decoding as llama.cpp does to the
/// codec's decode bit for bit; elsewhere, and for compressed-tensors, there is none.
#[test]
fn int8_native_form_is_q8_0_where_the_blocks_fit() {
    let mut forms = 0;
    for m in native_matrices().into_iter().chain(matrices()) {
        for group_size in [0usize, 8, 32, 64, 96, 100, m.cols] {
            let view = WeightView::new(&m.data, m.rows, m.cols).unwrap();
            let p = Params::new().with("group_size", group_size);
            let Ok(encoded) = Int8.encode(view, &LayerStats::none(), &p) else {
                continue; // beyond f16's range
            };
            let what = format!("{} [{}, {}] g{group_size}", m.name, m.rows, m.cols);
            let decoded = Int8.decode(&encoded).unwrap();
            let fits = m.cols.is_multiple_of(32)
                && (group_size == 0 || group_size >= m.cols || group_size.is_multiple_of(32));
            match Int8.native(&encoded, NativeTarget::Gguf).unwrap() {
                Some(form) => {
                    assert!(fits, "{what}: a Q8_0 form where the blocks do not fit");
                    assert_ggml_decodes_to(&form, TYPE_Q8_0, &decoded, &what);
                    forms += 1;
                }
                None => assert!(!fits, "{what}: no Q8_0 form"),
            }
            let ct = NativeTarget::CompressedTensors { group_size: 32 };
            assert_eq!(Int8.native(&encoded, ct), Ok(None), "{what}");
        }
    }
    assert!(forms > 30, "{forms} forms");
}

#[test]
fn registered_under_their_ids() {
    let registry = tenpak_api::registry::Registry::from_static().unwrap();
    assert_eq!(registry.codec("keep").unwrap().id(), "keep");
    assert_eq!(registry.codec("int8").unwrap().id(), "int8");
}
