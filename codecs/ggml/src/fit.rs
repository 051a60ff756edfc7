//! Fitting a block's header under per-weight importance: the scales (and mins) that minimize
//! `Σ h_j (w_j − ŵ_j)²`, each weight at its nearest level.
//!
//! `h` is the diagonal of the layer's Hessian (`E[x_j²]`, what llama.cpp's importance matrix
//! holds), or all ones without calibration. The searches follow llama.cpp's (`make_qx_quants`,
//! `make_qkx3_quants`, `make_qp_quants` in `ggml-quants.c`), rewritten around [`Grid`] so that
//! every candidate is judged on the values the file decodes to:
//!
//! - a symmetric scale ([`fit_sym`]): candidate inverse scales map the weight of largest
//!   magnitude onto the end levels and a little inside them; for each, the codes are rounded and
//!   the scale refitted by weighted least squares; the best by weighted error wins;
//! - an asymmetric `(scale, min)` ([`fit_affine`]): quant-core's importance-weighted range search
//!   (the k-quants search of `make_qkx3_quants`);
//! - the k-quants' integer sub-block scales and mins: from the float ones against the block's f16
//!   `d` (and `dmin`), then each sub-block tries its neighbouring integers and keeps the best
//!   ([`refine_subs`]), which llama.cpp does not;
//! - the f16 `d` itself: a few neighbours of the first choice, the best kept ([`fit_block`]).

use half::f16;
use tenpak_quant::fit::Refine;
use tenpak_quant::fit::weighted::fit_group_weighted;
use tenpak_quant::{FitOptions, SearchGrid};

use crate::types::{GgmlType, Grid, Header, KVALUES_IQ4NL, table_index};

/// Weighted squared error of `x` coded to its nearest levels on `grid`.
#[inline]
pub fn grid_error(x: &[f32], h: &[f32], grid: &Grid) -> f64 {
    x.iter()
        .zip(h)
        .map(|(&w, &hw)| {
            let e = f64::from(w - grid.value(grid.nearest(w)));
            f64::from(hw) * e * e
        })
        .sum()
}

/// Weighted squared error of a whole block under `header`.
pub fn block_error(ty: GgmlType, x: &[f32], h: &[f32], header: &Header) -> f64 {
    let n = ty.sub_len();
    (0..ty.subs())
        .map(|j| {
            let r = j * n..(j + 1) * n;
            grid_error(&x[r.clone()], &h[r], &ty.grid(header, j))
        })
        .sum()
}

/// The best scale `d` for `x ≈ d·l`, `l` integers in `lo..=hi` (`lo < 0 < hi`), under weights
/// `h`: candidate inverse scales `(lo − 0.1·k)/x_max` for `k` in `−steps..=steps` (`x_max` the
/// weight of largest magnitude, mapped to the more negative end as llama.cpp does) and the same
/// toward `hi`; each rounded and clamped, its scale refitted by least squares and judged by the
/// weighted error of that assignment (as `make_qx_quants` does). 0 for a block of zeros.
pub fn fit_sym(x: &[f32], h: &[f32], lo: i32, hi: i32, steps: i32) -> f32 {
    let (lo, hi) = (lo as f32, hi as f32);
    best_scale(x, h, [lo, hi], 0.1, steps, |t| t.round().clamp(lo, hi))
}

/// The best scale `d` for `x ≈ d·kvalues[q]` on IQ4's table ([`KVALUES_IQ4NL`]) under weights
/// `h`: candidate inverse scales map the weight of largest magnitude onto either end of the table
/// (−127 and 113) and `steps` table units inside or beyond it (llama.cpp's
/// `quantize_row_iq4_nl_impl` tries the −127 end only); each assignment's scale is refitted by
/// least squares and the one with the least weighted error wins. 0 for a block of zeros.
pub fn fit_table(x: &[f32], h: &[f32], steps: i32) -> f32 {
    let table = KVALUES_IQ4NL.map(f32::from);
    // The level nearest the rounded ratio: a candidate's assignment only (the codes themselves
    // come from the grid), so a level off by one next to a midpoint costs nothing here.
    best_scale(x, h, [table[0], table[15]], 1.0, steps, |t| {
        table[usize::from(table_index(t))]
    })
}

