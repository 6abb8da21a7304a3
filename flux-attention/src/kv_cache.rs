//! The key/value cache of one attention layer, with optional eviction for sparse layers.

use burn::tensor::{backend::Backend, Tensor};

use crate::reference::KeyLayout;

/// Extra positions an evicting cache allocates beyond `sink + 2 * window`.
const EVICTION_SLACK: usize = 64;

/// Keys and values of the positions seen so far by one layer, `[b, hkv, stored, d]` each.
///
/// Storage grows geometrically (by a quarter) and new positions are written in place, so a
/// decode step copies only its own key and value instead of the whole cache.
///
/// With eviction on (see [`LayerKvCache::with_eviction`]), a layer whose mode reads only a sink
/// and a window (streaming, triangle) drops the positions in between once they can no longer be
/// read, DuoAttention-style, so its memory stays bounded by about `sink + 2 * window` positions
/// whatever the sequence length. Eviction is amortised: the middle is dropped once `window`
/// surplus positions have accumulated, so a decode step never copies the whole window.
#[derive(Debug, Clone)]
pub struct LayerKvCache<B: Backend> {
    keys: Option<Tensor<B, 4>>,
    values: Option<Tensor<B, 4>>,
    /// Positions held in storage.
    stored: usize,
    /// Layout of the stored positions in the sequence.
    layout: KeyLayout,
    /// Sequence length after the first append (the prompt), if any.
    prompt_len: Option<usize>,
    evict: bool,
    /// Positions the next allocation makes room for at least ([`LayerKvCache::reserve`]).
    reserved: usize,
}

impl<B: Backend> Default for LayerKvCache<B> {
    fn default() -> Self {
        Self::new()
    }
}

impl<B: Backend> LayerKvCache<B> {
    /// An empty cache that keeps every position.
    pub fn new() -> Self {
        Self {
            keys: None,
            values: None,
            stored: 0,
            layout: KeyLayout::default(),
            prompt_len: None,
            evict: false,
            reserved: 0,
        }
    }

    /// An empty cache; with `evict`, sink + window layers drop the positions they no longer read.
    pub fn with_eviction(evict: bool) -> Self {
        Self {
            evict,
            ..Self::new()
        }
    }

    /// Whether eviction is on.
    pub fn evicts(&self) -> bool {
        self.evict
    }

    /// Sequence positions seen (the position of the next token), evicted ones included.
    pub fn len(&self) -> usize {
        self.stored + self.layout.dropped
    }

    /// Whether no position was seen.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Positions held in memory (`len()` minus the evicted ones).
    pub fn stored_len(&self) -> usize {
        self.stored
    }

    /// Length of the prompt (the first append), once there is one.
    pub fn prompt_len(&self) -> Option<usize> {
        self.prompt_len
    }

    /// Where the stored positions sit in the sequence.
    pub fn layout(&self) -> KeyLayout {
        self.layout
    }

    /// Allocated positions (at least `stored_len`).
    pub fn capacity(&self) -> usize {
        self.keys.as_ref().map_or(0, |k| k.dims()[2])
    }

    /// Bytes held by the allocated key and value storage.
    pub fn allocated_bytes(&self) -> usize {
        let bytes = |t: &Option<Tensor<B, 4>>| {
            t.as_ref()
                .map_or(0, |t| t.shape().num_elements() * t.dtype().size())
        };
        bytes(&self.keys) + bytes(&self.values)
    }

    /// Makes the next allocation hold at least `positions` stored positions, so that a
    /// generation whose length is known (prompt + new tokens) allocates once and never copies
    /// the cache to grow it. A cache that has evicted keeps its small buffer.
    pub fn reserve(&mut self, positions: usize) {
        self.reserved = positions;
    }

    /// Forgets every position (keeps nothing allocated); eviction stays as it was.
    pub fn clear(&mut self) {
        *self = Self::with_eviction(self.evict);
    }

