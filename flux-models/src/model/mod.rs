//! The decoder-only transformer shared by Llama, Qwen2 and Qwen3, generic over the burn backend.
//!
//! Weights are plain tensors, not trainable parameters: the backbone is frozen by construction,
//! so even on an autodiff backend no gradient ever reaches it.

mod decoder_layer;
mod kv_cache;
mod linear;
mod loading;
mod rms_norm;
mod rope;

pub use decoder_layer::{DecoderLayer, Mlp, SelfAttention};
pub use kv_cache::KvCache;
pub use linear::Linear;
pub use rms_norm::RmsNorm;
pub use rope::{Rope, RopeTables};

use burn::tensor::{backend::Backend, module::embedding, Int, Tensor};
use flux_attention::AttentionMode;

use crate::config::TransformerConfig;
use crate::error::{ModelError, Result};

/// A loaded Llama / Qwen2 / Qwen3 model.
#[derive(Debug, Clone)]
pub struct Model<B: Backend> {
    config: TransformerConfig,
    embed_tokens: Tensor<B, 2>,
    layers: Vec<DecoderLayer<B>>,
    norm: RmsNorm<B>,
    /// `None` when the output projection is tied to the embedding.
    lm_head: Option<Linear<B>>,
    rope: Rope,
    device: B::Device,
}

impl<B: Backend> Model<B> {
    /// The configuration the model was built from.
    pub fn config(&self) -> &TransformerConfig {
        &self.config
    }

    /// The device holding the weights.
    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// An empty KV cache sized for this model.
    pub fn new_cache(&self) -> KvCache<B> {
        KvCache::new(self.layers.len())
    }

    /// Runs `tokens` (`[b, n]`, positions following what `cache` holds) through every layer and
    /// the final norm. Returns the hidden states `[b, n, hidden]`; see [`Model::logits`].
    pub fn forward(
        &self,
        tokens: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
    ) -> Result<Tensor<B, 3>> {
        let [_, n] = tokens.dims();
        if cache.layers.len() != self.layers.len() {
            return Err(ModelError::InvalidArgument {
                argument: "cache".into(),
                message: format!(
                    "has {} layers, the model {}",
                    cache.layers.len(),
                    self.layers.len()
                ),
            });
        }
        if n == 0 {
            return Err(ModelError::InvalidArgument {
                argument: "tokens".into(),
                message: "no token to process".into(),
            });
        }
        let rope = self.rope.tables::<B>(cache.len(), n, &self.device);
        let mut x = embedding(self.embed_tokens.clone(), tokens);
        for (layer, layer_cache) in self.layers.iter().zip(cache.layers.iter_mut()) {
            x = layer.forward(x, &rope, layer_cache, &AttentionMode::Full)?;
        }
        Ok(self.norm.forward(x))
    }

    /// Next-token logits `[b, n, vocab]` of hidden states from [`Model::forward`].
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => {
                let [b, n, d] = hidden.dims();
                let vocab = self.embed_tokens.dims()[0];
                // E h^T rather than h E^T: a transposed view of the [vocab, d] embedding would be
                // copied by ndarray on every call; transposing the activations costs far less.
                self.embed_tokens
                    .clone()
                    .matmul(hidden.reshape([b * n, d]).transpose())
                    .transpose()
                    .reshape([b, n, vocab])
            }
        }
    }

    /// Token ids as a `[b, n]` tensor on the model's device; checks they are in the vocabulary.
    pub fn token_tensor(&self, batch: &[Vec<u32>]) -> Result<Tensor<B, 2, Int>> {
        let n = batch.first().map_or(0, Vec::len);
        let vocab = self.config.vocab_size;
        let mut flat = Vec::with_capacity(batch.len() * n);
        for (i, seq) in batch.iter().enumerate() {
            if seq.len() != n {
                return Err(ModelError::InvalidArgument {
                    argument: "tokens".into(),
                    message: format!("sequence {i} has {} tokens, sequence 0 has {n}", seq.len()),
                });
            }
            if let Some(&bad) = seq.iter().find(|&&t| t as usize >= vocab) {
                return Err(ModelError::InvalidArgument {
                    argument: "tokens".into(),
                    message: format!("token id {bad} is outside the vocabulary of {vocab}"),
                });
            }
            flat.extend(seq.iter().map(|&t| t as i64));
        }
        Ok(Tensor::<B, 2, Int>::from_data(
            burn::tensor::TensorData::new(flat, [batch.len(), n]),
            &self.device,
        ))
    }
}
