//! Root-mean-square layer norm, as in HF Llama/Qwen (`x / sqrt(mean(x^2) + eps) * weight`).

use burn::tensor::{backend::Backend, FloatDType, Tensor};

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

    /// Normalises the last axis of `x`: in f32 for bf16 / f16 inputs, rounded back to their
    /// dtype before the scale (as transformers does).
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dtype = x.dtype();
        let x = x.cast(flux_attention::accumulation_dtype(dtype));
        let mean_square = x.clone().powi_scalar(2).mean_dim(D - 1);
        let normed = x * (mean_square + self.eps).sqrt().recip();
        normed.cast(FloatDType::from(dtype)) * self.weight.clone().unsqueeze::<D>()
    }
}
