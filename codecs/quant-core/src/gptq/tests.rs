//! The column sweep against its plain reference, code for code; the factorizations against
//! theirs. (The codecs' own tests check what they store.)

use super::hessian::Hessian;
use super::sweep::{self, Groups, InverseFactor, blocks};
use crate::fit::{FitOptions, params};
use crate::linalg::{
    cholesky_lower, cholesky_lower_reference, inverse_cholesky_upper, inverse_reference,
    invert_lower, invert_lower_in_place, invert_lower_reference,
};
use crate::testing::{ActivationShape, Rng, correlated_activations, llm_like, student_t};
use crate::{AsymFormat, AsymQuantized, GroupLayout};

/// `tokens × cols` activations shaped like an LLM layer's inputs
/// ([`crate::testing::correlated_activations`]).
fn activations(tokens: usize, cols: usize, seed: u64) -> Vec<f32> {
    correlated_activations(tokens, cols, seed, ActivationShape { outlier_every: 16, outlier_at: 5, factors: 4 })
}

/// The Hessian of `tokens` synthetic tokens for a layer with `cols` inputs: XᵀX / n accumulated
/// in f64 and rounded to f32, as the `gram` calibrator computes it.
fn synthetic_hessian(tokens: usize, cols: usize, seed: u64) -> Hessian {
    let x = activations(tokens, cols, seed);
    let mut gram = vec![0f64; cols * cols];
    for t in x.chunks_exact(cols) {
        for i in 0..cols {
            let xi = f64::from(t[i]);
            for j in 0..cols {
                gram[i * cols + j] += xi * f64::from(t[j]);
            }
        }
    }
    let gram: Vec<f32> = gram
        .iter()
        .map(|v| (v / tokens.max(1) as f64) as f32)
        .collect();
    Hessian::from_gram(&gram, cols).unwrap()
}

/// A random symmetric positive-definite `n × n` matrix: `AᵀA / k + 0.01 I` for a `k × n` Gaussian
/// `A` with column scales spread over two orders of magnitude.
fn random_spd(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = Rng::new(seed);
    let k = n + 3;
    let scale: Vec<f64> = (0..n).map(|_| (2.0 * rng.normal()).exp()).collect();
    let a: Vec<f64> = (0..k * n).map(|i| rng.normal() * scale[i % n]).collect();
    let mut h = vec![0f64; n * n];
    for r in 0..k {
        for i in 0..n {
            for j in 0..n {
                h[i * n + j] += a[r * n + i] * a[r * n + j] / k as f64;
            }
        }
    }
    for j in 0..n {
        h[j * n + j] += 0.01;
    }
    h
}

/// The 4-bit format of an `rows × cols` matrix in groups of `group_size`.
fn format(rows: usize, cols: usize, group_size: usize) -> AsymFormat {
    AsymFormat::new(GroupLayout::new(rows, cols, group_size).unwrap(), 4).unwrap()
}

