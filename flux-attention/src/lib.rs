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

mod activation;
mod backend;
mod error;
mod kv_cache;
mod linear;
mod mode;
mod padded_prompts;
pub mod reference;
pub mod reference_backward;
pub mod xattention;

pub use activation::{
    add_rms_norm, rms_norm, rms_norm_reference, rope, rope_reference, silu, silu_reference, swiglu,
    ActivationBackend,
};
pub use backend::AttentionBackend;

/// What flux's model code needs from a burn backend: its attention, linear-layer and
/// activation extensions.
pub trait FluxBackend: AttentionBackend + LinearBackend + ActivationBackend {}
impl<B: AttentionBackend + LinearBackend + ActivationBackend> FluxBackend for B {}
pub use error::AttentionError;
pub use kernels_cubecl::AttentionSpec;
#[cfg(feature = "kernels")]
pub use kernels_cubecl::{enable_kernel_cache, kernel_cache_dir};
pub use kv_cache::LayerKvCache;
pub use linear::{linear, linear_reference, LinearBackend, WeightLayout};
pub use mode::AttentionMode;
pub use padded_prompts::{attend_padded_prompts, attend_padded_prompts_routed};
pub use reference::{BlockSelection, KeyLayout, Visibility};

use burn::tensor::{DType, FloatDType, Tensor, TensorPrimitive};

/// The dtype that sums and softmaxes of `dtype` tensors run in: f32 for the half types, the
/// dtype itself otherwise (so f64 stays f64).
pub fn accumulation_dtype(dtype: DType) -> FloatDType {
    match dtype {
        DType::F16 | DType::BF16 => FloatDType::F32,
        other => other.into(),
    }
}

/// The single attention entry point of flux.
///
/// `q` is `[b, hq, nq, d]` (RoPE applied), `k_new` and `v_new` are `[b, hkv, nq, d]` for the same
/// `nq` new positions. They are appended to `cache`; the queries then attend causally to the
/// cached positions `mode` lets them see (the new ones are the last `nq`). Returns
/// `[b, hq, nq, d]`.
///
/// The first call on an empty cache is the prompt (prefill): triangle's dense queries and
/// XAttention's block selection apply to it. Later calls are decode steps: streaming and triangle
/// read only the sink and the window, XAttention reads every key. With eviction on, sink + window
/// modes then drop from `cache` what they will never read again.
pub fn attend<B: AttentionBackend>(
    q: Tensor<B, 4>,
    k_new: Tensor<B, 4>,
    v_new: Tensor<B, 4>,
    cache: &mut LayerKvCache<B>,
    mode: &AttentionMode,
) -> Result<Tensor<B, 4>, AttentionError> {
    check_new_positions(&q, &k_new, &v_new, cache)?;
    mode.validate()?;
    let prefill = cache.is_empty();
    let (k, v) = cache.append(k_new, v_new);
    let prompt_len = cache.prompt_len().unwrap_or(cache.len());
    let visibility = visibility(&q, &k, mode, prefill, prompt_len);
    let out = run(q, k, v, cache.layout(), visibility);
    if let Some((sink, window)) = mode.decode_window() {
        cache.evict_outside(sink, window);
    }
    Ok(out)
}

