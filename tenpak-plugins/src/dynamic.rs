//! Plugins: codecs, calibrators and allocators loaded at run time from shared libraries, through
//! `tenpak_api::abi`.
//!
//! [`load_into`] opens a library the operator named (`tenpak --plugin PATH`; never a path from an
//! HTTP request), checks its ABI version before anything else, makes one instance of each codec
//! and allocator it exports (calibrators get one per run, made on demand), and adds them to a
//! [`Registry`] as [`ForeignCodec`]s, [`ForeignCalibrator`]s and [`ForeignAllocator`]s, which
//! implement the ordinary traits: the rest of the host cannot tell them from built-ins, except by
//! the registry's sources, which name the library.
//!
//! What the host does not trust a plugin with: every string is checked for UTF-8, every encoded
//! part's length against its shape and dtype, the decoded length against the matrix, the codec
//! id and shape of every encoding, that a calibrator wrote exactly the statistic it provides with
//! the layer's size, and that a plan has one entry per layer, by name and in order. A malformed
//! answer is an error naming the library; a panic inside the plugin arrives as an error (the ABI
//! catches it), and the host goes on.
//!
//! Libraries are never unloaded: instances, function pointers and metadata live in them. Each
//! library is opened once per process; loading the same path again (into another registry)
//! reuses it.

mod allocator;
mod calibrator;

pub use allocator::ForeignAllocator;
pub use calibrator::{ForeignCalibrator, ForeignCalibratorType};

use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use tenpak_error::{Context, Result, bail, err};
use tenpak_api::abi::{
    self, ABI_VERSION, AllocatorVTable, CalibratorVTable, CodecInfo, CodecVTable, ComponentDescriptor, ENTRY_POINT,
    EncodedLease, EncodedOut, EntryPoint, FLAG_PANIC_UNWIND, FloatsOut, KIND_ALLOCATOR, KIND_CALIBRATOR, KIND_CODEC,
    ParamSpecRef, PluginDescriptor, StatsRef, StrRef, TextOut, WeightRef, status,
};
use tenpak_api::registry::Registry;
use tenpak_api::{Allocator, Codec, Encoded, Error, ErrorKind, LayerStats, ParamSpec, Params, StatsNeeds, WeightView};

/// Every library this process opened, refused ones included: never dropped, so never unloaded.
static OPENED: Mutex<Vec<libloading::Library>> = Mutex::new(Vec::new());
/// Libraries loaded successfully, by canonical path.
static LOADED: Mutex<Vec<Arc<Plugin>>> = Mutex::new(Vec::new());

/// A loaded plugin library and the components it provides.
pub struct Plugin {
    path: PathBuf,
    name: String,
    codecs: Vec<Arc<ForeignCodec>>,
    calibrators: Vec<Arc<ForeignCalibratorType>>,
    allocators: Vec<Arc<ForeignAllocator>>,
}

impl Plugin {
    /// The library's canonical path.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Who built it, as the library says (`"tenpak-codec-nf4 0.1.0"`).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Its codecs.
    pub fn codecs(&self) -> &[Arc<ForeignCodec>] {
        &self.codecs
    }
    /// Its calibrators.
    pub fn calibrators(&self) -> &[Arc<ForeignCalibratorType>] {
        &self.calibrators
    }
    /// Its allocators.
    pub fn allocators(&self) -> &[Arc<ForeignAllocator>] {
        &self.allocators
    }
    /// What the registry and the manifests record as the source of its components: the path,
    /// then the crate, so a reader missing a codec knows which library to pass.
    pub fn source(&self) -> String {
        format!("{} ({})", self.path.display(), self.name)
    }

