//! Calibrators from plugin libraries: a [`ForeignCalibratorType`] per exported calibrator, which
//! makes a [`ForeignCalibrator`] (one plugin instance) for each run.

use std::ffi::c_void;
use std::ptr::NonNull;

use tenpak_error::{Result, bail, err};
use tenpak_api::abi::{self, CalibratorInfo, CalibratorVTable, LayerRef, StatsOut, TextOut, WeightRef, status};
use tenpak_api::{Calibrator, Error, Gram, LayerInfo, LayerStats, StatKind, WeightView};

use super::{call_error, malformed};

/// A vtable whose entries were all checked non-null.
#[derive(Clone, Copy)]
struct Functions {
    create: unsafe extern "C" fn(*mut *mut c_void, *mut TextOut) -> i32,
    destroy: unsafe extern "C" fn(*mut c_void),
    observe_input: unsafe extern "C" fn(*mut c_void, *const LayerRef, *const WeightRef, *mut TextOut) -> i32,
    observe_gradient: unsafe extern "C" fn(*mut c_void, *const LayerRef, *const WeightRef, *mut TextOut) -> i32,
    finish: unsafe extern "C" fn(*mut c_void, *const LayerRef, usize, *mut StatsOut, *mut TextOut) -> i32,
    release: unsafe extern "C" fn(*mut c_void),
}

/// A calibrator a plugin library exports: what it provides, and how to make instances.
pub struct ForeignCalibratorType {
    id: String,
    provides: StatKind,
    needs_gradients: bool,
    functions: Functions,
    source: String,
}

impl ForeignCalibratorType {
    /// Check `vt`, make one instance to read and check its metadata, and destroy it again.
    pub(super) fn load(id: String, vt: CalibratorVTable, source: String) -> Result<Self> {
        let missing = |entry: &str| err!("calibrator `{id}`: vtable entry `{entry}` is null");
        let info = vt.info.ok_or_else(|| missing("info"))?;
        let functions = Functions {
            create: vt.create.ok_or_else(|| missing("create"))?,
            destroy: vt.destroy.ok_or_else(|| missing("destroy"))?,
            observe_input: vt.observe_input.ok_or_else(|| missing("observe_input"))?,
            observe_gradient: vt.observe_gradient.ok_or_else(|| missing("observe_gradient"))?,
            finish: vt.finish.ok_or_else(|| missing("finish"))?,
            release: vt.release.ok_or_else(|| missing("release"))?,
        };
        let mut ty = Self { id, provides: StatKind::ActScale, needs_gradients: false, functions, source };
        let instance = ty.create()?;
        let mut raw = CalibratorInfo::EMPTY;
        let mut err = TextOut::NONE;
        // SAFETY: a live instance of this vtable; `raw` is writable.
        let code = unsafe { info(instance.as_ptr(), &mut raw, &mut err) };
        let checked = (|| -> Result<()> {
            if code != status::OK {
                return Err(ty.call_error("info", code, err).into());
            }
            // SAFETY: borrowed from the live instance (ABI contract).
            let reported = unsafe { raw.id.to_str("calibrator id") }?;
            if reported != ty.id {
                bail!("calibrator exported as `{}` reports its id as `{reported}`", ty.id);
            }
            ty.provides = abi::stat_kind_from_code(raw.provides)
                .ok_or_else(|| err!("calibrator `{}`: unknown statistic code {}", ty.id, raw.provides))?;
            ty.needs_gradients = match raw.needs_gradients {
                0 => false,
                1 => true,
                other => bail!("calibrator `{}`: needs_gradients is {other}, not 0 or 1", ty.id),
            };
            Ok(())
        })();
        // SAFETY: made above by this vtable's `create`, destroyed once.
        unsafe { (ty.functions.destroy)(instance.as_ptr()) };
        checked?;
        Ok(ty)
    }

    /// Its id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The statistic it provides.
    pub fn provides(&self) -> StatKind {
        self.provides
    }

    fn create(&self) -> tenpak_api::Result<NonNull<c_void>> {
        let mut instance = std::ptr::null_mut();
        let mut err = TextOut::NONE;
        // SAFETY: ABI contract: `create` writes an instance pointer or an error.
        let code = unsafe { (self.functions.create)(&mut instance, &mut err) };
        if code != status::OK {
            return Err(self.call_error("create", code, err));
        }
        NonNull::new(instance).ok_or_else(|| self.malformed("create", "a null instance"))
    }

