//! `int4_rtn`: error bound from the grid, exact sizes, the GGUF native form, errors for bad
//! inputs and damaged data.

mod util;

use tenpak_api::{Codec, ErrorKind, LayerStats, NativeTarget, Params, WeightView};
use tenpak_codec_int4_rtn::{Int4Rtn, stored_bits};
use tenpak_quant::ggml::TYPE_Q4_1;
use tenpak_quant::testing::{assert_ggml_decodes_to, native_matrices};
use util::{encode, group_sizes, headers, matrices, stored_bytes};

fn params(group_size: usize) -> Params {
    Params::new().with("group_size", group_size)
}

/// Every group's grid covers the group, and every weight decodes within half a step.
#[test]
fn round_trip_error_is_within_half_a_step() {
    for m in matrices() {
        for group_size in group_sizes(m.cols) {
            let encoded = encode(&Int4Rtn, &m, &params(group_size));
            let decoded = Int4Rtn.decode(&encoded).unwrap();
            let headers = headers(&encoded, "scale_min");
            let groups_per_row = m.cols.div_ceil(group_size);
            assert_eq!(headers.len(), m.rows * groups_per_row);
            for row in 0..m.rows {
                for col in 0..m.cols {
                    let (scale, min) = headers[row * groups_per_row + col / group_size];
                    let (w, w_hat) = (m.data[row * m.cols + col], decoded[row * m.cols + col]);
                    // f32 rounding of `scale · q + min`, relative to the magnitudes involved.
                    let slack = 4.0 * f32::EPSILON * (w.abs() + min.abs() + 15.0 * scale);
                    assert!(
                        scale >= 0.0 && w >= min && w <= min + 15.0 * scale + slack,
                        "{} g{group_size}: grid [{min}, {min} + 15 * {scale}] misses {w}",
                        m.name
                    );
                    assert!(
                        (w - w_hat).abs() <= scale / 2.0 + slack,
                        "{} g{group_size} [{row}, {col}]: {w} decoded as {w_hat}, step {scale}",
                        m.name
                    );
                }
            }
        }
    }
}

#[test]
fn size_bits_equal_stored_bytes_and_the_closed_form() {
    for m in matrices() {
        for group_size in group_sizes(m.cols) {
            let encoded = encode(&Int4Rtn, &m, &params(group_size));
            let bits = Int4Rtn.size_bits(&encoded);
            assert_eq!(bits, 8 * stored_bytes(&encoded), "{} g{group_size}", m.name);
            assert_eq!(
                bits,
                stored_bits(m.rows, m.cols, group_size),
                "{} g{group_size}",
                m.name
            );
            assert_eq!(
                bits,
                (m.rows * (8 * m.cols.div_ceil(2) + 32 * m.cols.div_ceil(group_size))) as u64,
                "{} g{group_size}",
                m.name
            );
        }
    }
    // 4 + 32/g bits per weight when g divides an even row.
    let m = tenpak_quant::testing::gaussian(4, 512, 0);
    let encoded = encode(&Int4Rtn, &m, &Params::new());
    assert_eq!(Int4Rtn.size_bits(&encoded) as f64 / (4.0 * 512.0), 4.25);
}

#[test]
fn default_group_size_is_128_and_recorded() {
    let m = tenpak_quant::testing::gaussian(2, 300, 0);
    let encoded = encode(&Int4Rtn, &m, &Params::new());
    assert_eq!(encoded.params.usize_or("group_size", 0).unwrap(), 128);
    assert_eq!(headers(&encoded, "scale_min").len(), 2 * 3);
}

#[test]
fn non_finite_weights_are_refused_with_their_position() {
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut m = tenpak_quant::testing::gaussian(4, 40, 1);
        m.data[2 * 40 + 5] = bad;
        let view = WeightView::new(&m.data, 4, 40).unwrap();
        let err = Int4Rtn
            .encode(view, &LayerStats::none(), &params(8))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(
            err.message().contains("row 2") && err.message().contains("column 5"),
            "{err}"
        );
    }
}

#[test]
fn ranges_beyond_f16_are_refused_not_wrapped() {
    let mut m = tenpak_quant::testing::gaussian(3, 64, 1);
    m.data[64 + 40] = 3e6;
    let view = WeightView::new(&m.data, 3, 64).unwrap();
    let err = Int4Rtn
        .encode(view, &LayerStats::none(), &params(32))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.message().contains("row 1, columns 32..64"), "{err}");
}

#[test]
fn zero_size_matrices_encode_to_empty_parts() {
    for (rows, cols) in [(0, 0), (0, 64), (7, 0)] {
        let view = WeightView::new(&[], rows, cols).unwrap();
        let encoded = Int4Rtn
            .encode(view, &LayerStats::none(), &params(8))
            .unwrap();
        assert!(
            encoded.parts.iter().all(|p| p.data.is_empty()),
            "[{rows}, {cols}]"
        );
        assert_eq!(Int4Rtn.size_bits(&encoded), 0);
        assert!(Int4Rtn.decode(&encoded).unwrap().is_empty());
    }
}

