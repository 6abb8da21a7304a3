//! SiLU in the backend's own precision.

use burn::tensor::{backend::Backend, Tensor};

/// `x * sigmoid(x)`, written as `x / (1 + exp(min(-x, 80)))`.
///
/// burn 0.21's ndarray backend evaluates `sigmoid` (and so `silu`) in f32 precision even on f64
/// tensors; rounding noise then swamps finite-difference gradient checks. This form stays in
/// the tensor's precision on every backend. The exponent is capped so that it never overflows:
/// an infinite `exp(-x)` gives the right value (0) but a NaN gradient (`inf / inf`), which
/// large router activations in training reached. Below -80, `silu(x)` is below `1e-33` in
/// magnitude either way.
pub fn silu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.clone() / x.neg().clamp_max(80.0).exp().add_scalar(1.0)
}
