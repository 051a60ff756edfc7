//! Allocators across the C ABI ([`KIND_ALLOCATOR`]).
//!
//! A host makes one instance per library and calls it from any thread, as it would an
//! `Allocator: Send + Sync`. The layers cross as a [`LayerRef`] table; the preset's allocator
//! table ([`AllocatorConfig`]) and the returned [`Plan`] cross as JSON ([`config_to_json`],
//! [`plan_from_json`]). A measuring allocator tries candidates through a [`ProbeRef`]: a
//! function pointer into the host with an opaque context, which the host makes from its
//! [`Probe`] with a [`ProbeLease`] and which is valid for the duration of the `plan` call. The
//! host's error texts come with the host's `release`, so each side still frees what it
//! allocated; a panic in the host's probe comes back as [`status::PANIC`](super::status::PANIC)
//! and never unwinds through the plugin.

use std::ffi::c_void;
use std::mem::size_of;

use super::{
    ComponentDescriptor, Instance, KIND_ALLOCATOR, LayerRef, PTR, ParamSpecRef, StrRef, TextOut, guard, kind_of_status,
    needs_bits, null_arg, params_from_json, params_to_json, release, slice_from_raw, status, take_text, write_text,
};
use crate::{Allocator, AllocatorConfig, Error, Params, Plan, Probe, ProbeResult, Result};

/// An allocator's metadata, borrowed from its instance (valid until `destroy`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AllocatorInfo {
    /// What [`Allocator::id`] returns; the host checks it equals the descriptor's id.
    pub id: StrRef,
    /// [`Allocator::description`].
    pub description: StrRef,
    /// [`Allocator::params`], `param_count` of them.
    pub params: *const ParamSpecRef,
    /// Number of parameter specs.
    pub param_count: usize,
}

impl AllocatorInfo {
    /// Nothing yet: what a host passes for the plugin to fill.
    pub const EMPTY: AllocatorInfo =
        AllocatorInfo { id: StrRef::EMPTY, description: StrRef::EMPTY, params: std::ptr::null(), param_count: 0 };
}

/// [`ProbeResultRef::flags`] bit: `output_error` is present.
pub const PROBE_HAS_OUTPUT_ERROR: u32 = 1;
/// [`ProbeResultRef::flags`] bit: `loss_error` is present.
pub const PROBE_HAS_LOSS_ERROR: u32 = 2;

/// A [`ProbeResult`] on the wire; an optional error is present when its flag is set.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ProbeResultRef {
    /// Exact stored bits.
    pub bits: u64,
    /// ‖E‖² / ‖W‖².
    pub rel_mse: f64,
    /// tr(E G Eᵀ) / tr(W G Wᵀ), when [`PROBE_HAS_OUTPUT_ERROR`] is set.
    pub output_error: f64,
    /// The Fisher-weighted output error, when [`PROBE_HAS_LOSS_ERROR`] is set.
    pub loss_error: f64,
    /// `PROBE_HAS_*` bits.
    pub flags: u32,
    /// Reserved, zero.
    pub reserved: u32,
}

impl ProbeResultRef {
    /// `result` on the wire.
    pub fn new(result: &ProbeResult) -> Self {
        let flag = |present: bool, bit: u32| if present { bit } else { 0 };
        Self {
            bits: result.bits,
            rel_mse: result.rel_mse,
            output_error: result.output_error.unwrap_or(0.0),
            loss_error: result.loss_error.unwrap_or(0.0),
            flags: flag(result.output_error.is_some(), PROBE_HAS_OUTPUT_ERROR)
                | flag(result.loss_error.is_some(), PROBE_HAS_LOSS_ERROR),
            reserved: 0,
        }
    }

    /// Back to a [`ProbeResult`]; unknown flag bits are an error.
    pub fn to_result(&self) -> Result<ProbeResult> {
        let known = PROBE_HAS_OUTPUT_ERROR | PROBE_HAS_LOSS_ERROR;
        if self.flags & !known != 0 {
            return Err(Error::corrupt(format!("probe result with unknown flags {:#x}", self.flags & !known)));
        }
        Ok(ProbeResult {
            bits: self.bits,
            rel_mse: self.rel_mse,
            output_error: (self.flags & PROBE_HAS_OUTPUT_ERROR != 0).then_some(self.output_error),
            loss_error: (self.flags & PROBE_HAS_LOSS_ERROR != 0).then_some(self.loss_error),
        })
    }
}