    /// Add every component to `registry`, or none: if any id is taken, the error names the kind,
    /// the id, the source that has it and this library.
    pub fn register(&self, registry: &mut Registry) -> Result<()> {
        let source = self.source();
        let taken = self
            .codecs
            .iter()
            .map(|c| ("codec", c.id(), registry.codec_source(c.id())))
            .chain(self.calibrators.iter().map(|c| ("calibrator", c.id(), registry.calibrator_source(c.id()))))
            .chain(self.allocators.iter().map(|a| ("allocator", a.id(), registry.allocator_source(a.id()))));
        for (kind, id, existing) in taken {
            let Some(existing) = existing else { continue };
            if existing == source {
                bail!("plugin {}: this library is already loaded into the registry", self.path.display());
            }
            bail!(
                "plugin {}: {kind} id `{id}` is already registered by {existing}; refusing the whole library \
                 (ids must be unique across built-ins and plugins)",
                self.path.display(),
            );
        }
        for codec in &self.codecs {
            registry.add_codec(codec.clone(), &source)?;
        }
        for calibrator in &self.calibrators {
            let factory = calibrator.clone();
            registry.add_calibrator(calibrator.id(), Arc::new(move || factory.make()), &source)?;
        }
        for allocator in &self.allocators {
            registry.add_allocator(allocator.clone(), &source)?;
        }
        Ok(())
    }
}

/// Load every library in `paths` into `registry`, in order; the first failure stops.
pub fn load_all(registry: &mut Registry, paths: &[PathBuf]) -> Result<()> {
    for path in paths {
        load_into(registry, path)?;
    }
    Ok(())
}

/// Load the library at `path` (or reuse it, if this process loaded it before) and add its
/// components to `registry`.
pub fn load_into(registry: &mut Registry, path: &Path) -> Result<Arc<Plugin>> {
    let plugin = load(path)?;
    plugin.register(registry)?;
    Ok(plugin)
}

/// Open the library at `path`, check it, and make its components, without registering them. A
/// library this process already loaded is returned as it is.
pub fn load(path: &Path) -> Result<Arc<Plugin>> {
    let canonical = std::fs::canonicalize(path).with_context(|| format!("plugin {}", path.display()))?;
    let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(plugin) = loaded.iter().find(|p| p.path == canonical) {
        return Ok(plugin.clone());
    }
    let plugin = Arc::new(open(&canonical).with_context(|| format!("plugin {}", canonical.display()))?);
    loaded.push(plugin.clone());
    Ok(plugin)
}

fn open_library(path: &Path) -> Result<libloading::Library, libloading::Error> {
    #[cfg(unix)]
    {
        use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
        // RTLD_NOW: an unresolved symbol fails here, with the loader's message, not later in
        // the middle of a pack. RTLD_LOCAL: one plugin's symbols never satisfy another's.
        // SAFETY: loading runs the library's initializers; the operator chose this library.
        unsafe { Library::open(Some(path), RTLD_NOW | RTLD_LOCAL) }.map(Into::into)
    }
    #[cfg(not(unix))]
    {
        // SAFETY: as above.
        unsafe { libloading::Library::new(path) }
    }
}

