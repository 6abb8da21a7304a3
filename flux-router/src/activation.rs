//! SiLU in the backend's own precision.

use burn::tensor::{backend::Backend, Tensor};

/// `x * sigmoid(x)`, written as `x / (1 + exp(-x))`.
///
/// burn 0.21's ndarray backend evaluates `sigmoid` (and so `silu`) in f32 precision even on f64
/// tensors; rounding noise then swamps finite-difference gradient checks. This form stays in
/// the tensor's precision on every backend (and saturates correctly: `exp(-x)` overflowing to
/// infinity gives 0).
pub fn silu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.clone() / x.neg().exp().add_scalar(1.0)
}
