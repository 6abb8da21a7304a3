//! flux-attention: what one attention layer of a flux model computes.
//!
//! Model code calls one function, [`attend`], with the layer's queries, its new keys and values,
//! its [`LayerKvCache`] and an [`AttentionMode`]. Everything about modes, kernels and fallbacks
//! lives below that call.
//!
//! ```
//! use burn::backend::NdArray;
//! use burn::tensor::{Distribution, Tensor};
//! use flux_attention::{attend, AttentionMode, LayerKvCache};
//!
//! let device = Default::default();
//! // 1 sequence, 4 query heads sharing 2 KV heads, 10 tokens, head_dim 16.
//! let q = Tensor::<NdArray, 4>::random([1, 4, 10, 16], Distribution::Default, &device);
//! let k = Tensor::<NdArray, 4>::random([1, 2, 10, 16], Distribution::Default, &device);
//! let v = Tensor::<NdArray, 4>::random([1, 2, 10, 16], Distribution::Default, &device);
//! let mut cache = LayerKvCache::new();
//! let out = attend(q, k, v, &mut cache, &AttentionMode::Full).unwrap();
//! assert_eq!(out.dims(), [1, 4, 10, 16]);
//! assert_eq!(cache.len(), 10);
//! ```

mod error;
mod kv_cache;
mod mode;
pub mod reference;

pub use error::AttentionError;
pub use kv_cache::LayerKvCache;
pub use mode::AttentionMode;

use burn::tensor::{backend::Backend, Tensor};

/// The single attention entry point of flux.
///
/// `q` is `[b, hq, nq, d]` (RoPE applied), `k_new` and `v_new` are `[b, hkv, nq, d]` for the same
/// `nq` new positions. They are appended to `cache`; the queries then attend causally to every
/// cached position (the new ones are the last `nq`). Returns `[b, hq, nq, d]`.
pub fn attend<B: Backend>(
    q: Tensor<B, 4>,
    k_new: Tensor<B, 4>,
    v_new: Tensor<B, 4>,
    cache: &mut LayerKvCache<B>,
    mode: &AttentionMode,
) -> Result<Tensor<B, 4>, AttentionError> {
    check_shapes(&q.dims(), &k_new.dims(), &v_new.dims())?;
    let [b, _, nq, _] = q.dims();
    if nq != k_new.dims()[2] {
        return Err(AttentionError::Shape {
            tensor: "k_new",
            expected: format!("{nq} new positions, as many as the queries"),
            found: k_new.dims().to_vec(),
        });
    }
    if let Some(cached_b) = cache.batch_size() {
        if cached_b != b {
            return Err(AttentionError::InvalidArgument {
                argument: "cache",
                message: format!("holds a batch of {cached_b} sequences, the queries have {b}"),
            });
        }
    }
    let (k, v) = cache.append(k_new, v_new);
    attention(q, k, v, mode)
}

/// Causal attention without a cache: the `nq` queries are the last `nq` positions of the `nk`
/// keys (`nq <= nk`). Shapes as in [`attend`], with `k`, `v` `[b, hkv, nk, d]`.
pub fn attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mode: &AttentionMode,
) -> Result<Tensor<B, 4>, AttentionError> {
    check_shapes(&q.dims(), &k.dims(), &v.dims())?;
    if q.dims()[2] > k.dims()[2] {
        return Err(AttentionError::Shape {
            tensor: "q",
            expected: format!(
                "at most {} query positions (the number of keys)",
                k.dims()[2]
            ),
            found: q.dims().to_vec(),
        });
    }
    match mode {
        AttentionMode::Full => Ok(reference::causal_attention(q, k, v)),
    }
}

fn check_shapes(q: &[usize; 4], k: &[usize; 4], v: &[usize; 4]) -> Result<(), AttentionError> {
    let [b, hq, _, d] = *q;
    let [kb, hkv, _, kd] = *k;
    if kb != b || kd != d || hkv == 0 || hq % hkv != 0 {
        return Err(AttentionError::Shape {
            tensor: "k",
            expected: format!("[{b}, a divisor of {hq}, n, {d}]"),
            found: k.to_vec(),
        });
    }
    if v != k {
        return Err(AttentionError::Shape {
            tensor: "v",
            expected: format!("{k:?}, the shape of k"),
            found: v.to_vec(),
        });
    }
    if b == 0 || d == 0 {
        return Err(AttentionError::Shape {
            tensor: "q",
            expected: "non-empty batch and head_dim".into(),
            found: q.to_vec(),
        });
    }
    Ok(())
}
