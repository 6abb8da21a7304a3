//! The KV cache of a whole model: one [`LayerKvCache`] per layer and per sequence, and the
//! routing plan chosen at prefill.

use burn::tensor::backend::Backend;
use flux_attention::LayerKvCache;
use flux_router::RoutingPlan;

/// Keys and values of every layer for the sequences being generated.
///
/// Each sequence has its own cache per layer, so sequences of one batch may have different
/// lengths, different plans and (with eviction) different stored sizes.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    /// `layers[layer][sequence]`; the inner vectors are filled at the first forward pass.
    pub(crate) layers: Vec<Vec<LayerKvCache<B>>>,
    pub(crate) evict: bool,
    /// The plan of the prefill, reused by every decode step.
    pub(crate) plan: Option<RoutingPlan>,
    /// Positions each layer's first allocation holds ([`KvCache::reserve`]).
    reserved: usize,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for `num_layers` layers that keeps every position.
    pub fn new(num_layers: usize) -> Self {
        Self::with_eviction(num_layers, false)
    }

    /// An empty cache; with `evict`, layers routed to a sink + window mode keep only the sink and
    /// the window (their memory stays bounded whatever the length).
    pub fn with_eviction(num_layers: usize, evict: bool) -> Self {
        Self {
            layers: vec![Vec::new(); num_layers],
            evict,
            plan: None,
            reserved: 0,
        }
    }

    /// Makes every layer allocate room for `positions` positions per sequence at once (the
    /// prompt plus the tokens to generate), so that decode never copies the cache to grow it.
    pub fn reserve(&mut self, positions: usize) {
        self.reserved = positions;
        for cache in self.layers.iter_mut().flatten() {
            cache.reserve(positions);
        }
    }

    /// Sequences held (0 before the first forward pass).
    pub fn batch_size(&self) -> usize {
        self.layers.first().map_or(0, Vec::len)
    }

    /// Positions processed for `sequence` (the position of its next token).
    pub fn sequence_len(&self, sequence: usize) -> usize {
        self.layers
            .first()
            .and_then(|l| l.get(sequence))
            .map_or(0, LayerKvCache::len)
    }

    /// Positions processed for the first sequence (the position of its next token).
    pub fn len(&self) -> usize {
        self.sequence_len(0)
    }

    /// Whether nothing was processed yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The plan chosen at prefill, if the prefill was routed or given a plan.
    pub fn plan(&self) -> Option<&RoutingPlan> {
        self.plan.as_ref()
    }

    /// Bytes allocated by every layer's keys and values.
    pub fn allocated_bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(LayerKvCache::allocated_bytes)
            .sum()
    }

    /// Forgets everything (positions and plan); eviction stays as it was.
    pub fn clear(&mut self) {
        *self = Self::with_eviction(self.layers.len(), self.evict);
    }

    /// Makes room for `batch` sequences on first use; checks the batch size afterwards.
    pub(crate) fn ensure_batch(&mut self, batch: usize) -> Result<(), String> {
        let (evict, reserved) = (self.evict, self.reserved);
        for layer in &mut self.layers {
            if layer.is_empty() {
                layer.extend((0..batch).map(|_| {
                    let mut cache = LayerKvCache::with_eviction(evict);
                    cache.reserve(reserved);
                    cache
                }));
            } else if layer.len() != batch {
                return Err(format!(
                    "holds {} sequences, the tokens have {batch}",
                    layer.len()
                ));
            }
        }
        Ok(())
    }
}
