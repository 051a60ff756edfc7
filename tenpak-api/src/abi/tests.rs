//! The ABI driven in-process: the same calls a host makes through a library, without dlopen.

use super::*;
use crate::{ParamValue, Params, StatKind};

#[test]
fn params_json_round_trips_bit_exactly() {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut params = Params::new();
    for i in 0..2000 {
        let bits = next();
        let v = f64::from_bits(bits);
        if v.is_finite() {
            params.set(&format!("f{i}"), v);
        }
    }
    for (i, v) in [0.1 + 0.2, -0.0, 5e-324, f64::MAX, f64::MIN_POSITIVE, 1e16, 1e-7, 2.0, 123456789.0].iter().enumerate() {
        params.set(&format!("edge{i}"), *v);
    }
    params.set("int_min", i64::MIN);
    params.set("int_max", i64::MAX);
    params.set("zero", 0i64);
    params.set("yes", true);
    params.set("no", false);
    params.set("text", "quote \" backslash \\ newline \n tab \t bell \u{7} snow ☃ clef 𝄞");
    params.set("", "empty key");
    let json = params_to_json(&params).unwrap();
    let back = params_from_json(&json).unwrap();
    assert_eq!(back.0.len(), params.0.len());
    for (key, value) in params.iter() {
        match (value, back.get(key).unwrap()) {
            (ParamValue::Float(a), ParamValue::Float(b)) => assert_eq!(a.to_bits(), b.to_bits(), "{key}: {a:?} vs {b:?}"),
            (a, b) => assert_eq!(a, b, "{key}"),
        }
    }
}

#[test]
fn params_json_reads_ordinary_json_and_refuses_the_rest() {
    let p = params_from_json(" { \"group_size\" : 64 , \"alpha\": 5E-1, \"name\": \"a\\u00e9\\ud834\\udd1e\", \"on\": true } ").unwrap();
    assert_eq!(p.get("group_size"), Some(&ParamValue::Int(64)));
    assert_eq!(p.get("alpha"), Some(&ParamValue::Float(0.5)));
    assert_eq!(p.get("name"), Some(&ParamValue::Str("aé𝄞".into())));
    assert_eq!(p.get("on"), Some(&ParamValue::Bool(true)));
    assert_eq!(params_from_json("{}").unwrap(), Params::new());
    for (bad, needle) in [
        ("", "expected `{`"),
        ("{\"a\": null}", "null"),
        ("{\"a\": [1]}", "array"),
        ("{\"a\": {}}", "array or object"),
        ("{\"a\": 1, \"a\": 2}", "twice"),
        ("{\"a\": 01}", "not a JSON number"),
        ("{\"a\": 1.}", "not a JSON number"),
        ("{\"a\": 99999999999999999999}", "64 bits"),
        ("{\"a\": 1e999}", "overflows"),
        ("{\"a\": 1} x", "after the object"),
        ("{\"a\": \"open}", "unterminated"),
        ("{\"a\": \"\\ud834\"}", "surrogate"),
        ("{\"a\" 1}", "expected `:`"),
        ("{\"a\": 1,}", "expected `\"`"),
    ] {
        let err = params_from_json(bad).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidParam);
        assert!(err.message().contains(needle), "{bad:?}: {err}");
    }
    let err = params_to_json(&Params::new().with("alpha", f64::NAN)).unwrap_err();
    assert!(err.message().contains("`alpha`") && err.message().contains("NaN"), "{err}");
}

#[test]
fn wire_codes_round_trip() {
    for dtype in [DType::U8, DType::I8, DType::U16, DType::I16, DType::U32, DType::I32, DType::F16, DType::BF16, DType::F32] {
        assert_eq!(dtype_from_code(dtype_code(dtype)), Some(dtype));
    }
    assert_eq!(dtype_from_code(9), None);
    for ty in [ParamType::Bool, ParamType::Int, ParamType::Float, ParamType::Str] {
        assert_eq!(param_type_from_code(param_type_code(ty)), Some(ty));
    }
    for kind in [
        ErrorKind::InvalidInput,
        ErrorKind::InvalidParam,
        ErrorKind::Corrupt,
        ErrorKind::Registry,
        ErrorKind::MissingStats,
        ErrorKind::Other,
    ] {
        assert_eq!(kind_of_status(status_of(kind)), kind);
        assert_ne!(status_of(kind), status::OK);
    }
    let needs = StatsNeeds { act_scale: true, hessian_diag: false, gram: true, fisher_diag: false };
    assert_eq!(needs_from_bits(needs_bits(needs)).unwrap(), needs);
    assert!(needs_from_bits(16).is_err());
}

/// A codec whose behaviour is chosen by its parameters: honest, panicking, or malformed.
#[derive(Default)]
struct Probe;