fn open(path: &Path) -> Result<Plugin> {
    let library = open_library(path).map_err(|e| err!("cannot load the library: {e}"))?;
    let mut opened = OPENED.lock().unwrap_or_else(|e| e.into_inner());
    opened.push(library);
    let library = opened.last().expect("just pushed");
    let symbol = format!("{ENTRY_POINT}\0");
    // SAFETY: the symbol is declared with the signature every TenPak plugin exports under
    // this name (`EntryPoint`); a library exporting something else under our name is beyond
    // what a loader can check.
    let entry: EntryPoint = *unsafe { library.get::<EntryPoint>(symbol.as_bytes()) }.map_err(|_| {
        err!("no `{ENTRY_POINT}` symbol: not a TenPak plugin (a plugin crate exports it with tenpak_api::export_plugin!)")
    })?;
    // SAFETY: the entry point only returns a pointer to static data.
    let descriptor = unsafe { entry() };
    if descriptor.is_null() || !descriptor.is_aligned() {
        bail!("`{ENTRY_POINT}` returned an invalid descriptor pointer {descriptor:p}");
    }
    // The version is the one field every ABI version keeps in place: read it alone, and only
    // then the rest, which may have another layout in another version.
    // SAFETY: non-null and aligned (checked), and every version's descriptor starts with a u32.
    let version = unsafe { descriptor.cast::<u32>().read() };
    if version != ABI_VERSION {
        bail!(
            "built for TenPak plugin ABI version {version}, but this tenpak speaks ABI version {ABI_VERSION}: \
             rebuild the plugin against a tenpak-api with ABI version {ABI_VERSION}"
        );
    }
    // SAFETY: the version matches, so the pointer is to a `PluginDescriptor` with static storage
    // in a library we never unload.
    let descriptor: &'static PluginDescriptor = unsafe { &*descriptor };
    // SAFETY: descriptor strings and tables are static data in the library (ABI contract).
    let name = unsafe { descriptor.plugin.to_str("plugin name") }?.to_owned();
    if descriptor.flags & FLAG_PANIC_UNWIND == 0 {
        bail!(
            "{name} was built with panic = \"abort\": a panic in it would kill this process instead of \
             becoming an error; rebuild it with panic = \"unwind\" (the default)"
        );
    }
    // SAFETY: as above.
    let components: &[ComponentDescriptor] =
        unsafe { abi::slice_from_raw(descriptor.components, descriptor.component_count, "component table") }?;
    let source = format!("{} ({name})", path.display());
    let mut plugin = Plugin { path: path.to_owned(), name, codecs: Vec::new(), calibrators: Vec::new(), allocators: Vec::new() };
    let mut ids: Vec<(u32, String)> = Vec::new();
    for (i, component) in components.iter().enumerate() {
        // SAFETY: as above.
        let id = unsafe { component.id.to_str(&format!("id of component {i}")) }?.to_owned();
        let kind = match component.kind {
            KIND_CODEC => "codec",
            KIND_CALIBRATOR => "calibrator",
            KIND_ALLOCATOR => "allocator",
            other => bail!(
                "component `{id}` is of kind {other}, which this host cannot load (it loads codecs, kind \
                 {KIND_CODEC}; calibrators, kind {KIND_CALIBRATOR}; allocators, kind {KIND_ALLOCATOR})"
            ),
        };
        if id.is_empty() || ids.iter().any(|(k, other)| *k == component.kind && *other == id) {
            bail!("{kind} id `{id}` is empty or appears twice in the library");
        }
        ids.push((component.kind, id.clone()));
        match component.kind {
            // SAFETY (each arm): a component's vtable is a static vtable of its kind (ABI
            // contract), checked non-null and aligned by `vtable`.
            KIND_CODEC => {
                let vtable = unsafe { *vtable::<CodecVTable>(component, kind, &id)? };
                plugin.codecs.push(Arc::new(ForeignCodec::create(id, vtable, source.clone())?));
            }
            KIND_CALIBRATOR => {
                let vtable = unsafe { *vtable::<CalibratorVTable>(component, kind, &id)? };
                plugin.calibrators.push(Arc::new(ForeignCalibratorType::load(id, vtable, source.clone())?));
            }
            _ => {
                let vtable = unsafe { *vtable::<AllocatorVTable>(component, kind, &id)? };
                plugin.allocators.push(Arc::new(ForeignAllocator::create(id, vtable, source.clone())?));
            }
        }
    }
    Ok(plugin)
}

/// A component's vtable pointer, checked non-null and aligned for `V`.
fn vtable<V>(component: &ComponentDescriptor, kind: &str, id: &str) -> Result<*const V> {
    let vtable = component.vtable.cast::<V>();
    if vtable.is_null() || !vtable.is_aligned() {
        bail!("{kind} `{id}`: invalid vtable pointer");
    }
    Ok(vtable)
}

/// Parameter specs read from a plugin's table, with every string and type code checked.
///
/// # Safety
/// The table and its strings must be valid for their lengths.
unsafe fn read_param_specs(component: &str, params: *const ParamSpecRef, count: usize) -> Result<Vec<ParamSpec>> {
    // SAFETY (every block): forwarded to the caller.
    let specs = unsafe { abi::slice_from_raw(params, count, "parameter table") }?;
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        let name = unsafe { spec.name.to_str("parameter name") }?;
        let ty = abi::param_type_from_code(spec.ty)
            .ok_or_else(|| err!("{component}: parameter `{name}` has unknown type code {}", spec.ty))?;
        out.push(ParamSpec {
            name: leak(name),
            ty,
            default: leak(unsafe { spec.default.to_str("parameter default") }?),
            doc: leak(unsafe { spec.doc.to_str("parameter doc") }?),
        });
    }
    Ok(out)
}

