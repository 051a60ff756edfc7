//! The range fit as codec parameters: the keys `refine`, `iterations` and `search_steps` that
//! `int4_residual`, `int4_gptq` and `int4_awq` accept, written once so the three codecs name,
//! document and read them alike.
//!
//! A codec lists [`REFINE_SPEC`] and [`ITERATIONS_SPEC`] (and [`SEARCH_STEPS_SPEC`] if it lets a
//! preset set the search's steps) among its [`ParamSpec`]s, reads the method with
//! [`refine_method`] and turns the three values into a [`Refine`] with [`refine`].

use tenpak_api::{ParamSpec, ParamType, Params, Result, param_one_of};

use super::{Refine, SearchGrid};

/// The accepted `refine` values.
pub const REFINE_METHODS: &[&str] = &["search", "lsq_iter", "minmax_iter", "none"];
/// `refine` when the parameter is absent: the k-quants search, which beats min/max on every
/// layer measured (see `int4_residual`).
pub const DEFAULT_REFINE: &str = "search";
/// Refinement rounds when `iterations` is absent (the prototype's 5).
pub const DEFAULT_ITERATIONS: usize = 5;
/// Largest accepted `iterations`: least squares converges in a handful of rounds.
pub const MAX_ITERATIONS: usize = 100;
/// Candidate steps of the search when `search_steps` is absent (k-quants' 20, i.e. 21
/// candidates).
pub const DEFAULT_SEARCH_STEPS: usize = 20;
/// Largest accepted `search_steps`.
pub const MAX_SEARCH_STEPS: usize = 200;

/// The `refine` parameter.
pub const REFINE_SPEC: ParamSpec = ParamSpec {
    name: "refine",
    ty: ParamType::Str,
    default: "\"search\"",
    doc: "how each group's scale and min are chosen: search | lsq_iter | minmax_iter | none",
};

/// The `iterations` parameter.
pub const ITERATIONS_SPEC: ParamSpec = ParamSpec {
    name: "iterations",
    ty: ParamType::Int,
    default: "5",
    doc: "rounds of minmax_iter / lsq_iter, or least-squares polish rounds after search (0..=100)",
};

/// The `search_steps` parameter.
pub const SEARCH_STEPS_SPEC: ParamSpec = ParamSpec {
    name: "search_steps",
    ty: ParamType::Int,
    default: "20",
    doc: "search: candidate steps (max-min)/(15 - 1 + 2k/steps), k = 0..=steps (1..=200)",
};

/// The `refine` value of `params` (default [`DEFAULT_REFINE`]) as one of [`REFINE_METHODS`];
/// anything else is an [`tenpak_api::ErrorKind::InvalidParam`] error naming `owner`, the key and
/// the accepted values.
pub fn refine_method(owner: &str, params: &Params) -> Result<&'static str> {
    param_one_of(
        owner,
        "refine",
        params.str_or("refine", DEFAULT_REFINE)?,
        REFINE_METHODS,
    )
}

/// The [`Refine`] that `method` (one of [`REFINE_METHODS`]) names, with `iterations` rounds of
/// `minmax_iter` / `lsq_iter` or of least-squares polish after `search`, whose candidates are
/// k-quants' `nmax − 1 … nmax + 1` spread over `search_steps` steps.
pub fn refine(method: &str, iterations: usize, search_steps: usize) -> Refine {
    match method {
        "none" => Refine::None,
        "minmax_iter" => Refine::MinMaxIter { iterations },
        "lsq_iter" => Refine::LsqIter { iterations },
        _ => Refine::Search {
            grid: SearchGrid {
                rmin: -1.0,
                rdelta: 2.0 / search_steps as f32,
                steps: search_steps,
            },
            polish: iterations,
        },
    }
}
