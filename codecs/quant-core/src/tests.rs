//! Reference and fast paths agree bit for bit; the min/max grid meets its error bound.

use crate::fit::{FitOptions, Refine, SearchGrid};
use crate::testing::{self, TestMatrix};
use crate::{AsymFormat, AsymQuantized, GroupLayout, SymFormat, SymQuantized};

fn matrices() -> Vec<TestMatrix> {
    let mut all = vec![
        testing::gaussian(7, 100, 1),
        testing::student_t(5, 576, 2),
        testing::laplace(4, 130, 3),
        testing::llm_like(6, 256, 4),
    ];
    all.extend(testing::adversarial(5, 67, 5));
    all
}

const REFINES: [Refine; 5] = [
    Refine::None,
    Refine::MinMaxIter { iterations: 5 },
    Refine::LsqIter { iterations: 5 },
    Refine::Search {
        grid: SearchGrid::K_QUANTS,
        polish: 0,
    },
    Refine::Search {
        grid: SearchGrid::K_QUANTS,
        polish: 2,
    },
];

#[test]
fn asym_fast_paths_equal_reference() {
    for m in matrices() {
        for group_size in [8, 32, 64, 100, m.cols, m.cols + 5] {
            let layout = GroupLayout::new(m.rows, m.cols, group_size).unwrap();
            for bits in 1..=8 {
                let format = AsymFormat::new(layout, bits).unwrap();
                for refine in REFINES {
                    for allow_zero in [false, true] {
                        let fit = FitOptions { refine, allow_zero };
                        let ctx = format!(
                            "{} g{group_size} b{bits} {refine:?} zero={allow_zero}",
                            m.name
                        );
                        let reference =
                            AsymQuantized::quantize_reference(&m.data, format, &fit).unwrap();
                        let fast = AsymQuantized::quantize(&m.data, format, &fit).unwrap();
                        assert_eq!(reference, fast, "{ctx}");
                        let (a, b) = (reference.dequantize_reference(), fast.dequantize());
                        assert_eq!(
                            a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            b.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            "{ctx}"
                        );
                        assert!(b.iter().all(|v| v.is_finite()), "{ctx}");
                        let mut sum = vec![1.0f32; b.len()];
                        fast.dequantize_add(&mut sum).unwrap();
                        assert!(sum.iter().zip(&b).all(|(s, v)| *s == 1.0 + v), "{ctx}");
                        assert_eq!(
                            format.stored_bits(),
                            8 * (fast.codes().len() + 4 * fast.headers().len()) as u64
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn sym_fast_paths_equal_reference() {
    for m in matrices() {
        for group_size in [8, 32, 100, m.cols, m.cols * 2] {
            let format = SymFormat::new(GroupLayout::new(m.rows, m.cols, group_size).unwrap());
            let reference = SymQuantized::quantize_reference(&m.data, format).unwrap();
            let fast = SymQuantized::quantize(&m.data, format).unwrap();
            assert_eq!(reference, fast, "{} g{group_size}", m.name);
            let (a, b) = (reference.dequantize_reference(), fast.dequantize());
            assert!(
                a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{} g{group_size}",
                m.name
            );
        }
    }
}

/// The min/max grid covers each group, so every weight is within half a step of its level
/// (plus the f32 rounding of `scale · q + min`).
#[test]
fn min_max_grid_error_is_at_most_half_a_step() {
    for m in matrices() {
        for group_size in [8, 33, 128, m.cols] {
            let layout = GroupLayout::new(m.rows, m.cols, group_size).unwrap();
            for bits in [2, 4, 8] {
                let format = AsymFormat::new(layout, bits).unwrap();
                let q = AsymQuantized::quantize(&m.data, format, &FitOptions::RTN).unwrap();
                let decoded = q.dequantize();
                for row in 0..m.rows {
                    for col in 0..m.cols {
                        let h =
                            q.headers()[row * layout.groups_per_row() + col / group_size].unpack();
                        let (w, w_hat) = (m.data[row * m.cols + col], decoded[row * m.cols + col]);
                        let slack = 4.0 * f32::EPSILON * (w.abs() + h.min.abs() + h.scale * 255.0);
                        assert!(
                            (w - w_hat).abs() <= h.scale / 2.0 + slack,
                            "{} g{group_size} b{bits} [{row},{col}]: {w} -> {w_hat}, step {}",
                            m.name,
                            h.scale
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn zero_size_matrices_have_empty_parts() {
    for (rows, cols) in [(0, 0), (0, 16), (16, 0)] {
        let layout = GroupLayout::new(rows, cols, 8).unwrap();
        let format = AsymFormat::new(layout, 4).unwrap();
        let q = AsymQuantized::quantize(&[], format, &FitOptions::RTN).unwrap();
        assert_eq!(
            q,
            AsymQuantized::quantize_reference(&[], format, &FitOptions::RTN).unwrap()
        );
        assert!(q.dequantize().is_empty() && format.stored_bits() == 0);
        let [codes, headers] = q.to_parts("codes", "scale_min");
        assert_eq!(
            AsymQuantized::from_parts(format, &codes, &headers).unwrap(),
            q
        );
        let s = SymQuantized::quantize(&[], SymFormat::new(layout)).unwrap();
        assert!(s.dequantize().is_empty());
    }
}

#[test]
fn ranges_beyond_f16_are_refused_with_their_position() {
    let mut data = vec![0.01f32; 2 * 40];
    data[40 + 35] = -1e6;
    let layout = GroupLayout::new(2, 40, 16).unwrap();
    for quantize in [AsymQuantized::quantize, AsymQuantized::quantize_reference] {
        let err =
            quantize(&data, AsymFormat::new(layout, 4).unwrap(), &FitOptions::RTN).unwrap_err();
        assert_eq!(err.kind(), tenpak_api::ErrorKind::InvalidInput);
        assert!(err.message().contains("row 1, columns 32..40"), "{err}");
    }
    data[40 + 35] = -1e9;
    let err = SymQuantized::quantize(&data, SymFormat::new(layout)).unwrap_err();
    assert!(err.message().contains("row 1, columns 32..40"), "{err}");
}

#[test]
fn parts_of_the_wrong_size_or_dtype_are_corrupt() {
    let m = testing::gaussian(3, 50, 9);
    let format = AsymFormat::new(GroupLayout::new(3, 50, 16).unwrap(), 4).unwrap();
    let q = AsymQuantized::quantize(&m.data, format, &FitOptions::RTN).unwrap();
    let [codes, headers] = q.to_parts("codes", "scale_min");
    let mut short = codes.clone();
    short.data.pop();
    short.shape = vec![short.data.len()];
    let err = AsymQuantized::from_parts(format, &short, &headers).unwrap_err();
    assert_eq!(err.kind(), tenpak_api::ErrorKind::Corrupt);
    assert!(
        err.message().contains("`codes`") && err.message().contains("75"),
        "{err}"
    );
    let mut wrong = headers.clone();
    wrong.dtype = tenpak_api::DType::U16;
    assert_eq!(
        AsymQuantized::from_parts(format, &codes, &wrong)
            .unwrap_err()
            .kind(),
        tenpak_api::ErrorKind::Corrupt
    );
    let other = AsymFormat::new(GroupLayout::new(3, 50, 8).unwrap(), 4).unwrap();
    assert_eq!(
        AsymQuantized::from_parts(other, &codes, &headers)
            .unwrap_err()
            .kind(),
        tenpak_api::ErrorKind::Corrupt
    );
}

/// Importance shaped like a calibrated layer's: log-normal per column (heavy-tailed channel
/// energies), a few exact zeros (dead channels, or outliers stored elsewhere).
fn importance_for(m: &TestMatrix, seed: u64) -> Vec<f32> {
    let mut rng = testing::Rng::new(seed);
    let per_col: Vec<f32> = (0..m.cols)
        .map(|_| (rng.normal() * 1.5).exp() as f32)
        .collect();
    (0..m.rows * m.cols)
        .map(|i| {
            if rng.next_u64().is_multiple_of(50) {
                0.0
            } else {
                per_col[i % m.cols]
            }
        })
        .collect()
}

#[test]
fn weighted_fast_path_equals_reference() {
    for m in matrices() {
        let importance = importance_for(&m, 3);
        for group_size in [8, 32, 100, m.cols] {
            let layout = GroupLayout::new(m.rows, m.cols, group_size).unwrap();
            for bits in [1, 2, 4, 8] {
                let format = AsymFormat::new(layout, bits).unwrap();
                for refine in REFINES {
                    for allow_zero in [false, true] {
                        let fit = FitOptions { refine, allow_zero };
                        let ctx = format!(
                            "{} g{group_size} b{bits} {refine:?} zero={allow_zero}",
                            m.name
                        );
                        let reference = AsymQuantized::quantize_weighted_reference(
                            &m.data,
                            &importance,
                            format,
                            &fit,
                        )
                        .unwrap();
                        let fast =
                            AsymQuantized::quantize_weighted(&m.data, &importance, format, &fit)
                                .unwrap();
                        assert_eq!(reference, fast, "{ctx}");
                        assert!(fast.dequantize().iter().all(|v| v.is_finite()), "{ctx}");
                    }
                }
            }
        }
    }
}

/// With every importance 1 the weighted quantizer is the plain one, bit for bit (codes of up to
/// 5 bits, where every lane sum is exact): the weighted fit is the plain fit plus weights.
#[test]
fn weighted_with_unit_importance_is_the_plain_quantizer() {
    for m in matrices() {
        let ones = vec![1f32; m.data.len()];
        for group_size in [8, 32, 100, m.cols, m.cols + 5] {
            let layout = GroupLayout::new(m.rows, m.cols, group_size).unwrap();
            for bits in 1..=5 {
                let format = AsymFormat::new(layout, bits).unwrap();
                for refine in REFINES {
                    for allow_zero in [false, true] {
                        let fit = FitOptions { refine, allow_zero };
                        let plain = AsymQuantized::quantize(&m.data, format, &fit).unwrap();
                        let weighted =
                            AsymQuantized::quantize_weighted(&m.data, &ones, format, &fit).unwrap();
                        assert_eq!(
                            plain, weighted,
                            "{} g{group_size} b{bits} {refine:?} zero={allow_zero}",
                            m.name
                        );
                    }
                }
            }
        }
    }
}

/// Per group, the weighted fit's weighted error is never above its min/max header's, and summed
/// over a heavy-tailed matrix it is clearly below the plain fit's weighted error.
#[test]
fn weighted_fit_lowers_the_weighted_error() {
    use crate::fit::rtn_header;
    use crate::fit::weighted::{group_weighted_sq_error, min_max_weighted};
    for m in matrices().into_iter().take(4) {
        let importance = importance_for(&m, 5);
        for group_size in [32, 128] {
            let layout = GroupLayout::new(m.rows, m.cols, group_size).unwrap();
            let format = AsymFormat::new(layout, 4).unwrap();
            let fit = FitOptions {
                refine: Refine::Search {
                    grid: SearchGrid::K_QUANTS,
                    polish: 5,
                },
                allow_zero: false,
            };
            let weighted =
                AsymQuantized::quantize_weighted(&m.data, &importance, format, &fit).unwrap();
            let plain = AsymQuantized::quantize(&m.data, format, &fit).unwrap();
            let (mut total_weighted, mut total_plain) = (0f64, 0f64);
            for row in 0..m.rows {
                for group in 0..layout.groups_per_row() {
                    let cols = layout.group_columns(group);
                    let range = row * m.cols + cols.start..row * m.cols + cols.end;
                    let (values, h) = (&m.data[range.clone()], &importance[range]);
                    let index = row * layout.groups_per_row() + group;
                    let ours = group_weighted_sq_error(values, h, weighted.headers()[index], 15);
                    let (lo, hi) = min_max_weighted(values, h);
                    if lo <= hi {
                        let rtn =
                            group_weighted_sq_error(values, h, rtn_header(lo, hi, 15).unwrap(), 15);
                        assert!(
                            ours <= rtn,
                            "{} g{group_size} row {row} group {group}",
                            m.name
                        );
                    }
                    total_weighted += ours;
                    total_plain += group_weighted_sq_error(values, h, plain.headers()[index], 15);
                }
            }
            assert!(
                total_weighted < 0.97 * total_plain,
                "{} g{group_size}: weighted {total_weighted} vs plain {total_plain}",
                m.name
            );
        }
    }
}

/// A weight of importance 0 is left out of the range: one huge value does not stretch its group.
#[test]
fn zero_importance_weights_are_out_of_the_range() {
    let mut m = testing::gaussian(2, 64, 8);
    m.data[10] = 50.0;
    let mut importance = vec![1f32; m.data.len()];
    importance[10] = 0.0;
    let layout = GroupLayout::new(2, 64, 32).unwrap();
    let format = AsymFormat::new(layout, 4).unwrap();
    for fit in [
        FitOptions::RTN,
        FitOptions {
            refine: REFINES[4],
            allow_zero: false,
        },
    ] {
        let q = AsymQuantized::quantize_weighted(&m.data, &importance, format, &fit).unwrap();
        let grid = q.headers()[0].unpack();
        assert!(grid.min + 15.0 * grid.scale < 1.0, "{fit:?}: {grid:?}");
        // Every weight that counts is still within its group's grid.
        let decoded = q.dequantize();
        for i in (0..32).filter(|&i| i != 10) {
            assert!((decoded[i] - m.data[i]).abs() <= grid.scale, "{fit:?} {i}");
        }
    }
    // A group in which nothing counts gets the plain fit.
    let zeros = vec![0f32; m.data.len()];
    let fit = FitOptions {
        refine: REFINES[4],
        allow_zero: false,
    };
    assert_eq!(
        AsymQuantized::quantize_weighted(&m.data, &zeros, format, &fit).unwrap(),
        AsymQuantized::quantize(&m.data, format, &fit).unwrap()
    );
}

#[test]
fn bad_importance_is_refused_with_its_position() {
    let m = testing::gaussian(3, 20, 1);
    let format = AsymFormat::new(GroupLayout::new(3, 20, 8).unwrap(), 4).unwrap();
    for bad in [f32::NAN, f32::INFINITY, -1.0] {
        let mut importance = vec![1f32; 60];
        importance[20 + 7] = bad;
        for quantize in [
            AsymQuantized::quantize_weighted,
            AsymQuantized::quantize_weighted_reference,
        ] {
            let err = quantize(&m.data, &importance, format, &FitOptions::RTN).unwrap_err();
            assert_eq!(err.kind(), tenpak_api::ErrorKind::InvalidInput);
            assert!(err.message().contains("row 1, column 7"), "{err}");
        }
    }
    let err = AsymQuantized::quantize_weighted(&m.data, &[1.0; 59], format, &FitOptions::RTN)
        .unwrap_err();
    assert!(err.message().contains("59"), "{err}");
}