/// The host's [`Probe`] lent to a plugin for one `plan` call.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProbeRef {
    /// Opaque to the plugin; passed back to `try_codec`.
    pub context: *mut c_void,
    /// [`Probe::try_codec`]: encode layer `index` (into the table given to `plan`) with codec
    /// `codec` and parameters `params` (a flat JSON object); fills `out`, or `err` with a message
    /// whose handle the plugin gives to this struct's `release`.
    pub try_codec: Option<
        unsafe extern "C" fn(
            context: *mut c_void,
            index: usize,
            codec: StrRef,
            params: StrRef,
            out: *mut ProbeResultRef,
            err: *mut TextOut,
        ) -> i32,
    >,
    /// Frees the host's error texts.
    pub release: Option<unsafe extern "C" fn(handle: *mut c_void)>,
}

/// The functions of one allocator; every entry may be null in a malformed library and a host
/// refuses a vtable with a null entry.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AllocatorVTable {
    /// Make an instance; the host calls this once per library and keeps the instance.
    pub create: Option<unsafe extern "C" fn(out: *mut *mut c_void, err: *mut TextOut) -> i32>,
    /// Free an instance made by `create`.
    pub destroy: Option<unsafe extern "C" fn(instance: *mut c_void)>,
    /// Fill `out` with the instance's metadata (borrowed from the instance).
    pub info: Option<unsafe extern "C" fn(instance: *const c_void, out: *mut AllocatorInfo, err: *mut TextOut) -> i32>,
    /// [`Allocator::needs`] for a configuration (JSON), as `NEEDS_*` bits in `out`.
    pub needs: Option<unsafe extern "C" fn(instance: *const c_void, config: StrRef, out: *mut u32, err: *mut TextOut) -> i32>,
    /// [`Allocator::validate`] on a configuration (JSON).
    pub validate: Option<unsafe extern "C" fn(instance: *const c_void, config: StrRef, err: *mut TextOut) -> i32>,
    /// [`Allocator::plan`]: the plan as JSON text in `out` (a [`TextOut`] the host releases).
    pub plan: Option<
        unsafe extern "C" fn(
            instance: *const c_void,
            layers: *const LayerRef,
            layer_count: usize,
            config: StrRef,
            probe: *const ProbeRef,
            out: *mut TextOut,
            err: *mut TextOut,
        ) -> i32,
    >,
    /// Free what a `handle` holds (a [`TextOut`]).
    pub release: Option<unsafe extern "C" fn(handle: *mut c_void)>,
}

const _: () = assert!(size_of::<AllocatorInfo>() == 6 * PTR);
const _: () = assert!(size_of::<ProbeResultRef>() == 40);
const _: () = assert!(size_of::<ProbeRef>() == 3 * PTR);
const _: () = assert!(size_of::<AllocatorVTable>() == 7 * PTR);

/// Check every parameter table of `config` can cross (no NaN or infinity, which JSON cannot
/// spell), naming where one cannot.
fn check_params<'a>(tables: impl IntoIterator<Item = (String, &'a Params)>) -> Result<()> {
    for (place, params) in tables {
        params_to_json(params).map_err(|e| e.context(place))?;
    }
    Ok(())
}

/// `config` as JSON, every float written to read back to the same bits.
pub fn config_to_json(config: &AllocatorConfig) -> Result<String> {
    let tables = std::iter::once(("[allocator]".to_owned(), &config.params))
        .chain(std::iter::once(("the default codec".to_owned(), &config.default.params)))
        .chain(config.roles.iter().map(|(role, c)| (format!("role `{role}`"), &c.params)))
        .chain(config.overrides.iter().map(|o| (format!("override `{}`", o.pattern), &o.choice.params)))
        .chain(config.candidates.iter().enumerate().map(|(i, c)| (format!("candidate {i}"), &c.params)));
    check_params(tables)?;
    serde_json::to_string(config).map_err(|e| Error::invalid_param(format!("allocator configuration as JSON: {e}")))
}

/// Read a configuration written by [`config_to_json`].
pub fn config_from_json(text: &str) -> Result<AllocatorConfig> {
    serde_json::from_str(text).map_err(|e| Error::invalid_param(format!("allocator configuration JSON: {e}")))
}

/// `plan` as JSON.
pub fn plan_to_json(plan: &Plan) -> Result<String> {
    check_params(plan.layers.iter().map(|l| (format!("plan for `{}`", l.name), &l.params)))?;
    serde_json::to_string(plan).map_err(|e| Error::invalid_input(format!("plan as JSON: {e}")))
}

/// Read a plan written by [`plan_to_json`]; anything else is [`Corrupt`](crate::ErrorKind::Corrupt).
pub fn plan_from_json(text: &str) -> Result<Plan> {
    serde_json::from_str(text).map_err(|e| Error::corrupt(format!("plan JSON: {e}")))
}

