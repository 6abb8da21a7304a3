//! Rotary position embedding in HF's split-halves layout, with `linear` and `llama3` scaling.

use burn::tensor::{backend::Backend, FloatDType, Tensor, TensorData};
use flux_attention::ActivationBackend;

use crate::error::{ModelError, Result};

use crate::config::RopeScaling;

/// Inverse frequencies of one head, computed once from the config.
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f64>,
}

/// Cosines and sines for a run of positions, `[1, 1, n, head_dim / 2]` each.
#[derive(Debug, Clone)]
pub struct RopeTables<B: Backend> {
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
}

impl Rope {
    /// Frequencies `theta^(-2i/d)` (computed in f32 like transformers, so positions rotate by
    /// the same angles), rescaled as the config says.
    pub fn new(head_dim: usize, theta: f64, scaling: &RopeScaling) -> Self {
        let inv_freq = (0..head_dim / 2).map(|i| {
            let exponent = (2 * i) as f32 / head_dim as f32;
            1.0f32 / (theta as f32).powf(exponent)
        });
        let inv_freq = inv_freq
            .map(|f| match scaling {
                RopeScaling::None => f as f64,
                RopeScaling::Linear { factor } => (f as f64) / factor,
                RopeScaling::Llama3 {
                    factor,
                    low_freq_factor,
                    high_freq_factor,
                    original_max_position_embeddings: old_len,
                } => llama3_scale(
                    f as f64,
                    *factor,
                    *low_freq_factor,
                    *high_freq_factor,
                    *old_len,
                ),
            })
            .collect();
        Self { inv_freq }
    }

    /// Tables for positions `start .. start + n`, in `dtype` (the angles in f64, their cosines
    /// and sines rounded once, as transformers casts its f32 tables to the model's dtype).
    pub fn tables<B: Backend>(
        &self,
        start: usize,
        n: usize,
        device: &B::Device,
        dtype: FloatDType,
    ) -> RopeTables<B> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for p in start..start + n {
            for f in &self.inv_freq {
                let angle = p as f64 * f;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        let to_tensor = |v: Vec<f32>| {
            Tensor::<B, 4>::from_data(TensorData::new(v, [1, 1, n, half]), (device, dtype.into()))
        };
        RopeTables {
            cos: to_tensor(cos),
            sin: to_tensor(sin),
        }
    }
}

/// Llama 3.1's scaling: long wavelengths divided by `factor`, short ones kept, a smooth blend
/// between (transformers `_compute_llama3_parameters`).
fn llama3_scale(
    inv_freq: f64,
    factor: f64,
    low_freq_factor: f64,
    high_freq_factor: f64,
    old_len: f64,
) -> f64 {
    let low_freq_wavelen = old_len / low_freq_factor;
    let high_freq_wavelen = old_len / high_freq_factor;
    let wavelen = 2.0 * std::f64::consts::PI / inv_freq;
    if wavelen > low_freq_wavelen {
        inv_freq / factor
    } else if wavelen < high_freq_wavelen {
        inv_freq
    } else {
        let smooth = (old_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
        (1.0 - smooth) * inv_freq / factor + smooth * inv_freq
    }
}

impl<B: ActivationBackend> RopeTables<B> {
    /// Rotates `x [b, h, n, d]` (one kernel on cubecl backends: [`flux_attention::rope`]). The
    /// tables must have been built for `n` positions of `x`'s head_dim and dtype.
    pub fn apply(&self, x: Tensor<B, 4>) -> Result<Tensor<B, 4>> {
        flux_attention::rope(x, self.cos.clone(), self.sin.clone()).map_err(|e| {
            ModelError::InvalidArgument {
                argument: "rope tables".into(),
                message: e.to_string(),
            }
        })
    }
}
