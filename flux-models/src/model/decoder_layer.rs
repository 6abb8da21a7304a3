//! One pre-norm decoder layer: self-attention then a SwiGLU MLP, each with a residual.

use flux_attention::FluxBackend;
use std::ops::Range;

use burn::tensor::{backend::Backend, FloatDType, Tensor};
use flux_attention::{
    attend, attend_padded_prompts, attend_padded_prompts_routed, attend_routed, attention,
    AttentionMode, LayerKvCache,
};
use flux_router::{full_flags, pool_query_states};

use super::linear::Linear;
use super::rms_norm::RmsNorm;
use super::rope::RopeTables;
use super::routing::{LayerChoice, LayerDecision};
use super::timer::AttentionTimer;
use crate::error::{ModelError, Result};

/// Self-attention of one layer (GQA, optional q/k norm of Qwen3).
#[derive(Debug, Clone)]
pub struct SelfAttention<B: Backend> {
    /// q, k and v projections as one ([`Linear::concat`]).
    pub(crate) qkv_proj: Linear<B>,
    pub(crate) o_proj: Linear<B>,
    /// Per-head RMS norms on q and k before RoPE (Qwen3).
    pub(crate) qk_norm: Option<(RmsNorm<B>, RmsNorm<B>)>,
    pub(crate) num_heads: usize,
    pub(crate) num_kv_heads: usize,
    pub(crate) head_dim: usize,
}

/// SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`.
#[derive(Debug, Clone)]
pub struct Mlp<B: Backend> {
    /// gate and up projections as one ([`Linear::concat`]).
    pub(crate) gate_up_proj: Linear<B>,
    pub(crate) down_proj: Linear<B>,
}

/// A decoder layer.
#[derive(Debug, Clone)]
pub struct DecoderLayer<B: Backend> {
    pub(crate) input_layernorm: RmsNorm<B>,
    pub(crate) self_attn: SelfAttention<B>,
    pub(crate) post_attention_layernorm: RmsNorm<B>,
    pub(crate) mlp: Mlp<B>,
}

impl<B: FluxBackend> SelfAttention<B> {
    /// Splits `[b, n, heads * d]` into `[b, heads, n, d]`.
    fn heads(x: Tensor<B, 3>, heads: usize, head_dim: usize) -> Tensor<B, 4> {
        let [b, n, _] = x.dims();
        x.reshape([b, n, heads, head_dim]).swap_dims(1, 2)
    }

