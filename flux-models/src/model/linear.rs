//! A frozen linear projection.

use burn::tensor::{backend::Backend, Tensor};
use flux_attention::{linear, LinearBackend, WeightLayout};

/// `y = x W^T + b` with `W` stored transposed and row-major (`[in, out]`), so the forward is one
/// plain matmul with no copy of the weight (cuBLASLt on CUDA in bf16 / f16: `flux_attention::linear`).
#[derive(Debug, Clone)]
pub struct Linear<B: Backend> {
    pub(crate) weight_t: Tensor<B, 2>,
    pub(crate) bias: Option<Tensor<B, 1>>,
}

impl<B: Backend> Linear<B> {
    /// From the transposed weight `[in, out]` (row-major) and an optional bias `[out]`.
    pub fn new(weight_t: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) -> Self {
        Self { weight_t, bias }
    }

    /// One projection computing all of `parts` (same input, outputs side by side), so that a
    /// layer's q/k/v or gate/up run as one GEMM: fewer launches, a wider product.
    pub fn concat(parts: Vec<Linear<B>>) -> Self {
        // A part without bias beside one with: zeros keep the sum right.
        let bias = parts.iter().any(|p| p.bias.is_some()).then(|| {
            let part_bias = |p: &Linear<B>| {
                p.bias.clone().unwrap_or_else(|| {
                    Tensor::zeros(
                        [p.out_features()],
                        (&p.weight_t.device(), p.weight_t.dtype()),
                    )
                })
            };
            Tensor::cat(parts.iter().map(part_bias).collect(), 0)
        });
        let weight_t = Tensor::cat(parts.into_iter().map(|p| p.weight_t).collect(), 1);
        Self { weight_t, bias }
    }

    /// Output width.
    pub fn out_features(&self) -> usize {
        self.weight_t.dims()[1]
    }

    /// Whether the weight or bias is tracked by an autodiff backend (never, when loaded).
    pub fn is_require_grad(&self) -> bool {
        self.weight_t.is_require_grad() || self.bias.as_ref().is_some_and(Tensor::is_require_grad)
    }
}

impl<B: LinearBackend> Linear<B> {
    /// Applies the projection to `[b, n, in]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, n, d] = x.dims();
        let y = linear(
            x.reshape([b * n, d]),
            self.weight_t.clone(),
            self.bias.clone(),
            WeightLayout::InOut,
        );
        y.reshape([b, n, self.out_features()])
    }

    /// [`Linear::forward`] of a [`Linear::concat`] projection, split back into outputs of the
    /// given widths (views of one product, not copies).
    pub fn forward_split(&self, x: Tensor<B, 3>, widths: &[usize]) -> Vec<Tensor<B, 3>> {
        let y = self.forward(x);
        let [b, n, _] = y.dims();
        let mut start = 0;
        widths
            .iter()
            .map(|&w| {
                let part = y.clone().slice([0..b, 0..n, start..start + w]);
                start += w;
                part
            })
            .collect()
    }
}
