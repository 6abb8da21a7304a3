//! Moving a model between backends and devices without touching its values: the frozen backbone
//! of router training lives on the autodiff backend for the training step and on its inner
//! backend for validation, sharing the same device buffers.

use std::sync::Arc;

use burn::tensor::{
    backend::{AutodiffBackend, Backend},
    Tensor,
};

use super::{DecoderLayer, Linear, Mlp, Model, RmsNorm, SelfAttention};

/// Maps every tensor of a model from backend `B1` to backend `B2`.
pub trait TensorMap<B1: Backend, B2: Backend> {
    /// The tensor on the target backend.
    fn map<const D: usize>(&self, tensor: Tensor<B1, D>) -> Tensor<B2, D>;
    /// The target device.
    fn device(&self, device: &B1::Device) -> B2::Device;
}

/// Autodiff backend -> its inner backend (`Tensor::inner`, no copy).
#[derive(Debug, Clone, Copy)]
pub struct ToInner;

impl<B: AutodiffBackend> TensorMap<B, B::InnerBackend> for ToInner {
    fn map<const D: usize>(&self, tensor: Tensor<B, D>) -> Tensor<B::InnerBackend, D> {
        tensor.inner()
    }
    fn device(&self, device: &B::Device) -> B::Device {
        device.clone()
    }
}

/// Inner backend -> autodiff backend (`Tensor::from_inner`, untracked, no copy).
#[derive(Debug, Clone, Copy)]
pub struct FromInner;

impl<B: AutodiffBackend> TensorMap<B::InnerBackend, B> for FromInner {
    fn map<const D: usize>(&self, tensor: Tensor<B::InnerBackend, D>) -> Tensor<B, D> {
        Tensor::from_inner(tensor)
    }
    fn device(&self, device: &B::Device) -> B::Device {
        device.clone()
    }
}

/// Same backend, another device (a copy of every weight).
#[derive(Debug, Clone)]
pub struct ToDevice<B: Backend>(pub B::Device);

impl<B: Backend> TensorMap<B, B> for ToDevice<B> {
    fn map<const D: usize>(&self, tensor: Tensor<B, D>) -> Tensor<B, D> {
        tensor.to_device(&self.0)
    }
    fn device(&self, _device: &B::Device) -> B::Device {
        self.0.clone()
    }
}

impl<B1: Backend> Linear<B1> {
    fn map_backend<B2: Backend, M: TensorMap<B1, B2>>(&self, m: &M) -> Linear<B2> {
        Linear::new(
            m.map(self.weight_t.clone()),
            self.bias.clone().map(|b| m.map(b)),
        )
    }
}

impl<B1: Backend> RmsNorm<B1> {
    fn map_backend<B2: Backend, M: TensorMap<B1, B2>>(&self, m: &M) -> RmsNorm<B2> {
        RmsNorm::new(m.map(self.weight.clone()), self.eps)
    }
}

impl<B1: Backend> DecoderLayer<B1> {
    fn map_backend<B2: Backend, M: TensorMap<B1, B2>>(&self, m: &M) -> DecoderLayer<B2> {
        let a = &self.self_attn;
        DecoderLayer {
            input_layernorm: self.input_layernorm.map_backend(m),
            self_attn: SelfAttention {
                qkv_proj: a.qkv_proj.map_backend(m),
                o_proj: a.o_proj.map_backend(m),
                qk_norm: a
                    .qk_norm
                    .as_ref()
                    .map(|(q, k)| (q.map_backend(m), k.map_backend(m))),
                num_heads: a.num_heads,
                num_kv_heads: a.num_kv_heads,
                head_dim: a.head_dim,
            },
            post_attention_layernorm: self.post_attention_layernorm.map_backend(m),
            mlp: Mlp {
                gate_up_proj: self.mlp.gate_up_proj.map_backend(m),
                down_proj: self.mlp.down_proj.map_backend(m),
            },
        }
    }
}

impl<B1: Backend> Model<B1> {
    /// The same model on another backend or device, as `m` maps each tensor. The attention timer
    /// starts fresh.
    pub fn map_backend<B2: Backend, M: TensorMap<B1, B2>>(&self, m: &M) -> Model<B2> {
        Model {
            config: self.config.clone(),
            embed_tokens: m.map(self.embed_tokens.clone()),
            layers: self.layers.iter().map(|l| l.map_backend(m)).collect(),
            norm: self.norm.map_backend(m),
            lm_head: self.lm_head.as_ref().map(|h| h.map_backend(m)),
            rope: self.rope.clone(),
            dtype: self.dtype,
            device: m.device(&self.device),
            timer: Arc::default(),
        }
    }
}
