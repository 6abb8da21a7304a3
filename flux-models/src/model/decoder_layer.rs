//! One pre-norm decoder layer: self-attention then a SwiGLU MLP, each with a residual.

use burn::tensor::{activation::silu, backend::Backend, Tensor};
use flux_attention::{attend, AttentionMode, LayerKvCache};

use super::linear::Linear;
use super::rms_norm::RmsNorm;
use super::rope::RopeTables;
use crate::error::Result;

/// Self-attention of one layer (GQA, optional q/k norm of Qwen3).
#[derive(Debug, Clone)]
pub struct SelfAttention<B: Backend> {
    pub(crate) q_proj: Linear<B>,
    pub(crate) k_proj: Linear<B>,
    pub(crate) v_proj: Linear<B>,
    pub(crate) o_proj: Linear<B>,
    /// Per-head RMS norms on q and k before RoPE (Qwen3).
    pub(crate) qk_norm: Option<(RmsNorm<B>, RmsNorm<B>)>,
    pub(crate) num_heads: usize,
    pub(crate) num_kv_heads: usize,
    pub(crate) head_dim: usize,
}

/// SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`.
#[derive(Debug, Clone)]
pub struct Mlp<B: Backend> {
    pub(crate) gate_proj: Linear<B>,
    pub(crate) up_proj: Linear<B>,
    pub(crate) down_proj: Linear<B>,
}

/// A decoder layer.
#[derive(Debug, Clone)]
pub struct DecoderLayer<B: Backend> {
    pub(crate) input_layernorm: RmsNorm<B>,
    pub(crate) self_attn: SelfAttention<B>,
    pub(crate) post_attention_layernorm: RmsNorm<B>,
    pub(crate) mlp: Mlp<B>,
}

impl<B: Backend> SelfAttention<B> {
    /// Splits `[b, n, heads * d]` into `[b, heads, n, d]`.
    fn heads(x: Tensor<B, 3>, heads: usize, head_dim: usize) -> Tensor<B, 4> {
        let [b, n, _] = x.dims();
        x.reshape([b, n, heads, head_dim]).swap_dims(1, 2)
    }

    /// Attention of `x` `[b, n, hidden]` at the positions of `rope`, through the KV cache.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &RopeTables<B>,
        cache: &mut LayerKvCache<B>,
        mode: &AttentionMode,
    ) -> Result<Tensor<B, 3>> {
        let [b, n, _] = x.dims();
        let mut q = Self::heads(
            self.q_proj.forward(x.clone()),
            self.num_heads,
            self.head_dim,
        );
        let mut k = Self::heads(
            self.k_proj.forward(x.clone()),
            self.num_kv_heads,
            self.head_dim,
        );
        let v = Self::heads(self.v_proj.forward(x), self.num_kv_heads, self.head_dim);
        if let Some((q_norm, k_norm)) = &self.qk_norm {
            q = q_norm.forward(q);
            k = k_norm.forward(k);
        }
        let q = rope.apply(q);
        let k = rope.apply(k);
        let out = attend(q, k, v, cache, mode)?; // [b, hq, n, d]
        let out = out
            .swap_dims(1, 2)
            .reshape([b, n, self.num_heads * self.head_dim]);
        Ok(self.o_proj.forward(out))
    }
}

impl<B: Backend> Mlp<B> {
    /// Applies the MLP to `[b, n, hidden]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let gate = silu(self.gate_proj.forward(x.clone()));
        self.down_proj.forward(gate * self.up_proj.forward(x))
    }
}

impl<B: Backend> DecoderLayer<B> {
    /// `h = x + attn(norm(x)); h + mlp(norm(h))`.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &RopeTables<B>,
        cache: &mut LayerKvCache<B>,
        mode: &AttentionMode,
    ) -> Result<Tensor<B, 3>> {
        let attn =
            self.self_attn
                .forward(self.input_layernorm.forward(x.clone()), rope, cache, mode)?;
        let h = x + attn;
        let mlp = self
            .mlp
            .forward(self.post_attention_layernorm.forward(h.clone()));
        Ok(h + mlp)
    }
}
