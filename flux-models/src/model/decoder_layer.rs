//! One pre-norm decoder layer: self-attention then a SwiGLU MLP, each with a residual.

use flux_attention::FluxBackend;
use std::ops::Range;

use burn::tensor::{backend::Backend, FloatDType, Tensor};
use flux_attention::{accumulation_dtype, attend, attention, AttentionMode, LayerKvCache};
use flux_router::{argmax_decisions, pool_query_states, silu};

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
                self.attend_each(&q, &k, &v, ropes, spans, caches, &modes, timer)?,
                LayerDecision::Given,
            ),
            LayerChoice::Route {
                router,
                sparse_mode,
            } => {
                let logits = router
                    .forward(router_input(&q, router), Some(spans))
                    .map_err(router_error)?;
                let full = argmax_decisions(logits);
                let modes = modes_of(&full, sparse_mode);
                let out = self.attend_each(&q, &k, &v, ropes, spans, caches, &modes, timer)?;
                (out, LayerDecision::Hard(full))
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
                    .forward(router_input(&q, router), Some(pool_spans))
                    .map_err(router_error)?;
                let decision = gumbel.sample_with_choice(logits, rng, forced);
                let fa = self.attend_each(
                    &q,
                    &k,
                    &v,
                    ropes,
                    spans,
                    None,
                    &vec![AttentionMode::Full; b],
                    timer,
                )?;
                let sa =
                    self.attend_each(&q, &k, &v, ropes, spans, None, &vec![sparse_mode; b], timer)?;
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
                let pooled = pool_query_states(
                    q.clone().cast(accumulation_dtype(q.dtype())),
                    Some(pool_spans),
                    pool_tokens,
                    self.head_dim,
                )
                .map_err(router_error)?;
                let full = vec![AttentionMode::Full; b];
                let out = self.attend_each(&q, &k, &v, ropes, spans, None, &full, timer)?;
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
        modes: &[AttentionMode],
        timer: &AttentionTimer,
    ) -> Result<Tensor<B, 4>> {
        let [b, hq, n, d] = q.dims();
        let mut outputs = Vec::with_capacity(b);
        for i in 0..b {
            let span = spans[i].clone();
            let take =
                |t: &Tensor<B, 4>| t.clone().narrow(0, i, 1).narrow(2, span.start, span.len());
            let qi = ropes[i].apply(take(q));
            let ki = ropes[i].apply(take(k));
            let vi = take(v);
            let out = timer.time::<B, _>(&q.device(), || match caches.as_deref_mut() {
                Some(caches) => attend(qi, ki, vi, &mut caches[i], &modes[i]),
                None => attention(qi, ki, vi, &modes[i]),
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

/// What a router reads: the query states in the router's dtype (f32 as trained and loaded),
/// whatever the backbone's.
fn router_input<B: Backend>(
    q: &Tensor<B, 4>,
    router: &flux_router::LayerRouter<B>,
) -> Tensor<B, 4> {
    q.clone().cast(router.dtype())
}

/// Modes from hard decisions (`true`: full attention).
pub(crate) fn modes_of(full: &[bool], sparse_mode: AttentionMode) -> Vec<AttentionMode> {
    full.iter()
        .map(|&f| if f { AttentionMode::Full } else { sparse_mode })
        .collect()
}

impl<B: flux_attention::LinearBackend> Mlp<B> {
    /// Applies the MLP to `[b, n, hidden]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let width = self.gate_up_proj.out_features() / 2;
        let [gate, up]: [Tensor<B, 3>; 2] = self
            .gate_up_proj
            .forward_split(x, &[width, width])
            .try_into()
            .expect("two parts");
        self.down_proj.forward(silu(gate) * up)
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
        let (attn, decision) = self.self_attn.forward(
            self.input_layernorm.forward(x.clone()),
            ropes,
            spans,
            caches,
            choice,
            timer,
        )?;
        let h = x + attn;
        let mlp = self
            .mlp
            .forward(self.post_attention_layernorm.forward(h.clone()));
        Ok((h + mlp, decision))
    }
}
