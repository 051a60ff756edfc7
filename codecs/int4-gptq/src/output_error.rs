//! The layer's output error on the calibration activations, `tr(E G Eᵀ)` with `E = W − Ŵ` and
//! `G = XᵀX / n`: the mean over calibration tokens of `‖(W − Ŵ) x‖²`, what GPTQ minimizes.

pub use tenpak_quant::gptq::hessian::from_damped_rows;
pub use tenpak_quant::quadratic::{difference, quadratic_form, quadratic_form_reference, quadratic_form_rows};

