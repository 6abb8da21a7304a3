//! XAttention's block selection: strided anti-diagonal scoring of (query block, key block) pairs
//! and per-query-block threshold selection.
//!
//! Positions are grouped by `stride`. The estimate of query group `m` against key group `n` is
//! the anti-diagonal sum `sum_t q[m*S + S-1-t] . k[n*S + t] / (sqrt(d) * S)`, computed as one
//! matmul of reshaped queries (the group's rows reversed and concatenated) and reshaped keys.
//! Each query group's estimates over the causal key groups (`n <= m`) are softmax-normalised,
//! summed into `block x block` tiles, and each query block's row is normalised to sum to one.
//! A query block keeps the smallest set of key blocks, highest first, whose scores reach
//! `threshold`, plus the first (sink) block and its own (diagonal) block. Positions past the end
//! of the sequence (or before the first query when the queries do not start on a group
//! boundary) count as zero vectors.

use burn::tensor::{activation::softmax, backend::Backend, Bool, Tensor};

use crate::reference::{BlockSelection, MAX_SCORE_ELEMENTS};

/// Normalised block scores of XAttention's estimate, before selection.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockScores {
    /// Block size in tokens.
    pub block: usize,
    /// Sequence block index of the first query block.
    pub first_q_block: usize,
    /// Query blocks described.
    pub q_blocks: usize,
    /// Key blocks of the sequence.
    pub k_blocks: usize,
    /// Query heads.
    pub heads: usize,
    /// `scores[((b * heads + h) * q_blocks + qb) * k_blocks + kb]`, zero for `kb > qb`.
    pub scores: Vec<f64>,
}

/// Estimates block scores for queries `q` `[b, hq, nq, d]` (the last `nq` of the `nk` keys
/// `k` `[b, hkv, nk, d]`). `stride` divides `block` (checked by [`crate::AttentionMode::validate`]).
pub fn block_scores<B: Backend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    block: usize,
    stride: usize,
) -> BlockScores {
    let [b, hq, nq, d] = q.dims();
    let [_, hkv, nk, _] = k.dims();
    let group = hq / hkv;
    let device = q.device();
    let s = stride;
    let first_query = nk - nq;
    let front = first_query % s;
    let g0 = first_query / s; // sequence group index of the first query group
    let q_groups = (front + nq).div_ceil(s);
    let groups_per_block = block / s;
    let k_blocks = nk.div_ceil(block);
    let k_groups = k_blocks * groups_per_block;

    // Scores in f32 at least: bf16 / f16 logits would round the block sums.
    let wide = crate::accumulation_dtype(q.dtype());
    let (q, k) = (&q.clone().cast(wide), &k.clone().cast(wide));
    let zeros =
        |heads: usize, n: usize| Tensor::<B, 4>::zeros([b, heads, n, d], (&device, wide.into()));
    let mut q_parts = Vec::new();
    if front > 0 {
        q_parts.push(zeros(hq, front));
    }
    q_parts.push(q.clone());
    if q_groups * s > front + nq {
        q_parts.push(zeros(hq, q_groups * s - front - nq));
    }
    // [b, hkv, group * q_groups, s * d]: each group's rows reversed, then concatenated.
    let rq = Tensor::cat(q_parts, 2)
        .reshape([b, hq, q_groups, s, d])
        .flip([3])
        .reshape([b, hkv, group * q_groups, s * d]);
    let rq = rq.reshape([b, hkv, group, q_groups, s * d]);
    let mut k_parts = vec![k.clone()];
    if k_groups * s > nk {
        k_parts.push(zeros(hkv, k_groups * s - nk));
    }
    let rk = Tensor::cat(k_parts, 2)
        .reshape([b, hkv, k_groups, s * d])
        .swap_dims(2, 3); // [b, hkv, s * d, k_groups]
    let scale = 1.0 / ((d as f64).sqrt() * s as f64);

    let kernels_cubecl::XAttentionBlocks {
        first_q_block,
        q_blocks,
        ..
    } = kernels_cubecl::XAttentionBlocks::new(nq, nk, block, stride);
    let mut scores = vec![0f64; b * hq * q_blocks * k_blocks];
    let rows_per_chunk = (MAX_SCORE_ELEMENTS / (b * hq * k_groups).max(1)).clamp(1, q_groups);
    let mut m0 = 0;
    while m0 < q_groups {
        let rows = rows_per_chunk.min(q_groups - m0);
        let chunk = rq
            .clone()
            .narrow(3, m0, rows)
            .reshape([b, hkv, group * rows, s * d]);
        let est = chunk
            .matmul(rk.clone())
            .mul_scalar(scale)
            .reshape([b, hkv, group, rows, k_groups]);
        // Key group n is visible to query group g0 + m0 + r when n <= g0 + m0 + r.
        let mask = Tensor::<B, 2, Bool>::tril_mask([rows, k_groups], (g0 + m0) as i64, &device)
            .reshape([1, 1, 1, rows, k_groups])
            .expand([b, hkv, group, rows, k_groups]);
        let probs = softmax(est.mask_fill(mask, f32::NEG_INFINITY), 4);
        let tiles = probs
            .reshape([b, hkv, group, rows, k_blocks, groups_per_block])
            .sum_dim(5)
            .reshape([b * hq, rows, k_blocks]);
        let tiles: Vec<f32> = tiles
            .into_data()
            .convert::<f32>()
            .into_vec()
            .expect("f32 after convert");
        for bh in 0..b * hq {
            for r in 0..rows {
                let qb = (g0 + m0 + r) * s / block - first_q_block;
                let row = &tiles[(bh * rows + r) * k_blocks..][..k_blocks];
                let out = &mut scores[(bh * q_blocks + qb) * k_blocks..][..k_blocks];
                for (o, t) in out.iter_mut().zip(row) {
                    *o += *t as f64;
                }
            }
        }
        m0 += rows;
    }
    for row in scores.chunks_mut(k_blocks) {
        let total: f64 = row.iter().sum();
        if total > 0.0 {
            row.iter_mut().for_each(|x| *x /= total);
        }
    }
    BlockScores {
        block,
        first_q_block,
        q_blocks,
        k_blocks,
        heads: hq,
        scores,
    }
}

/// The key blocks each query block keeps at `threshold` (see the module documentation).
pub fn select_blocks(scores: &BlockScores, threshold: f64) -> BlockSelection {
    let kb_n = scores.k_blocks;
    let mut keep = vec![false; scores.scores.len()];
    let mut order: Vec<usize> = Vec::with_capacity(kb_n);
    for (row_index, (row, kept)) in scores
        .scores
        .chunks(kb_n)
        .zip(keep.chunks_mut(kb_n))
        .enumerate()
    {
        let qb = scores.first_q_block + row_index % scores.q_blocks;
        let causal = (qb + 1).min(kb_n);
        order.clear();
        order.extend(0..causal);
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        let total: f64 = row[..causal].iter().sum();
        let mut reached = 0.0;
        for &kb in &order {
            if reached >= threshold * total {
                break;
            }
            kept[kb] = true;
            reached += row[kb];
        }
        kept[0] = true;
        kept[causal - 1] = true;
    }
    BlockSelection {
        block: scores.block,
        first_q_block: scores.first_q_block,
        q_blocks: scores.q_blocks,
        k_blocks: kb_n,
        heads: scores.heads,
        keep,
    }
}
