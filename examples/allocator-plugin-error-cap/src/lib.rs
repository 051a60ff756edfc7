//! Example third-party TenPak allocator `error_cap`: every block linear gets the smallest of the
//! preset's candidates whose measured error stays under a cap.
//!
//! ```toml
//! [allocator]
//! id = "error_cap"
//! max_error = 0.01        # relative error each layer may have
//! measure = "output"      # tr(E G Eᵀ)/tr(W G Wᵀ) on the calibration text, or "weight": ‖E‖²/‖W‖²
//!
//! [[allocator.candidates]]
//! bits = 3
//! [[allocator.candidates]]
//! bits = 4
//! ```
//!
//! Where `bit_budget` meets a size and minimizes the loss, `error_cap` meets a quality floor per
//! layer and lets the size follow, as EXL2's per-layer error target does. A layer no candidate
//! brings under the cap gets the candidate with the least error. Layers outside the blocks
//! (embedding, lm_head) keep their resolved plan. With `measure = "output"` it asks the host for
//! the Gram matrix, so the host plans inside the pack on the calibration text; with `"weight"` it
//! needs nothing and the host plans before calibration.
//!
//! One source, two ways in, as `examples/codec-plugin-nf4`: the rlib registers it through
//! `inventory`; the cdylib exports the C entry point (behind the default `plugin` feature) and
//! `tenpak --plugin libtenpak_alloc_error_cap.so …` loads it. The type itself is in
//! `error_cap.rs`, which the host's plugin tests also compile into the host, to compare the two
//! builds.
#![deny(missing_docs)]

mod error_cap;

pub use error_cap::ErrorCap;

tenpak_api::register_allocator!("error_cap", ErrorCap);

#[cfg(feature = "plugin")]
tenpak_api::export_plugin! {
    allocator("error_cap", ErrorCap);
}