/// `int4_gptq`'s range fit with method `refine` and its default rounds and steps.
fn fit_options(refine: &str) -> FitOptions {
    FitOptions {
        refine: params::refine(
            refine,
            params::DEFAULT_ITERATIONS,
            params::DEFAULT_SEARCH_STEPS,
        ),
        allow_zero: false,
    }
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn max_abs(a: &[f64]) -> f64 {
    a.iter().fold(0f64, |m, v| m.max(v.abs()))
}

// ---------------------------------------------------------------------------------------------
// Linear algebra

#[test]
fn lapack_cholesky_and_inverse_match_the_references() {
    for (seed, n) in [1usize, 2, 5, 31, 32, 33, 63, 64, 65, 127, 130, 200]
        .into_iter()
        .enumerate()
    {
        let h = random_spd(n, seed as u64);
        let mut fast = h.clone();
        let mut reference = h.clone();
        cholesky_lower(&mut fast, n).unwrap();
        cholesky_lower_reference(&mut reference, n).unwrap();
        let scale = max_abs(&reference);
        assert!(
            max_abs_diff(&fast, &reference) <= 1e-12 * scale,
            "cholesky n={n}"
        );
        // L Lᵀ reproduces H.
        let mut llt_err = 0f64;
        for i in 0..n {
            for j in 0..n {
                let v: f64 = (0..n).map(|m| fast[i * n + m] * fast[j * n + m]).sum();
                llt_err = llt_err.max((v - h[i * n + j]).abs());
            }
        }
        assert!(llt_err <= 1e-12 * max_abs(&h), "L Lᵀ n={n}: {llt_err}");

        let inv_fast = invert_lower(&fast, n);
        let inv_reference = invert_lower_reference(&fast, n);
        // The in-place inversion (what the error feedback runs) is the copying one, bit for bit.
        let mut in_place = fast.clone();
        invert_lower_in_place(&mut in_place, n);
        assert!(
            in_place
                .iter()
                .zip(&inv_fast)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "invert_lower_in_place n={n} differs from invert_lower"
        );
        assert!(
            max_abs_diff(&inv_fast, &inv_reference) <= 1e-10 * max_abs(&inv_reference),
            "invert_lower n={n}"
        );
        for i in 0..n {
            for j in i + 1..n {
                assert_eq!(inv_fast[i * n + j], 0.0, "L⁻¹ must be lower triangular");
            }
        }
    }
}

/// `U` is upper triangular with a positive diagonal and `Uᵀ U = H⁻¹` (the Gauss–Jordan inverse).
#[test]
fn inverse_cholesky_factor_is_upper_and_inverts_h() {
    for (seed, n) in [1usize, 3, 64, 100, 150].into_iter().enumerate() {
        let h = random_spd(n, 100 + seed as u64);
        let u = inverse_cholesky_upper(h.clone(), n).unwrap();
        let hinv = inverse_reference(&h, n).unwrap();
        for i in 0..n {
            assert!(u[i * n + i] > 0.0);
            for j in 0..i {
                assert_eq!(u[i * n + j], 0.0, "n={n}: U[{i},{j}]");
            }
        }
        let mut utu = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                utu[i * n + j] = (0..n).map(|m| u[m * n + i] * u[m * n + j]).sum();
            }
        }
        let err = max_abs_diff(&utu, &hinv);
        assert!(err <= 1e-9 * max_abs(&hinv), "n={n}: |UᵀU − H⁻¹| = {err}");
    }
}

#[test]
fn factorizations_refuse_indefinite_matrices() {
    let h = vec![1.0, 2.0, 2.0, 1.0]; // eigenvalues 3 and −1
    assert!(cholesky_lower(&mut h.clone(), 2).is_err());
    assert!(cholesky_lower_reference(&mut h.clone(), 2).is_err());
    assert!(inverse_cholesky_upper(h.clone(), 2).is_err());
    assert!(inverse_reference(&h, 2).is_err());
    let nan = vec![f64::NAN, 0.0, 0.0, 1.0];
    assert!(cholesky_lower(&mut nan.clone(), 2).is_err());
}

// ---------------------------------------------------------------------------------------------
// The sweep

#[test]
fn blocks_cover_the_row_and_never_cut_through_a_group_that_starts_inside() {
    for cols in [1usize, 7, 64, 100, 128, 129, 576, 1000] {
        for group_size in [8usize, 32, 100, 128, 256, 2000] {
            for block_size in [1usize, 7, 64, 128, 300] {
                let bs = blocks(cols, group_size, block_size);
                let mut next = 0;
                for b in &bs {
                    assert_eq!(b.start, next);
                    assert!(!b.is_empty() && b.len() <= block_size);
                    for s in (b.start + 1..b.end).filter(|s| s % group_size == 0) {
                        assert!(
                            (s + group_size).min(cols) <= b.end,
                            "cols {cols} g{group_size} b{block_size}: group at {s} leaves block {b:?}"
                        );
                    }
                    next = b.end;
                }
                assert_eq!(next, cols);
            }
        }
    }
}