/// The prompt of a layer whose choice between full attention and `sparse_mode` was made on the
/// device (a router's decision): sequence `i` attends fully where `full[i]` (`[b]`, q's float
/// dtype) is non-zero, under `sparse_mode` otherwise. Shapes and the cache as in [`attend`];
/// `cache` must be empty.
///
/// Where the backend has a fused kernel and `sparse_mode` reads a sink and a window (streaming,
/// triangle), the kernel reads `full` itself, so the host does not wait for the decision.
/// Otherwise `full` is read back and the chosen attention runs. The cache keeps every position:
/// once the caller has read the decision, a sparse layer evicts with
/// [`LayerKvCache::evict_outside`] (as [`attend`] does after each call).
pub fn attend_routed<B: AttentionBackend>(
    q: Tensor<B, 4>,
    k_new: Tensor<B, 4>,
    v_new: Tensor<B, 4>,
    cache: &mut LayerKvCache<B>,
    full: Tensor<B, 1>,
    sparse_mode: &AttentionMode,
) -> Result<Tensor<B, 4>, AttentionError> {
    check_new_positions(&q, &k_new, &v_new, cache)?;
    sparse_mode.validate()?;
    check_route_flags(&full, q.dims()[0])?;
    if !cache.is_empty() {
        return Err(AttentionError::InvalidArgument {
            argument: "cache",
            message: format!(
                "holds {} positions: a routed call is a prompt, on an empty cache",
                cache.len()
            ),
        });
    }
    let (k, v) = cache.append(k_new, v_new);
    let sparse = visibility(&q, &k, sparse_mode, true, cache.len());
    let mut spec = AttentionSpec::new(sparse, q.dims()[3]);
    spec.layout = cache.layout();
    let [qp, kp, vp] = [&q, &k, &v].map(|t| t.clone().into_primitive().tensor());
    if matches!(spec.visibility, Visibility::Window { .. })
        && !B::attention_needs_graph(&qp, &kp, &vp)
        && B::has_fused_attention(&q.dims(), &k.dims(), q.dtype(), &spec, &q.device())
    {
        let full = full
            .cast(FloatDType::from(q.dtype()))
            .into_primitive()
            .tensor();
        let out = B::fused_attention_routed(qp, kp, vp, full, &spec);
        return Ok(Tensor::from_primitive(TensorPrimitive::Float(out)));
    }
    run_routed_on_host(&q, &k, &v, cache.layout(), full, spec.visibility)
}

/// `full` must hold one flag per sequence of a batch of `b`.
fn check_route_flags<B: AttentionBackend>(
    full: &Tensor<B, 1>,
    b: usize,
) -> Result<(), AttentionError> {
    if full.dims() != [b] {
        return Err(AttentionError::Shape {
            tensor: "full",
            expected: format!("[{b}], one flag per sequence"),
            found: full.dims().to_vec(),
        });
    }
    Ok(())
}

/// A routed call that no kernel takes: the flags are read back and what they chose runs, one
/// rule when every sequence agrees, both mixed per sequence otherwise.
fn run_routed_on_host<B: AttentionBackend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    layout: KeyLayout,
    full: Tensor<B, 1>,
    sparse: Visibility,
) -> Result<Tensor<B, 4>, AttentionError> {
    let flags: Vec<bool> = full
        .clone()
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| AttentionError::InvalidArgument {
            argument: "full",
            message: format!("could not read the flags back: {e:?}"),
        })?
        .iter()
        .map(|&x| x != 0.0)
        .collect();
    let run_full = || run(q.clone(), k.clone(), v.clone(), layout, Visibility::Causal);
    let run_sparse = || run(q.clone(), k.clone(), v.clone(), layout, sparse.clone());
    Ok(if flags.iter().all(|&f| f) {
        run_full()
    } else if flags.iter().all(|&f| !f) {
        run_sparse()
    } else {
        let mix = full
            .not_equal_elem(0.0)
            .float()
            .cast(FloatDType::from(q.dtype()))
            .reshape([q.dims()[0], 1, 1, 1]);
        run_full() * mix.clone() + run_sparse() * mix.neg().add_scalar(1.0)
    })
}

/// Checks a call's queries and new keys and values against each other and against `cache`.
fn check_new_positions<B: AttentionBackend>(
    q: &Tensor<B, 4>,
    k_new: &Tensor<B, 4>,
    v_new: &Tensor<B, 4>,
    cache: &LayerKvCache<B>,
) -> Result<(), AttentionError> {
    check_shapes(&q.dims(), &k_new.dims(), &v_new.dims())?;
    check_dtypes(q, k_new, v_new)?;
    if let Some(cached) = cache.dtype() {
        if cached != k_new.dtype() {
            return Err(AttentionError::InvalidArgument {
                argument: "cache",
                message: format!(
                    "holds {cached:?} keys, the new keys are {:?}",
                    k_new.dtype()
                ),
            });
        }
    }
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
    Ok(())
}

/// Causal attention without a cache: the `nq` queries are the last `nq` positions of the `nk`
/// keys (`nq <= nk`). Shapes as in [`attend`], with `k`, `v` `[b, hkv, nk, d]`.
pub fn attention<B: AttentionBackend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mode: &AttentionMode,
) -> Result<Tensor<B, 4>, AttentionError> {
    check_shapes(&q.dims(), &k.dims(), &v.dims())?;
    check_dtypes(&q, &k, &v)?;
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
    mode.validate()?;
    let prompt_len = k.dims()[2];
    let visibility = visibility(&q, &k, mode, true, prompt_len);
    Ok(run(q, k, v, KeyLayout::default(), visibility))
}

