//! Learning the codebook: weighted k-means (k-means++ seeding, Lloyd iterations) on a seeded
//! sample of the layer's normalized sub-vectors.
//!
//! Point `v` (a sub-vector divided by its group's scale `s`) has coordinate weights
//! `a_vj = s² · h_j`, `h_j` the `hessian_diag` of its column normalized by the largest (padding
//! coordinates weigh 0): `Σ_j a_vj (x_vj − c_j)²` is the point's share of the diagonal output
//! error. A point is assigned to the codeword of least `Σ_j h_j (x_vj − c_j)²` (the `s²` is
//! common to all codewords), and a codeword moves to the `a`-weighted mean of its points,
//! coordinate by coordinate, which minimizes the total. Deterministic under the seed: the
//! sample, the seeding and the order of every reduction are fixed.

use half::f16;
use rayon::prelude::*;
use tenpak_quant::rng::Xorshift;

use crate::{Settings, Shape};

/// Largest training sample.
pub const MAX_SAMPLE: usize = 65_536;
/// Points per parallel task (fixed, so sums are reduced in the same order on every machine).
const CHUNK: usize = 4096;

/// The training set: normalized points, their coordinate weights and assignment weights.
struct Points {
    x: Vec<f32>,
    /// `a_vj = s² · h_j`.
    a: Vec<f32>,
    /// `h_j` (0 for padding).
    h: Vec<f32>,
}

/// Normalized column importances: `hessian_diag / max`, or all ones if every column is silent.
pub fn importances(hdiag: &[f32]) -> Vec<f32> {
    let max = hdiag.iter().copied().fold(0f32, f32::max);
    if max > 0.0 { hdiag.iter().map(|&v| v / max).collect() } else { vec![1.0; hdiag.len()] }
}

fn sample(weight: &[f32], scales: &[f16], h: &[f32], shape: Shape, seed: u64) -> Points {
    let subs = shape.subvectors();
    let total = shape.rows * subs.len();
    let d = shape.dim;
    let mut rng = Xorshift::new(seed);
    let picks: Vec<usize> = if total <= MAX_SAMPLE { (0..total).collect() } else { (0..MAX_SAMPLE).map(|_| rng.below(total)).collect() };
    let gpr = shape.groups_per_row();
    let mut p = Points { x: Vec::new(), a: Vec::new(), h: Vec::new() };
    for v in picks {
        let (r, s) = (v / subs.len(), v % subs.len());
        let cols = &subs[s];
        let scale = scales[r * gpr + cols.start / shape.group_size].to_f32();
        if scale == 0.0 {
            continue;
        }
        for k in 0..d {
            let c = cols.start + k;
            if c < cols.end {
                p.x.push(weight[r * shape.cols + c] / scale);
                p.h.push(h[c]);
                p.a.push(scale * scale * h[c]);
            } else {
                p.x.push(0.0);
                p.h.push(0.0);
                p.a.push(0.0);
            }
        }
    }
    p
}

/// `Σ_j h_j (x_j − c_j)²`.
#[inline]
pub fn distance(x: &[f32], h: &[f32], c: &[f32]) -> f32 {
    x.iter().zip(h).zip(c).map(|((x, h), c)| h * (x - c) * (x - c)).sum()
}

/// The nearest codeword of `x` (the first on a tie) and its distance.
#[inline]
pub fn nearest(x: &[f32], h: &[f32], book: &[f32], dim: usize) -> (usize, f32) {
    let mut best = (0, f32::INFINITY);
    for (k, c) in book.chunks_exact(dim).enumerate() {
        let d = distance(x, h, c);
        if d < best.1 {
            best = (k, d);
        }
    }
    best
}

/// Learn a codebook of `2^(bits·dim)` entries, returned in f16 (row-major `[entries, dim]`).
pub fn learn(weight: &[f32], scales: &[f16], hdiag: &[f32], shape: Shape, settings: &Settings) -> Vec<f16> {
    let entries = 1usize << settings.index_bits();
    let d = shape.dim;
    let h = importances(hdiag);
    let pts = sample(weight, scales, &h, shape, settings.seed);
    let n = pts.x.len() / d;
    let mut book = vec![0f32; entries * d];
    if n == 0 {
        return book.iter().map(|&v| f16::from_f32(v)).collect();
    }
    // k-means++ seeding: each next codeword drawn with probability ∝ its weighted distance.
    let mut rng = Xorshift::new(settings.seed ^ 0x5EED);
    let first = rng.below(n);
    book[..d].copy_from_slice(&pts.x[first * d..(first + 1) * d]);
    let weight_of = |v: usize, c: &[f32]| -> f64 {
        f64::from(distance(&pts.x[v * d..(v + 1) * d], &pts.a[v * d..(v + 1) * d], c))
    };
    let mut closest: Vec<f64> = (0..n).map(|v| weight_of(v, &book[..d])).collect();
    for k in 1..entries {
        let total: f64 = closest.iter().sum();
        let pick = if total > 0.0 {
            let mut target = rng.uniform() * total;
            let mut chosen = n - 1;
            for (v, &c) in closest.iter().enumerate() {
                target -= c;
                if target <= 0.0 {
                    chosen = v;
                    break;
                }
            }
            chosen
        } else {
            rng.below(n)
        };
        book[k * d..(k + 1) * d].copy_from_slice(&pts.x[pick * d..(pick + 1) * d]);
        let c = book[k * d..(k + 1) * d].to_vec();
        closest.par_iter_mut().enumerate().for_each(|(v, best)| *best = best.min(weight_of(v, &c)));
    }
    // Lloyd iterations.
    for _ in 0..settings.iterations {
        let assign: Vec<(usize, f32)> = (0..n)
            .into_par_iter()
            .with_min_len(CHUNK)
            .map(|v| nearest(&pts.x[v * d..(v + 1) * d], &pts.h[v * d..(v + 1) * d], &book, d))
            .collect();
        let mut num = vec![0f64; entries * d];
        let mut den = vec![0f64; entries * d];
        for (v, &(k, _)) in assign.iter().enumerate() {
            for j in 0..d {
                let a = f64::from(pts.a[v * d + j]);
                num[k * d + j] += a * f64::from(pts.x[v * d + j]);
                den[k * d + j] += a;
            }
        }
        let mut empty = Vec::new();
        for k in 0..entries {
            let used = (0..d).any(|j| den[k * d + j] > 0.0);
            if !used {
                empty.push(k);
                continue;
            }
            for j in 0..d {
                if den[k * d + j] > 0.0 {
                    book[k * d + j] = (num[k * d + j] / den[k * d + j]) as f32;
                }
            }
        }
        if !empty.is_empty() {
            // Re-seed each empty codeword with the worst-served points (largest weighted error).
            let mut worst: Vec<(f64, usize)> = assign
                .iter()
                .enumerate()
                .map(|(v, &(_, dist))| {
                    let s2 = pts.a[v * d..(v + 1) * d].iter().zip(&pts.h[v * d..(v + 1) * d]).find(|(_, h)| **h > 0.0).map_or(0.0, |(a, h)| a / h);
                    (f64::from(dist) * f64::from(s2), v)
                })
                .collect();
            worst.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            for (k, &(_, v)) in empty.iter().zip(&worst) {
                book[k * d..(k + 1) * d].copy_from_slice(&pts.x[v * d..(v + 1) * d]);
            }
        }
    }
    book.iter().map(|&v| f16::from_f32(v)).collect()
}
