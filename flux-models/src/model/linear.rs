//! A frozen linear projection.

use burn::tensor::{backend::Backend, Tensor};

/// `y = x W^T + b` with `W` stored transposed and row-major (`[in, out]`), so the forward is one
/// plain matmul with no copy of the weight.
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

    /// Output width.
    pub fn out_features(&self) -> usize {
        self.weight_t.dims()[1]
    }

    /// Whether the weight or bias is tracked by an autodiff backend (never, when loaded).
    pub fn is_require_grad(&self) -> bool {
        self.weight_t.is_require_grad() || self.bias.as_ref().is_some_and(Tensor::is_require_grad)
    }

    /// Applies the projection to `[b, n, in]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, n, d] = x.dims();
        let y = x.reshape([b * n, d]).matmul(self.weight_t.clone());
        let y = match &self.bias {
            Some(bias) => y + bias.clone().unsqueeze::<2>(),
            None => y,
        };
        y.reshape([b, n, self.out_features()])
    }
}