/// The backend's fused kernel where it has one for this call, the reference otherwise.
fn run<B: AttentionBackend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    layout: KeyLayout,
    visibility: Visibility,
) -> Tensor<B, 4> {
    let mut spec = AttentionSpec::new(visibility, q.dims()[3]);
    spec.layout = layout;
    let [qp, kp, vp] = [&q, &k, &v].map(|t| t.clone().into_primitive().tensor());
    // A tracked call runs as one differentiable operation where the backend has a backward for
    // it (O(N) state); otherwise autodiff records the reference's operations.
    let fused = if B::attention_needs_graph(&qp, &kp, &vp) {
        B::has_attention_backward(&spec)
    } else {
        B::has_fused_attention(&q.dims(), &k.dims(), q.dtype(), &spec, &q.device())
    };
    if fused {
        let [q, k, v] = [qp, kp, vp];
        Tensor::from_primitive(TensorPrimitive::Float(B::fused_attention(q, k, v, &spec)))
    } else {
        // The reference in f32 at least (as the kernels accumulate), back in q's dtype.
        let dtype = q.dtype();
        let wide = accumulation_dtype(dtype);
        let [q, k, v] = [q, k, v].map(|t| t.cast(wide));
        reference::masked_attention(q, k, v, layout, &spec.visibility).cast(FloatDType::from(dtype))
    }
}

/// Which keys the queries of one call see under `mode`; `prefill` when the call holds the prompt
/// (of `prompt_len` positions).
fn visibility<B: AttentionBackend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    mode: &AttentionMode,
    prefill: bool,
    prompt_len: usize,
) -> Visibility {
    match *mode {
        AttentionMode::Full => Visibility::Causal,
        AttentionMode::Streaming { sink, window } => Visibility::Window {
            sink,
            window,
            dense: 0..0,
        },
        AttentionMode::Triangle {
            sink,
            window,
            last_queries,
        } => Visibility::Window {
            sink,
            window,
            dense: prompt_len.saturating_sub(last_queries)..prompt_len,
        },
        AttentionMode::XAttention { .. } if !prefill => Visibility::Causal,
        AttentionMode::XAttention {
            block,
            stride,
            threshold,
        } => Visibility::Blocks(xattention_selection(q, k, block, stride, threshold)),
    }
}

/// XAttention's kept blocks: on the device where the backend has the kernels (only the keep
/// flags come back to the host), through the reference otherwise.
fn xattention_selection<B: AttentionBackend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    block: usize,
    stride: usize,
    threshold: f64,
) -> BlockSelection {
    if !B::has_fused_xattention(&q.dims(), &k.dims(), q.dtype(), block, stride, &q.device()) {
        let scores = xattention::block_scores(q, k, block, stride);
        return xattention::select_blocks(&scores, threshold);
    }
    let [q_prim, k_prim] = [q, k].map(|t| t.clone().into_primitive().tensor());
    let keep = Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(B::fused_xattention_keep(
        q_prim, k_prim, block, stride, threshold,
    )));
    let blocks = kernels_cubecl::XAttentionBlocks::new(q.dims()[2], k.dims()[2], block, stride);
    let flags = keep
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("f32 after convert");
    BlockSelection {
        block,
        first_q_block: blocks.first_q_block,
        q_blocks: blocks.q_blocks,
        k_blocks: blocks.k_blocks,
        heads: q.dims()[1],
        keep: flags.iter().map(|&x| x > 0.5).collect(),
    }
}

/// q, k and v of one call share a dtype (the kernels read all three as q's).
fn check_dtypes<B: AttentionBackend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
) -> Result<(), AttentionError> {
    for (name, t) in [("k", k), ("v", v)] {
        if t.dtype() != q.dtype() {
            return Err(AttentionError::InvalidArgument {
                argument: name,
                message: format!("is {:?}, q is {:?}", t.dtype(), q.dtype()),
            });
        }
    }
    Ok(())
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
