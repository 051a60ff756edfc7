//! The C ABI through which a host loads components from a shared library.
//!
//! A `cdylib` built against this crate exports one symbol, [`ENTRY_POINT`] (`tenpak_plugin`): an
//! [`EntryPoint`], `extern "C" fn() -> *const PluginDescriptor`, which returns a pointer to a
//! static descriptor and runs no other code. [`export_plugin!`](crate::export_plugin) writes
//! that function, and everything it points to, from ordinary [`Codec`] implementations.
//!
//! The rules, and why:
//!
//! - **Version first.** [`PluginDescriptor::abi_version`] is the first field and stays the first
//!   field in every future version. A host reads those four bytes and compares them with its own
//!   [`ABI_VERSION`] before it reads another field or calls a function; on a mismatch it refuses
//!   the library with both versions in the message. The symbol name carries no version, so a
//!   plugin from another version gets that message rather than "symbol not found".
//! - **Only C types cross.** `#[repr(C)]` structs of integers, raw pointers and nullable
//!   `extern "C"` function pointers; never a Rust `String`, `Vec`, `&str`, `Result` or trait
//!   object, whose layout may differ between two compiler versions. Every struct has a
//!   compile-time size check, written in pointer-sized units so it holds on 32-bit targets too.
//! - **Whoever allocates frees.** A host lends its buffers (the weight, the parts to decode) for
//!   the duration of one call. What a plugin hands out (an encoded tensor, decoded values, an
//!   error message) comes with an opaque `handle`; the host copies what it needs and gives the
//!   handle back to the vtable's `release`, so the plugin's allocator frees what it allocated.
//! - **Tensors as pointer + length + shape + dtype; parameters and errors as UTF-8.**
//!   Parameters travel as a flat JSON object (see [`params_to_json`]) so a plugin written in C
//!   can read them with any JSON library; errors as a status code (the [`ErrorKind`]) plus a
//!   message.
//! - **No panic crosses.** Every function the macro generates runs the Rust code inside
//!   [`std::panic::catch_unwind`]; a panic becomes [`status::PANIC`] carrying the panic message,
//!   and the host goes on. A plugin built with `panic = "abort"` cannot keep that promise, so it
//!   says so in [`PluginDescriptor::flags`] and a host may refuse it.
//! - **Shared instances.** A host makes one instance per codec and calls it from several threads
//!   at once, as it would a `Codec: Send + Sync`; a plugin's functions must allow that.
//! - **Never unloaded.** Function pointers and metadata strings point into the library, so a
//!   host keeps every library it opened until the process exits.
//!
//! Three kinds of component cross it: codecs ([`KIND_CODEC`], a [`CodecVTable`]), calibrators
//! ([`KIND_CALIBRATOR`], a [`CalibratorVTable`]: the host streams a layer's inputs and gradients
//! in and takes the finished statistic back) and allocators ([`KIND_ALLOCATOR`], an
//! [`AllocatorVTable`]: the host passes the layers and the preset's allocator table, and the
//! plugin measures candidates by calling back into the host's [`Probe`](crate::Probe) through a
//! [`ProbeRef`] before it returns the plan). A host refuses kinds it does not know. Structured
//! values that are not flat (an allocator's configuration, its plan) cross as JSON written and
//! read by `serde_json` with exact float round trips.

mod allocator;
mod calibrator;
mod json;

use std::ffi::c_void;
use std::mem::size_of;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr::NonNull;

pub use allocator::{
    AllocatorInfo, AllocatorVTable, PROBE_HAS_LOSS_ERROR, PROBE_HAS_OUTPUT_ERROR, ProbeLease, ProbeRef, ProbeResultRef,
    config_from_json, config_to_json, plan_from_json, plan_to_json,
};
pub use calibrator::{CalibratorInfo, CalibratorVTable, StatsOut, stat_kind_code, stat_kind_from_code};
pub use json::{params_from_json, params_to_json};

use crate::{
    Codec, DType, Encoded, Error, ErrorKind, Gram, LayerInfo, LayerRole, LayerStats, ParamSpec, ParamType, Part,
    Result, StatsNeeds, WeightView,
};

/// Version of this ABI. A host refuses a library whose descriptor reports another one.
///
/// Bumped whenever a `#[repr(C)]` type, a function signature or a status code in this module
/// changes. History: 1, codecs only; 2, calibrators and allocators (with the probe callback)
/// beside codecs, whose vtable is unchanged. A version-1 library is refused with both numbers
/// rather than half-understood.
pub const ABI_VERSION: u32 = 2;

/// Name of the symbol every plugin library exports (an [`EntryPoint`]).
pub const ENTRY_POINT: &str = "tenpak_plugin";

/// The type of the exported entry point: returns a pointer to a descriptor with static storage.
/// It must not do any other work, since the host calls it before it has checked the version.
pub type EntryPoint = unsafe extern "C" fn() -> *const PluginDescriptor;

/// [`PluginDescriptor::flags`] bit: the library was built with `panic = "unwind"`, so the
/// `catch_unwind` around each exported function really turns a panic into an error.
pub const FLAG_PANIC_UNWIND: u32 = 1;

/// [`ComponentDescriptor::kind`] of a codec; its vtable is a [`CodecVTable`].
pub const KIND_CODEC: u32 = 1;
/// [`ComponentDescriptor::kind`] of a calibrator; its vtable is a [`CalibratorVTable`].
pub const KIND_CALIBRATOR: u32 = 2;
/// [`ComponentDescriptor::kind`] of an allocator; its vtable is an [`AllocatorVTable`].
pub const KIND_ALLOCATOR: u32 = 3;