/// The blocked, parallel sweep and the plain column-by-column reference (explicit inverse, no
/// shared linear algebra) give the same headers and codes, for every block size, with dynamic and
/// with static groups.
///
/// They could in principle differ where an updated weight falls within float rounding of a
/// decision boundary (the midpoint between two levels, or a tie in the range fit); with f64
/// updates that is ~1e-13 of a step, so over the ~10⁵ weights here none is expected, and exact
/// equality is asserted.
#[test]
fn fast_sweep_matches_the_reference() {
    let cases = [
        (9usize, 64usize, 16usize),
        (13, 100, 32),
        (7, 130, 128),
        (24, 256, 64),
        (5, 77, 8),
    ];
    for (seed, (rows, cols, group_size)) in cases.into_iter().enumerate() {
        let seed = seed as u64;
        let hessian = synthetic_hessian(cols / 2 + 40, cols, seed);
        let factor = InverseFactor::new(&hessian, 0.01).unwrap();
        for m in [llm_like(rows, cols, seed), student_t(rows, cols, seed + 50)] {
            for refine in ["search", "none", "lsq_iter"] {
                let fit = fit_options(refine);
                let fmt = format(rows, cols, group_size);
                let static_headers = AsymQuantized::quantize(&m.data, fmt, &fit)
                    .unwrap()
                    .headers()
                    .to_vec();
                for groups in [Groups::Dynamic(fit), Groups::Static(&static_headers)] {
                    let reference =
                        sweep::quantize_reference(&m.data, fmt, &hessian, 0.01, groups).unwrap();
                    for block_size in [1usize, 7, 128] {
                        let fast =
                            sweep::quantize(&m.data, fmt, &factor, groups, block_size).unwrap();
                        let ctx = format!(
                            "{} [{rows}, {cols}] g{group_size} b{block_size} {refine} {groups:?}",
                            m.name
                        );
                        assert_eq!(fast.headers, reference.headers, "{ctx}: headers");
                        assert_eq!(fast.codes, reference.codes, "{ctx}: codes");
                        assert_eq!(fast.percdamp_applied, reference.percdamp_applied);
                        for (a, b) in fast
                            .row_damped_errors
                            .iter()
                            .zip(&reference.row_damped_errors)
                        {
                            assert!(
                                (a - b).abs() <= 1e-9 * b,
                                "{ctx}: damped row error {a} vs {b}"
                            );
                        }
                    }
                    if let Groups::Static(given) = groups {
                        assert_eq!(reference.headers, given);
                    }
                }
            }
        }
    }
}

/// With column scales (`int4_awq`'s grid `deq(W·diag(s)) / s`), the fast sweep and the reference
/// still agree code for code; with every scale 1 the scaled sweep is the plain one.
#[test]
fn column_scaled_sweep_matches_the_reference() {
    for (seed, (rows, cols, group_size)) in
        [(9usize, 64usize, 16usize), (13, 100, 32), (7, 130, 128)]
            .into_iter()
            .enumerate()
    {
        let seed = seed as u64 + 20;
        let hessian = synthetic_hessian(cols / 2 + 40, cols, seed);
        let factor = InverseFactor::new(&hessian, 0.01).unwrap();
        let mut rng = Rng::new(seed);
        // Scales over two orders of magnitude, as act_scale^alpha gives.
        let scales: Vec<f32> = (0..cols)
            .map(|_| (rng.normal() as f32 * 1.2).exp())
            .collect();
        let ones = vec![1f32; cols];
        let m = llm_like(rows, cols, seed);
        let fit = fit_options("search");
        let fmt = format(rows, cols, group_size);
        let scaled: Vec<f32> = m
            .data
            .chunks_exact(cols)
            .flat_map(|r| r.iter().zip(&scales).map(|(w, s)| w * s))
            .collect();
        let static_headers = AsymQuantized::quantize(&scaled, fmt, &fit)
            .unwrap()
            .headers()
            .to_vec();
        for groups in [Groups::Dynamic(fit), Groups::Static(&static_headers)] {
            let reference = sweep::quantize_reference_scaled(
                &m.data,
                fmt,
                &hessian,
                0.01,
                groups,
                Some(&scales),
            )
            .unwrap();
            for block_size in [1usize, 7, 128] {
                let fast = sweep::quantize_scaled(
                    &m.data,
                    fmt,
                    &factor,
                    groups,
                    Some(&scales),
                    block_size,
                )
                .unwrap();
                let ctx = format!("[{rows}, {cols}] g{group_size} b{block_size} {groups:?}");
                assert_eq!(fast.headers, reference.headers, "{ctx}: headers");
                assert_eq!(fast.codes, reference.codes, "{ctx}: codes");
                for (a, b) in fast
                    .row_damped_errors
                    .iter()
                    .zip(&reference.row_damped_errors)
                {
                    assert!(
                        (a - b).abs() <= 1e-9 * b,
                        "{ctx}: damped row error {a} vs {b}"
                    );
                }
            }
            let unit =
                sweep::quantize_scaled(&m.data, fmt, &factor, groups, Some(&ones), 128).unwrap();
            let plain = sweep::quantize(&m.data, fmt, &factor, groups, 128).unwrap();
            assert_eq!(unit, plain, "[{rows}, {cols}] unit scales");
        }
    }
}
