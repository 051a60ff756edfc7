//! What every fuzz target links: the built-in registry ([`registry`]) and an allocator that treats one allocation above
//! [`MAX_ALLOCATION`] as a crash. libFuzzer's own `-malloc_limit_mb` needs a sanitizer's malloc
//! hooks, so without AddressSanitizer (`scripts/fuzz.sh --no-asan`) a loader that trusted a size
//! from the file and reserved gigabytes it never touched would go unnoticed; with this it aborts,
//! and libFuzzer keeps the input, in both builds.

use std::alloc::{GlobalAlloc, Layout, System};

/// The same bound as `-malloc_limit_mb=512` in `scripts/fuzz.sh`.
pub const MAX_ALLOCATION: usize = 512 << 20;

struct Bounded;

fn check(size: usize) {
    if size > MAX_ALLOCATION {
        // A literal, so the report itself allocates nothing.
        eprintln!("==tenpak-fuzz== one allocation above 512 MiB: a size taken from the input was not bounded");
        std::process::abort();
    }
}

// SAFETY: every call is passed to `System` unchanged, after a size check that only aborts.
unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Bounded = Bounded;

/// The built-in registry (`tenpak_plugins::builtins`), built once per process, for the harnesses
/// that decode through codecs.
pub fn registry() -> &'static std::sync::Arc<tenpak_api::registry::Registry> {
    static REGISTRY: std::sync::OnceLock<std::sync::Arc<tenpak_api::registry::Registry>> = std::sync::OnceLock::new();
    REGISTRY.get_or_init(|| std::sync::Arc::new(tenpak_plugins::builtins::registry().expect("the built-in registry builds")))
}
