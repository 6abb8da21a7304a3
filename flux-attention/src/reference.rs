//! Plain tensor-op attention: the truth every kernel is tested against, and the path for
//! backends without kernels.
//!
//! Queries are chunked so that the score tensor of one step is `[batch, heads, chunk, keys]`,
//! never `[batch, heads, N, N]`: long prompts run on CPU in O(N * chunk) memory. Sink + window
//! rules only gather the keys a chunk can see, so their cost grows with `N * (sink + window)`.

use std::ops::Range;

pub use kernels_cubecl::{BlockSelection, KeyLayout, Visibility};

use burn::tensor::{activation::softmax, backend::Backend, Bool, Tensor, TensorData};

/// Upper bound on the elements of one chunk's score tensor (64 MiB of f32).
pub(crate) const MAX_SCORE_ELEMENTS: usize = 1 << 24;

/// Most query rows per chunk.
const CHUNK_ROWS: usize = 256;

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
    masked_attention(q, k, v, KeyLayout::default(), &Visibility::Causal)
}

/// GQA attention of the last `nq` sequence positions over the stored keys of `layout`, each
/// query seeing the keys `visibility` allows. Shapes as in [`causal_attention`], with `nk` the
/// stored keys; queries are at positions `layout.position(nk - 1) + 1 - nq ..`.
pub fn masked_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    layout: KeyLayout,
    visibility: &Visibility,
) -> Tensor<B, 4> {
    let [b, hq, nq, d] = q.dims();
    let hkv = k.dims()[1];
    let mut outputs = Vec::new();
    for_each_chunk(&q, &k, &v, layout, visibility, |chunk| {
        let out = softmax(chunk.scores, 3).matmul(chunk.v); // [b, hkv, group*rows, d]
        outputs.push(out.reshape([b, hkv, hq / hkv, chunk.rows, d]));
    });
    cat_rows(outputs).reshape([b, hq, nq, d])
}

/// One chunk of query rows of a call, with the keys they may see.
pub(crate) struct Chunk<B: Backend> {
    /// First query row of the chunk.
    pub start: usize,
    /// Query rows in the chunk.
    pub rows: usize,
    /// Stored key ranges gathered, in order (`k` and `v` are their concatenation).
    pub ranges: Vec<Range<usize>>,
    /// Scaled queries, the heads of a KV group stacked: `[b, hkv, group * rows, d]`.
    pub q: Tensor<B, 4>,
    /// Gathered keys and values `[b, hkv, keys, d]`.
    pub k: Tensor<B, 4>,
    pub v: Tensor<B, 4>,
    /// Scaled scores with hidden keys at `-inf`: `[b, hkv, group * rows, keys]`.
    pub scores: Tensor<B, 4>,
}

/// Walks the query rows of a call in chunks whose score tensors stay under
/// [`MAX_SCORE_ELEMENTS`], in row order; sink + window rules gather only the keys a chunk can see.
pub(crate) fn for_each_chunk<B: Backend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    layout: KeyLayout,
    visibility: &Visibility,
    mut visit: impl FnMut(Chunk<B>),
) {
    let [b, hq, nq, d] = q.dims();
    let [_, hkv, nk, _] = k.dims();
    let group = hq / hkv;
    let total = nk + layout.dropped;
    let first_query = total - nq;
    let scale = (d as f64).powf(-0.5);
    let device = q.device();

    // [b, hkv, group, nq, d]: a view, heads of one KV group are adjacent.
    let q = q.clone().mul_scalar(scale).reshape([b, hkv, group, nq, d]);
    let budget = MAX_SCORE_ELEMENTS / (b * hq).max(1);
    // A chunk's rows all read the keys up to its last query (and, for sink + window, from its
    // first query's window on): chunks of at most CHUNK_ROWS rows waste little of that.
    let span = match visibility {
        Visibility::Window { sink, window, .. } => (sink + window).min(nk),
        _ => nk,
    };
    let rows_per_chunk = (budget / span.max(1)).clamp(1, CHUNK_ROWS).min(nq.max(1));

    let mut start = 0;
    while start < nq {
        let rows = rows_per_chunk.min(nq - start);
        let (pa, pb) = (first_query + start, first_query + start + rows);
        let ranges = key_ranges(layout, visibility, pa, pb);
        let key_positions: Vec<usize> = ranges
            .iter()
            .flat_map(|r| r.clone().map(|s| layout.position(s)))
            .collect();
        let keys = key_positions.len();
        let gather = |t: &Tensor<B, 4>| {
            let parts: Vec<_> = ranges
                .iter()
                .map(|r| t.clone().narrow(2, r.start, r.len()))
                .collect();
            if parts.len() == 1 {
                parts.into_iter().next().expect("one range")
            } else {
                Tensor::cat(parts, 2)
            }
        };
        let (k_chunk, v_chunk) = (gather(k), gather(v));
        let q_chunk = q
            .clone()
            .narrow(3, start, rows)
            .reshape([b, hkv, group * rows, d]);
        let scores = q_chunk.clone().matmul(k_chunk.clone().swap_dims(2, 3));
        let mask = match window_band_mask::<B>(visibility, layout, &ranges, pa, rows, &device) {
            Some(mask) => Some(mask.reshape([1, 1, rows, keys]).expand([b, hq, rows, keys])),
            None => chunk_mask::<B>(visibility, &key_positions, pa, rows, b, hq, &device),
        };
        let scores = match mask {
            Some(mask) => scores
                .reshape([b, hkv, group, rows, keys])
                .mask_fill(mask.reshape([b, hkv, group, rows, keys]), f32::NEG_INFINITY)
                .reshape([b, hkv, group * rows, keys]),
            None => scores,
        };
        visit(Chunk {
            start,
            rows,
            ranges,
            q: q_chunk,
            k: k_chunk,
            v: v_chunk,
            scores,
        });
        start += rows;
    }
}