impl Codec for Probe {
    fn id(&self) -> &str {
        "probe"
    }
    fn description(&self) -> &str {
        "test codec"
    }
    fn params(&self) -> &[ParamSpec] {
        const P: &[ParamSpec] = &[ParamSpec { name: "mode", ty: ParamType::Str, default: "\"ok\"", doc: "ok | panic | short" }];
        P
    }
    fn needs(&self) -> StatsNeeds {
        StatsNeeds { act_scale: true, ..StatsNeeds::NONE }
    }
    fn encode(&self, weight: WeightView<'_>, stats: &LayerStats, params: &Params) -> Result<Encoded> {
        let mode = params.str_or("mode", "ok")?;
        if mode == "panic" {
            panic!("probe told to panic");
        }
        let scale = stats.act_scale.as_ref().ok_or_else(|| Error::new(ErrorKind::MissingStats, "no act_scale"))?;
        let values: Vec<f32> = weight.data().iter().enumerate().map(|(i, v)| v * scale[i % weight.cols()]).collect();
        let mut part = Part::from_f32("values", vec![weight.rows(), weight.cols()], &values);
        if mode == "short" {
            part.data.truncate(part.data.len() - 1);
        }
        Ok(Encoded { codec: "probe".into(), params: params.clone(), shape: [weight.rows(), weight.cols()], parts: vec![part] })
    }
    fn decode(&self, encoded: &Encoded) -> Result<Vec<f32>> {
        encoded.part("values")?.to_f32()
    }
}

crate::export_plugin! {
    codec("probe", Probe);
}

struct Host {
    vt: CodecVTable,
    instance: *mut c_void,
}

fn take_text(vt: &CodecVTable, err: TextOut) -> String {
    // SAFETY: the plugin side filled `err` with a handle it owns and text borrowed from it.
    let text = unsafe { err.text.to_str("error") }.unwrap().to_owned();
    unsafe { vt.release.unwrap()(err.handle) };
    text
}

impl Host {
    fn open() -> Self {
        // SAFETY: the entry point returns a pointer to a static descriptor.
        let descriptor = unsafe { &*tenpak_plugin() };
        assert_eq!(descriptor.abi_version, ABI_VERSION);
        assert_eq!(descriptor.flags & FLAG_PANIC_UNWIND, FLAG_PANIC_UNWIND);
        assert_eq!(unsafe { descriptor.plugin.to_str("plugin") }.unwrap(), concat!("tenpak-api ", env!("CARGO_PKG_VERSION")));
        assert_eq!(descriptor.component_count, 1);
        let component = unsafe { &*descriptor.components };
        assert_eq!(component.kind, KIND_CODEC);
        assert_eq!(unsafe { component.id.to_str("id") }.unwrap(), "probe");
        let vt = unsafe { *component.vtable.cast::<CodecVTable>() };
        let mut instance = std::ptr::null_mut();
        let mut err = TextOut::NONE;
        assert_eq!(unsafe { vt.create.unwrap()(&mut instance, &mut err) }, status::OK);
        Self { vt, instance }
    }

    fn encode(&self, weight: &[f32], rows: usize, cols: usize, stats: &LayerStats, params: &Params) -> Result<Encoded> {
        let json = params_to_json(params)?;
        let w = WeightRef { data: weight.as_ptr(), rows, cols };
        let s = StatsRef::new(stats);
        let mut out = EncodedOut::NONE;
        let mut err = TextOut::NONE;
        let code = unsafe { self.vt.encode.unwrap()(self.instance, &w, &s, StrRef::new(&json), &mut out, &mut err) };
        if code != status::OK {
            return Err(Error::new(kind_of_status(code), take_text(&self.vt, err)));
        }
        let result = unsafe { encoded_from_raw(&out.encoded) };
        unsafe { self.vt.release.unwrap()(out.handle) };
        result
    }

    fn decode(&self, encoded: &Encoded) -> Result<Vec<f32>> {
        let lease = EncodedLease::new(encoded)?;
        let raw = lease.raw();
        let mut out = FloatsOut::NONE;
        let mut err = TextOut::NONE;
        let code = unsafe { self.vt.decode.unwrap()(self.instance, &raw, &mut out, &mut err) };
        if code != status::OK {
            return Err(Error::new(kind_of_status(code), take_text(&self.vt, err)));
        }
        let values = unsafe { slice_from_raw(out.values.ptr, out.values.len, "values") }.unwrap().to_vec();
        unsafe { self.vt.release.unwrap()(out.handle) };
        Ok(values)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        unsafe { self.vt.destroy.unwrap()(self.instance) };
    }
}

