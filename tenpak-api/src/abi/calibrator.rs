//! Calibrators across the C ABI ([`KIND_CALIBRATOR`]).
//!
//! A calibrator holds per-run state, so a host makes one instance per pack (`create`), streams a
//! layer's inputs (`observe_input`, and `observe_gradient` when it needs gradients) into it, and
//! takes each finished statistic back (`finish`, which hands out a [`StatsOut`]). An instance is
//! used by one thread at a time (the trait is `Send`, not `Sync`) and destroyed at the end of the
//! run. The host lends every input for one call only.

use std::ffi::c_void;
use std::mem::size_of;
use std::panic::{AssertUnwindSafe, catch_unwind};

use super::{
    ComponentDescriptor, Held, KIND_CALIBRATOR, LayerRef, PTR, StatsRef, StrRef, TextOut, WeightRef, guard, null_arg,
    release, weight_from_raw,
};
use crate::{Calibrator, LayerInfo, LayerStats, Result, StatKind};

/// The code of a [`StatKind`] on the wire.
pub const fn stat_kind_code(kind: StatKind) -> u32 {
    match kind {
        StatKind::ActScale => 0,
        StatKind::HessianDiag => 1,
        StatKind::Gram => 2,
        StatKind::FisherDiag => 3,
    }
}

/// The [`StatKind`] of a wire code, if it is one.
pub const fn stat_kind_from_code(code: u32) -> Option<StatKind> {
    Some(match code {
        0 => StatKind::ActScale,
        1 => StatKind::HessianDiag,
        2 => StatKind::Gram,
        3 => StatKind::FisherDiag,
        _ => return None,
    })
}

/// A calibrator's metadata, borrowed from its instance until the next call that mutates it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CalibratorInfo {
    /// What [`Calibrator::id`] returns; the host checks it equals the descriptor's id.
    pub id: StrRef,
    /// [`Calibrator::provides`] as a [`stat_kind_code`].
    pub provides: u32,
    /// [`Calibrator::needs_gradients`]: 1 or 0.
    pub needs_gradients: u32,
}

impl CalibratorInfo {
    /// Nothing yet: what a host passes for the plugin to fill.
    pub const EMPTY: CalibratorInfo = CalibratorInfo { id: StrRef::EMPTY, provides: u32::MAX, needs_gradients: 0 };
}

/// Finished statistics a plugin hands out: valid until `release(handle)`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StatsOut {
    /// Give back to `release` once copied.
    pub handle: *mut c_void,
    /// The statistics, borrowed from `handle`.
    pub stats: StatsRef,
}

impl StatsOut {
    /// Nothing yet.
    pub const NONE: StatsOut = StatsOut { handle: std::ptr::null_mut(), stats: StatsRef::EMPTY };
}

/// The functions of one calibrator; as with codecs, every entry may be null in a malformed
/// library and a host refuses a vtable with a null entry.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CalibratorVTable {
    /// Make an instance (one per run).
    pub create: Option<unsafe extern "C" fn(out: *mut *mut c_void, err: *mut TextOut) -> i32>,
    /// Free an instance made by `create`.
    pub destroy: Option<unsafe extern "C" fn(instance: *mut c_void)>,
    /// Fill `out` with the instance's metadata.
    pub info: Option<unsafe extern "C" fn(instance: *const c_void, out: *mut CalibratorInfo, err: *mut TextOut) -> i32>,
    /// [`Calibrator::observe_input`]: `inputs` is tokens × in_features.
    pub observe_input: Option<
        unsafe extern "C" fn(instance: *mut c_void, layer: *const LayerRef, inputs: *const WeightRef, err: *mut TextOut) -> i32,
    >,
    /// [`Calibrator::observe_gradient`]: `gradient` has the weight's shape.
    pub observe_gradient: Option<
        unsafe extern "C" fn(instance: *mut c_void, layer: *const LayerRef, gradient: *const WeightRef, err: *mut TextOut) -> i32,
    >,
    /// [`Calibrator::finish`] on statistics that hold only `samples`; the plugin hands out what
    /// its calibrator wrote.
    pub finish: Option<
        unsafe extern "C" fn(
            instance: *mut c_void,
            layer: *const LayerRef,
            samples: usize,
            out: *mut StatsOut,
            err: *mut TextOut,
        ) -> i32,
    >,
    /// Free what a `handle` holds (a [`StatsOut`] or a [`TextOut`]).
    pub release: Option<unsafe extern "C" fn(handle: *mut c_void)>,
}

const _: () = assert!(size_of::<CalibratorInfo>() == 2 * PTR + 8);
const _: () = assert!(size_of::<StatsOut>() == 11 * PTR);
const _: () = assert!(size_of::<CalibratorVTable>() == 7 * PTR);

impl ComponentDescriptor {
    /// The descriptor of calibrator type `T` under `id`.
    pub const fn calibrator<T: Calibrator + Default + 'static>(id: &'static str) -> Self {
        Self {
            kind: KIND_CALIBRATOR,
            reserved: 0,
            id: StrRef::new(id),
            vtable: &CalibratorVTableOf::<T>::VTABLE as *const CalibratorVTable as *const c_void,
        }
    }
}

