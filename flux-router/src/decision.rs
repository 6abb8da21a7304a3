//! Turning router logits into per-sequence full/sparse decisions.

use burn::tensor::{activation::softmax, backend::Backend, Tensor, TensorData};
use rand::Rng;

use crate::router::{FULL_LOGIT, SPARSE_LOGIT};

/// Training-time decisions of one layer for a batch.
#[derive(Debug, Clone)]
pub struct SoftDecision<B: Backend> {
    /// Weight of full attention per sequence, `[b]`: with straight-through, exactly 0 or 1 in
    /// the forward pass with the gradient of the Gumbel-softmax probability; else that
    /// probability.
    pub z_full: Tensor<B, 1>,
    /// The hard choice per sequence: `true` for full attention.
    pub full: Vec<bool>,
}

/// Gumbel-softmax sampling of the layer choice at temperature `tau`.
///
/// `y = softmax((logits + g) / tau)` with Gumbel noise `g = -ln(-ln(u))`. With
/// `straight_through` (training), `z = onehot(argmax y) + y - stop_grad(y)`: exactly 0 or 1
/// forward, the gradient of `y` backward. Without it, `z = y` (the soft mixture, smooth in the
/// router's parameters).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GumbelSoftmax {
    /// Temperature (> 0).
    pub tau: f64,
    /// Hard choices forward, soft gradients backward.
    pub straight_through: bool,
}

impl GumbelSoftmax {
    /// Straight-through sampling at temperature `tau`.
    pub fn straight_through(tau: f64) -> Self {
        Self {
            tau,
            straight_through: true,
        }
    }

    /// Samples decisions for the logits `[b, 2]` (full, sparse), with noise drawn from `rng`.
    pub fn sample<B: Backend>(&self, logits: Tensor<B, 2>, rng: &mut impl Rng) -> SoftDecision<B> {
        self.sample_with_choice(logits, rng, None)
    }

    /// As [`GumbelSoftmax::sample`], but with the hard choice given (`forced[i]`: full attention
    /// for sequence `i`) instead of taken from the noisy probabilities; the noise is drawn all
    /// the same, so the soft weights (and their gradient) are those of the same draw. A
    /// recomputation of a layer uses it to repeat the choice of the first pass exactly.
    pub fn sample_with_choice<B: Backend>(
        &self,
        logits: Tensor<B, 2>,
        rng: &mut impl Rng,
        forced: Option<&[bool]>,
    ) -> SoftDecision<B> {
        let [b, k] = logits.dims();
        let device = logits.device();
        let noise: Vec<f32> = (0..b * k)
            .map(|_| {
                let u: f64 = rng.random_range(1e-10..1.0 - 1e-10);
                -(-u.ln()).ln() as f32
            })
            .collect();
        let noise = Tensor::<B, 2>::from_data(
            TensorData::new(noise, [b, k]).convert::<B::FloatElem>(),
            &device,
        );
        let y = softmax((logits + noise).div_scalar(self.tau), 1);
        // Forced choices need no read-back of the probabilities.
        let full: Vec<bool> = match forced {
            Some(forced) if forced.len() == b => forced.to_vec(),
            _ => {
                let probs: Vec<f32> = y
                    .clone()
                    .into_data()
                    .convert::<f32>()
                    .into_vec()
                    .expect("f32 after convert");
                probs
                    .chunks(k)
                    .map(|row| row[FULL_LOGIT] >= row[SPARSE_LOGIT])
                    .collect()
            }
        };
        let z = if self.straight_through {
            let hard: Vec<f32> = full
                .iter()
                .flat_map(|&f| if f { [1.0, 0.0] } else { [0.0, 1.0] })
                .collect();
            let hard = Tensor::<B, 2>::from_data(
                TensorData::new(hard, [b, k]).convert::<B::FloatElem>(),
                &device,
            );
            hard + y.clone() - y.detach()
        } else {
            y
        };
        SoftDecision {
            z_full: z.narrow(1, FULL_LOGIT, 1).reshape([b]),
            full,
        }
    }
}

/// Inference decisions: argmax of the logits `[b, 2]`, no noise; `true` for full attention
/// (ties go to full attention).
pub fn argmax_decisions<B: Backend>(logits: Tensor<B, 2>) -> Vec<bool> {
    let values: Vec<f32> = logits
        .into_data()
        .convert::<f32>()
        .into_vec()
        .expect("f32 after convert");
    values
        .chunks(2)
        .map(|row| row[FULL_LOGIT] >= row[SPARSE_LOGIT])
        .collect()
}

/// The same decisions as [`argmax_decisions`], left on the device: `[b]`, 1 for full attention
/// and 0 for sparse, so a forward pass can act on them without waiting for the host.
pub fn full_flags<B: Backend>(logits: Tensor<B, 2>) -> Tensor<B, 1> {
    let [b, _] = logits.dims();
    let full = logits.clone().narrow(1, FULL_LOGIT, 1);
    let sparse = logits.narrow(1, SPARSE_LOGIT, 1);
    full.greater_equal(sparse).float().reshape([b])
}