    /// Dtype of the stored keys and values, if any.
    pub fn dtype(&self) -> Option<burn::tensor::DType> {
        self.keys.as_ref().map(|k| k.dtype())
    }

    /// Batch size of the stored tensors, if any.
    pub fn batch_size(&self) -> Option<usize> {
        self.keys.as_ref().map(|k| k.dims()[0])
    }

    /// Appends `k`, `v` (`[b, hkv, n, d]`, already checked against each other) and returns the
    /// keys and values of every stored position.
    pub fn append(&mut self, k: Tensor<B, 4>, v: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let [b, h, n, d] = k.dims();
        let needed = self.stored + n;
        if needed > self.capacity() {
            // Grow by a quarter: amortised O(1) per position, without doubling the memory of a
            // long prompt at its first decode step.
            let reserved = if self.layout.dropped == 0 {
                self.reserved
            } else {
                0
            };
            let capacity = needed
                .max(self.capacity() + self.capacity() / 4)
                .max(64)
                .max(reserved);
            let stored = self.stored;
            let grow = |old: Option<Tensor<B, 4>>| {
                let fresh = Tensor::<B, 4>::zeros([b, h, capacity, d], (&k.device(), k.dtype()));
                match old {
                    Some(old) if stored > 0 => {
                        fresh.slice_assign([0..b, 0..h, 0..stored, 0..d], old.narrow(2, 0, stored))
                    }
                    _ => fresh,
                }
            };
            self.keys = Some(grow(self.keys.take()));
            self.values = Some(grow(self.values.take()));
        }
        let range = [0..b, 0..h, self.stored..needed, 0..d];
        let keys = self.keys.take().map(|s| s.slice_assign(range.clone(), k));
        let values = self.values.take().map(|s| s.slice_assign(range, v));
        self.keys = keys;
        self.values = values;
        self.stored = needed;
        self.prompt_len.get_or_insert(self.len());
        (
            self.stored_tensor(&self.keys),
            self.stored_tensor(&self.values),
        )
    }

    /// Drops the positions a layer reading only `sink` leading and `window` recent keys will never
    /// read again, once `window` of them have accumulated. No-op without eviction.
    pub fn evict_outside(&mut self, sink: usize, window: usize) {
        if !self.evict || self.stored <= sink + 2 * window {
            return;
        }
        let Some(keys) = self.keys.take() else { return };
        let Some(values) = self.values.take() else {
            return;
        };
        let [b, h, capacity, d] = keys.dims();
        // The next query (at position len()) reads keys after len() - window; keep those.
        let kept_sink = self.layout.kept_sink.max(sink.min(self.stored));
        let keep_recent = window;
        let from = self.stored - keep_recent;
        let compact = |t: Tensor<B, 4>| {
            let recent = t.clone().narrow(2, from, keep_recent);
            // A fresh buffer with room for `window` more positions (plus a little, so the append
            // before the next eviction does not grow it): memory stays bounded.
            let fresh_capacity = (kept_sink + 2 * window + EVICTION_SLACK).min(capacity);
            let fresh = Tensor::<B, 4>::zeros([b, h, fresh_capacity, d], (&t.device(), t.dtype()));
            let fresh =
                fresh.slice_assign([0..b, 0..h, 0..kept_sink, 0..d], t.narrow(2, 0, kept_sink));
            fresh.slice_assign(
                [0..b, 0..h, kept_sink..kept_sink + keep_recent, 0..d],
                recent,
            )
        };
        self.keys = Some(compact(keys));
        self.values = Some(compact(values));
        self.layout = KeyLayout {
            kept_sink,
            dropped: self.layout.dropped + (from - kept_sink),
        };
        self.stored = kept_sink + keep_recent;
    }

    fn stored_tensor(&self, t: &Option<Tensor<B, 4>>) -> Tensor<B, 4> {
        // `append` always leaves both tensors allocated.
        t.clone()
            .expect("kv cache storage is allocated after append")
            .narrow(2, 0, self.stored)
    }
}