/// Status codes returned by every fallible function of a vtable.
pub mod status {
    /// Success; outputs are filled and the error output is untouched.
    pub const OK: i32 = 0;
    /// [`crate::ErrorKind::InvalidInput`].
    pub const INVALID_INPUT: i32 = 1;
    /// [`crate::ErrorKind::InvalidParam`].
    pub const INVALID_PARAM: i32 = 2;
    /// [`crate::ErrorKind::Corrupt`].
    pub const CORRUPT: i32 = 3;
    /// [`crate::ErrorKind::Registry`].
    pub const REGISTRY: i32 = 4;
    /// [`crate::ErrorKind::MissingStats`].
    pub const MISSING_STATS: i32 = 5;
    /// [`crate::ErrorKind::Other`].
    pub const OTHER: i32 = 6;
    /// The plugin panicked; the error message holds the panic message.
    pub const PANIC: i32 = 7;
}

/// The status code that carries `kind`.
pub fn status_of(kind: ErrorKind) -> i32 {
    match kind {
        ErrorKind::InvalidInput => status::INVALID_INPUT,
        ErrorKind::InvalidParam => status::INVALID_PARAM,
        ErrorKind::Corrupt => status::CORRUPT,
        ErrorKind::Registry => status::REGISTRY,
        ErrorKind::MissingStats => status::MISSING_STATS,
        ErrorKind::Other => status::OTHER,
    }
}

/// The error kind a non-OK status stands for ([`status::PANIC`] and unknown codes map to
/// [`ErrorKind::Other`]; the message says which).
pub fn kind_of_status(code: i32) -> ErrorKind {
    match code {
        status::INVALID_INPUT => ErrorKind::InvalidInput,
        status::INVALID_PARAM => ErrorKind::InvalidParam,
        status::CORRUPT => ErrorKind::Corrupt,
        status::REGISTRY => ErrorKind::Registry,
        status::MISSING_STATS => ErrorKind::MissingStats,
        _ => ErrorKind::Other,
    }
}

/// The code of a [`DType`] on the wire.
pub const fn dtype_code(dtype: DType) -> u32 {
    match dtype {
        DType::U8 => 0,
        DType::I8 => 1,
        DType::U16 => 2,
        DType::I16 => 3,
        DType::U32 => 4,
        DType::I32 => 5,
        DType::F16 => 6,
        DType::BF16 => 7,
        DType::F32 => 8,
    }
}

/// The [`DType`] of a wire code, if it is one.
pub const fn dtype_from_code(code: u32) -> Option<DType> {
    Some(match code {
        0 => DType::U8,
        1 => DType::I8,
        2 => DType::U16,
        3 => DType::I16,
        4 => DType::U32,
        5 => DType::I32,
        6 => DType::F16,
        7 => DType::BF16,
        8 => DType::F32,
        _ => return None,
    })
}

/// The code of a [`ParamType`] on the wire.
pub const fn param_type_code(ty: ParamType) -> u32 {
    match ty {
        ParamType::Bool => 0,
        ParamType::Int => 1,
        ParamType::Float => 2,
        ParamType::Str => 3,
    }
}

/// The [`ParamType`] of a wire code, if it is one.
pub const fn param_type_from_code(code: u32) -> Option<ParamType> {
    Some(match code {
        0 => ParamType::Bool,
        1 => ParamType::Int,
        2 => ParamType::Float,
        3 => ParamType::Str,
        _ => return None,
    })
}

/// [`CodecInfo::needs`] bit: mean |x| per input channel.
pub const NEEDS_ACT_SCALE: u32 = 1;
/// [`CodecInfo::needs`] bit: mean x² per input channel.
pub const NEEDS_HESSIAN_DIAG: u32 = 2;
/// [`CodecInfo::needs`] bit: the full Gram matrix.
pub const NEEDS_GRAM: u32 = 4;
/// [`CodecInfo::needs`] bit: the Fisher diagonal.
pub const NEEDS_FISHER_DIAG: u32 = 8;

/// [`StatsNeeds`] as wire bits.
pub fn needs_bits(needs: StatsNeeds) -> u32 {
    let bit = |on: bool, bit: u32| if on { bit } else { 0 };
    bit(needs.act_scale, NEEDS_ACT_SCALE)
        | bit(needs.hessian_diag, NEEDS_HESSIAN_DIAG)
        | bit(needs.gram, NEEDS_GRAM)
        | bit(needs.fisher_diag, NEEDS_FISHER_DIAG)
}

/// Wire bits as [`StatsNeeds`]; unknown bits are an error, since they mean a statistic this
/// host cannot provide.
pub fn needs_from_bits(bits: u32) -> Result<StatsNeeds> {
    let known = NEEDS_ACT_SCALE | NEEDS_HESSIAN_DIAG | NEEDS_GRAM | NEEDS_FISHER_DIAG;
    if bits & !known != 0 {
        return Err(Error::corrupt(format!("needs unknown calibration statistics (bits {:#x})", bits & !known)));
    }
    Ok(StatsNeeds {
        act_scale: bits & NEEDS_ACT_SCALE != 0,
        hessian_diag: bits & NEEDS_HESSIAN_DIAG != 0,
        gram: bits & NEEDS_GRAM != 0,
        fisher_diag: bits & NEEDS_FISHER_DIAG != 0,
    })
}

// ---------------------------------------------------------------------------------------------
// The #[repr(C)] types.

/// Borrowed UTF-8 text: pointer and length in bytes, no terminating NUL. `ptr` may be null only
/// when `len` is 0.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StrRef {
    /// First byte.
    pub ptr: *const u8,
    /// Length in bytes.
    pub len: usize,
}

/// A borrowed run of `f32`. For an optional statistic, a null `ptr` means "absent"; a present but
/// empty run has a non-null `ptr` and `len` 0.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct F32Ref {
    /// First value (4-byte aligned), or null.
    pub ptr: *const f32,
    /// Number of values.
    pub len: usize,
}

/// What the entry point returns. Static storage, never freed.
#[repr(C)]
#[derive(Debug)]
pub struct PluginDescriptor {
    /// [`ABI_VERSION`] the library was built against. First field, in every version.
    pub abi_version: u32,
    /// [`FLAG_PANIC_UNWIND`], and reserved bits (zero).
    pub flags: u32,
    /// Who built it: crate name and version (`"tenpak-codec-nf4 0.1.0"`), for messages.
    pub plugin: StrRef,
    /// The components, `component_count` of them.
    pub components: *const ComponentDescriptor,
    /// Number of components.
    pub component_count: usize,
}