// ---------------------------------------------------------------------------------------------
// The host side of the probe callback.

/// A host's [`Probe`] lent across the ABI: [`raw`](ProbeLease::raw) is valid while the lease is
/// alive and not moved.
pub struct ProbeLease<'a> {
    probe: &'a mut dyn Probe,
}

impl<'a> ProbeLease<'a> {
    /// Lend `probe`.
    pub fn new(probe: &'a mut dyn Probe) -> Self {
        Self { probe }
    }

    /// The C view.
    pub fn raw(&mut self) -> ProbeRef {
        ProbeRef {
            context: (&raw mut self.probe).cast(),
            try_codec: Some(host_try_codec),
            release: Some(release),
        }
    }
}

unsafe extern "C" fn host_try_codec(
    context: *mut c_void,
    index: usize,
    codec: StrRef,
    params: StrRef,
    out: *mut ProbeResultRef,
    err: *mut TextOut,
) -> i32 {
    guard(err, || {
        // SAFETY: `context` is the `&mut dyn Probe` slot of a live `ProbeLease` (made by `raw`);
        // the plugin calls back from inside the `plan` call the lease was made for.
        let probe: &mut &mut dyn Probe = unsafe { context.cast::<&mut dyn Probe>().as_mut() }.ok_or_else(|| null_arg("probe context"))?;
        // SAFETY: the plugin's contract: borrowed text valid for the call.
        let codec = unsafe { codec.to_str("codec id") }?;
        let params = params_from_json(unsafe { params.to_str("params") }?)?;
        if out.is_null() {
            return Err(null_arg("out"));
        }
        let result = probe.try_codec(index, codec, &params)?;
        // SAFETY: non-null, writable.
        unsafe { out.write(ProbeResultRef::new(&result)) };
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// The plugin side.

/// The host's probe as a [`Probe`], inside a plugin.
struct ForeignProbe {
    context: *mut c_void,
    try_codec: unsafe extern "C" fn(*mut c_void, usize, StrRef, StrRef, *mut ProbeResultRef, *mut TextOut) -> i32,
    release: unsafe extern "C" fn(*mut c_void),
}

impl ForeignProbe {
    fn new(raw: &ProbeRef) -> Result<Self> {
        let missing = |what: &str| Error::invalid_input(format!("the host's probe has a null `{what}`"));
        Ok(Self {
            context: raw.context,
            try_codec: raw.try_codec.ok_or_else(|| missing("try_codec"))?,
            release: raw.release.ok_or_else(|| missing("release"))?,
        })
    }
}

impl Probe for ForeignProbe {
    fn try_codec(&mut self, index: usize, codec: &str, params: &Params) -> Result<ProbeResult> {
        let json = params_to_json(params)?;
        let mut out = ProbeResultRef::default();
        let mut err = TextOut::NONE;
        // SAFETY: the host's contract: its callback and context are valid during `plan`.
        let code = unsafe { (self.try_codec)(self.context, index, StrRef::new(codec), StrRef::new(&json), &mut out, &mut err) };
        if code != status::OK {
            // SAFETY: on failure the host filled `err` with text it releases with `release`.
            let message = unsafe { take_text(self.release, err) };
            return Err(if code == status::PANIC {
                Error::new(crate::ErrorKind::Other, format!("the host's probe panicked: {message}"))
            } else {
                Error::new(kind_of_status(code), message)
            });
        }
        out.to_result()
    }
}

impl ComponentDescriptor {
    /// The descriptor of allocator type `T` under `id`.
    pub const fn allocator<T: Allocator + Default + 'static>(id: &'static str) -> Self {
        Self {
            kind: KIND_ALLOCATOR,
            reserved: 0,
            id: StrRef::new(id),
            vtable: &AllocatorVTableOf::<T>::VTABLE as *const AllocatorVTable as *const c_void,
        }
    }
}

struct AllocatorVTableOf<T>(std::marker::PhantomData<T>);

impl<T: Allocator + Default + 'static> AllocatorVTableOf<T> {
    const VTABLE: AllocatorVTable = AllocatorVTable {
        create: Some(allocator_create::<T>),
        destroy: Some(allocator_destroy::<T>),
        info: Some(allocator_info::<T>),
        needs: Some(allocator_needs::<T>),
        validate: Some(allocator_validate::<T>),
        plan: Some(allocator_plan::<T>),
        release: Some(release),
    };
}

type AllocatorInstance<T> = Instance<T, AllocatorInfo>;

unsafe extern "C" fn allocator_create<T: Allocator + Default + 'static>(out: *mut *mut c_void, err: *mut TextOut) -> i32 {
    guard(err, || {
        if out.is_null() {
            return Err(null_arg("out"));
        }
        let instance = Instance::create(
            T::default(),
            |allocator: &T, params: &[ParamSpecRef]| AllocatorInfo {
                id: StrRef::new(allocator.id()),
                description: StrRef::new(allocator.description()),
                params: params.as_ptr(),
                param_count: params.len(),
            },
            |allocator| allocator.params().iter().map(ParamSpecRef::new).collect(),
        );
        // SAFETY: non-null, writable storage the host provides.
        unsafe { out.write(instance) };
        Ok(())
    })
}