/// The error a failed call into `component` (`"codec `nf4`"`) from `source` reports.
fn call_error(component: &str, source: &str, release: unsafe extern "C" fn(*mut c_void), function: &str, code: i32, err: TextOut) -> Error {
    // SAFETY: on failure the plugin filled `err` with text borrowed from a handle it releases.
    let message = unsafe { abi::take_text(release, err) };
    match code {
        status::PANIC => Error::new(ErrorKind::Other, format!("{component} from {source} panicked in {function}: {message}")),
        status::INVALID_INPUT..=status::OTHER => Error::new(abi::kind_of_status(code), message),
        _ => Error::new(ErrorKind::Other, format!("{component} from {source}: {function} returned unknown status {code}: {message}")),
    }
}

/// The error for a malformed answer of `component` from `source`.
fn malformed(component: &str, source: &str, function: &str, what: impl std::fmt::Display) -> Error {
    Error::corrupt(format!("{component} from {source} returned a malformed {function} result: {what}"))
}

/// What a plugin's `info` reports that every instance-holding component has: its id, its
/// description and its parameter table (borrowed from the instance).
pub(crate) struct InfoFields {
    id: StrRef,
    description: StrRef,
    params: *const ParamSpecRef,
    param_count: usize,
}

/// An instance a library made for the host to keep (a codec's or an allocator's, one per
/// library), with what the host read from its `info`: id, description, parameters, and where it
/// came from. Dropping it destroys the instance (only when loading fails halfway: loaded plugins
/// live for good).
pub(crate) struct Instance {
    label: String,
    id: String,
    description: String,
    params: Vec<ParamSpec>,
    ptr: NonNull<c_void>,
    destroy: unsafe extern "C" fn(*mut c_void),
    release: unsafe extern "C" fn(*mut c_void),
    source: String,
}

/// A vtable's `create` entry.
type CreateFn = unsafe extern "C" fn(*mut *mut c_void, *mut TextOut) -> i32;
/// A vtable's `info` entry, filling `I`.
type InfoFn<I> = unsafe extern "C" fn(*const c_void, *mut I, *mut TextOut) -> i32;

impl Instance {
    /// Make the instance (`create`), read its metadata (`info`, into `empty`), check that the id
    /// it reports is `id`, and read its description and parameter table (`fields` picks them out
    /// of the metadata). Returns the metadata too, for what is particular to the kind.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn create<I>(
        kind: &str,
        id: String,
        source: String,
        (create, info, destroy, release): (CreateFn, InfoFn<I>, unsafe extern "C" fn(*mut c_void), unsafe extern "C" fn(*mut c_void)),
        empty: I,
        fields: impl Fn(&I) -> InfoFields,
    ) -> Result<(Self, I)> {
        let mut ptr = std::ptr::null_mut();
        let mut err = TextOut::NONE;
        // SAFETY: ABI contract: `create` writes an instance pointer or an error.
        let code = unsafe { create(&mut ptr, &mut err) };
        if code != status::OK {
            // SAFETY: on failure the plugin filled `err`.
            bail!("{kind} `{id}`: create failed: {}", unsafe { abi::take_text(release, err) });
        }
        let ptr = NonNull::new(ptr).ok_or_else(|| err!("{kind} `{id}`: create returned a null instance"))?;
        // From here on, dropping `instance` destroys it.
        let label = format!("{kind} `{id}`");
        let mut instance =
            Instance { label, id, description: String::new(), params: Vec::new(), ptr, destroy, release, source };
        let mut raw = empty;
        let mut err = TextOut::NONE;
        // SAFETY: a live instance of this vtable; `raw` is writable.
        let code = unsafe { info(ptr.as_ptr(), &mut raw, &mut err) };
        if code != status::OK {
            return Err(instance.call_error("info", code, err).into());
        }
        let f = fields(&raw);
        // SAFETY (the strings and table below): borrowed from the live instance (ABI contract).
        let reported = unsafe { f.id.to_str(&format!("{kind} id")) }?;
        if reported != instance.id {
            bail!("{kind} exported as `{}` reports its id as `{reported}`", instance.id);
        }
        instance.description = unsafe { f.description.to_str("description") }?.to_owned();
        instance.params = unsafe { read_param_specs(&instance.label, f.params, f.param_count) }?;
        Ok((instance, raw))
    }

    /// The instance pointer every vtable call takes.
    fn ptr(&self) -> *mut c_void {
        self.ptr.as_ptr()
    }

    /// Give a handle the library handed out back to it.
    fn release(&self, handle: *mut c_void) {
        // SAFETY: `handle` was handed out by this vtable's functions and is released once.
        unsafe { (self.release)(handle) };
    }

    /// The error a failed call reports.
    fn call_error(&self, function: &str, code: i32, err: TextOut) -> Error {
        call_error(&self.label, &self.source, self.release, function, code, err)
    }

    fn malformed(&self, function: &str, what: impl std::fmt::Display) -> Error {
        malformed(&self.label, &self.source, function, what)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // SAFETY: the instance came from this vtable's `create` and is destroyed once.
        unsafe { (self.destroy)(self.ptr.as_ptr()) };
    }
}