/// One component of a library.
#[repr(C)]
#[derive(Debug)]
pub struct ComponentDescriptor {
    /// [`KIND_CODEC`], [`KIND_CALIBRATOR`] or [`KIND_ALLOCATOR`].
    pub kind: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// The id it registers under; static text.
    pub id: StrRef,
    /// The kind's vtable ([`CodecVTable`], [`CalibratorVTable`] or [`AllocatorVTable`]), static.
    pub vtable: *const c_void,
}

// SAFETY: descriptors are immutable and point only to immutable data with static storage (string
// literals, other descriptors, vtables of function pointers), so sharing them between threads
// is sound. Rust demands `Sync` because `export_plugin!` puts them in `static`s.
unsafe impl Sync for PluginDescriptor {}
// SAFETY: as above.
unsafe impl Sync for ComponentDescriptor {}

/// A codec's metadata, borrowed from its instance (valid until `destroy`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CodecInfo {
    /// What the instance's [`Codec::id`] returns; the host checks it equals the descriptor's id.
    pub id: StrRef,
    /// [`Codec::description`].
    pub description: StrRef,
    /// [`Codec::params`], `param_count` of them.
    pub params: *const ParamSpecRef,
    /// Number of parameter specs.
    pub param_count: usize,
    /// [`Codec::needs`] as `NEEDS_*` bits.
    pub needs: u32,
    /// Reserved, zero.
    pub reserved: u32,
}

/// One [`ParamSpec`] on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ParamSpecRef {
    /// Key.
    pub name: StrRef,
    /// Default, as TOML text.
    pub default: StrRef,
    /// One line of documentation.
    pub doc: StrRef,
    /// [`param_type_code`].
    pub ty: u32,
    /// Reserved, zero.
    pub reserved: u32,
}

/// A borrowed row-major `f32` matrix.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct WeightRef {
    /// `rows * cols` values.
    pub data: *const f32,
    /// Rows (out_features).
    pub rows: usize,
    /// Columns (in_features).
    pub cols: usize,
}

/// Borrowed [`LayerInfo`]: what a calibrator is told about the layer it observes, and what an
/// allocator plans.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LayerRef {
    /// Tensor name.
    pub name: StrRef,
    /// [`LayerRole::name`] (`"attn_q"`).
    pub role: StrRef,
    /// Transformer block index, or [`NO_BLOCK`].
    pub block: usize,
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
}

/// [`LayerRef::block`] of a weight outside the transformer blocks.
pub const NO_BLOCK: usize = usize::MAX;

impl LayerRef {
    /// Borrow `layer`; valid while `layer` is alive.
    pub fn new(layer: &LayerInfo) -> Self {
        Self {
            name: StrRef::new(&layer.name),
            role: StrRef::new(layer.role.name()),
            block: layer.block.unwrap_or(NO_BLOCK),
            rows: layer.rows,
            cols: layer.cols,
        }
    }

    /// Copy into an owned [`LayerInfo`]; an error naming `what` for bad text or an unknown role.
    ///
    /// # Safety
    /// Both strings must be valid for their lengths.
    pub unsafe fn to_info(&self, what: &str) -> Result<LayerInfo> {
        // SAFETY: forwarded to the caller.
        let name = unsafe { self.name.to_str(&format!("{what}: name")) }?.to_owned();
        // SAFETY: forwarded to the caller.
        let role_name = unsafe { self.role.to_str(&format!("{what}: role")) }?;
        let role = LayerRole::from_name(role_name)
            .ok_or_else(|| Error::corrupt(format!("{what} (`{name}`): unknown role `{role_name}`")))?;
        let block = (self.block != NO_BLOCK).then_some(self.block);
        Ok(LayerInfo { name, role, block, rows: self.rows, cols: self.cols })
    }
}

/// Borrowed [`LayerStats`]; each statistic absent when its pointer is null.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StatsRef {
    /// Mean |x| per input channel.
    pub act_scale: F32Ref,
    /// Mean x² per input channel.
    pub hessian_diag: F32Ref,
    /// XᵀX / n, `gram_dim²` values, row-major.
    pub gram: F32Ref,
    /// Side of the Gram matrix.
    pub gram_dim: usize,
    /// Mean squared gradient per weight.
    pub fisher_diag: F32Ref,
    /// Number of input vectors the statistics came from.
    pub samples: usize,
}

/// One borrowed part of an encoded tensor.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PartRef {
    /// Part name.
    pub name: StrRef,
    /// [`dtype_code`].
    pub dtype: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// The shape, `ndim` sizes.
    pub shape: *const usize,
    /// Number of dimensions.
    pub ndim: usize,
    /// Little-endian bytes.
    pub data: *const u8,
    /// Number of bytes; must equal the product of the shape times the dtype's size.
    pub len: usize,
}

/// A borrowed encoded tensor.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EncodedRef {
    /// Id of the codec that produced it.
    pub codec: StrRef,
    /// Its parameters, a flat JSON object.
    pub params: StrRef,
    /// Rows of the original matrix.
    pub rows: usize,
    /// Columns of the original matrix.
    pub cols: usize,
    /// The parts, `part_count` of them.
    pub parts: *const PartRef,
    /// Number of parts.
    pub part_count: usize,
}

/// An encoded tensor a plugin hands out: valid until `release(handle)`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EncodedOut {
    /// Give back to `release` once copied.
    pub handle: *mut c_void,
    /// The tensor, borrowed from `handle`.
    pub encoded: EncodedRef,
}

/// `f32` values a plugin hands out: valid until `release(handle)`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FloatsOut {
    /// Give back to `release` once copied.
    pub handle: *mut c_void,
    /// The values, borrowed from `handle`.
    pub values: F32Ref,
}

