//! The sparsity constraint of router training, with per-category multipliers trained by
//! gradient ascent (a min-max, Lagrangian-style objective).

use burn::module::{Module, Param};
use burn::tensor::{
    backend::{AutodiffBackend, Backend},
    Int, Tensor, TensorData,
};
use serde::{Deserialize, Serialize};

use crate::error::{Result, RouterError};

/// Task category of a training sequence; each has its own sparsity target and multipliers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskCategory {
    /// Code completion and editing.
    Code,
    /// In-context learning (many-shot).
    InContextLearning,
    /// Summarisation.
    Summarization,
    /// Question answering over one document.
    SingleDocQa,
    /// Question answering across documents.
    MultiHopQa,
}

impl TaskCategory {
    /// Every category, in multiplier order.
    pub const ALL: [TaskCategory; 5] = [
        Self::Code,
        Self::InContextLearning,
        Self::Summarization,
        Self::SingleDocQa,
        Self::MultiHopQa,
    ];

    /// Index of the category's multipliers.
    pub fn index(self) -> usize {
        Self::ALL.iter().position(|&c| c == self).expect("listed")
    }

    /// The reference script's target sparsity: 1.0 for code, in-context learning and
    /// summarisation, 0.45 for single-document and multi-hop QA.
    pub fn default_target(self) -> f64 {
        match self {
            Self::Code | Self::InContextLearning | Self::Summarization => 1.0,
            Self::SingleDocQa | Self::MultiHopQa => 0.45,
        }
    }
}

/// Per-category multipliers `lambda1`, `lambda2` of the constraint
/// `lambda1 * |s - t| + lambda2 * (s - t)^2`.
#[derive(Module, Debug)]
pub struct SparsityObjective<B: Backend> {
    lambda1: Param<Tensor<B, 1>>,
    lambda2: Param<Tensor<B, 1>>,
}

impl<B: Backend> SparsityObjective<B> {
    /// Multipliers starting at `lambda1`, `lambda2` for every category.
    pub fn new(lambda1: f32, lambda2: f32, device: &B::Device) -> Self {
        let n = TaskCategory::ALL.len();
        Self {
            lambda1: Param::from_tensor(Tensor::full([n], lambda1, device)),
            lambda2: Param::from_tensor(Tensor::full([n], lambda2, device)),
        }
    }

    /// The multipliers `(lambda1, lambda2)` of `category`.
    pub fn multipliers(&self, category: TaskCategory) -> (f32, f32) {
        let read = |p: &Param<Tensor<B, 1>>| {
            p.val()
                .narrow(0, category.index(), 1)
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .expect("f32 after convert")[0]
        };
        (read(&self.lambda1), read(&self.lambda2))
    }

    /// Every category's multipliers in [`TaskCategory::ALL`] order: `(lambda1, lambda2)`.
    pub fn all_multipliers(&self) -> (Vec<f32>, Vec<f32>) {
        let read = |p: &Param<Tensor<B, 1>>| {
            p.val()
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .expect("f32 after convert")
        };
        (read(&self.lambda1), read(&self.lambda2))
    }

    /// Mean over the batch of `lambda1[c] * |s - t| + lambda2[c] * (s - t)^2`, where `s` `[b]`
    /// is each sequence's share of sparse layers, `categories[i]` its category and `targets[i]`
    /// its target.
    pub fn penalty(
        &self,
        sparsity: Tensor<B, 1>,
        categories: &[TaskCategory],
        targets: &[f64],
    ) -> Result<Tensor<B, 1>> {
        let [b] = sparsity.dims();
        if categories.len() != b || targets.len() != b {
            return Err(RouterError::InvalidArgument {
                argument: "categories",
                message: format!(
                    "{} categories and {} targets for a batch of {b}",
                    categories.len(),
                    targets.len()
                ),
            });
        }
        let device = sparsity.device();
        let index: Vec<i64> = categories.iter().map(|c| c.index() as i64).collect();
        let index = Tensor::<B, 1, Int>::from_data(TensorData::new(index, [b]), &device);
        let t: Vec<f32> = targets.iter().map(|&t| t as f32).collect();
        let t =
            Tensor::<B, 1>::from_data(TensorData::new(t, [b]).convert::<B::FloatElem>(), &device);
        let gap = sparsity - t;
        let l1 = self.lambda1.val().select(0, index.clone());
        let l2 = self.lambda2.val().select(0, index);
        Ok((l1 * gap.clone().abs() + l2 * gap.powi_scalar(2)).mean())
    }
}

impl<B: AutodiffBackend> SparsityObjective<B> {
    /// One gradient-ascent step of the multipliers: `lambda += lr * d(loss)/d(lambda)`, so the
    /// penalty grows while a category misses its target. `grads` come from the training loss's
    /// backward pass (routers descend on the same loss).
    pub fn ascent_step(self, grads: &B::Gradients, lr: f64) -> Self {
        let step = |p: Param<Tensor<B, 1>>| {
            let value = p.val();
            match value.grad(grads) {
                Some(g) => {
                    let updated = value.inner().add(g.mul_scalar(lr));
                    Param::initialized(p.id, Tensor::from_inner(updated).require_grad())
                }
                None => p,
            }
        };
        Self {
            lambda1: step(self.lambda1),
            lambda2: step(self.lambda2),
        }
    }
}

/// Each sequence's share of sparse layers, `[b]`, from the per-layer straight-through
/// full-attention weights `z_full[layer]` (`[b]` each): `s = mean_l (1 - z_l)`.
pub fn sparsity_of<B: Backend>(z_full: &[Tensor<B, 1>]) -> Result<Tensor<B, 1>> {
    if z_full.is_empty() {
        return Err(RouterError::InvalidArgument {
            argument: "z_full",
            message: "no layer decisions".into(),
        });
    }
    let layers = z_full.len() as f64;
    let stacked = Tensor::stack::<2>(z_full.to_vec(), 0); // [layers, b]
    Ok(stacked
        .neg()
        .add_scalar(1.0)
        .sum_dim(0)
        .div_scalar(layers)
        .squeeze_dim(0))
}