    /// A fresh calibrator for one run. If the plugin cannot make one, every call on the result
    /// reports why.
    pub fn make(self: &std::sync::Arc<Self>) -> Box<dyn Calibrator> {
        Box::new(ForeignCalibrator { ty: self.clone(), instance: self.create() })
    }

    fn call_error(&self, function: &str, code: i32, err: TextOut) -> Error {
        call_error(&format!("calibrator `{}`", self.id), &self.source, self.functions.release, function, code, err)
    }

    fn malformed(&self, function: &str, what: impl std::fmt::Display) -> Error {
        malformed(&format!("calibrator `{}`", self.id), &self.source, function, what)
    }
}

/// One run's instance of a plugin calibrator, behind the ordinary [`Calibrator`] trait.
pub struct ForeignCalibrator {
    ty: std::sync::Arc<ForeignCalibratorType>,
    instance: tenpak_api::Result<NonNull<c_void>>,
}

// SAFETY: the instance is a `T: Calibrator` of the plugin, and `Calibrator: Send`; it is only
// used through `&mut self`, so one thread at a time.
unsafe impl Send for ForeignCalibrator {}

impl Drop for ForeignCalibrator {
    fn drop(&mut self) {
        if let Ok(instance) = self.instance {
            // SAFETY: made by this vtable's `create`, destroyed once.
            unsafe { (self.ty.functions.destroy)(instance.as_ptr()) };
        }
    }
}

impl ForeignCalibrator {
    fn instance(&self) -> tenpak_api::Result<*mut c_void> {
        self.instance.as_ref().map(|i| i.as_ptr()).map_err(Clone::clone)
    }

    fn observe(&mut self, gradient: bool, layer: &LayerInfo, values: WeightView<'_>) -> tenpak_api::Result<()> {
        let instance = self.instance()?;
        let layer_ref = LayerRef::new(layer);
        let matrix = WeightRef { data: values.data().as_ptr(), rows: values.rows(), cols: values.cols() };
        let mut err = TextOut::NONE;
        let (function, name) = if gradient {
            (self.ty.functions.observe_gradient, "observe_gradient")
        } else {
            (self.ty.functions.observe_input, "observe_input")
        };
        // SAFETY: a live instance, used by this thread only; the layer and matrix outlive the call.
        let code = unsafe { function(instance, &layer_ref, &matrix, &mut err) };
        if code != status::OK {
            return Err(self.ty.call_error(name, code, err));
        }
        Ok(())
    }
}

impl Calibrator for ForeignCalibrator {
    fn id(&self) -> &str {
        &self.ty.id
    }

    fn provides(&self) -> StatKind {
        self.ty.provides
    }

    fn needs_gradients(&self) -> bool {
        self.ty.needs_gradients
    }

    fn observe_input(&mut self, layer: &LayerInfo, inputs: WeightView<'_>) -> tenpak_api::Result<()> {
        self.observe(false, layer, inputs)
    }

    fn observe_gradient(&mut self, layer: &LayerInfo, gradient: WeightView<'_>) -> tenpak_api::Result<()> {
        self.observe(true, layer, gradient)
    }

    /// Takes the plugin's statistic only after checking it is the one it provides, alone, with
    /// the layer's size.
    fn finish(&mut self, layer: &LayerInfo, stats: &mut LayerStats) -> tenpak_api::Result<()> {
        let instance = self.instance()?;
        let layer_ref = LayerRef::new(layer);
        let mut out = StatsOut::NONE;
        let mut err = TextOut::NONE;
        // SAFETY: a live instance, used by this thread only; the layer outlives the call.
        let code = unsafe { (self.ty.functions.finish)(instance, &layer_ref, stats.samples, &mut out, &mut err) };
        if code != status::OK {
            return Err(self.ty.call_error("finish", code, err));
        }
        // SAFETY: on OK the plugin filled `out` with statistics borrowed from `out.handle`.
        let copied = unsafe { out.stats.to_stats() };
        // SAFETY: handed out by this vtable; released once.
        unsafe { (self.ty.functions.release)(out.handle) };
        let got = copied.map_err(|e| self.ty.malformed("finish", e))?;
        let value = checked_statistic(self.ty.provides, layer, got.clone()).map_err(|e| self.ty.malformed("finish", e))?;
        match value {
            Statistic::Channels(StatKind::ActScale, v) => stats.act_scale = Some(v),
            Statistic::Channels(_, v) => stats.hessian_diag = Some(v),
            Statistic::Gram(g) => stats.gram = Some(g),
            Statistic::Fisher(v) => stats.fisher_diag = Some(v),
        }
        stats.samples = got.samples;
        Ok(())
    }
}