/// The scale search of [`fit_sym`] and [`fit_table`]: for each end level of `ends` and `k` in
/// `−steps..=steps`, the inverse scale `(end ± step·k) / x_max` (`x_max` the weight of largest
/// magnitude), each weight at `level(iscale·x)`, and that assignment's least-squares scale; the
/// one with the least weighted error wins. 0 for a block of zeros.
fn best_scale(
    x: &[f32],
    h: &[f32],
    ends: [f32; 2],
    step: f32,
    steps: i32,
    level: impl Fn(f32) -> f32,
) -> f32 {
    let mut amax = 0f32;
    let mut xmax = 0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            xmax = v;
        }
    }
    if amax == 0.0 {
        return 0.0;
    }
    // For an assignment `l`, the least-squares scale is `Σhxl / Σhl²` and its weighted error
    // `Σhx² − (Σhxl)² / Σhl²`: the candidate with the largest `(Σhxl)² / Σhl²` wins, one pass each.
    let mut best = (f64::NEG_INFINITY, 0f32);
    for end in ends {
        for k in -steps..=steps {
            let iscale = (end + step * k as f32 * end.signum()) / xmax;
            let (mut sxl, mut sll) = (0f64, 0f64);
            for (&v, &hw) in x.iter().zip(h) {
                let l = f64::from(level(iscale * v));
                let hl = f64::from(hw) * l;
                sxl += hl * f64::from(v);
                sll += hl * l;
            }
            if sll <= 0.0 {
                continue;
            }
            let score = sxl * sxl / sll;
            if score > best.0 {
                best = (score, (sxl / sll) as f32);
            }
        }
    }
    best.1
}

/// The best `(scale, min)` for `x ≈ scale·q + min`, `q` in `0..=nmax`, under weights `h`
/// (quant-core's weighted k-quants search), as f32. `min ≤ 0` when `nonpositive_min` (the
/// k-quants store `−min` unsigned).
pub fn fit_affine(x: &[f32], h: &[f32], nmax: u8, nonpositive_min: bool) -> (f32, f32) {
    let options = FitOptions {
        refine: Refine::Search {
            grid: SearchGrid::K_QUANTS,
            polish: 2,
        },
        allow_zero: false,
    };
    let header = fit_group_weighted(x, h, nmax, &options);
    let (scale, min) = header.map_or((0.0, 0.0), |g| (g.scale.to_f32(), g.min.to_f32()));
    if nonpositive_min && min > 0.0 {
        // Every weight that counts is positive: the grid must start at 0 instead.
        let top = x.iter().fold(0f32, |a, &v| a.max(v));
        (top / f32::from(nmax), 0.0)
    } else {
        (scale, min)
    }
}

/// An f16 for `x` (saturating at f16's largest finite value).
fn to_f16(x: f32) -> f16 {
    f16::from_f32(x.clamp(-65504.0, 65504.0))
}

/// The header of one block of `ty` for the values `x` (a whole block) under weights `h`.
pub fn fit_block(ty: GgmlType, x: &[f32], h: &[f32]) -> Header {
    debug_assert_eq!(x.len(), ty.block_weights());
    let mut header = Header::default();
    match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => {
            let half = i32::from(ty.levels()) / 2;
            let steps = if ty == GgmlType::Q8_0 { 4 } else { 9 };
            header.d = to_f16(fit_sym(x, h, -half, half - 1, steps));
            polish_d(ty, x, h, &mut header);
        }
        GgmlType::Iq4Nl => {
            header.d = to_f16(fit_table(x, h, 7));
            polish_d(ty, x, h, &mut header);
        }
        GgmlType::Q4_1 | GgmlType::Q5_1 => {
            let (scale, min) = fit_affine(x, h, (ty.levels() - 1) as u8, false);
            header.d = to_f16(scale);
            header.dmin = to_f16(min);
        }
        GgmlType::Q2K | GgmlType::Q4K | GgmlType::Q5K => {
            let n = ty.sub_len();
            let nmax = (ty.levels() - 1) as u8;
            let mut scales = [0f32; 16];
            let mut mins = [0f32; 16];
            for j in 0..ty.subs() {
                let r = j * n..(j + 1) * n;
                let (s, m) = fit_affine(&x[r.clone()], &h[r], nmax, true);
                scales[j] = s;
                mins[j] = -m;
            }
            let top = f32::from(ty.max_sub_code());
            let smax = scales.iter().fold(0f32, |a, &v| a.max(v));
            let mmax = mins.iter().fold(0f32, |a, &v| a.max(v));
            header.d = to_f16(smax / top);
            header.dmin = to_f16(mmax / top);
            let (d, dmin) = (header.d.to_f32(), header.dmin.to_f32());
            for j in 0..ty.subs() {
                header.sc[j] = code_of(scales[j], d, 0, ty.max_sub_code() as i32) as u8;
                header.mn[j] = code_of(mins[j], dmin, 0, ty.max_sub_code() as i32) as u8;
            }
            refine_subs(ty, x, h, &mut header);
        }
        GgmlType::Q3K | GgmlType::Q6K | GgmlType::Iq4Xs => {
            let n = ty.sub_len();
            let half = i32::from(ty.levels()) / 2;
            let mut scales = [0f32; 16];
            for (j, s) in scales.iter_mut().enumerate().take(ty.subs()) {
                let r = j * n..(j + 1) * n;
                *s = if ty == GgmlType::Iq4Xs {
                    fit_table(&x[r.clone()], &h[r], 7)
                } else {
                    fit_sym(&x[r.clone()], &h[r], -half, half - 1, 9)
                };
            }
            // The sub-scale of largest magnitude goes to the more negative end of the integer
            // range (−32 for Q3_K's and IQ4_XS's 6-bit `sc − 32`, −128 for Q6_K's signed bytes).
            let offset32 = ty != GgmlType::Q6K;
            let (lo, hi) = if offset32 { (-32, 31) } else { (-128, 127) };
            let smax = scales
                .iter()
                .fold(0f32, |a, &v| if v.abs() > a.abs() { v } else { a });
            header.d = to_f16(smax / lo as f32);
            let d = header.d.to_f32();
            for j in 0..ty.subs() {
                let c = code_of(scales[j], d, lo, hi);
                header.sc[j] = if offset32 {
                    (c + 32) as u8
                } else {
                    c as i8 as u8
                };
            }
            refine_subs(ty, x, h, &mut header);
        }
    }
    header
}