/// UTF-8 text a plugin hands out (an error message): valid until `release(handle)`. A null
/// handle means no text.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TextOut {
    /// Give back to `release` once copied.
    pub handle: *mut c_void,
    /// The text, borrowed from `handle`.
    pub text: StrRef,
}

/// The functions of one codec. Every function pointer may be null in a malformed library, so
/// each is an `Option`; a host refuses a vtable with a null entry. Fallible functions return a
/// [`status`] code and, when it is not OK, fill `err` with a message.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CodecVTable {
    /// Make an instance; the host calls this once per library and keeps the instance.
    pub create: Option<unsafe extern "C" fn(out: *mut *mut c_void, err: *mut TextOut) -> i32>,
    /// Free an instance made by `create`.
    pub destroy: Option<unsafe extern "C" fn(instance: *mut c_void)>,
    /// Fill `out` with the instance's metadata (borrowed from the instance).
    pub info: Option<unsafe extern "C" fn(instance: *const c_void, out: *mut CodecInfo, err: *mut TextOut) -> i32>,
    /// [`Codec::validate`] on a flat JSON object.
    pub validate: Option<unsafe extern "C" fn(instance: *const c_void, params: StrRef, err: *mut TextOut) -> i32>,
    /// [`Codec::encode`]. `stats` may be null (no statistics).
    pub encode: Option<
        unsafe extern "C" fn(
            instance: *const c_void,
            weight: *const WeightRef,
            stats: *const StatsRef,
            params: StrRef,
            out: *mut EncodedOut,
            err: *mut TextOut,
        ) -> i32,
    >,
    /// [`Codec::decode`].
    pub decode: Option<
        unsafe extern "C" fn(
            instance: *const c_void,
            encoded: *const EncodedRef,
            out: *mut FloatsOut,
            err: *mut TextOut,
        ) -> i32,
    >,
    /// [`Codec::size_bits`].
    pub size_bits: Option<
        unsafe extern "C" fn(instance: *const c_void, encoded: *const EncodedRef, out: *mut u64, err: *mut TextOut) -> i32,
    >,
    /// Free what a `handle` holds (an [`EncodedOut`], a [`FloatsOut`] or a [`TextOut`]).
    pub release: Option<unsafe extern "C" fn(handle: *mut c_void)>,
}

const PTR: usize = size_of::<usize>();
const _: () = assert!(size_of::<StrRef>() == 2 * PTR);
const _: () = assert!(size_of::<F32Ref>() == 2 * PTR);
const _: () = assert!(size_of::<PluginDescriptor>() == 8 + 4 * PTR);
const _: () = assert!(std::mem::offset_of!(PluginDescriptor, abi_version) == 0);
const _: () = assert!(size_of::<ComponentDescriptor>() == 8 + 3 * PTR);
const _: () = assert!(size_of::<CodecInfo>() == 6 * PTR + 8);
const _: () = assert!(size_of::<ParamSpecRef>() == 6 * PTR + 8);
const _: () = assert!(size_of::<WeightRef>() == 3 * PTR);
const _: () = assert!(size_of::<StatsRef>() == 10 * PTR);
const _: () = assert!(size_of::<LayerRef>() == 7 * PTR);
const _: () = assert!(size_of::<PartRef>() == 6 * PTR + 8);
const _: () = assert!(size_of::<EncodedRef>() == 8 * PTR);
const _: () = assert!(size_of::<EncodedOut>() == 9 * PTR);
const _: () = assert!(size_of::<FloatsOut>() == 3 * PTR);
const _: () = assert!(size_of::<TextOut>() == 3 * PTR);
const _: () = assert!(size_of::<CodecVTable>() == 8 * PTR);

// ---------------------------------------------------------------------------------------------
// Reading borrowed data, with the checks both sides need.

/// A slice from a raw pointer and length; an error (naming `what`) for a null or misaligned
/// pointer with a non-zero length, or a length too large to be real.
///
/// # Safety
/// When `len > 0`, `ptr` must be valid for reads of `len` values of `T` for `'a`.
pub unsafe fn slice_from_raw<'a, T>(ptr: *const T, len: usize, what: &str) -> Result<&'a [T]> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(Error::corrupt(format!("{what}: null pointer with length {len}")));
    }
    if !ptr.is_aligned() {
        return Err(Error::corrupt(format!("{what}: pointer {ptr:p} is not aligned for its type")));
    }
    if len.checked_mul(size_of::<T>()).is_none_or(|bytes| bytes > isize::MAX as usize) {
        return Err(Error::corrupt(format!("{what}: length {len} is impossibly large")));
    }
    // SAFETY: non-null, aligned, size within isize::MAX, and the caller vouches the memory is
    // valid for `len` reads for 'a.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

impl StrRef {
    /// No text.
    pub const EMPTY: StrRef = StrRef { ptr: std::ptr::null(), len: 0 };

    /// Borrow `s` (the caller keeps `s` alive while the `StrRef` is in use).
    pub const fn new(s: &str) -> Self {
        Self { ptr: s.as_ptr(), len: s.len() }
    }

    /// The text; an error naming `what` if the pointer is bad or the bytes are not UTF-8.
    ///
    /// # Safety
    /// `ptr` must be valid for `len` bytes for `'a` (or `len` must be 0).
    pub unsafe fn to_str<'a>(self, what: &str) -> Result<&'a str> {
        // SAFETY: forwarded to the caller.
        let bytes = unsafe { slice_from_raw(self.ptr, self.len, what) }?;
        std::str::from_utf8(bytes).map_err(|e| Error::corrupt(format!("{what} is not UTF-8: {e}")))
    }
}

impl F32Ref {
    /// Absent.
    pub const ABSENT: F32Ref = F32Ref { ptr: std::ptr::null(), len: 0 };

    /// Borrow `values` (present, even if empty).
    pub fn new(values: &[f32]) -> Self {
        Self { ptr: values.as_ptr(), len: values.len() }
    }

