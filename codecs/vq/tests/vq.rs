//! `vq`: exact decoding of what is stored, bits counted equal bytes stored, deterministic
//! codebooks, error feedback lowering the output error, adversarial inputs and clear errors.

use tenpak_api::{Codec, Encoded, ErrorKind, Gram, LayerStats, NativeTarget, Params, Part, WeightView};
use tenpak_codec_vq::{Report, Shape, Vq, stored_bits};
use tenpak_quant::testing::{TestMatrix, activations, adversarial, llm_like, stats_of, stored_bytes};

fn report(m: &TestMatrix, stats: &LayerStats, params: &Params) -> Report {
    let view = WeightView::new(&m.data, m.rows, m.cols).unwrap();
    Vq.encode_report(view, stats, params).unwrap_or_else(|e| panic!("{} [{}, {}] {params:?}: {e}", m.name, m.rows, m.cols))
}

fn bit_patterns(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// The encoding as read back from disk: parts rebuilt from bytes, parameters through JSON.
fn through_bytes(e: &Encoded) -> Encoded {
    let json = serde_json::to_string(&e.params).unwrap();
    Encoded {
        codec: e.codec.clone(),
        params: serde_json::from_str(&json).unwrap(),
        shape: e.shape,
        parts: e.parts.iter().map(|p| Part::new(&p.name, p.dtype, p.shape.clone(), p.data.to_vec()).unwrap()).collect(),
    }
}

fn calibrated(rows: usize, cols: usize, seed: u64) -> (TestMatrix, LayerStats) {
    (llm_like(rows, cols, seed), stats_of(&activations(512, cols, seed + 100), cols))
}

/// Decoding returns exactly what the encoder scored, after bytes and JSON; the stored bytes are
/// the formula; shapes whose columns do not divide the group or the sub-vector length work.
#[test]
fn decode_is_exact_and_bits_are_counted() {
    for (rows, cols, dim, bits, group) in [(24, 64, 2, 4.0, 32), (9, 101, 4, 2.0, 8), (5, 33, 3, 2.0, 12), (16, 96, 8, 1.0, 32), (7, 50, 2, 3.0, 128), (12, 96, 1, 4.0, 32), (6, 37, 1, 3.0, 16)] {
        let (m, stats) = calibrated(rows, cols, rows as u64);
        for (feedback, incoherence) in [(false, false), (true, false), (true, true)] {
            let p = Params::new().with("dim", dim).with("bits", bits).with("group_size", group).with("error_feedback", feedback);
            let p = if incoherence { p.with("incoherence", true).with("rotation_seed", 3usize) } else { p };
            let r = report(&m, &stats, &p);
            let ctx = format!("[{rows}, {cols}] {p:?}");
            let decoded = Vq.decode(&through_bytes(&r.encoded)).unwrap();
            assert_eq!(bit_patterns(&decoded), bit_patterns(&r.decoded), "{ctx}: decode");
            let shape = Shape { rows, cols, group_size: group, dim };
            assert_eq!(stored_bytes(&r.encoded) * 8, stored_bits(shape, (bits * dim as f64) as u32), "{ctx}: bits");
            assert!(r.output_error <= r.nearest_output_error * (1.0 + 1e-12), "{ctx}: feedback made it worse");
            let recorded = r.encoded.params.float_or("output_error", f64::NAN).unwrap();
            assert!((recorded - r.output_error / r.energy).abs() <= 1e-12 * recorded.max(1e-30), "{ctx}");
        }
    }
}

/// Error feedback lowers the output error on correlated activations, and more bits lower it.
#[test]
fn feedback_and_bits_lower_the_output_error() {
    let (m, stats) = calibrated(96, 256, 3);
    let mut last = f64::INFINITY;
    for bits in [1.0, 2.0, 3.0, 4.0] {
        let r = report(&m, &stats, &Params::new().with("bits", bits));
        let (fed, nearest) = (r.output_error / r.energy, r.nearest_output_error / r.energy);
        assert!(fed < 0.85 * nearest, "bits {bits}: feedback {fed}, nearest {nearest}");
        assert!(fed < 0.7 * last, "bits {bits}: {fed} after {last}");
        last = fed;
    }
}

/// The codebook depends only on the seed: same seed, same bytes; another seed, another codebook.
#[test]
fn deterministic_under_its_seed() {
    let (m, stats) = calibrated(64, 128, 5);
    let a = report(&m, &stats, &Params::new().with("seed", 3usize)).encoded;
    let b = report(&m, &stats, &Params::new().with("seed", 3usize)).encoded;
    assert_eq!(a.parts, b.parts);
    let c = report(&m, &stats, &Params::new().with("seed", 4usize)).encoded;
    assert_ne!(a.part("codebook").unwrap(), c.part("codebook").unwrap());
}

/// Constant rows, zero rows, one huge outlier, tiny and huge magnitudes: all encode and decode
/// exactly; a constant row stays close to its value.
#[test]
fn adversarial_inputs() {
    for m in adversarial(12, 64, 9) {
        let stats = stats_of(&activations(256, 64, 2), 64);
        let view = WeightView::new(&m.data, m.rows, m.cols).unwrap();
        match Vq.encode_report(view, &stats, &Params::new()) {
            Ok(r) => assert_eq!(bit_patterns(&Vq.decode(&r.encoded).unwrap()), bit_patterns(&r.decoded), "{}", m.name),
            // Magnitudes beyond f16 must be refused with a clear message, never mangled.
            Err(e) => assert!(e.to_string().contains("f16"), "{}: {e}", m.name),
        }
    }
    let mut constant = TestMatrix { name: "constant".into(), rows: 4, cols: 64, data: vec![0.75; 256] };
    let stats = stats_of(&activations(256, 64, 2), 64);
    let r = report(&constant, &stats, &Params::new().with("error_feedback", false));
    for v in &r.decoded {
        assert!((v - 0.75).abs() < 0.01, "constant row decoded to {v}");
    }
    constant.data[17] = f32::NAN;
    let view = WeightView::new(&constant.data, 4, 64).unwrap();
    let err = Vq.encode(view, &stats, &Params::new()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}

#[test]
fn missing_statistics_and_bad_parameters_are_named() {
    let m = llm_like(4, 16, 1);
    let view = WeightView::new(&m.data, 4, 16).unwrap();
    let err = Vq.encode(view, &LayerStats::default(), &Params::new()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::MissingStats);
    assert!(err.to_string().contains("hessian_diag") && err.to_string().contains("gram"), "{err}");
    let bad_gram = LayerStats { hessian_diag: Some(vec![1.0; 16]), gram: Some(Gram { dim: 8, data: vec![0.0; 64] }), ..LayerStats::default() };
    assert!(Vq.encode(view, &bad_gram, &Params::new()).unwrap_err().to_string().contains("gram"));
    for (key, p) in [
        ("dim", Params::new().with("dim", 0usize)),
        ("dim", Params::new().with("dim", 9usize)),
        ("bits", Params::new().with("bits", 2.5).with("dim", 3usize)),
        ("bits", Params::new().with("bits", 4.0).with("dim", 4usize)),
        ("group_size", Params::new().with("group_size", 33usize)),
        ("percdamp", Params::new().with("percdamp", 0.0)),
    ] {
        let err = Vq.validate(&p).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidParam, "{p:?}");
        assert!(err.to_string().contains(key), "{p:?}: {err}");
    }
}

#[test]
fn damaged_encodings_are_corrupt() {
    let (m, stats) = calibrated(8, 64, 2);
    let e = report(&m, &stats, &Params::new()).encoded;
    let mut short = e.clone();
    let codes = short.parts.iter_mut().find(|p| p.name == "codes").unwrap();
    *codes = Part::new("codes", codes.dtype, vec![8, 1], vec![0; 8]).unwrap();
    assert_eq!(Vq.decode(&short).unwrap_err().kind(), ErrorKind::Corrupt);
    let mut inf = e.clone();
    let book = inf.parts.iter_mut().find(|p| p.name == "codebook").unwrap();
    let mut data = book.data.to_vec();
    data[1] = 0x7C;
    data[0] = 0;
    *book = Part::new("codebook", book.dtype, book.shape.clone(), data).unwrap();
    let err = Vq.decode(&inf).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert!(err.to_string().contains("codebook"), "{err}");
}

/// A learned codebook is no runtime's grid: no native form, whatever the target.
#[test]
fn no_native_form() {
    let (m, stats) = calibrated(8, 64, 5);
    let r = report(&m, &stats, &Params::new().with("group_size", 32usize));
    for target in [NativeTarget::Gguf, NativeTarget::CompressedTensors { group_size: 32 }] {
        assert_eq!(Vq.native(&r.encoded, target), Ok(None));
    }
}

#[test]
fn registered_under_its_id() {
    let registry = tenpak_api::registry::Registry::from_static().unwrap();
    assert!(registry.codec("vq").is_ok());
}