/// `round(v / d)` clamped to `lo..=hi` (`lo` … 0 … when `d` is 0).
fn code_of(v: f32, d: f32, lo: i32, hi: i32) -> i32 {
    if d == 0.0 || !d.is_finite() {
        return 0i32.clamp(lo, hi);
    }
    let t = (v / d).round();
    if t.is_finite() {
        (t.clamp(-1e6, 1e6) as i32).clamp(lo, hi)
    } else {
        0i32.clamp(lo, hi)
    }
}

/// Try the f16 values next to a legacy type's `d` (and its negation's neighbours for a sign
/// flip, which a symmetric grid with one more negative level can prefer) and keep the best.
fn polish_d(ty: GgmlType, x: &[f32], h: &[f32], header: &mut Header) {
    let mut best = (block_error(ty, x, h, header), header.d);
    let bits = header.d.to_bits();
    for delta in [-2i32, -1, 1, 2] {
        let cand = f16::from_bits((i32::from(bits) + delta) as u16);
        if !cand.is_finite() {
            continue;
        }
        let trial = Header { d: cand, ..*header };
        let err = block_error(ty, x, h, &trial);
        if err < best.0 {
            best = (err, cand);
        }
    }
    header.d = best.1;
}

/// For each sub-block, try the integer scale (and min) codes next to the current ones and keep
/// the pair with the least weighted error.
fn refine_subs(ty: GgmlType, x: &[f32], h: &[f32], header: &mut Header) {
    let n = ty.sub_len();
    let signed_q6 = ty == GgmlType::Q6K;
    let top = i32::from(ty.max_sub_code());
    let (lo, hi) = if signed_q6 { (-128, 127) } else { (0, top) };
    let as_int = |c: u8| {
        if signed_q6 {
            i32::from(c as i8)
        } else {
            i32::from(c)
        }
    };
    let from_int = |v: i32| if signed_q6 { v as i8 as u8 } else { v as u8 };
    for j in 0..ty.subs() {
        let r = j * n..(j + 1) * n;
        let (xs, hs) = (&x[r.clone()], &h[r]);
        let (sc0, mn0) = (as_int(header.sc[j]), i32::from(header.mn[j]));
        let mut best = (
            grid_error(xs, hs, &ty.grid(header, j)),
            header.sc[j],
            header.mn[j],
        );
        let min_moves: &[i32] = if ty.has_mins() { &[-1, 0, 1] } else { &[0] };
        for ds in [-1, 0, 1] {
            for &dm in min_moves {
                let (s, m) = (sc0 + ds, mn0 + dm);
                if (ds, dm) == (0, 0) || !(lo..=hi).contains(&s) || !(0..=top).contains(&m) {
                    continue;
                }
                let mut trial = *header;
                trial.sc[j] = from_int(s);
                trial.mn[j] = m as u8;
                let err = grid_error(xs, hs, &ty.grid(&trial, j));
                if err < best.0 {
                    best = (err, trial.sc[j], trial.mn[j]);
                }
            }
        }
        header.sc[j] = best.1;
        header.mn[j] = best.2;
    }
}

/// The codes of `x` (a whole block) at their nearest levels under `header`.
pub fn nearest_codes(ty: GgmlType, header: &Header, x: &[f32], codes: &mut [u8]) {
    let n = ty.sub_len();
    for j in 0..ty.subs() {
        let grid = ty.grid(header, j);
        for (c, &v) in codes[j * n..(j + 1) * n]
            .iter_mut()
            .zip(&x[j * n..(j + 1) * n])
        {
            *c = grid.nearest(v);
        }
    }
}
