//! The key/value cache of one attention layer.

use burn::tensor::{backend::Backend, Tensor};

/// Keys and values of the positions seen so far by one layer, `[b, hkv, len, d]` each.
///
/// Storage grows by doubling and new positions are written in place, so a decode step copies
/// only its own key and value instead of the whole cache.
#[derive(Debug, Clone)]
pub struct LayerKvCache<B: Backend> {
    keys: Option<Tensor<B, 4>>,
    values: Option<Tensor<B, 4>>,
    len: usize,
}

impl<B: Backend> Default for LayerKvCache<B> {
    fn default() -> Self {
        Self::new()
    }
}

impl<B: Backend> LayerKvCache<B> {
    /// An empty cache.
    pub fn new() -> Self {
        Self {
            keys: None,
            values: None,
            len: 0,
        }
    }

    /// Number of positions stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Allocated positions (at least `len`).
    pub fn capacity(&self) -> usize {
        self.keys.as_ref().map_or(0, |k| k.dims()[2])
    }

    /// Bytes held by the allocated key and value storage.
    pub fn allocated_bytes(&self) -> usize {
        let elems = |t: &Option<Tensor<B, 4>>| t.as_ref().map_or(0, |t| t.shape().num_elements());
        (elems(&self.keys) + elems(&self.values)) * std::mem::size_of::<f32>()
    }

    /// Forgets every position (keeps nothing allocated).
    pub fn clear(&mut self) {
        *self = Self::new();
    }

    /// Appends `k`, `v` (`[b, hkv, n, d]`, already checked against each other) and returns the
    /// keys and values of every stored position.
    pub fn append(&mut self, k: Tensor<B, 4>, v: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let [b, h, n, d] = k.dims();
        let needed = self.len + n;
        if needed > self.capacity() {
            let capacity = needed.max(2 * self.capacity()).max(64);
            let grow = |old: Option<Tensor<B, 4>>, len: usize| {
                let fresh = Tensor::<B, 4>::zeros([b, h, capacity, d], &k.device());
                match old {
                    Some(old) if len > 0 => {
                        fresh.slice_assign([0..b, 0..h, 0..len, 0..d], old.narrow(2, 0, len))
                    }
                    _ => fresh,
                }
            };
            self.keys = Some(grow(self.keys.take(), self.len));
            self.values = Some(grow(self.values.take(), self.len));
        }
        let range = [0..b, 0..h, self.len..needed, 0..d];
        let keys = self.keys.take().map(|s| s.slice_assign(range.clone(), k));
        let values = self.values.take().map(|s| s.slice_assign(range, v));
        self.keys = keys;
        self.values = values;
        self.len = needed;
        (self.stored(&self.keys), self.stored(&self.values))
    }

    fn stored(&self, t: &Option<Tensor<B, 4>>) -> Tensor<B, 4> {
        // `append` always leaves both tensors allocated.
        t.clone()
            .expect("kv cache storage is allocated after append")
            .narrow(2, 0, self.len)
    }

    /// Batch size of the stored tensors, if any.
    pub fn batch_size(&self) -> Option<usize> {
        self.keys.as_ref().map(|k| k.dims()[0])
    }
}
