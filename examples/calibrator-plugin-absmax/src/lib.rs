//! Example third-party TenPak calibrator `act_absmax`: the largest |x| each input channel of a
//! linear layer saw on the calibration text.
//!
//! It provides the `act_scale` statistic (one value per input channel), so a codec that needs
//! activation scales (`int4_awq`) uses it in place of the built-in `act_scale` (mean |x|) when a
//! preset lists it:
//!
//! ```toml
//! [calibration]
//! calibrators = ["act_absmax"]
//! ```
//!
//! The maximum is SmoothQuant's statistic (Xiao et al., 2023, §4: s_j = max|X_j|^α / max|W_j|^(1-α));
//! it follows outlier channels more closely than the mean does. Non-finite inputs are refused
//! with the layer and channel named, since one NaN would otherwise poison a whole channel
//! silently.
//!
//! One source, two ways in, as `examples/codec-plugin-nf4`: the rlib registers it through
//! `inventory` ([`tenpak_api::register_calibrator!`]); the cdylib exports the C entry point
//! ([`tenpak_api::export_plugin!`], behind the default `plugin` feature) and
//! `tenpak --plugin libtenpak_calibrator_absmax.so …` loads it. The type itself is in
//! `absmax.rs`, which the host's plugin tests also compile into the host, to compare the two
//! builds.
#![deny(missing_docs)]

mod absmax;

pub use absmax::ActAbsMax;

tenpak_api::register_calibrator!("act_absmax", ActAbsMax);

#[cfg(feature = "plugin")]
tenpak_api::export_plugin! {
    calibrator("act_absmax", ActAbsMax);
}