    /// Query, key and value states of `x` `[b, n, hidden]`, before RoPE (after q/k norm).
    fn project(&self, x: Tensor<B, 3>) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
        let (q_out, kv_out) = (
            self.num_heads * self.head_dim,
            self.num_kv_heads * self.head_dim,
        );
        let mut parts = self
            .qkv_proj
            .forward_split(x, &[q_out, kv_out, kv_out])
            .into_iter();
        let mut next =
            |heads| Self::heads(parts.next().expect("three parts"), heads, self.head_dim);
        let mut q = next(self.num_heads);
        let mut k = next(self.num_kv_heads);
        let v = next(self.num_kv_heads);
        if let Some((q_norm, k_norm)) = &self.qk_norm {
            q = q_norm.forward(q);
            k = k_norm.forward(k);
        }
        (q, k, v)
    }

    /// Attention of `x` `[b, n, hidden]`: sequence `i` holds its tokens at `spans[i]` (the rest
    /// is padding, whose output is zero), at the positions of `ropes[i]`, through `caches[i]`
    /// when there are caches. `choice` says which attention each sequence runs.
    pub(crate) fn forward(
        &self,
        x: Tensor<B, 3>,
        ropes: &[RopeTables<B>],
        spans: &[Range<usize>],
        caches: Option<&mut [LayerKvCache<B>]>,
        choice: LayerChoice<'_, B>,
        timer: &AttentionTimer,
    ) -> Result<(Tensor<B, 3>, LayerDecision<B>)> {
        let [b, n, _] = x.dims();
        let (q, k, v) = self.project(x);
        let router_error = |e: flux_router::RouterError| ModelError::InvalidArgument {
            argument: "routers".into(),
            message: e.to_string(),
        };
        let (out, decision) = match choice {
            LayerChoice::Modes(modes) => (
                self.attend_each(
                    &q,
                    &k,
                    &v,
                    ropes,
                    spans,
                    caches,
                    PerSequence::Modes(&modes),
                    timer,
                )?,
                LayerDecision::Given,
            ),
            LayerChoice::Route {
                router,
                sparse_mode,
            } => {
                let logits = router
                    .forward(q.clone(), Some(spans))
                    .map_err(router_error)?;
                // The decision stays on the device; the caller reads every layer's at once.
                let full = full_flags(logits);
                let how = PerSequence::Routed {
                    full: &full,
                    sparse_mode,
                };
                let out = self.attend_each(&q, &k, &v, ropes, spans, caches, how, timer)?;
                (out, LayerDecision::OnDevice(full))
            }
            LayerChoice::Mix {
                router,
                sparse_mode,
                gumbel,
                rng,
                pool_spans,
                forced,
            } => {
                let logits = router
                    .forward(q.clone(), Some(pool_spans))
                    .map_err(router_error)?;
                let decision = gumbel.sample_with_choice(logits, rng, forced);
                let (full, sparse) = (vec![AttentionMode::Full; b], vec![sparse_mode; b]);
                let fa = self.attend_each(
                    &q,
                    &k,
                    &v,
                    ropes,
                    spans,
                    None,
                    PerSequence::Modes(&full),
                    timer,
                )?;
                let sa = self.attend_each(
                    &q,
                    &k,
                    &v,
                    ropes,
                    spans,
                    None,
                    PerSequence::Modes(&sparse),
                    timer,
                )?;
                let z = decision
                    .z_full
                    .clone()
                    .reshape([b, 1, 1, 1])
                    .cast(FloatDType::from(fa.dtype()));
                let out = fa * z.clone() + sa * z.neg().add_scalar(1.0);
                (out, LayerDecision::Soft(decision.z_full, decision.full))
            }
            LayerChoice::Observe {
                pool_spans,
                pool_tokens,
            } => {
                let pooled =
                    pool_query_states(q.clone(), Some(pool_spans), pool_tokens, self.head_dim)
                        .map_err(router_error)?;
                let full = vec![AttentionMode::Full; b];
                let out = self.attend_each(
                    &q,
                    &k,
                    &v,
                    ropes,
                    spans,
                    None,
                    PerSequence::Modes(&full),
                    timer,
                )?;
                (out, LayerDecision::Pooled(pooled))
            }
        };
        let out = out
            .swap_dims(1, 2)
            .reshape([b, n, self.num_heads * self.head_dim]);
        Ok((self.o_proj.forward(out), decision))
    }

    /// Attention per sequence (each with its span, RoPE positions, cache and mode), back in
    /// the padded layout `[b, hq, n, d]`.
    #[allow(clippy::too_many_arguments)]
    fn attend_each(
        &self,
        q: &Tensor<B, 4>,
        k: &Tensor<B, 4>,
        v: &Tensor<B, 4>,
        ropes: &[RopeTables<B>],
        spans: &[Range<usize>],
        mut caches: Option<&mut [LayerKvCache<B>]>,
        how: PerSequence<'_, B>,
        timer: &AttentionTimer,
    ) -> Result<Tensor<B, 4>> {
        if let Some(out) =
            self.attend_padded_batch(q, k, v, ropes, spans, caches.as_deref_mut(), how, timer)?
        {
            return Ok(out);
        }
        let [b, hq, n, d] = q.dims();
        let mut outputs = Vec::with_capacity(b);
        for i in 0..b {
            let span = spans[i].clone();
            let take =
                |t: &Tensor<B, 4>| t.clone().narrow(0, i, 1).narrow(2, span.start, span.len());
            let qi = ropes[i].apply(take(q))?;
            let ki = ropes[i].apply(take(k))?;
            let vi = take(v);
            let out = timer.time::<B, _>(&q.device(), || match (how, caches.as_deref_mut()) {
                (PerSequence::Modes(modes), Some(caches)) => {
                    attend(qi, ki, vi, &mut caches[i], &modes[i])
                }
                (PerSequence::Modes(modes), None) => attention(qi, ki, vi, &modes[i]),
                (PerSequence::Routed { full, sparse_mode }, caches) => {
                    let mut scratch = LayerKvCache::new();
                    let cache = caches.map_or(&mut scratch, |c| &mut c[i]);
                    let flag = full.clone().narrow(0, i, 1);
                    attend_routed(qi, ki, vi, cache, flag, &sparse_mode)
                }
            })?;
            let mut parts = Vec::with_capacity(3);
            let padding = (&q.device(), q.dtype());
            if span.start > 0 {
                parts.push(Tensor::zeros([1, hq, span.start, d], padding));
            }
            parts.push(out);
            if span.end < n {
                parts.push(Tensor::zeros([1, hq, n - span.end, d], padding));
            }
            outputs.push(if parts.len() == 1 {
                parts.pop().expect("one part")
            } else {
                Tensor::cat(parts, 2)
            });
        }
        Ok(if b == 1 {
            outputs.pop().expect("one sequence")
        } else {
            Tensor::cat(outputs, 0)
        })
    }
}

