//! Attention's backward pass in plain tensor ops, FlashAttention style: the forward keeps only
//! the output and each row's log-sum-exp, and the backward recomputes the probabilities chunk by
//! chunk, so memory stays O(N * chunk) instead of the N x N scores autodiff would keep.
//!
//! With `S = scale * Q K^T` (hidden keys at `-inf`), `P = exp(S - lse)` and `D = rowsum(dO * O)`:
//! `dV = P^T dO`, `dS = P * (dO V^T - D)`, `dQ = scale * dS K`, `dK = scale * dS^T Q`, the
//! query heads of a KV group summed into its `dK` and `dV`. This is the path of every backend
//! without backward kernels, and the reference those kernels are tested against.

use burn::tensor::{backend::Backend, Tensor};

use crate::reference::{cat_rows, for_each_chunk, KeyLayout, Visibility};

/// Attention (as [`crate::reference::masked_attention`]) and the log-sum-exp of each query
/// row's scaled scores, `[b, hq, nq]`: what [`attention_backward`] needs besides the inputs.
pub fn attention_with_lse<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    layout: KeyLayout,
    visibility: &Visibility,
) -> (Tensor<B, 4>, Tensor<B, 3>) {
    let [b, hq, nq, d] = q.dims();
    let hkv = k.dims()[1];
    let group = hq / hkv;
    let (mut outputs, mut lses) = (Vec::new(), Vec::new());
    for_each_chunk(&q, &k, &v, layout, visibility, |chunk| {
        // Every query sees at least its own key, so the row maximum is finite.
        let max = chunk.scores.clone().max_dim(3);
        let weights = (chunk.scores - max.clone()).exp();
        let sum = weights.clone().sum_dim(3);
        let out = (weights.matmul(chunk.v) / sum.clone()).reshape([b, hkv, group, chunk.rows, d]);
        outputs.push(out);
        lses.push((max + sum.log()).reshape([b, hkv, group, chunk.rows, 1]));
    });
    (
        cat_rows(outputs).reshape([b, hq, nq, d]),
        cat_rows(lses).reshape([b, hq, nq]),
    )
}

/// Gradients `(dq, dk, dv)` of attention with respect to its inputs, given the output `out`,
/// the row log-sum-exps `lse` of [`attention_with_lse`] and the output's gradient `d_out`.
/// Shapes as the forward's; computed in the inputs' dtype (callers widen 16-bit inputs).
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    out: Tensor<B, 4>,
    lse: Tensor<B, 3>,
    d_out: Tensor<B, 4>,
    layout: KeyLayout,
    visibility: &Visibility,
) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
    let [b, hq, nq, d] = q.dims();
    let [_, hkv, nk, _] = k.dims();
    let group = hq / hkv;
    let scale = (d as f64).powf(-0.5);
    let device = q.device();
    let rows_of = |t: Tensor<B, 5>, start: usize, rows: usize, width: usize| {
        t.narrow(3, start, rows)
            .reshape([b, hkv, group * rows, width])
    };
    let d_out5 = d_out.clone().reshape([b, hkv, group, nq, d]);
    let delta = (d_out * out).sum_dim(3).reshape([b, hkv, group, nq, 1]);
    let lse = lse.reshape([b, hkv, group, nq, 1]);

    let mut dk = Tensor::<B, 4>::zeros([b, hkv, nk, d], &device);
    let mut dv = Tensor::<B, 4>::zeros([b, hkv, nk, d], &device);
    let mut dqs = Vec::new();
    for_each_chunk(&q, &k, &v, layout, visibility, |chunk| {
        let (start, rows) = (chunk.start, chunk.rows);
        let d_out_c = rows_of(d_out5.clone(), start, rows, d);
        let probs = (chunk.scores - rows_of(lse.clone(), start, rows, 1)).exp();
        let dv_part = probs.clone().swap_dims(2, 3).matmul(d_out_c.clone());
        let dp = d_out_c.matmul(chunk.v.swap_dims(2, 3));
        let ds = probs * (dp - rows_of(delta.clone(), start, rows, 1));
        // `chunk.q` is already scaled: dK = ds^T (scale Q).
        let dk_part = ds.clone().swap_dims(2, 3).matmul(chunk.q);
        let dq = ds.matmul(chunk.k).mul_scalar(scale);
        dqs.push(dq.reshape([b, hkv, group, rows, d]));
        // The chunk's keys are its ranges laid end to end.
        let mut at = 0;
        for r in &chunk.ranges {
            let slots = [0..b, 0..hkv, r.clone(), 0..d];
            let add = |acc: Tensor<B, 4>, part: &Tensor<B, 4>| {
                let piece = part.clone().narrow(2, at, r.len());
                acc.clone()
                    .slice_assign(slots.clone(), acc.slice(slots.clone()) + piece)
            };
            dk = add(dk.clone(), &dk_part);
            dv = add(dv.clone(), &dv_part);
            at += r.len();
        }
    });
    (cat_rows(dqs).reshape([b, hq, nq, d]), dk, dv)
}
