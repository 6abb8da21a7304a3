//! The prompts of a right-padded batch in one attention call, each sequence with its own cache.
//!
//! Under a causal rule no query sees a later key, so the padding after a sequence's prompt
//! changes nothing in its real rows: one call over the padded batch computes what one call per
//! sequence computes, with one kernel launch instead of `b`. Rules that depend on each prompt's
//! length (triangle's dense last queries, XAttention's block choice) differ per sequence and stay
//! with [`crate::attend`].

use burn::tensor::{FloatDType, Tensor, TensorData, TensorPrimitive};

use crate::{
    check_new_positions, check_route_flags, run, run_routed_on_host, visibility, AttentionBackend,
    AttentionError, AttentionMode, AttentionSpec, KeyLayout, LayerKvCache, Visibility,
};

/// [`crate::attend`] for the prompts of a right-padded batch, in one call: sequence `i` holds
/// `lens[i]` positions at the start of its rows of `q` `[b, hq, n, d]` (RoPE applied) and
/// `k_new`, `v_new` `[b, hkv, n, d]`; `caches[i]` must be empty and receives those positions
/// (batch 1 each). Returns `[b, hq, n, d]`, zero past each sequence's length.
///
/// `mode` must be full attention or streaming; other modes are an error naming `mode` (call
/// [`crate::attend`] per sequence for them).
pub fn attend_padded_prompts<B: AttentionBackend>(
    q: Tensor<B, 4>,
    k_new: Tensor<B, 4>,
    v_new: Tensor<B, 4>,
    caches: &mut [LayerKvCache<B>],
    mode: &AttentionMode,
    lens: &[usize],
) -> Result<Tensor<B, 4>, AttentionError> {
    check_padded(&q, &k_new, &v_new, caches, mode, lens)?;
    let n = q.dims()[2];
    let rule = visibility(&q, &k_new, mode, true, n);
    let out = match fused_with_lens(&q, &k_new, &v_new, &rule, lens) {
        Some(spec) => {
            let [qp, kp, vp] = [&q, &k_new, &v_new].map(|t| t.clone().into_primitive().tensor());
            Tensor::from_primitive(TensorPrimitive::Float(B::fused_attention(
                qp, kp, vp, &spec,
            )))
        }
        None => zero_padding_rows(
            run(q, k_new.clone(), v_new.clone(), KeyLayout::default(), rule),
            lens,
        ),
    };
    fill_caches(caches, k_new, v_new, lens);
    if let Some((sink, window)) = mode.decode_window() {
        for cache in caches.iter_mut() {
            cache.evict_outside(sink, window);
        }
    }
    Ok(out)
}

/// [`crate::attend_routed`] for the prompts of a right-padded batch, in one call: sequence `i`
/// attends fully where `full[i]` (`[b]`) is non-zero, under `sparse_mode` (streaming) otherwise.
/// Shapes, `caches` and `lens` as in [`attend_padded_prompts`]. As with `attend_routed`, the
/// caches keep every position: the caller evicts once it has read the decisions.
pub fn attend_padded_prompts_routed<B: AttentionBackend>(
    q: Tensor<B, 4>,
    k_new: Tensor<B, 4>,
    v_new: Tensor<B, 4>,
    caches: &mut [LayerKvCache<B>],
    full: Tensor<B, 1>,
    sparse_mode: &AttentionMode,
    lens: &[usize],
) -> Result<Tensor<B, 4>, AttentionError> {
    check_padded(&q, &k_new, &v_new, caches, sparse_mode, lens)?;
    let n = q.dims()[2];
    check_route_flags(&full, q.dims()[0])?;
    let sparse = visibility(&q, &k_new, sparse_mode, true, n);
    let out = match fused_with_lens(&q, &k_new, &v_new, &sparse, lens) {
        // The kernel reads the flags itself: the host does not wait for the decision.
        Some(spec) if matches!(sparse, Visibility::Window { .. }) => {
            let [qp, kp, vp] = [&q, &k_new, &v_new].map(|t| t.clone().into_primitive().tensor());
            let full = full
                .cast(FloatDType::from(q.dtype()))
                .into_primitive()
                .tensor();
            Tensor::from_primitive(TensorPrimitive::Float(B::fused_attention_routed(
                qp, kp, vp, full, &spec,
            )))
        }
        _ => zero_padding_rows(
            run_routed_on_host(&q, &k_new, &v_new, KeyLayout::default(), full, sparse)?,
            lens,
        ),
    };
    fill_caches(caches, k_new, v_new, lens);
    Ok(out)
}

