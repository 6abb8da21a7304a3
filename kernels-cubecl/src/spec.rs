//! What one fused attention call computes, in the terms of the kernels: tensors are
//! `q [b, hq, nq, d]`, `k`, `v` `[b, hkv, nk, d]`; the `nq` queries of sequence `i` are its last
//! `q_lens[i]` stored positions among `kv_lens[i]` stored keys.

use std::ops::Range;

/// Where stored keys sit in the sequence when a cache has evicted some: stored index `s` is
/// position `s` for `s < kept_sink`, and position `s + dropped` after that.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyLayout {
    /// Leading positions kept in front of the gap.
    pub kept_sink: usize,
    /// Positions evicted between the sink and the rest.
    pub dropped: usize,
}

impl KeyLayout {
    /// Sequence position of stored index `s`.
    pub fn position(&self, s: usize) -> usize {
        if s < self.kept_sink {
            s
        } else {
            s + self.dropped
        }
    }

    /// Stored index of the first kept key at position `>= p`.
    pub fn stored_index(&self, p: usize) -> usize {
        if p <= self.kept_sink {
            p
        } else if p <= self.kept_sink + self.dropped {
            self.kept_sink
        } else {
            p - self.dropped
        }
    }

    /// Stored indices of the sequence positions `[from, to)`, without the evicted ones.
    pub fn stored_range(&self, from: usize, to: usize) -> Range<usize> {
        self.stored_index(from)..self.stored_index(to)
    }
}

/// Which earlier keys a query sees, resolved for one attention call. Every rule is also causal.
#[derive(Debug, Clone, PartialEq)]
pub enum Visibility {
    /// Every earlier key.
    Causal,
    /// Keys before `sink` and the last `window` positions up to the query; queries whose
    /// position lies in `dense` see every earlier key.
    Window {
        /// Leading positions every query sees.
        sink: usize,
        /// Recent positions (the query's own included) every query sees.
        window: usize,
        /// Query positions that attend densely.
        dense: Range<usize>,
    },
    /// Key blocks chosen per sequence, query head and query block (XAttention).
    Blocks(BlockSelection),
}

/// Key blocks kept per `(sequence, query head, query block)`: the block of position `p` is
/// `p / block`; query blocks are counted from `first_q_block`.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockSelection {
    /// Block size in tokens.
    pub block: usize,
    /// Sequence block index of the first query block described.
    pub first_q_block: usize,
    /// Query blocks described.
    pub q_blocks: usize,
    /// Key blocks per query block (all key blocks of the sequence).
    pub k_blocks: usize,
    /// Query heads.
    pub heads: usize,
    /// `keep[((b * heads + h) * q_blocks + qb) * k_blocks + kb]`.
    pub keep: Vec<bool>,
}

impl BlockSelection {
    /// Whether key block `kb` is kept for query block `qb` (sequence block indices).
    pub fn keeps(&self, b: usize, h: usize, qb: usize, kb: usize) -> bool {
        let row = (b * self.heads + h) * self.q_blocks + (qb - self.first_q_block);
        self.keep[row * self.k_blocks + kb]
    }

    /// Share of the causal (query block, key block) pairs kept, over every sequence and head.
    pub fn density(&self) -> f64 {
        let (mut kept, mut causal) = (0usize, 0usize);
        for row in 0..self.keep.len() / self.k_blocks.max(1) {
            let qb = self.first_q_block + row % self.q_blocks;
            for kb in 0..=qb.min(self.k_blocks - 1) {
                causal += 1;
                kept += self.keep[row * self.k_blocks + kb] as usize;
            }
        }
        kept as f64 / causal.max(1) as f64
    }
}

impl Visibility {
    /// Whether a query at position `q` sees the key at `k` under sink + window with `dense`
    /// queries.
    pub fn window_sees(
        sink: usize,
        window: usize,
        dense: &Range<usize>,
        q: usize,
        k: usize,
    ) -> bool {
        k <= q && (k < sink || q - k < window || dense.contains(&q))
    }
}

/// The query and key blocks XAttention scores for `nq` queries that end `nk` keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XAttentionBlocks {
    /// Sequence block index of the first query block (the one holding the first query group).
    pub first_q_block: usize,
    /// Query blocks scored.
    pub q_blocks: usize,
    /// Key blocks of the sequence.
    pub k_blocks: usize,
}

impl XAttentionBlocks {
    /// Blocks of `block` tokens, query groups of `stride` positions (`nq <= nk`, `nk > 0`).
    pub fn new(nq: usize, nk: usize, block: usize, stride: usize) -> Self {
        let first_q_block = (nk - nq) / stride * stride / block;
        Self {
            first_q_block,
            q_blocks: (nk - 1) / block + 1 - first_q_block,
            k_blocks: nk.div_ceil(block),
        }
    }
}

/// Everything besides the tensors that a fused attention call needs.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionSpec {
    /// Which keys each query sees.
    pub visibility: Visibility,
    /// Softmax scale (usually `1 / sqrt(d)`).
    pub scale: f32,
    /// Query rows of each sequence (`None`: all `nq`). Rows past it are padding, written as 0.
    pub q_lens: Option<Vec<usize>>,
    /// Stored keys of each sequence (`None`: all `nk`). Keys past it are padding.
    pub kv_lens: Option<Vec<usize>>,
    /// Where stored keys sit in the sequence (an eviction gap).
    pub layout: KeyLayout,
}

impl AttentionSpec {
    /// Causal attention with the default scale `1 / sqrt(head_dim)` and no padding.
    pub fn causal(head_dim: usize) -> Self {
        Self::new(Visibility::Causal, head_dim)
    }

    /// `rule` with the default scale `1 / sqrt(head_dim)`, no padding and no eviction gap.
    pub fn new(visibility: Visibility, head_dim: usize) -> Self {
        Self {
            visibility,
            scale: 1.0 / (head_dim as f32).sqrt(),
            q_lens: None,
            kv_lens: None,
            layout: KeyLayout::default(),
        }
    }
}