impl<B: FluxBackend> SelfAttention<B> {
    /// The prompts of a right-padded batch whose sequences share one rule (full attention or
    /// streaming), in one attention call ([`attend_padded_prompts`]); `None` where that does not
    /// apply (decode steps, left padding, per-sequence or length-dependent modes, training).
    #[allow(clippy::too_many_arguments)]
    fn attend_padded_batch(
        &self,
        q: &Tensor<B, 4>,
        k: &Tensor<B, 4>,
        v: &Tensor<B, 4>,
        ropes: &[RopeTables<B>],
        spans: &[Range<usize>],
        caches: Option<&mut [LayerKvCache<B>]>,
        how: PerSequence<'_, B>,
        timer: &AttentionTimer,
    ) -> Result<Option<Tensor<B, 4>>> {
        let [b, _, n, _] = q.dims();
        let Some(caches) = caches else {
            return Ok(None);
        };
        if b < 2 || caches.iter().any(|c| !c.is_empty()) || spans.iter().any(|s| s.start != 0) {
            return Ok(None);
        }
        // RoPE positions start at 0 in every sequence: the longest one's tables cover all.
        let Some(longest) = spans.iter().position(|s| s.end == n) else {
            return Ok(None);
        };
        let shared =
            |m: &AttentionMode| matches!(m, AttentionMode::Full | AttentionMode::Streaming { .. });
        match how {
            PerSequence::Modes(modes) if modes.iter().all(|m| m == &modes[0] && shared(m)) => {}
            PerSequence::Routed { sparse_mode, .. } if shared(&sparse_mode) => {}
            _ => return Ok(None),
        }
        let lens: Vec<usize> = spans.iter().map(Range::len).collect();
        let qr = ropes[longest].apply(q.clone())?;
        let kr = ropes[longest].apply(k.clone())?;
        let out = timer.time::<B, _>(&q.device(), || match how {
            PerSequence::Modes(modes) => {
                attend_padded_prompts(qr, kr, v.clone(), caches, &modes[0], &lens)
            }
            PerSequence::Routed { full, sparse_mode } => attend_padded_prompts_routed(
                qr,
                kr,
                v.clone(),
                caches,
                full.clone(),
                &sparse_mode,
                &lens,
            ),
        })?;
        Ok(Some(out))
    }
}

/// The attention each sequence of a batch runs.
enum PerSequence<'a, B: Backend> {
    /// One mode per sequence.
    Modes(&'a [AttentionMode]),
    /// Full attention where `full[i]` (on the device) is 1, `sparse_mode` elsewhere.
    Routed {
        full: &'a Tensor<B, 1>,
        sparse_mode: AttentionMode,
    },
}

// Manual: a derive would ask `B: Copy`.
impl<B: Backend> Clone for PerSequence<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B: Backend> Copy for PerSequence<'_, B> {}

impl<B: FluxBackend> Mlp<B> {
    /// Applies the MLP to `[b, n, hidden]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        // One kernel for silu(gate) * up on the fused gate/up product.
        let hidden = flux_attention::swiglu(self.gate_up_proj.forward(x))
            .expect("gate_up_proj has two equal halves (Linear::concat)");
        self.down_proj.forward(hidden)
    }
}

/// The residual stream between decoder layers: hidden states, possibly with the last layer's MLP
/// output not yet added, so that the add runs inside the next norm's kernel
/// ([`RmsNorm::forward_add`]) instead of a launch of its own.
pub(crate) struct Residual<B: Backend> {
    base: Tensor<B, 3>,
    pending: Option<Tensor<B, 3>>,
}

impl<B: FluxBackend> Residual<B> {
    /// Hidden states with nothing pending.
    pub(crate) fn new(x: Tensor<B, 3>) -> Self {
        Self {
            base: x,
            pending: None,
        }
    }

    /// The hidden states (the pending add done) and their norm by `norm`.
    pub(crate) fn normed(self, norm: &RmsNorm<B>) -> (Tensor<B, 3>, Tensor<B, 3>) {
        match self.pending {
            Some(pending) => norm.forward_add(self.base, pending),
            None => (self.base.clone(), norm.forward(self.base)),
        }
    }

    /// The hidden states, the pending add done.
    pub(crate) fn resolve(self) -> Tensor<B, 3> {
        match self.pending {
            Some(pending) => self.base + pending,
            None => self.base,
        }
    }
}

impl<B: FluxBackend> DecoderLayer<B> {
    /// `h = x + attn(norm(x)); h + mlp(norm(h))`; see [`SelfAttention::forward`].
    pub(crate) fn forward(
        &self,
        x: Tensor<B, 3>,
        ropes: &[RopeTables<B>],
        spans: &[Range<usize>],
        caches: Option<&mut [LayerKvCache<B>]>,
        choice: LayerChoice<'_, B>,
        timer: &AttentionTimer,
    ) -> Result<(Tensor<B, 3>, LayerDecision<B>)> {
        let (y, decision) =
            self.forward_residual(Residual::new(x), ropes, spans, caches, choice, timer)?;
        Ok((y.resolve(), decision))
    }

    /// [`DecoderLayer::forward`] on the residual stream: the input's pending add runs in the
    /// first norm's kernel, and the MLP output is left pending for the next layer's (or the
    /// final) norm.
    pub(crate) fn forward_residual(
        &self,
        x: Residual<B>,
        ropes: &[RopeTables<B>],
        spans: &[Range<usize>],
        caches: Option<&mut [LayerKvCache<B>]>,
        choice: LayerChoice<'_, B>,
        timer: &AttentionTimer,
    ) -> Result<(Residual<B>, LayerDecision<B>)> {
        let (x, normed) = x.normed(&self.input_layernorm);
        let (attn, decision) = self
            .self_attn
            .forward(normed, ropes, spans, caches, choice, timer)?;
        let (h, normed) = self.post_attention_layernorm.forward_add(x, attn);
        let residual = Residual {
            base: h,
            pending: Some(self.mlp.forward(normed)),
        };
        Ok((residual, decision))
    }
}