#[test]
fn validate_rejects_small_groups_unknown_keys_and_wrong_types() {
    assert!(Int4Rtn.validate(&params(8)).is_ok());
    assert!(Int4Rtn.validate(&Params::new()).is_ok());
    for bad in [
        params(7),
        params(0),
        Params::new().with("groupsize", 128usize),
        Params::new().with("group_size", "128"),
        Params::new().with("group_size", -64i64),
    ] {
        let err = Int4Rtn.validate(&bad).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidParam, "{bad:?}");
        let m = tenpak_quant::testing::gaussian(2, 16, 0);
        let view = WeightView::new(&m.data, 2, 16).unwrap();
        assert_eq!(
            Int4Rtn
                .encode(view, &LayerStats::none(), &bad)
                .unwrap_err()
                .kind(),
            ErrorKind::InvalidParam
        );
    }
    let err = Int4Rtn
        .validate(&Params::new().with("groupsize", 128usize))
        .unwrap_err();
    assert!(
        err.message().contains("`groupsize`") && err.message().contains("group_size"),
        "{err}"
    );
}

/// Damaged encodings are reported as corrupt, never decoded into garbage or a panic.
#[test]
fn damaged_encodings_are_corrupt() {
    let m = tenpak_quant::testing::gaussian(4, 100, 3);
    let good = encode(&Int4Rtn, &m, &params(32));
    let mut cases = Vec::new();

    let mut e = good.clone();
    e.parts[0].data.pop();
    e.parts[0].shape = vec![e.parts[0].data.len()];
    cases.push(("truncated codes", e));
    let mut e = good.clone();
    e.parts[1].data.truncate(8);
    e.parts[1].shape = vec![4];
    cases.push(("truncated scale_min", e));
    let mut e = good.clone();
    e.parts.pop();
    cases.push(("missing part", e));
    let mut e = good.clone();
    e.parts
        .push(tenpak_api::Part::from_u8("extra", vec![1, 2, 3]));
    cases.push(("extra part", e));
    let mut e = good.clone();
    e.params = params(64);
    cases.push(("other group size", e));
    let mut e = good.clone();
    e.params = params(4);
    cases.push(("invalid group size", e));
    let mut e = good.clone();
    e.params = Params::new().with("group_size", "32");
    cases.push(("mistyped group size", e));
    let mut e = good.clone();
    e.shape = [4, 101];
    cases.push(("other shape", e));
    let mut e = good.clone();
    e.parts[1].dtype = tenpak_api::DType::BF16;
    cases.push(("wrong dtype", e));
    let mut e = good.clone();
    e.codec = "int4_residual".into();
    cases.push(("other codec", e));

    for (what, encoded) in cases {
        let err = Int4Rtn.decode(&encoded).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{what}: {err}");
    }
    assert_eq!(Int4Rtn.decode(&good).unwrap().len(), 400);
}

#[test]
fn encoding_is_deterministic_across_thread_counts() {
    let m = tenpak_quant::testing::llm_like(64, 576, 11);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| encode(&Int4Rtn, &m, &params(64)))
    };
    let one = run(1);
    assert_eq!(one, run(2));
    assert_eq!(one, run(2));
}

/// The GGUF native form is Q4_1 (the same grid) where rows are whole blocks of 32 and groups a
/// multiple of 32 or the whole row, and llama.cpp's dequantization of it is the decode, bit for
/// bit, on random and adversarial matrices; elsewhere, and for compressed-tensors (integer zero
/// points), there is none.
#[test]
fn native_form_is_q4_1_where_the_blocks_fit() {
    let mut forms = 0;
    for m in native_matrices().into_iter().chain(matrices()) {
        for group_size in [32, 64, 100, 128, m.cols, m.cols + 7] {
            let what = format!("{} [{}, {}] g{group_size}", m.name, m.rows, m.cols);
            let encoded = encode(&Int4Rtn, &m, &params(group_size));
            let decoded = Int4Rtn.decode(&encoded).unwrap();
            let fits = m.cols.is_multiple_of(32)
                && (group_size.is_multiple_of(32) || group_size >= m.cols);
            match Int4Rtn.native(&encoded, NativeTarget::Gguf).unwrap() {
                Some(form) => {
                    assert!(fits, "{what}: a Q4_1 form where the blocks do not fit");
                    assert_ggml_decodes_to(&form, TYPE_Q4_1, &decoded, &what);
                    forms += 1;
                }
                None => assert!(!fits, "{what}: no Q4_1 form"),
            }
            let ct = NativeTarget::CompressedTensors { group_size: 32 };
            assert_eq!(Int4Rtn.native(&encoded, ct), Ok(None), "{what}");
        }
    }
    assert!(forms > 40, "{forms} forms");
    // Damage is an error, not a form.
    let mut encoded = encode(&Int4Rtn, &native_matrices()[0], &params(32));
    encoded.parts[0].data.pop();
    assert_eq!(
        Int4Rtn
            .native(&encoded, NativeTarget::Gguf)
            .unwrap_err()
            .kind(),
        ErrorKind::Corrupt
    );
}

#[test]
fn registered_under_its_id() {
    let registry = tenpak_api::registry::Registry::from_static().unwrap();
    assert_eq!(registry.codec("int4_rtn").unwrap().id(), "int4_rtn");
}