/// Per-chunk results `[b, hkv, group, rows, ..]` joined along the row axis.
pub(crate) fn cat_rows<B: Backend>(mut parts: Vec<Tensor<B, 5>>) -> Tensor<B, 5> {
    if parts.len() == 1 {
        parts.pop().expect("one chunk")
    } else {
        Tensor::cat(parts, 3)
    }
}

/// Stored key ranges the queries at positions `[pa, pb)` may see.
fn key_ranges(
    layout: KeyLayout,
    visibility: &Visibility,
    pa: usize,
    pb: usize,
) -> Vec<Range<usize>> {
    let all = layout.stored_range(0, pb);
    match visibility {
        Visibility::Window {
            sink,
            window,
            dense,
        } if !(dense.start < pb && pa < dense.end) => {
            let sink_end = (*sink).min(pb);
            let window_start = (pa + 1).saturating_sub(*window);
            if window_start <= sink_end {
                vec![all]
            } else {
                [
                    layout.stored_range(0, sink_end),
                    layout.stored_range(window_start, pb),
                ]
                .into_iter()
                .filter(|r| !r.is_empty())
                .collect()
            }
        }
        _ => vec![all],
    }
}

/// The sink + window mask `[rows, keys]` (true = hidden) built on the device from triangular
/// masks, for chunks whose keys are contiguous position ranges (no eviction) and whose queries
/// are not dense; `None` otherwise (see [`chunk_mask`]).
fn window_band_mask<B: Backend>(
    visibility: &Visibility,
    layout: KeyLayout,
    ranges: &[Range<usize>],
    pa: usize,
    rows: usize,
    device: &B::Device,
) -> Option<Tensor<B, 2, Bool>> {
    let Visibility::Window {
        sink,
        window,
        dense,
    } = visibility
    else {
        return None;
    };
    if layout.dropped > 0 || (dense.start < pa + rows && pa < dense.end) {
        return None;
    }
    let parts: Vec<_> = ranges
        .iter()
        .map(|r| {
            // Keys at positions r.start + j, queries at pa + i.
            let (len, p0) = (r.len(), r.start as i64);
            let future = Tensor::<B, 2, Bool>::tril_mask([rows, len], pa as i64 - p0, device);
            let old = Tensor::<B, 2, Bool>::triu_mask(
                [rows, len],
                pa as i64 - p0 - *window as i64 + 1,
                device,
            );
            // Keys in the sink are never too old.
            let sink_in_range = (*sink).saturating_sub(r.start).min(len);
            let old = if sink_in_range > 0 {
                let past_sink = Tensor::<B, 1, burn::tensor::Int>::arange(0..len as i64, device)
                    .greater_equal_elem(sink_in_range as i64)
                    .reshape([1, len])
                    .expand([rows, len]);
                old.bool_and(past_sink)
            } else {
                old
            };
            future.bool_or(old)
        })
        .collect();
    Some(if parts.len() == 1 {
        parts.into_iter().next().expect("one range")
    } else {
        Tensor::cat(parts, 1)
    })
}

/// The `[b, hq, rows, keys]` mask (true = hidden) of queries at positions `pa..pa + rows` over
/// keys at `key_positions`, or `None` when every key is visible to every query.
fn chunk_mask<B: Backend>(
    visibility: &Visibility,
    key_positions: &[usize],
    pa: usize,
    rows: usize,
    b: usize,
    hq: usize,
    device: &B::Device,
) -> Option<Tensor<B, 4, Bool>> {
    let keys = key_positions.len();
    let hidden_row = |q: usize, out: &mut Vec<bool>, sees: &dyn Fn(usize, usize) -> bool| {
        out.extend(key_positions.iter().map(|&k| !sees(q, k)));
    };
    match visibility {
        // Contiguous keys from position 0: burn's triangular mask, built on the device.
        Visibility::Causal if key_positions.last().is_none_or(|&p| p + 1 == keys) => (rows > 1)
            .then(|| {
                Tensor::<B, 2, Bool>::tril_mask([rows, keys], pa as i64, device)
                    .reshape([1, 1, rows, keys])
                    .expand([b, hq, rows, keys])
            }),
        Visibility::Causal | Visibility::Window { .. } => {
            let mut hidden = Vec::with_capacity(rows * keys);
            for r in 0..rows {
                let q = pa + r;
                match visibility {
                    Visibility::Window {
                        sink,
                        window,
                        dense,
                    } => hidden_row(q, &mut hidden, &|q, k| {
                        Visibility::window_sees(*sink, *window, dense, q, k)
                    }),
                    _ => hidden_row(q, &mut hidden, &|q, k| k <= q),
                }
            }
            if !hidden.iter().any(|&h| h) {
                return None;
            }
            Some(
                Tensor::<B, 2, Bool>::from_data(TensorData::new(hidden, [rows, keys]), device)
                    .reshape([1, 1, rows, keys])
                    .expand([b, hq, rows, keys]),
            )
        }
        Visibility::Blocks(selection) => {
            let mut hidden = Vec::with_capacity(b * hq * rows * keys);
            for bi in 0..b {
                for h in 0..hq {
                    for r in 0..rows {
                        let q = pa + r;
                        hidden_row(q, &mut hidden, &|q, k| {
                            k <= q
                                && selection.keeps(bi, h, q / selection.block, k / selection.block)
                        });
                    }
                }
            }
            Some(Tensor::<B, 4, Bool>::from_data(
                TensorData::new(hidden, [b, hq, rows, keys]),
                device,
            ))
        }
    }
}