/// A codec living in a plugin library, behind the ordinary [`Codec`] trait.
pub struct ForeignCodec {
    instance: Instance,
    needs: StatsNeeds,
    vtable: Functions,
}

// SAFETY: the instance is a `T: Codec` of the plugin, and `Codec: Send + Sync`; the vtable holds
// plain function pointers into a library that is never unloaded.
unsafe impl Send for ForeignCodec {}
// SAFETY: as above; every call takes the instance by shared pointer, as `&self` does.
unsafe impl Sync for ForeignCodec {}

/// A vtable whose entries were all checked non-null.
#[derive(Clone, Copy)]
struct Functions {
    validate: unsafe extern "C" fn(*const c_void, StrRef, *mut TextOut) -> i32,
    encode: unsafe extern "C" fn(
        *const c_void,
        *const WeightRef,
        *const StatsRef,
        StrRef,
        *mut EncodedOut,
        *mut TextOut,
    ) -> i32,
    decode: unsafe extern "C" fn(*const c_void, *const abi::EncodedRef, *mut FloatsOut, *mut TextOut) -> i32,
    size_bits: unsafe extern "C" fn(*const c_void, *const abi::EncodedRef, *mut u64, *mut TextOut) -> i32,
}

fn leak(s: &str) -> &'static str {
    // Parameter specs hold `&'static str`. Each library is loaded once per process and never
    // unloaded, so these few strings are leaked once, like the library itself.
    Box::leak(s.to_owned().into_boxed_str())
}

impl ForeignCodec {
    fn create(id: String, vt: CodecVTable, source: String) -> Result<Self> {
        let missing = |entry: &str| err!("codec `{id}`: vtable entry `{entry}` is null");
        let entries = (
            vt.create.ok_or_else(|| missing("create"))?,
            vt.info.ok_or_else(|| missing("info"))?,
            vt.destroy.ok_or_else(|| missing("destroy"))?,
            vt.release.ok_or_else(|| missing("release"))?,
        );
        let vtable = Functions {
            validate: vt.validate.ok_or_else(|| missing("validate"))?,
            encode: vt.encode.ok_or_else(|| missing("encode"))?,
            decode: vt.decode.ok_or_else(|| missing("decode"))?,
            size_bits: vt.size_bits.ok_or_else(|| missing("size_bits"))?,
        };
        let (instance, raw) = Instance::create("codec", id, source, entries, CodecInfo::EMPTY, |raw: &CodecInfo| InfoFields {
            id: raw.id,
            description: raw.description,
            params: raw.params,
            param_count: raw.param_count,
        })?;
        let needs = abi::needs_from_bits(raw.needs).map_err(|e| e.context(instance.label.clone()))?;
        Ok(ForeignCodec { instance, needs, vtable })
    }

    /// Where it came from: the library path and the crate that built it.
    pub fn source(&self) -> &str {
        &self.instance.source
    }
}

impl Codec for ForeignCodec {
    fn id(&self) -> &str {
        &self.instance.id
    }

    fn description(&self) -> &str {
        &self.instance.description
    }

    fn params(&self) -> &[ParamSpec] {
        &self.instance.params
    }