/// Checks a padded-prompt call: shapes and dtypes as in `attend`, one empty cache and one
/// length in `1..=n` per sequence, and a mode whose rule does not depend on the prompt length.
fn check_padded<B: AttentionBackend>(
    q: &Tensor<B, 4>,
    k_new: &Tensor<B, 4>,
    v_new: &Tensor<B, 4>,
    caches: &[LayerKvCache<B>],
    mode: &AttentionMode,
    lens: &[usize],
) -> Result<(), AttentionError> {
    check_new_positions(q, k_new, v_new, &LayerKvCache::new())?;
    mode.validate()?;
    let [b, _, n, _] = q.dims();
    if !matches!(mode, AttentionMode::Full | AttentionMode::Streaming { .. }) {
        return Err(AttentionError::InvalidArgument {
            argument: "mode",
            message: format!(
                "{mode} depends on each prompt's length: attend per sequence (attend) instead"
            ),
        });
    }
    if caches.len() != b || lens.len() != b {
        return Err(AttentionError::InvalidArgument {
            argument: "caches",
            message: format!(
                "{} caches and {} lengths for a batch of {b} sequences: give one of each per sequence",
                caches.len(),
                lens.len()
            ),
        });
    }
    if let Some(i) = caches.iter().position(|c| !c.is_empty()) {
        return Err(AttentionError::InvalidArgument {
            argument: "caches",
            message: format!(
                "cache {i} holds {} positions: padded prompts go into empty caches",
                caches[i].len()
            ),
        });
    }
    if let Some(i) = lens.iter().position(|&len| len == 0 || len > n) {
        return Err(AttentionError::InvalidArgument {
            argument: "lens",
            message: format!(
                "sequence {i} has length {}: each must be in 1..={n} (the padded length)",
                lens[i]
            ),
        });
    }
    Ok(())
}

/// The kernel's spec with each sequence's length, when the backend has a fused kernel for it and
/// nothing records a graph (the backward kernels take no padding).
fn fused_with_lens<B: AttentionBackend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    rule: &Visibility,
    lens: &[usize],
) -> Option<AttentionSpec> {
    let mut spec = AttentionSpec::new(rule.clone(), q.dims()[3]);
    spec.q_lens = Some(lens.to_vec());
    spec.kv_lens = Some(lens.to_vec());
    let [qp, kp, vp] = [q, k, v].map(|t| t.clone().into_primitive().tensor());
    let usable = !B::attention_needs_graph(&qp, &kp, &vp)
        && B::has_fused_attention(&q.dims(), &k.dims(), q.dtype(), &spec, &q.device());
    usable.then_some(spec)
}

/// `out` `[b, h, n, d]` with the rows past each sequence's length set to zero.
fn zero_padding_rows<B: AttentionBackend>(out: Tensor<B, 4>, lens: &[usize]) -> Tensor<B, 4> {
    let [b, _, n, _] = out.dims();
    if lens.iter().all(|&len| len == n) {
        return out;
    }
    let keep: Vec<f32> = lens
        .iter()
        .flat_map(|&len| (0..n).map(move |row| (row < len) as u8 as f32))
        .collect();
    let mask = Tensor::<B, 4>::from_data(TensorData::new(keep, [b, 1, n, 1]), &out.device())
        .cast(FloatDType::from(out.dtype()));
    out * mask
}

/// Appends each sequence's own positions to its cache.
fn fill_caches<B: AttentionBackend>(
    caches: &mut [LayerKvCache<B>],
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    lens: &[usize],
) {
    for (i, (cache, &len)) in caches.iter_mut().zip(lens).enumerate() {
        let take = |t: &Tensor<B, 4>| t.clone().narrow(0, i, 1).narrow(2, 0, len);
        cache.append(take(&k), take(&v));
    }
}
