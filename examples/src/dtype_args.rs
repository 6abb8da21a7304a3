//! `--dtype`, shared by every program that loads a model.

use clap::Args;
use flux_models::backend::{BackendChoice, DTypeChoice};
use flux_models::ModelError;

/// The dtype option of the programs.
#[derive(Args, Clone, Debug)]
pub struct DTypeArgs {
    /// Dtype of the weights, activations and KV cache: auto (bf16 on cuda, f16 on wgpu where
    /// the adapter has it, else f32), bf16, f16 or f32. Routers and logits stay f32.
    #[arg(long, default_value_t = DTypeChoice::Auto)]
    pub dtype: DTypeChoice,
}

impl DTypeArgs {
    /// The dtype to load the model in on `device` of `backend` (see [`DTypeChoice::resolve`]).
    pub fn resolve<B: burn::tensor::backend::Backend>(
        &self,
        backend: BackendChoice,
        device: &B::Device,
    ) -> Result<burn::tensor::FloatDType, ModelError> {
        self.dtype.resolve::<B>(backend, device)
    }
}