struct CalibratorVTableOf<T>(std::marker::PhantomData<T>);

impl<T: Calibrator + Default + 'static> CalibratorVTableOf<T> {
    const VTABLE: CalibratorVTable = CalibratorVTable {
        create: Some(calibrator_create::<T>),
        destroy: Some(calibrator_destroy::<T>),
        info: Some(calibrator_info::<T>),
        observe_input: Some(calibrator_observe_input::<T>),
        observe_gradient: Some(calibrator_observe_gradient::<T>),
        finish: Some(calibrator_finish::<T>),
        release: Some(release),
    };
}

/// # Safety
/// `instance` is null or was made by `calibrator_create::<T>`, not destroyed, and not in use by
/// another call.
unsafe fn calibrator_of<'a, T>(instance: *mut c_void) -> Result<&'a mut T> {
    // SAFETY: forwarded to the caller.
    unsafe { instance.cast::<T>().as_mut() }.ok_or_else(|| null_arg("instance"))
}

/// # Safety
/// `layer` is null or points to a valid [`LayerRef`].
unsafe fn layer_of(layer: *const LayerRef) -> Result<LayerInfo> {
    // SAFETY: forwarded to the caller.
    unsafe { layer.as_ref() }.ok_or_else(|| null_arg("layer")).and_then(|l| unsafe { l.to_info("layer") })
}

unsafe extern "C" fn calibrator_create<T: Calibrator + Default + 'static>(out: *mut *mut c_void, err: *mut TextOut) -> i32 {
    guard(err, || {
        if out.is_null() {
            return Err(null_arg("out"));
        }
        // SAFETY: non-null, writable storage the host provides.
        unsafe { out.write(Box::into_raw(Box::<T>::default()).cast()) };
        Ok(())
    })
}

unsafe extern "C" fn calibrator_destroy<T: Calibrator + Default + 'static>(instance: *mut c_void) {
    if instance.is_null() {
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: made by `calibrator_create::<T>`, destroyed once (the host's contract).
        drop(unsafe { Box::from_raw(instance.cast::<T>()) });
    }));
}

unsafe extern "C" fn calibrator_info<T: Calibrator + Default + 'static>(
    instance: *const c_void,
    out: *mut CalibratorInfo,
    err: *mut TextOut,
) -> i32 {
    guard(err, || {
        // SAFETY: the host's contract; only a shared reference is taken.
        let calibrator = unsafe { instance.cast::<T>().as_ref() }.ok_or_else(|| null_arg("instance"))?;
        if out.is_null() {
            return Err(null_arg("out"));
        }
        let info = CalibratorInfo {
            id: StrRef::new(calibrator.id()),
            provides: stat_kind_code(calibrator.provides()),
            needs_gradients: u32::from(calibrator.needs_gradients()),
        };
        // SAFETY: non-null, writable.
        unsafe { out.write(info) };
        Ok(())
    })
}

unsafe extern "C" fn calibrator_observe_input<T: Calibrator + Default + 'static>(
    instance: *mut c_void,
    layer: *const LayerRef,
    inputs: *const WeightRef,
    err: *mut TextOut,
) -> i32 {
    guard(err, || {
        // SAFETY (every call): the host's contract on every argument.
        let calibrator = unsafe { calibrator_of::<T>(instance) }?;
        let layer = unsafe { layer_of(layer) }?;
        let inputs = unsafe { weight_from_raw(inputs, "inputs") }?;
        calibrator.observe_input(&layer, inputs)
    })
}

unsafe extern "C" fn calibrator_observe_gradient<T: Calibrator + Default + 'static>(
    instance: *mut c_void,
    layer: *const LayerRef,
    gradient: *const WeightRef,
    err: *mut TextOut,
) -> i32 {
    guard(err, || {
        // SAFETY (every call): the host's contract on every argument.
        let calibrator = unsafe { calibrator_of::<T>(instance) }?;
        let layer = unsafe { layer_of(layer) }?;
        let gradient = unsafe { weight_from_raw(gradient, "gradient") }?;
        calibrator.observe_gradient(&layer, gradient)
    })
}

unsafe extern "C" fn calibrator_finish<T: Calibrator + Default + 'static>(
    instance: *mut c_void,
    layer: *const LayerRef,
    samples: usize,
    out: *mut StatsOut,
    err: *mut TextOut,
) -> i32 {
    guard(err, || {
        // SAFETY (every call): the host's contract on every argument.
        let calibrator = unsafe { calibrator_of::<T>(instance) }?;
        let layer = unsafe { layer_of(layer) }?;
        if out.is_null() {
            return Err(null_arg("out"));
        }
        let mut stats = LayerStats { samples, ..LayerStats::none() };
        calibrator.finish(&layer, &mut stats)?;
        let view = StatsRef::new(&stats);
        // Moving the statistics into the handle moves their vectors, not the heap buffers `view`
        // points into.
        let handle = Held::Stats(stats).into_handle();
        // SAFETY: non-null, writable.
        unsafe { out.write(StatsOut { handle, stats: view }) };
        Ok(())
    })
}