    /// Borrow an optional statistic.
    pub fn optional(values: Option<&[f32]>) -> Self {
        values.map_or(Self::ABSENT, Self::new)
    }

    /// `None` when absent, else the values copied.
    ///
    /// # Safety
    /// A non-null `ptr` must be valid for `len` values.
    pub unsafe fn to_vec(self, what: &str) -> Result<Option<Vec<f32>>> {
        if self.ptr.is_null() {
            return Ok(None);
        }
        // SAFETY: forwarded to the caller.
        Ok(Some(unsafe { slice_from_raw(self.ptr, self.len, what) }?.to_vec()))
    }
}

impl StatsRef {
    /// No statistics: what a host puts in a [`StatsOut`] for the plugin to fill.
    pub const EMPTY: StatsRef = StatsRef {
        act_scale: F32Ref::ABSENT,
        hessian_diag: F32Ref::ABSENT,
        gram: F32Ref::ABSENT,
        gram_dim: 0,
        fisher_diag: F32Ref::ABSENT,
        samples: 0,
    };

    /// Borrow `stats`; the result is valid while `stats` is alive and unchanged.
    pub fn new(stats: &LayerStats) -> Self {
        Self {
            act_scale: F32Ref::optional(stats.act_scale.as_deref()),
            hessian_diag: F32Ref::optional(stats.hessian_diag.as_deref()),
            gram: F32Ref::optional(stats.gram.as_ref().map(|g| g.data.as_slice())),
            gram_dim: stats.gram.as_ref().map_or(0, |g| g.dim),
            fisher_diag: F32Ref::optional(stats.fisher_diag.as_deref()),
            samples: stats.samples,
        }
    }

    /// Copy into owned [`LayerStats`], checking the Gram matrix is `gram_dim²` values.
    ///
    /// # Safety
    /// Every non-null pointer must be valid for its length.
    pub unsafe fn to_stats(&self) -> Result<LayerStats> {
        // SAFETY (all four): forwarded to the caller.
        let gram = match unsafe { self.gram.to_vec("stats.gram") }? {
            None => None,
            Some(data) => {
                if self.gram_dim.checked_mul(self.gram_dim) != Some(data.len()) {
                    return Err(Error::corrupt(format!(
                        "stats.gram: {} values for a {}×{} matrix",
                        data.len(),
                        self.gram_dim,
                        self.gram_dim
                    )));
                }
                Some(Gram { dim: self.gram_dim, data })
            }
        };
        Ok(LayerStats {
            act_scale: unsafe { self.act_scale.to_vec("stats.act_scale") }?,
            hessian_diag: unsafe { self.hessian_diag.to_vec("stats.hessian_diag") }?,
            gram,
            fisher_diag: unsafe { self.fisher_diag.to_vec("stats.fisher_diag") }?,
            samples: self.samples,
        })
    }
}

impl CodecInfo {
    /// Nothing yet: what a host passes for the plugin to fill.
    pub const EMPTY: CodecInfo = CodecInfo {
        id: StrRef::EMPTY,
        description: StrRef::EMPTY,
        params: std::ptr::null(),
        param_count: 0,
        needs: 0,
        reserved: 0,
    };
}

impl EncodedRef {
    /// Nothing: what a host puts in an [`EncodedOut`] for the plugin to fill.
    pub const EMPTY: EncodedRef = EncodedRef {
        codec: StrRef::EMPTY,
        params: StrRef::EMPTY,
        rows: 0,
        cols: 0,
        parts: std::ptr::null(),
        part_count: 0,
    };
}

impl EncodedOut {
    /// Nothing yet.
    pub const NONE: EncodedOut = EncodedOut { handle: std::ptr::null_mut(), encoded: EncodedRef::EMPTY };
}

impl FloatsOut {
    /// Nothing yet.
    pub const NONE: FloatsOut = FloatsOut { handle: std::ptr::null_mut(), values: F32Ref::ABSENT };
}

impl TextOut {
    /// No text: what a host passes as the error output; a plugin overwrites it only on failure.
    pub const NONE: TextOut = TextOut { handle: std::ptr::null_mut(), text: StrRef::EMPTY };
}

impl ParamSpecRef {
    /// Borrow `spec`.
    pub fn new(spec: &ParamSpec) -> Self {
        Self {
            name: StrRef::new(spec.name),
            default: StrRef::new(spec.default),
            doc: StrRef::new(spec.doc),
            ty: param_type_code(spec.ty),
            reserved: 0,
        }
    }
}

/// The most dimensions a part may have; more means the plugin handed out garbage.
pub const MAX_PART_DIMS: usize = 8;

/// Copy a borrowed encoded tensor into an owned [`Encoded`], validating everything the other
/// side could have got wrong: UTF-8 of every string, the parameters' JSON, dtype codes, part
/// names (non-empty, unique), and that each part's bytes match its shape and dtype
/// ([`Part::new`]). Both sides use it: a plugin on what the host asks it to decode, a host on
/// what a plugin returns.
///
/// # Safety
/// Every pointer in `raw`, and in the parts it points to, must be valid for its stated length.
pub unsafe fn encoded_from_raw(raw: &EncodedRef) -> Result<Encoded> {
    // SAFETY (every block below): forwarded to the caller.
    let codec = unsafe { raw.codec.to_str("encoded tensor's codec id") }?.to_owned();
    let params = params_from_json(unsafe { raw.params.to_str("encoded tensor's params") }?)
        .map_err(|e| e.context("encoded tensor's params"))?;
    let part_refs = unsafe { slice_from_raw(raw.parts, raw.part_count, "encoded tensor's parts") }?;
    let mut parts: Vec<Part> = Vec::with_capacity(part_refs.len());
    for (i, p) in part_refs.iter().enumerate() {
        let name = unsafe { p.name.to_str(&format!("name of part {i}")) }?;
        if name.is_empty() {
            return Err(Error::corrupt(format!("part {i} has an empty name")));
        }
        if parts.iter().any(|q| q.name == name) {
            return Err(Error::corrupt(format!("part `{name}` appears twice")));
        }
        let dtype = dtype_from_code(p.dtype)
            .ok_or_else(|| Error::corrupt(format!("part `{name}`: unknown dtype code {}", p.dtype)))?;
        if p.ndim > MAX_PART_DIMS {
            return Err(Error::corrupt(format!("part `{name}`: {} dimensions (at most {MAX_PART_DIMS})", p.ndim)));
        }
        let shape = unsafe { slice_from_raw(p.shape, p.ndim, &format!("shape of part `{name}`")) }?.to_vec();
        if shape.iter().try_fold(dtype.size(), |acc, &d| acc.checked_mul(d)).is_none() {
            return Err(Error::corrupt(format!("part `{name}`: shape {shape:?} overflows")));
        }
        let data = unsafe { slice_from_raw(p.data, p.len, &format!("data of part `{name}`")) }?.to_vec();
        parts.push(Part::new(name, dtype, shape, data)?);
    }
    Ok(Encoded { codec, params, shape: [raw.rows, raw.cols], parts })
}