    fn needs(&self) -> StatsNeeds {
        self.needs
    }

    fn validate(&self, params: &Params) -> tenpak_api::Result<()> {
        let json = abi::params_to_json(params)?;
        let mut err = TextOut::NONE;
        // SAFETY: live instance; `json` outlives the call.
        let code = unsafe { (self.vtable.validate)(self.instance.ptr(), StrRef::new(&json), &mut err) };
        if code != status::OK {
            return Err(self.instance.call_error("validate", code, err));
        }
        Ok(())
    }

    fn encode(&self, weight: WeightView<'_>, stats: &LayerStats, params: &Params) -> tenpak_api::Result<Encoded> {
        let json = abi::params_to_json(params)?;
        let weight_ref = WeightRef { data: weight.data().as_ptr(), rows: weight.rows(), cols: weight.cols() };
        let stats_ref = StatsRef::new(stats);
        let mut out = EncodedOut::NONE;
        let mut err = TextOut::NONE;
        // SAFETY: live instance; the weight, statistics and parameters outlive the call and
        // their lengths match what the refs say.
        let code = unsafe {
            (self.vtable.encode)(
                self.instance.ptr(),
                &weight_ref,
                &stats_ref,
                StrRef::new(&json),
                &mut out,
                &mut err,
            )
        };
        if code != status::OK {
            return Err(self.instance.call_error("encode", code, err));
        }
        // SAFETY: on OK the plugin filled `out` with data borrowed from `out.handle`.
        let copied = unsafe { abi::encoded_from_raw(&out.encoded) };
        self.instance.release(out.handle);
        let encoded = copied.map_err(|e| self.instance.malformed("encode", e))?;
        if encoded.codec != self.instance.id {
            return Err(self.instance.malformed("encode", format!("the encoding says it is from codec `{}`", encoded.codec)));
        }
        if encoded.shape != [weight.rows(), weight.cols()] {
            return Err(self.instance.malformed(
                "encode",
                format!("shape {:?} for a [{}, {}] weight", encoded.shape, weight.rows(), weight.cols()),
            ));
        }
        Ok(encoded)
    }

    fn decode(&self, encoded: &Encoded) -> tenpak_api::Result<Vec<f32>> {
        let lease = EncodedLease::new(encoded)?;
        let raw = lease.raw();
        let mut out = FloatsOut::NONE;
        let mut err = TextOut::NONE;
        // SAFETY: live instance; `lease` (and `encoded`) outlive the call.
        let code = unsafe { (self.vtable.decode)(self.instance.ptr(), &raw, &mut out, &mut err) };
        if code != status::OK {
            return Err(self.instance.call_error("decode", code, err));
        }
        // SAFETY: on OK the plugin filled `out` with values borrowed from `out.handle`.
        let copied = unsafe { abi::slice_from_raw(out.values.ptr, out.values.len, "decoded values") }.map(<[f32]>::to_vec);
        self.instance.release(out.handle);
        let values = copied.map_err(|e| self.instance.malformed("decode", e))?;
        let [rows, cols] = encoded.shape;
        if Some(values.len()) != rows.checked_mul(cols) {
            return Err(self.instance.malformed("decode", format!("{} values for a [{rows}, {cols}] matrix", values.len())));
        }
        Ok(values)
    }

    /// The plugin's answer. The trait leaves no room for an error here, so if the call fails
    /// (which an honest plugin's never does) the warning goes to stderr and the bytes stored
    /// are counted instead.
    fn size_bits(&self, encoded: &Encoded) -> u64 {
        let call = || -> tenpak_api::Result<u64> {
            let lease = EncodedLease::new(encoded)?;
            let raw = lease.raw();
            let mut bits = 0u64;
            let mut err = TextOut::NONE;
            // SAFETY: live instance; `lease` outlives the call.
            let code = unsafe { (self.vtable.size_bits)(self.instance.ptr(), &raw, &mut bits, &mut err) };
            if code != status::OK {
                return Err(self.instance.call_error("size_bits", code, err));
            }
            Ok(bits)
        };
        call().unwrap_or_else(|e| {
            eprintln!("warning: {e}; counting the stored bytes instead");
            encoded.stored_bits()
        })
    }
}
