//! Helpers shared by this crate's tests; they live in `tenpak_quant::testing` so every codec's
//! tests use the same matrices and checks.
#![allow(unused_imports)]

pub use tenpak_quant::testing::{
    codec_matrices as matrices, encode, group_errors, group_sizes, headers, stored_bytes,
};