/// An [`Encoded`] lent across the ABI: owns the part table and the parameters' JSON, borrows
/// the rest from the `Encoded` it was made from.
pub struct EncodedLease<'a> {
    encoded: &'a Encoded,
    params: String,
    parts: Vec<PartRef>,
}

impl<'a> EncodedLease<'a> {
    /// Lend `encoded`; fails only if a parameter cannot be written as JSON (a non-finite float).
    pub fn new(encoded: &'a Encoded) -> Result<Self> {
        let parts = encoded
            .parts
            .iter()
            .map(|p| PartRef {
                name: StrRef::new(&p.name),
                dtype: dtype_code(p.dtype),
                reserved: 0,
                shape: p.shape.as_ptr(),
                ndim: p.shape.len(),
                data: p.data.as_ptr(),
                len: p.data.len(),
            })
            .collect();
        Ok(Self { encoded, params: params_to_json(&encoded.params)?, parts })
    }

    /// The C view; valid while `self` is alive.
    pub fn raw(&self) -> EncodedRef {
        EncodedRef {
            codec: StrRef::new(&self.encoded.codec),
            params: StrRef::new(&self.params),
            rows: self.encoded.shape[0],
            cols: self.encoded.shape[1],
            parts: self.parts.as_ptr(),
            part_count: self.parts.len(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The plugin side: what `export_plugin!` expands to.

impl PluginDescriptor {
    /// A descriptor for `components`, built by `plugin` (crate name and version). `panic_unwind`
    /// is `cfg!(panic = "unwind")` evaluated in the plugin crate.
    pub const fn new(plugin: &'static str, components: &'static [ComponentDescriptor], panic_unwind: bool) -> Self {
        Self {
            abi_version: ABI_VERSION,
            flags: if panic_unwind { FLAG_PANIC_UNWIND } else { 0 },
            plugin: StrRef::new(plugin),
            components: components.as_ptr(),
            component_count: components.len(),
        }
    }
}

impl ComponentDescriptor {
    /// The descriptor of codec type `T` under `id`.
    pub const fn codec<T: Codec + Default + 'static>(id: &'static str) -> Self {
        Self {
            kind: KIND_CODEC,
            reserved: 0,
            id: StrRef::new(id),
            vtable: &CodecVTableOf::<T>::VTABLE as *const CodecVTable as *const c_void,
        }
    }
}

struct CodecVTableOf<T>(std::marker::PhantomData<T>);

impl<T: Codec + Default + 'static> CodecVTableOf<T> {
    const VTABLE: CodecVTable = CodecVTable {
        create: Some(codec_create::<T>),
        destroy: Some(codec_destroy::<T>),
        info: Some(codec_info::<T>),
        validate: Some(codec_validate::<T>),
        encode: Some(codec_encode::<T>),
        decode: Some(codec_decode::<T>),
        size_bits: Some(codec_size_bits::<T>),
        release: Some(release),
    };
}

/// What a plugin allocates for the host; a `handle` is a `Box<Held>`.
enum Held {
    Text(#[allow(dead_code)] String),
    Floats(#[allow(dead_code)] Vec<f32>),
    Encoded { _encoded: Encoded, _params: String, _parts: Vec<PartRef> },
    Stats(#[allow(dead_code)] LayerStats),
}

impl Held {
    fn into_handle(self) -> *mut c_void {
        Box::into_raw(Box::new(self)).cast()
    }
}

/// Frees a handle made by this crate (a plugin's outputs, or a host's error text in a probe
/// callback). Never unwinds.
///
/// # Safety
/// `handle` is null or was handed out by this copy of the crate and not released yet.
pub unsafe extern "C" fn release(handle: *mut c_void) {
    if handle.is_null() {
        return;
    }
    // A panicking destructor must not unwind into the host; at worst the memory leaks.
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the host only passes back handles this side made with `Held::into_handle`,
        // each once.
        drop(unsafe { Box::from_raw(handle.cast::<Held>()) });
    }));
}

/// Copy the text of an error output and give its handle back to `release` (the function of the
/// side that wrote it). Empty text reads "(no message)"; unreadable text says why.
///
/// # Safety
/// `err.text` must be valid for its length until released, and `err.handle` null or a handle
/// `release` accepts, not yet released.
pub unsafe fn take_text(release: unsafe extern "C" fn(*mut c_void), err: TextOut) -> String {
    // SAFETY: forwarded to the caller.
    let text = match unsafe { slice_from_raw(err.text.ptr, err.text.len, "error text") } {
        Ok(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        Err(e) => format!("(unreadable error text: {e})"),
    };
    if !err.handle.is_null() {
        // SAFETY: forwarded to the caller; released once.
        unsafe { release(err.handle) };
    }
    if text.is_empty() { "(no message)".to_owned() } else { text }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic payload that is not a string)".to_owned()
    }
}

fn write_text(err: *mut TextOut, text: String) {
    if err.is_null() {
        return;
    }
    let text_ref = StrRef::new(&text);
    let handle = Held::Text(text).into_handle();
    // SAFETY: `err` is non-null and the host passes a valid, writable TextOut. Moving the String
    // into the box keeps its heap buffer, so `text_ref` stays valid until `release(handle)`.
    unsafe { err.write(TextOut { handle, text: text_ref }) };
}

/// Run `body`, turning an `Err` or a panic into a status code and an error message.
fn guard(err: *mut TextOut, body: impl FnOnce() -> Result<()>) -> i32 {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => status::OK,
        Ok(Err(e)) => {
            let code = status_of(e.kind());
            write_text(err, e.message().to_owned());
            code
        }
        Err(payload) => {
            let message = panic_message(&*payload);
            // Dropping a payload can itself panic; swallow that rather than unwind into C.
            let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
            write_text(err, format!("panicked: {message}"));
            status::PANIC
        }
    }
}

