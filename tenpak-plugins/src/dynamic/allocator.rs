//! Allocators from plugin libraries, behind the ordinary [`Allocator`] trait.

use std::ffi::c_void;

use tenpak_error::{Result, err};
use tenpak_api::abi::{self, AllocatorInfo, AllocatorVTable, LayerRef, ProbeLease, ProbeRef, StrRef, TextOut, status};
use tenpak_api::{Allocator, AllocatorConfig, LayerInfo, ParamSpec, Plan, Probe, StatsNeeds};

use super::{InfoFields, Instance};

/// A vtable whose entries were all checked non-null.
#[derive(Clone, Copy)]
struct Functions {
    needs: unsafe extern "C" fn(*const c_void, StrRef, *mut u32, *mut TextOut) -> i32,
    validate: unsafe extern "C" fn(*const c_void, StrRef, *mut TextOut) -> i32,
    plan: unsafe extern "C" fn(*const c_void, *const LayerRef, usize, StrRef, *const ProbeRef, *mut TextOut, *mut TextOut) -> i32,
}

/// An allocator living in a plugin library.
pub struct ForeignAllocator {
    instance: Instance,
    functions: Functions,
}

// SAFETY: the instance is a `T: Allocator` of the plugin, and `Allocator: Send + Sync`; the
// vtable holds plain function pointers into a library that is never unloaded.
unsafe impl Send for ForeignAllocator {}
// SAFETY: as above; every call takes the instance by shared pointer, as `&self` does.
unsafe impl Sync for ForeignAllocator {}

impl ForeignAllocator {
    pub(super) fn create(id: String, vt: AllocatorVTable, source: String) -> Result<Self> {
        let missing = |entry: &str| err!("allocator `{id}`: vtable entry `{entry}` is null");
        let entries = (
            vt.create.ok_or_else(|| missing("create"))?,
            vt.info.ok_or_else(|| missing("info"))?,
            vt.destroy.ok_or_else(|| missing("destroy"))?,
            vt.release.ok_or_else(|| missing("release"))?,
        );
        let functions = Functions {
            needs: vt.needs.ok_or_else(|| missing("needs"))?,
            validate: vt.validate.ok_or_else(|| missing("validate"))?,
            plan: vt.plan.ok_or_else(|| missing("plan"))?,
        };
        let (instance, _) = Instance::create("allocator", id, source, entries, AllocatorInfo::EMPTY, |raw: &AllocatorInfo| {
            InfoFields { id: raw.id, description: raw.description, params: raw.params, param_count: raw.param_count }
        })?;
        Ok(ForeignAllocator { instance, functions })
    }

    /// Where it came from: the library path and the crate that built it.
    pub fn source(&self) -> &str {
        &self.instance.source
    }
}

impl Allocator for ForeignAllocator {
    fn id(&self) -> &str {
        &self.instance.id
    }

    fn description(&self) -> &str {
        &self.instance.description
    }

    fn params(&self) -> &[ParamSpec] {
        &self.instance.params
    }

    /// The plugin's answer. The trait leaves no room for an error here; a failing call (which
    /// `validate` reports first, on the same configuration) warns and needs nothing.
    fn needs(&self, config: &AllocatorConfig) -> StatsNeeds {
        let call = || -> tenpak_api::Result<StatsNeeds> {
            let json = abi::config_to_json(config)?;
            let mut bits = 0u32;
            let mut err = TextOut::NONE;
            // SAFETY: live instance; `json` outlives the call.
            let code = unsafe { (self.functions.needs)(self.instance.ptr(), StrRef::new(&json), &mut bits, &mut err) };
            if code != status::OK {
                return Err(self.instance.call_error("needs", code, err));
            }
            abi::needs_from_bits(bits).map_err(|e| self.instance.malformed("needs", e))
        };
        call().unwrap_or_else(|e| {
            eprintln!("warning: {e}; planning as if it needed no statistics");
            StatsNeeds::NONE
        })
    }

    fn validate(&self, config: &AllocatorConfig) -> tenpak_api::Result<()> {
        let json = abi::config_to_json(config)?;
        let mut err = TextOut::NONE;
        // SAFETY: live instance; `json` outlives the call.
        let code = unsafe { (self.functions.validate)(self.instance.ptr(), StrRef::new(&json), &mut err) };
        if code != status::OK {
            return Err(self.instance.call_error("validate", code, err));
        }
        Ok(())
    }

    /// The plugin's plan, checked to hold one entry per layer, by name and in order.
    fn plan(&self, layers: &[LayerInfo], config: &AllocatorConfig, probe: &mut dyn Probe) -> tenpak_api::Result<Plan> {
        let json = abi::config_to_json(config)?;
        let refs: Vec<LayerRef> = layers.iter().map(LayerRef::new).collect();
        let mut lease = ProbeLease::new(probe);
        let probe_ref = lease.raw();
        let mut out = TextOut::NONE;
        let mut err = TextOut::NONE;
        // SAFETY: live instance; the layers, configuration and probe lease outlive the call, and
        // the plugin calls the probe back only during it.
        let code = unsafe {
            (self.functions.plan)(
                self.instance.ptr(),
                refs.as_ptr(),
                refs.len(),
                StrRef::new(&json),
                &probe_ref,
                &mut out,
                &mut err,
            )
        };
        let _ = lease;
        if code != status::OK {
            return Err(self.instance.call_error("plan", code, err));
        }
        // SAFETY: on OK the plugin filled `out` with text borrowed from `out.handle`.
        let text = unsafe { out.text.to_str("plan") }.map(str::to_owned);
        self.instance.release(out.handle);
        let plan = text.and_then(|t| abi::plan_from_json(&t)).map_err(|e| self.instance.malformed("plan", e))?;
        if plan.layers.len() != layers.len() {
            return Err(self.instance.malformed("plan", format!("{} layers planned for {} given", plan.layers.len(), layers.len())));
        }
        if let Some((got, want)) = plan.layers.iter().zip(layers).find(|(got, want)| got.name != want.name) {
            return Err(self.instance.malformed("plan", format!("`{}` planned where `{}` was expected", got.name, want.name)));
        }
        Ok(plan)
    }
}