unsafe extern "C" fn allocator_destroy<T: Allocator + Default + 'static>(instance: *mut c_void) {
    // SAFETY: the host's contract: made by `allocator_create::<T>`, destroyed once.
    unsafe { AllocatorInstance::<T>::destroy(instance) }
}

unsafe extern "C" fn allocator_info<T: Allocator + Default + 'static>(
    instance: *const c_void,
    out: *mut AllocatorInfo,
    err: *mut TextOut,
) -> i32 {
    // SAFETY: the host's contract on both pointers.
    guard(err, || unsafe { AllocatorInstance::<T>::write_info(instance, out) })
}

unsafe extern "C" fn allocator_needs<T: Allocator + Default + 'static>(
    instance: *const c_void,
    config: StrRef,
    out: *mut u32,
    err: *mut TextOut,
) -> i32 {
    guard(err, || {
        // SAFETY (every call): the host's contract on every argument.
        let allocator = unsafe { AllocatorInstance::<T>::component(instance) }?;
        let config = config_from_json(unsafe { config.to_str("config") }?)?;
        if out.is_null() {
            return Err(null_arg("out"));
        }
        // SAFETY: non-null, writable.
        unsafe { out.write(needs_bits(allocator.needs(&config))) };
        Ok(())
    })
}

unsafe extern "C" fn allocator_validate<T: Allocator + Default + 'static>(
    instance: *const c_void,
    config: StrRef,
    err: *mut TextOut,
) -> i32 {
    guard(err, || {
        // SAFETY (every call): the host's contract on every argument.
        let allocator = unsafe { AllocatorInstance::<T>::component(instance) }?;
        let config = config_from_json(unsafe { config.to_str("config") }?)?;
        allocator.validate(&config)
    })
}