#[test]
fn a_codec_crosses_the_abi_and_back() {
    let host = Host::open();
    let mut info = CodecInfo::EMPTY;
    let mut err = TextOut::NONE;
    assert_eq!(unsafe { host.vt.info.unwrap()(host.instance, &mut info, &mut err) }, status::OK);
    assert_eq!(unsafe { info.id.to_str("id") }.unwrap(), "probe");
    assert_eq!(unsafe { info.description.to_str("d") }.unwrap(), "test codec");
    let specs = unsafe { slice_from_raw(info.params, info.param_count, "params") }.unwrap();
    assert_eq!(unsafe { specs[0].name.to_str("n") }.unwrap(), "mode");
    assert_eq!(param_type_from_code(specs[0].ty), Some(ParamType::Str));
    assert!(needs_from_bits(info.needs).unwrap().act_scale);

    let weight: Vec<f32> = (0..12).map(|i| i as f32 * 0.5 - 2.0).collect();
    let stats = LayerStats { act_scale: Some(vec![1.0, 2.0, 3.0, 4.0]), samples: 7, ..LayerStats::none() };
    let params = Params::new().with("mode", "ok").with("alpha", 0.1 + 0.2);
    let encoded = host.encode(&weight, 3, 4, &stats, &params).unwrap();
    assert_eq!(encoded, Probe.encode(WeightView::new(&weight, 3, 4).unwrap(), &stats, &params).unwrap());
    assert_eq!(host.decode(&encoded).unwrap(), Probe.decode(&encoded).unwrap());

    // Errors keep their kind; the validation error names the parameter.
    let err = host.encode(&weight, 3, 4, &LayerStats::none(), &params).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::MissingStats);
    let err = host.encode(&weight, 3, 4, &stats, &Params::new().with("mode", 3i64)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidParam);
    assert!(err.message().contains("`mode`"), "{err}");
    let err = host.encode(&weight, usize::MAX, 2, &stats, &params).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.message().contains("overflows"), "{err}");

    // A panic becomes an error and the instance keeps working.
    let err = host.encode(&weight, 3, 4, &stats, &Params::new().with("mode", "panic")).unwrap_err();
    assert!(err.message().contains("panicked: probe told to panic"), "{err}");
    host.encode(&weight, 3, 4, &stats, &params).unwrap();

    // Malformed parts pass through the plugin side untouched and are caught on reading.
    let err = host.encode(&weight, 3, 4, &stats, &Params::new().with("mode", "short")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert!(err.message().contains("part `values`") && err.message().contains("47"), "{err}");

    // What the host asks the plugin to decode is checked on the plugin side too.
    let mut bad = encoded.clone();
    bad.parts[0].data.pop();
    let err = host.decode(&bad).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
}

#[test]
fn slices_refuse_null_and_misaligned_pointers() {
    let values = [1.0f32, 2.0];
    assert!(unsafe { slice_from_raw::<f32>(std::ptr::null(), 0, "x") }.unwrap().is_empty());
    let err = unsafe { slice_from_raw::<f32>(std::ptr::null(), 3, "weight") }.unwrap_err();
    assert!(err.message().contains("weight") && err.message().contains("null"), "{err}");
    let misaligned = unsafe { values.as_ptr().cast::<u8>().add(1) }.cast::<f32>();
    assert!(unsafe { slice_from_raw(misaligned, 1, "w") }.unwrap_err().message().contains("aligned"));
    let err = unsafe { slice_from_raw(values.as_ptr(), usize::MAX / 2, "w") }.unwrap_err();
    assert!(err.message().contains("impossibly large"), "{err}");
}

#[test]
fn layers_cross_with_their_role_and_block() {
    use crate::{LayerInfo, LayerRole};
    for role in LayerRole::ALL {
        assert_eq!(LayerRole::from_name(role.name()), Some(role));
        for block in [None, Some(0), Some(27)] {
            let info = LayerInfo { name: format!("model.layers.x.{}", role.name()), role, block, rows: 3, cols: 5 };
            assert_eq!(unsafe { LayerRef::new(&info).to_info("layer") }.unwrap(), info);
        }
    }
    let info = LayerInfo { name: "w".into(), role: LayerRole::Other, block: None, rows: 1, cols: 1 };
    let mut raw = LayerRef::new(&info);
    raw.role = StrRef::new("attn_z");
    let err = unsafe { raw.to_info("layer 4") }.unwrap_err();
    assert!(err.message().contains("layer 4") && err.message().contains("`attn_z`"), "{err}");
    for kind in [StatKind::ActScale, StatKind::HessianDiag, StatKind::Gram, StatKind::FisherDiag] {
        assert_eq!(stat_kind_from_code(stat_kind_code(kind)), Some(kind));
    }
    assert_eq!(stat_kind_from_code(4), None);
}