enum Statistic {
    Channels(StatKind, Vec<f32>),
    Gram(Gram),
    Fisher(Vec<f32>),
}

/// The one statistic `provides` names, out of what a plugin's `finish` wrote: present, of
/// `layer`'s size, and nothing else written beside it.
fn checked_statistic(provides: StatKind, layer: &LayerInfo, got: LayerStats) -> std::result::Result<Statistic, String> {
    let LayerStats { act_scale, hessian_diag, gram, fisher_diag, .. } = got;
    let written: Vec<&str> = [
        ("act_scale", act_scale.is_some()),
        ("hessian_diag", hessian_diag.is_some()),
        ("gram", gram.is_some()),
        ("fisher_diag", fisher_diag.is_some()),
    ]
    .into_iter()
    .filter(|(_, on)| *on)
    .map(|(name, _)| name)
    .collect();
    let expected = match provides {
        StatKind::ActScale => "act_scale",
        StatKind::HessianDiag => "hessian_diag",
        StatKind::Gram => "gram",
        StatKind::FisherDiag => "fisher_diag",
    };
    if written != [expected] {
        return Err(format!("it provides {expected} but wrote [{}] for `{}`", written.join(", "), layer.name));
    }
    let sized = |what: &str, len: usize, want: usize| {
        if len == want { Ok(()) } else { Err(format!("{what} for `{}` has {len} values, expected {want}", layer.name)) }
    };
    Ok(match (act_scale, hessian_diag, gram, fisher_diag) {
        (Some(v), None, None, None) => {
            sized(expected, v.len(), layer.cols)?;
            Statistic::Channels(StatKind::ActScale, v)
        }
        (None, Some(v), None, None) => {
            sized(expected, v.len(), layer.cols)?;
            Statistic::Channels(StatKind::HessianDiag, v)
        }
        (None, None, Some(g), None) => {
            sized("gram side", g.dim, layer.cols)?;
            Statistic::Gram(g)
        }
        (None, None, None, Some(v)) => {
            sized(expected, v.len(), layer.rows * layer.cols)?;
            Statistic::Fisher(v)
        }
        _ => unreachable!("exactly one statistic was written (checked above)"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tenpak_api::LayerRole;

    #[test]
    fn only_the_provided_statistic_of_the_right_size_is_taken() {
        let layer = LayerInfo { name: "w".into(), role: LayerRole::MlpUp, block: Some(0), rows: 2, cols: 3 };
        let stats = |act: Option<usize>, fisher: Option<usize>| LayerStats {
            act_scale: act.map(|n| vec![1.0; n]),
            fisher_diag: fisher.map(|n| vec![1.0; n]),
            ..LayerStats::none()
        };
        assert!(matches!(checked_statistic(StatKind::ActScale, &layer, stats(Some(3), None)), Ok(Statistic::Channels(StatKind::ActScale, _))));
        assert!(matches!(checked_statistic(StatKind::FisherDiag, &layer, stats(None, Some(6))), Ok(Statistic::Fisher(_))));
        let err = |r: std::result::Result<Statistic, String>| r.err().expect("refused");
        assert!(err(checked_statistic(StatKind::ActScale, &layer, stats(Some(4), None))).contains("4 values, expected 3"));
        assert!(err(checked_statistic(StatKind::ActScale, &layer, stats(Some(3), Some(6)))).contains("wrote [act_scale, fisher_diag]"));
        assert!(err(checked_statistic(StatKind::Gram, &layer, stats(None, None))).contains("provides gram but wrote []"));
        let gram = LayerStats { gram: Some(Gram { dim: 2, data: vec![0.0; 4] }), ..LayerStats::none() };
        assert!(err(checked_statistic(StatKind::Gram, &layer, gram)).contains("gram side"));
    }
}
