//! The components compiled into this binary.
//!
//! Naming each crate here keeps the linker from dropping its `inventory` registrations; the
//! registry test asserts that every id below is really registered.

use tenpak_alloc_bit_budget as _;
use tenpak_alloc_gguf_recipe as _;
use tenpak_alloc_role_rules as _;
use tenpak_calibrators as _;
use tenpak_codec_basic as _;
use tenpak_codec_int4_awq as _;
use tenpak_codec_ggml as _;
use tenpak_codec_int4_gptq as _;
use tenpak_codec_int4_residual as _;
use tenpak_codec_int4_rtn as _;
use tenpak_codec_vq as _;

/// Codec ids this binary must provide.
pub const CODECS: &[&str] = &["ggml", "ggml_plain", "int4_awq", "int4_gptq", "int4_residual", "int4_rtn", "int8", "keep", "vq"];
/// Calibrator ids this binary must provide.
pub const CALIBRATORS: &[&str] = &["act_scale", "fisher_diag", "gram", "hessian_diag"];
/// Allocator ids this binary must provide.
pub const ALLOCATORS: &[&str] = &["bit_budget", "gguf_recipe", "role_rules"];

/// The registry of every built-in component.
pub fn registry() -> tenpak_error::Result<tenpak_api::registry::Registry> {
    Ok(tenpak_api::registry::Registry::from_static()?)
}