/// A codec or allocator instance as the host holds it: the component (boxed on its own so its
/// address never changes) and the metadata tables (`I`: [`CodecInfo`], [`AllocatorInfo`]) that
/// borrow from it.
struct Instance<T, I> {
    component: NonNull<T>,
    _params: Vec<ParamSpecRef>,
    info: I,
}

impl<T, I: Copy> Instance<T, I> {
    /// Box `component` and its metadata (made by `info` from the component and its parameter
    /// table) as an opaque instance pointer.
    fn create(component: T, info: impl FnOnce(&T, &[ParamSpecRef]) -> I, params: impl FnOnce(&T) -> Vec<ParamSpecRef>) -> *mut c_void {
        let component = NonNull::from(Box::leak(Box::new(component)));
        // SAFETY: just made; only shared references are taken from here on, until destroy.
        let shared: &T = unsafe { component.as_ref() };
        let params = params(shared);
        let info = info(shared, &params);
        Box::into_raw(Box::new(Instance { component, _params: params, info })).cast()
    }

    /// # Safety
    /// `instance` is null or was made by [`Instance::create`] with these types and not destroyed.
    unsafe fn get<'a>(instance: *const c_void) -> Result<&'a Self> {
        // SAFETY: forwarded to the caller.
        unsafe { instance.cast::<Self>().as_ref() }.ok_or_else(|| null_arg("instance"))
    }

    /// # Safety
    /// As [`Instance::get`]; the component lives as long as the instance.
    unsafe fn component<'a>(instance: *const c_void) -> Result<&'a T> {
        // SAFETY: forwarded to the caller.
        Ok(unsafe { Self::get(instance)?.component.as_ref() })
    }

    /// Write the metadata to `out`.
    ///
    /// # Safety
    /// As [`Instance::get`]; `out` null (refused) or writable.
    unsafe fn write_info(instance: *const c_void, out: *mut I) -> Result<()> {
        // SAFETY: forwarded to the caller.
        let instance = unsafe { Self::get(instance) }?;
        if out.is_null() {
            return Err(null_arg("out"));
        }
        // SAFETY: non-null, writable.
        unsafe { out.write(instance.info) };
        Ok(())
    }

    /// # Safety
    /// `instance` is null or was made by [`Instance::create`] with these types; destroyed once.
    unsafe fn destroy(instance: *mut c_void) {
        if instance.is_null() {
            return;
        }
        let _ = catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: made by `create`, destroyed once (the host's contract).
            let instance = unsafe { Box::from_raw(instance.cast::<Self>()) };
            // SAFETY: the component box was leaked in `create` and is reclaimed exactly here.
            drop(unsafe { Box::from_raw(instance.component.as_ptr()) });
        }));
    }
}

fn null_arg(what: &str) -> Error {
    Error::invalid_input(format!("{what} is a null pointer"))
}

/// # Safety
/// `instance` is null or was made by `codec_create::<T>` and not destroyed.
unsafe fn codec_of<'a, T>(instance: *const c_void) -> Result<&'a T> {
    // SAFETY: forwarded to the caller.
    unsafe { Instance::<T, CodecInfo>::component(instance) }
}

/// A borrowed row-major matrix as a [`WeightView`], refusing null pointers and overflowing shapes.
///
/// # Safety
/// `weight` is null or valid, and its data valid for `rows * cols` values for `'a`.
unsafe fn weight_from_raw<'a>(weight: *const WeightRef, what: &str) -> Result<WeightView<'a>> {
    // SAFETY: forwarded to the caller.
    let weight = unsafe { weight.as_ref() }.ok_or_else(|| null_arg(what))?;
    let len = weight.rows.checked_mul(weight.cols).ok_or_else(|| {
        Error::invalid_input(format!("{what} shape [{}, {}] overflows", weight.rows, weight.cols))
    })?;
    // SAFETY: forwarded to the caller.
    let data = unsafe { slice_from_raw(weight.data, len, what) }?;
    WeightView::new(data, weight.rows, weight.cols)
}

unsafe extern "C" fn codec_create<T: Codec + Default + 'static>(out: *mut *mut c_void, err: *mut TextOut) -> i32 {
    guard(err, || {
        if out.is_null() {
            return Err(null_arg("out"));
        }
        let instance = Instance::create(
            T::default(),
            |codec: &T, params: &[ParamSpecRef]| CodecInfo {
                id: StrRef::new(codec.id()),
                description: StrRef::new(codec.description()),
                params: params.as_ptr(),
                param_count: params.len(),
                needs: needs_bits(codec.needs()),
                reserved: 0,
            },
            |codec| codec.params().iter().map(ParamSpecRef::new).collect(),
        );
        // SAFETY: `out` is non-null and points to writable storage the host provides.
        unsafe { out.write(instance) };
        Ok(())
    })
}

unsafe extern "C" fn codec_destroy<T: Codec + Default + 'static>(instance: *mut c_void) {
    // SAFETY: the host's contract: made by `codec_create::<T>`, destroyed once.
    unsafe { Instance::<T, CodecInfo>::destroy(instance) }
}