unsafe extern "C" fn allocator_plan<T: Allocator + Default + 'static>(
    instance: *const c_void,
    layers: *const LayerRef,
    layer_count: usize,
    config: StrRef,
    probe: *const ProbeRef,
    out: *mut TextOut,
    err: *mut TextOut,
) -> i32 {
    guard(err, || {
        // SAFETY (every call): the host's contract on every argument.
        let allocator = unsafe { AllocatorInstance::<T>::component(instance) }?;
        let refs = unsafe { slice_from_raw(layers, layer_count, "layers") }?;
        let layers = refs
            .iter()
            .enumerate()
            .map(|(i, l)| unsafe { l.to_info(&format!("layer {i}")) })
            .collect::<Result<Vec<_>>>()?;
        let config = config_from_json(unsafe { config.to_str("config") }?)?;
        let mut probe = ForeignProbe::new(unsafe { probe.as_ref() }.ok_or_else(|| null_arg("probe"))?)?;
        if out.is_null() {
            return Err(null_arg("out"));
        }
        let plan = allocator.plan(&layers, &config, &mut probe)?;
        write_text(out, plan_to_json(&plan)?);
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CodecChoice, ErrorKind, LayerPlan, Override, ParamValue};

    #[test]
    fn configuration_and_plan_cross_as_json_with_floats_bit_exact() {
        let mut config = AllocatorConfig {
            default: CodecChoice { codec: Some("int4_awq".into()), params: Params::new() },
            ..AllocatorConfig::default()
        };
        config.default.params.set("alpha", 0.1 + 0.2);
        config.params.set("target_bpw", 4.000000000000001);
        config.params.set("sensitivity", "fisher");
        config.params.set("windows", 8i64);
        config.params.set("whole", 2.0);
        config.roles.insert("mlp_down".into(), CodecChoice { codec: None, params: Params::new() });
        config.overrides.push(Override { pattern: "*.embed*".into(), choice: CodecChoice { codec: Some("keep".into()), params: Params::new() } });
        let mut candidate = CodecChoice::default();
        candidate.params.set("bits", 3i64);
        candidate.params.set("scale", 5e-324);
        config.candidates.push(candidate);
        let back = config_from_json(&config_to_json(&config).unwrap()).unwrap();
        assert_eq!(back, config);
        for (key, value) in config.params.iter() {
            match (value, back.params.get(key).unwrap()) {
                (ParamValue::Float(a), ParamValue::Float(b)) => assert_eq!(a.to_bits(), b.to_bits(), "{key}"),
                (a, b) => assert_eq!(a, b, "{key}: an int must stay an int, a float a float"),
            }
        }

        config.candidates[0].params.set("scale", f64::NAN);
        let err = config_to_json(&config).unwrap_err();
        assert!(err.message().contains("candidate 0") && err.message().contains("`scale`"), "{err}");

        let mut params = Params::new();
        params.set("alpha", 0.1 + 0.7);
        let plan = Plan { layers: vec![LayerPlan { name: "w".into(), codec: "int8".into(), params }] };
        assert_eq!(plan_from_json(&plan_to_json(&plan).unwrap()).unwrap(), plan);
        assert_eq!(plan_from_json("{\"layers\": 3}").unwrap_err().kind(), ErrorKind::Corrupt);
    }

    #[test]
    fn probe_results_cross_with_their_optional_errors() {
        for result in [
            ProbeResult { bits: 7, rel_mse: 0.25, output_error: None, loss_error: None },
            ProbeResult { bits: u64::MAX, rel_mse: 1e-9, output_error: Some(0.0), loss_error: Some(3.5) },
            ProbeResult { bits: 0, rel_mse: f64::NAN, output_error: Some(f64::INFINITY), loss_error: None },
        ] {
            let back = ProbeResultRef::new(&result).to_result().unwrap();
            assert_eq!(back.bits, result.bits);
            assert_eq!(back.rel_mse.to_bits(), result.rel_mse.to_bits());
            assert_eq!(back.output_error.map(f64::to_bits), result.output_error.map(f64::to_bits));
            assert_eq!(back.loss_error.map(f64::to_bits), result.loss_error.map(f64::to_bits));
        }
        let bad = ProbeResultRef { flags: 8, ..ProbeResultRef::default() };
        assert_eq!(bad.to_result().unwrap_err().kind(), ErrorKind::Corrupt);
    }

    /// Answers by index: bits = 100 × index, errors that depend on the parameters; index 3 is an
    /// error, index 4 panics.
    struct HostProbe(Vec<(usize, String, Params)>);

    impl Probe for HostProbe {
        fn try_codec(&mut self, index: usize, codec: &str, params: &Params) -> Result<ProbeResult> {
            self.0.push((index, codec.to_owned(), params.clone()));
            match index {
                3 => Err(Error::invalid_param("layer 3 refuses")),
                4 => panic!("the host's probe blew up"),
                _ => Ok(ProbeResult {
                    bits: 100 * index as u64,
                    rel_mse: params.float_or("x", 0.0)?,
                    output_error: Some(0.5),
                    loss_error: None,
                }),
            }
        }
    }

    #[test]
    fn the_host_probe_is_called_back_through_the_abi() {
        let mut host = HostProbe(Vec::new());
        let mut lease = ProbeLease::new(&mut host);
        let raw = lease.raw();
        let mut foreign = ForeignProbe::new(&raw).unwrap();
        let mut params = Params::new();
        params.set("x", 0.1 + 0.2);
        let result = foreign.try_codec(2, "int4_awq", &params).unwrap();
        assert_eq!(result, ProbeResult { bits: 200, rel_mse: 0.1 + 0.2, output_error: Some(0.5), loss_error: None });
        let err = foreign.try_codec(3, "int4_awq", &params).unwrap_err();
        assert_eq!((err.kind(), err.message()), (ErrorKind::InvalidParam, "layer 3 refuses"));
        let err = foreign.try_codec(4, "int4_awq", &params).unwrap_err();
        assert!(err.message().contains("the host's probe panicked") && err.message().contains("blew up"), "{err}");
        // The host's probe saw exactly what the plugin asked, and goes on after its panic.
        assert!(foreign.try_codec(1, "keep", &Params::new()).is_ok());
        let _ = lease;
        let seen: Vec<(usize, &str)> = host.0.iter().map(|(i, c, _)| (*i, c.as_str())).collect();
        assert_eq!(seen, [(2, "int4_awq"), (3, "int4_awq"), (4, "int4_awq"), (1, "keep")]);
        assert_eq!(host.0[0].2, params);
    }
}
