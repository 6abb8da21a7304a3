//! Plain tensor-op attention: the truth every kernel is tested against, and the path for
//! backends without kernels.
//!
//! Queries are chunked so that the score tensor of one step is `[batch, heads, chunk, keys]`,
//! never `[batch, heads, N, N]`: long prompts run on CPU in O(N * chunk) memory.

use burn::tensor::{activation::softmax, backend::Backend, Bool, Tensor};

/// Upper bound on the elements of one chunk's score tensor (64 MiB of f32).
const MAX_SCORE_ELEMENTS: usize = 1 << 24;

/// Causal GQA attention where the `nq` queries are the last `nq` positions of the `nk` keys.
///
/// Shapes: `q` `[b, hq, nq, d]`, `k` and `v` `[b, hkv, nk, d]` with `hq % hkv == 0` and
/// `nq <= nk` (checked by the caller). Returns `[b, hq, nq, d]`. K and V are never repeated per
/// query head: the `hq / hkv` query heads of a group are stacked along the row axis of one matmul.
pub fn causal_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
) -> Tensor<B, 4> {
    let [b, hq, nq, d] = q.dims();
    let [_, hkv, nk, _] = k.dims();
    let group = hq / hkv;
    let past = nk - nq;
    let scale = (d as f64).powf(-0.5);
    let device = q.device();

    // [b, hkv, group, nq, d]: a view, heads of one KV group are adjacent.
    let q = q.mul_scalar(scale).reshape([b, hkv, group, nq, d]);
    let rows_per_chunk = (MAX_SCORE_ELEMENTS / (b * hq * nk).max(1)).clamp(1, nq.max(1));

    let mut outputs = Vec::with_capacity(nq.div_ceil(rows_per_chunk));
    let mut start = 0;
    while start < nq {
        let rows = rows_per_chunk.min(nq - start);
        // Keys after the chunk's last query are masked for every row: leave them out.
        let keys = past + start + rows;
        let q_chunk = q
            .clone()
            .narrow(3, start, rows)
            .reshape([b, hkv, group * rows, d]);
        let k_chunk = k.clone().narrow(2, 0, keys);
        let v_chunk = v.clone().narrow(2, 0, keys);
        let scores = q_chunk.matmul(k_chunk.swap_dims(2, 3)); // [b, hkv, group*rows, keys]
        let scores = if rows > 1 {
            // Row r (absolute position past + start + r) sees keys j <= past + start + r.
            let mask =
                Tensor::<B, 2, Bool>::tril_mask([rows, keys], (past + start) as i64, &device)
                    .reshape([1, 1, 1, rows, keys])
                    .expand([b, hkv, group, rows, keys]);
            scores
                .reshape([b, hkv, group, rows, keys])
                .mask_fill(mask, f32::NEG_INFINITY)
                .reshape([b, hkv, group * rows, keys])
        } else {
            scores
        };
        let probs = softmax(scores, 3);
        let out = probs.matmul(v_chunk); // [b, hkv, group*rows, d]
        outputs.push(out.reshape([b, hkv, group, rows, d]));
        start += rows;
    }
    Tensor::cat(outputs, 3).reshape([b, hq, nq, d])
}