unsafe extern "C" fn codec_info<T: Codec + Default + 'static>(
    instance: *const c_void,
    out: *mut CodecInfo,
    err: *mut TextOut,
) -> i32 {
    // SAFETY: the host passes an instance from `create` (or null, refused) and a writable `out`.
    guard(err, || unsafe { Instance::<T, CodecInfo>::write_info(instance, out) })
}

unsafe extern "C" fn codec_validate<T: Codec + Default + 'static>(
    instance: *const c_void,
    params: StrRef,
    err: *mut TextOut,
) -> i32 {
    guard(err, || {
        // SAFETY: the host's contract on every argument.
        let codec = unsafe { codec_of::<T>(instance) }?;
        let params = params_from_json(unsafe { params.to_str("params") }?)?;
        codec.validate(&params)
    })
}

unsafe extern "C" fn codec_encode<T: Codec + Default + 'static>(
    instance: *const c_void,
    weight: *const WeightRef,
    stats: *const StatsRef,
    params: StrRef,
    out: *mut EncodedOut,
    err: *mut TextOut,
) -> i32 {
    guard(err, || {
        // SAFETY (every block): the host's contract on every argument.
        let codec = unsafe { codec_of::<T>(instance) }?;
        let view = unsafe { weight_from_raw(weight, "weight") }?;
        let stats = match unsafe { stats.as_ref() } {
            None => LayerStats::none(),
            Some(s) => unsafe { s.to_stats() }?,
        };
        let params = params_from_json(unsafe { params.to_str("params") }?)?;
        if out.is_null() {
            return Err(null_arg("out"));
        }
        let encoded = codec.encode(view, &stats, &params)?;
        // The parts are passed on as the codec made them, unchecked: validating them is the
        // host's job, and a host must not trust a plugin to have done it.
        let lease = EncodedLease::new(&encoded)?;
        let raw = lease.raw();
        let EncodedLease { params: params_json, parts, .. } = lease;
        // `raw` points into heap buffers owned by `encoded`, `params_json` and `parts`; moving
        // those values into the handle does not move the buffers.
        let handle = Held::Encoded { _encoded: encoded, _params: params_json, _parts: parts }.into_handle();
        // SAFETY: non-null, writable.
        unsafe { out.write(EncodedOut { handle, encoded: raw }) };
        Ok(())
    })
}

unsafe extern "C" fn codec_decode<T: Codec + Default + 'static>(
    instance: *const c_void,
    encoded: *const EncodedRef,
    out: *mut FloatsOut,
    err: *mut TextOut,
) -> i32 {
    guard(err, || {
        // SAFETY (every block): the host's contract on every argument.
        let codec = unsafe { codec_of::<T>(instance) }?;
        let raw = unsafe { encoded.as_ref() }.ok_or_else(|| null_arg("encoded"))?;
        let encoded = unsafe { encoded_from_raw(raw) }?;
        if out.is_null() {
            return Err(null_arg("out"));
        }
        let values = codec.decode(&encoded)?;
        let view = F32Ref::new(&values);
        let handle = Held::Floats(values).into_handle();
        // SAFETY: non-null, writable; `view` points into the Vec's heap buffer, now owned by the
        // handle.
        unsafe { out.write(FloatsOut { handle, values: view }) };
        Ok(())
    })
}

unsafe extern "C" fn codec_size_bits<T: Codec + Default + 'static>(
    instance: *const c_void,
    encoded: *const EncodedRef,
    out: *mut u64,
    err: *mut TextOut,
) -> i32 {
    guard(err, || {
        // SAFETY (every block): the host's contract on every argument.
        let codec = unsafe { codec_of::<T>(instance) }?;
        let raw = unsafe { encoded.as_ref() }.ok_or_else(|| null_arg("encoded"))?;
        let encoded = unsafe { encoded_from_raw(raw) }?;
        if out.is_null() {
            return Err(null_arg("out"));
        }
        let bits = codec.size_bits(&encoded);
        // SAFETY: non-null, writable.
        unsafe { out.write(bits) };
        Ok(())
    })
}

/// Export codecs from a `cdylib` through the C ABI: writes the [`ENTRY_POINT`] function and
/// the descriptor it returns.
///
/// Each line is `codec(ID, TYPE);` where `TYPE: Codec + Default`. Use it once per library,
/// beside (not instead of) [`register_codec!`](crate::register_codec): the inventory
/// registration serves hosts that link the crate statically, the entry point serves hosts that
/// load the library at run time (inventory registrations do not cross a `cdylib` boundary).
///
/// ```ignore
/// tenpak_api::register_codec!("nf4", Nf4);
/// tenpak_api::export_plugin! {
///     codec("nf4", Nf4);
/// }
/// ```
///
/// The entry point is a `#[no_mangle]` symbol: two crates that both export one cannot be linked
/// statically into the same binary. A crate meant for both uses can put the macro behind a
/// cargo feature (see `examples/codec-plugin-nf4`).
#[macro_export]
macro_rules! export_plugin {
    ($( $kind:ident ( $id:expr, $ty:ty ) );+ $(;)?) => {
        /// The TenPak plugin entry point, written by `tenpak_api::export_plugin!`.
        #[unsafe(no_mangle)]
        pub extern "C" fn tenpak_plugin() -> *const $crate::abi::PluginDescriptor {
            static COMPONENTS: &[$crate::abi::ComponentDescriptor] =
                &[$( $crate::abi::ComponentDescriptor::$kind::<$ty>($id) ),+];
            static DESCRIPTOR: $crate::abi::PluginDescriptor = $crate::abi::PluginDescriptor::new(
                concat!(env!("CARGO_PKG_NAME"), " ", env!("CARGO_PKG_VERSION")),
                COMPONENTS,
                cfg!(panic = "unwind"),
            );
            &DESCRIPTOR
        }
    };
}

#[cfg(test)]
mod tests;
