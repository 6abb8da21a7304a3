//! Root-mean-square layer norm, as in HF Llama/Qwen (`x / sqrt(mean(x^2) + eps) * weight`).

use burn::tensor::{backend::Backend, Tensor};
use flux_attention::FluxBackend;

/// RMS norm over the last axis.
#[derive(Debug, Clone)]
pub struct RmsNorm<B: Backend> {
    pub(crate) weight: Tensor<B, 1>,
    pub(crate) eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    /// From the learnt scale `[d]` and epsilon.
    pub fn new(weight: Tensor<B, 1>, eps: f64) -> Self {
        Self { weight, eps }
    }

    /// Whether the scale is tracked by an autodiff backend (never, when loaded).
    pub fn is_require_grad(&self) -> bool {
        self.weight.is_require_grad()
    }
}

impl<B: FluxBackend> RmsNorm<B> {
    /// Normalises the last axis of `x`: in f32 for bf16 / f16 inputs, rounded back to their
    /// dtype before the scale (as transformers does); one kernel on cubecl backends.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        flux_attention::rms_norm(x, self.weight.clone(), self.eps)
    }

    /// The residual add before this norm and the norm: `(x + residual, norm(x + residual))`,
    /// one kernel on cubecl backends.
    pub fn forward_add<const D: usize>(
        &self,
        x: Tensor<B, D>,
        residual: Tensor<B, D>,
    ) -> (Tensor<B, D>, Tensor<B, D>) {
        flux_attention::add_rms_norm(x, residual, self.weight.clone(), self.eps)
    }
}
