//! The KV cache of a whole model: one [`LayerKvCache`] per layer, and the position reached.

use burn::tensor::backend::Backend;
use flux_attention::LayerKvCache;

/// Keys and values of every layer for the sequences being generated.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    pub(crate) layers: Vec<LayerKvCache<B>>,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: (0..num_layers).map(|_| LayerKvCache::new()).collect(),
        }
    }

    /// Positions already processed (the position of the next token).
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, LayerKvCache::len)
    }

    /// Whether nothing was processed yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes allocated by every layer's keys and values.
    pub fn allocated_bytes(&self) -> usize {
        self.layers.iter().map(LayerKvCache::allocated_bytes).sum()
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(LayerKvCache::clear);
    }
}
