//! Reconstruction error, computed the same way wherever TenPak reports it.

/// Σ (a − b)², in f64. Panics if the lengths differ (a caller bug, not a data error).
pub fn sq_error(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "sq_error: lengths differ");
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum()
}

/// ‖w − ŵ‖² / ‖w‖²; 0 when both are zero, +∞ when only `w` is.
pub fn relative_mse(w: &[f32], w_hat: &[f32]) -> f64 {
    let err = sq_error(w, w_hat);
    let norm: f64 = w.iter().map(|&x| f64::from(x).powi(2)).sum();
    if err == 0.0 { 0.0 } else { err / norm }
}

/// Signal-to-noise ratio in dB: `−10 · log10(relative_mse)`.
pub fn snr_db(w: &[f32], w_hat: &[f32]) -> f64 {
    -10.0 * relative_mse(w, w_hat).log10()
}
