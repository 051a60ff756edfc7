//! Allocators from plugin libraries, behind the ordinary [`Allocator`] trait.

use std::ffi::c_void;
use std::ptr::NonNull;

use anyhow::{Result, anyhow, bail};
use tenpak_api::abi::{self, AllocatorInfo, AllocatorVTable, LayerRef, ProbeLease, ProbeRef, StrRef, TextOut, status};
use tenpak_api::{Allocator, AllocatorConfig, Error, LayerInfo, ParamSpec, Plan, Probe, StatsNeeds};

use super::{call_error, malformed, read_param_specs};

/// A vtable whose entries were all checked non-null.
#[derive(Clone, Copy)]
struct Functions {
    destroy: unsafe extern "C" fn(*mut c_void),
    needs: unsafe extern "C" fn(*const c_void, StrRef, *mut u32, *mut TextOut) -> i32,
    validate: unsafe extern "C" fn(*const c_void, StrRef, *mut TextOut) -> i32,
    plan: unsafe extern "C" fn(*const c_void, *const LayerRef, usize, StrRef, *const ProbeRef, *mut TextOut, *mut TextOut) -> i32,
    release: unsafe extern "C" fn(*mut c_void),
}

/// An allocator living in a plugin library.
pub struct ForeignAllocator {
    id: String,
    description: String,
    params: Vec<ParamSpec>,
    functions: Functions,
    instance: NonNull<c_void>,
    source: String,
}

// SAFETY: the instance is a `T: Allocator` of the plugin, and `Allocator: Send + Sync`; the
// vtable holds plain function pointers into a library that is never unloaded.
unsafe impl Send for ForeignAllocator {}
// SAFETY: as above; every call takes the instance by shared pointer, as `&self` does.
unsafe impl Sync for ForeignAllocator {}

impl ForeignAllocator {
    pub(super) fn create(id: String, vt: AllocatorVTable, source: String) -> Result<Self> {
        let missing = |entry: &str| anyhow!("allocator `{id}`: vtable entry `{entry}` is null");
        let (create, info) = (vt.create.ok_or_else(|| missing("create"))?, vt.info.ok_or_else(|| missing("info"))?);
        let functions = Functions {
            destroy: vt.destroy.ok_or_else(|| missing("destroy"))?,
            needs: vt.needs.ok_or_else(|| missing("needs"))?,
            validate: vt.validate.ok_or_else(|| missing("validate"))?,
            plan: vt.plan.ok_or_else(|| missing("plan"))?,
            release: vt.release.ok_or_else(|| missing("release"))?,
        };
        let mut instance = std::ptr::null_mut();
        let mut err = TextOut::NONE;
        // SAFETY: ABI contract: `create` writes an instance pointer or an error.
        let code = unsafe { create(&mut instance, &mut err) };
        if code != status::OK {
            // SAFETY: on failure the plugin filled `err`.
            bail!("allocator `{id}`: create failed: {}", unsafe { abi::take_text(functions.release, err) });
        }
        let instance = NonNull::new(instance).ok_or_else(|| anyhow!("allocator `{id}`: create returned a null instance"))?;
        // From here on, dropping `allocator` destroys the instance.
        let mut allocator = ForeignAllocator { id, description: String::new(), params: Vec::new(), functions, instance, source };
        let mut raw = AllocatorInfo::EMPTY;
        let mut err = TextOut::NONE;
        // SAFETY: a live instance of this vtable; `raw` is writable.
        let code = unsafe { info(instance.as_ptr(), &mut raw, &mut err) };
        if code != status::OK {
            return Err(allocator.call_error("info", code, err).into());
        }
        // SAFETY (the strings and table below): borrowed from the live instance (ABI contract).
        let reported = unsafe { raw.id.to_str("allocator id") }?;
        if reported != allocator.id {
            bail!("allocator exported as `{}` reports its id as `{reported}`", allocator.id);
        }
        allocator.description = unsafe { raw.description.to_str("description") }?.to_owned();
        allocator.params = unsafe { read_param_specs(&format!("allocator `{}`", allocator.id), raw.params, raw.param_count) }?;
        Ok(allocator)
    }

    /// Where it came from: the library path and the crate that built it.
    pub fn source(&self) -> &str {
        &self.source
    }

    fn call_error(&self, function: &str, code: i32, err: TextOut) -> Error {
        call_error(&format!("allocator `{}`", self.id), &self.source, self.functions.release, function, code, err)
    }

    fn malformed(&self, function: &str, what: impl std::fmt::Display) -> Error {
        malformed(&format!("allocator `{}`", self.id), &self.source, function, what)
    }
}

impl Drop for ForeignAllocator {
    fn drop(&mut self) {
        // Only reached when loading fails halfway: loaded plugins live for good.
        // SAFETY: the instance came from this vtable's `create` and is destroyed once.
        unsafe { (self.functions.destroy)(self.instance.as_ptr()) };
    }
}

impl Allocator for ForeignAllocator {
    fn id(&self) -> &str {
        &self.id
    }

    fn description(&self) -> &str {
        &self.description
    }

    fn params(&self) -> &[ParamSpec] {
        &self.params
    }

    /// The plugin's answer. The trait leaves no room for an error here; a failing call (which
    /// `validate` reports first, on the same configuration) warns and needs nothing.
    fn needs(&self, config: &AllocatorConfig) -> StatsNeeds {
        let call = || -> tenpak_api::Result<StatsNeeds> {
            let json = abi::config_to_json(config)?;
            let mut bits = 0u32;
            let mut err = TextOut::NONE;
            // SAFETY: live instance; `json` outlives the call.
            let code = unsafe { (self.functions.needs)(self.instance.as_ptr(), StrRef::new(&json), &mut bits, &mut err) };
            if code != status::OK {
                return Err(self.call_error("needs", code, err));
            }
            abi::needs_from_bits(bits).map_err(|e| self.malformed("needs", e))
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
        let code = unsafe { (self.functions.validate)(self.instance.as_ptr(), StrRef::new(&json), &mut err) };
        if code != status::OK {
            return Err(self.call_error("validate", code, err));
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
                self.instance.as_ptr(),
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
            return Err(self.call_error("plan", code, err));
        }
        // SAFETY: on OK the plugin filled `out` with text borrowed from `out.handle`.
        let text = unsafe { out.text.to_str("plan") }.map(str::to_owned);
        // SAFETY: handed out by this vtable; released once.
        unsafe { (self.functions.release)(out.handle) };
        let plan = text.and_then(|t| abi::plan_from_json(&t)).map_err(|e| self.malformed("plan", e))?;
        if plan.layers.len() != layers.len() {
            return Err(self.malformed("plan", format!("{} layers planned for {} given", plan.layers.len(), layers.len())));
        }
        if let Some((got, want)) = plan.layers.iter().zip(layers).find(|(got, want)| got.name != want.name) {
            return Err(self.malformed("plan", format!("`{}` planned where `{}` was expected", got.name, want.name)));
        }
        Ok(plan)
    }
}
