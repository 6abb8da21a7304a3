//! The decoder-only transformer shared by Llama, Qwen2 and Qwen3, generic over the burn backend.
//!
//! Weights are plain tensors, not trainable parameters: the backbone is frozen by construction,
//! so even on an autodiff backend no gradient ever reaches it.

mod backend_map;
mod decoder_layer;
mod kv_cache;
mod linear;
mod loading;
mod rms_norm;
mod rope;
mod routing;
mod timer;

pub use backend_map::{FromInner, TensorMap, ToDevice, ToInner};
use decoder_layer::Residual;
pub use decoder_layer::{DecoderLayer, Mlp, SelfAttention};
pub use kv_cache::KvCache;
pub use linear::Linear;
pub(crate) use loading::check_dtype;
pub use loading::{default_float_dtype, dtype_name};
pub use rms_norm::RmsNorm;
pub use rope::{Rope, RopeTables};
pub use routing::Routing;
pub use timer::AttentionTimer;

use flux_attention::FluxBackend;
use std::ops::Range;
use std::sync::Arc;

use burn::tensor::{backend::Backend, module::embedding, FloatDType, Int, Tensor};
use flux_attention::AttentionMode;
use flux_router::{GumbelSoftmax, LayerRoute, RouterMeta, RouterSet, RoutingPlan};
use rand::rngs::StdRng;

use routing::{LayerChoice, LayerDecision};

use crate::config::TransformerConfig;
use crate::error::{ModelError, Result};

/// A loaded Llama / Qwen2 / Qwen3 model.
#[derive(Debug, Clone)]
pub struct Model<B: Backend> {
    config: TransformerConfig,
    embed_tokens: Tensor<B, 2>,
    layers: Vec<DecoderLayer<B>>,
    norm: RmsNorm<B>,
    /// `None` when the output projection is tied to the embedding.
    lm_head: Option<Linear<B>>,
    rope: Rope,
    /// The dtype of the weights, activations and KV cache.
    dtype: FloatDType,
    device: B::Device,
    /// Shared by clones, so a caller can read the time of the model it handed out.
    timer: Arc<AttentionTimer>,
}

/// The result of a training forward pass ([`Model::forward_train`]).
#[derive(Debug, Clone)]
pub struct TrainForward<B: Backend> {
    /// Final hidden states `[b, n, hidden]` (padding positions included).
    pub hidden: Tensor<B, 3>,
    /// Per layer, the straight-through weight of full attention of each sequence, `[b]`.
    pub z_full: Vec<Tensor<B, 1>>,
    /// The hard choices of this pass, as a plan.
    pub plan: RoutingPlan,
}

/// What one training layer needs besides its input (see `Model::train_layer`).
#[derive(Clone, Copy)]
pub(crate) struct TrainLayer<'a, B: Backend> {
    pub ropes: &'a [RopeTables<B>],
    /// Where each sequence's tokens are (the rest is padding).
    pub spans: &'a [Range<usize>],
    /// What each sequence's router pools.
    pub pool_spans: &'a [Range<usize>],
    pub router: &'a flux_router::LayerRouter<B>,
    pub sparse_mode: AttentionMode,
    pub gumbel: GumbelSoftmax,
    pub forced: Option<&'a [bool]>,
}

/// Per-layer decisions left on the device (`[b]` each, 1: full) as `decisions[layer][sequence]`,
/// in one read: the only wait of a routed prefill on the host.
fn read_decisions<B: Backend>(flags: Vec<Tensor<B, 1>>, b: usize) -> Vec<Vec<bool>> {
    if flags.is_empty() {
        return Vec::new();
    }
    let values: Vec<f32> = Tensor::stack::<2>(flags, 0)
        .into_data()
        .convert::<f32>()
        .into_vec()
        .expect("f32 after convert");
    values
        .chunks(b)
        .map(|row| row.iter().map(|&x| x != 0.0).collect())
        .collect()
}

/// A plan from per-layer hard decisions (`decisions[layer][sequence]`, `true`: full).
fn plan_from_decisions(
    decisions: &[Vec<bool>],
    b: usize,
    sparse_mode: AttentionMode,
) -> Result<RoutingPlan> {
    let routes = (0..b)
        .map(|i| {
            decisions
                .iter()
                .map(|d| {
                    if d[i] {
                        LayerRoute::Full
                    } else {
                        LayerRoute::Sparse
                    }
                })
                .collect()
        })
        .collect();
    RoutingPlan::new(sparse_mode, routes).map_err(|e| ModelError::InvalidArgument {
        argument: "sparse_mode".into(),
        message: e.to_string(),
    })
}

impl<B: Backend> Model<B> {
    /// The configuration the model was built from.
    pub fn config(&self) -> &TransformerConfig {
        &self.config
    }

    /// The device holding the weights.
    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// The dtype of the weights, activations and KV cache (logits are f32).
    pub fn dtype(&self) -> FloatDType {
        self.dtype
    }
}

impl<B: FluxBackend> Model<B> {
    /// An empty KV cache sized for this model.
    pub fn new_cache(&self) -> KvCache<B> {
        KvCache::new(self.layers.len())
    }

    /// Whether any backbone tensor is tracked by an autodiff backend. Loaded models hold plain
    /// tensors, so this is `false` and router training cannot reach the backbone.
    pub fn backbone_requires_grad(&self) -> bool {
        let layer_tracked = |l: &DecoderLayer<B>| {
            let a = &l.self_attn;
            [
                &a.qkv_proj,
                &a.o_proj,
                &l.mlp.gate_up_proj,
                &l.mlp.down_proj,
            ]
            .iter()
            .any(|p| p.is_require_grad())
                || a.qk_norm
                    .as_ref()
                    .is_some_and(|(q, k)| q.is_require_grad() || k.is_require_grad())
                || l.input_layernorm.is_require_grad()
                || l.post_attention_layernorm.is_require_grad()
        };
        self.embed_tokens.is_require_grad()
            || self.norm.is_require_grad()
            || self.lm_head.as_ref().is_some_and(Linear::is_require_grad)
            || self.layers.iter().any(layer_tracked)
    }

    /// An empty KV cache; with `evict`, layers that run a sink + window mode keep only the sink
    /// and the window.
    pub fn new_cache_with_eviction(&self, evict: bool) -> KvCache<B> {
        KvCache::with_eviction(self.layers.len(), evict)
    }

    /// The timer of the attention calls (off until enabled).
    pub fn attention_timer(&self) -> &AttentionTimer {
        &self.timer
    }

    /// What a router set for this model must have been trained for (sparse mode and pool size
    /// as given).
    pub fn router_meta(&self, sparse_mode: AttentionMode, pool_tokens: usize) -> RouterMeta {
        RouterMeta {
            architecture: self.config.architecture.hf_class().to_string(),
            num_layers: self.layers.len(),
            num_heads: self.config.num_heads,
            head_dim: self.config.head_dim,
            pool_tokens,
            sparse_mode,
        }
    }

    /// Runs `tokens` (`[b, n]`, positions following what `cache` holds) through every layer and
    /// the final norm, with full attention (or the plan the cache's prefill chose). Returns the
    /// hidden states `[b, n, hidden]`; see [`Model::logits`].
    pub fn forward(
        &self,
        tokens: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
    ) -> Result<Tensor<B, 3>> {
        self.forward_routed(tokens, None, cache, Routing::Full)
    }

    /// Inference forward pass with a routing choice.
    ///
    /// `tokens` is `[b, n]`; sequence `i` holds its tokens at `spans[i]` (left or right padding
    /// around it is ignored, its output is zero); `None` means no padding. Each sequence
    /// continues at the position its cache reached. At prefill (empty cache), `routing` fixes
    /// the plan, which the cache keeps; decode steps reuse it whatever `routing` says.
    pub fn forward_routed(
        &self,
        tokens: Tensor<B, 2, Int>,
        spans: Option<&[Range<usize>]>,
        cache: &mut KvCache<B>,
        routing: Routing<'_, B>,
    ) -> Result<Tensor<B, 3>> {
        let [b, n] = tokens.dims();
        let spans = self.check_input(b, n, spans)?;
        let invalid = |argument: &str, message: String| ModelError::InvalidArgument {
            argument: argument.into(),
            message,
        };
        if cache.layers.len() != self.layers.len() {
            return Err(invalid(
                "cache",
                format!(
                    "has {} layers, the model {}",
                    cache.layers.len(),
                    self.layers.len()
                ),
            ));
        }
        cache
            .ensure_batch(b)
            .map_err(|message| invalid("cache", message))?;
        let prefill = (0..b).all(|i| cache.sequence_len(i) == 0);
        // Decode steps run the plan of the prefill; owned so the cache can be borrowed below.
        let (plan, routers) = match (prefill, routing) {
            (false, _) => (cache.plan.clone(), None),
            (true, Routing::Full) => (None, None),
            (true, Routing::Plan(plan)) => {
                self.check_plan(plan, b)?;
                (Some(plan.clone()), None)
            }
            (
                true,
                Routing::Routers {
                    routers,
                    sparse_mode,
                },
            ) => {
                self.check_routers(routers)?;
                (None, Some((routers, sparse_mode)))
            }
        };
        let ropes: Vec<_> = spans
            .iter()
            .enumerate()
            .map(|(i, s)| {
                self.rope
                    .tables::<B>(cache.sequence_len(i), s.len(), &self.device, self.dtype)
            })
            .collect();
        // Each layer's last residual add runs inside the next norm's kernel.
        let mut x = Residual::new(embedding(self.embed_tokens.clone(), tokens));
        let mut decisions = Vec::with_capacity(self.layers.len());
        for (l, (layer, caches)) in self.layers.iter().zip(cache.layers.iter_mut()).enumerate() {
            let choice = match (&plan, routers) {
                (Some(plan), _) => LayerChoice::Modes((0..b).map(|i| plan.mode(i, l)).collect()),
                (None, Some((routers, sparse_mode))) => LayerChoice::Route {
                    router: &routers.routers[l],
                    sparse_mode,
                },
                (None, None) => LayerChoice::Modes(vec![AttentionMode::Full; b]),
            };
            let (y, decision) = layer.forward_residual(
                x,
                &ropes,
                &spans,
                Some(caches.as_mut_slice()),
                choice,
                &self.timer,
            )?;
            x = y;
            if let LayerDecision::OnDevice(full) = decision {
                decisions.push(full);
            }
        }
        if prefill {
            cache.plan = match (plan, routers) {
                (Some(plan), _) => Some(plan),
                (None, Some((_, sparse_mode))) => {
                    let decisions = read_decisions(decisions, b);
                    // Sparse layers' caches kept the whole prompt while the decision was on the
                    // device; now they drop what the sparse mode will never read.
                    if let Some((sink, window)) = sparse_mode.decode_window() {
                        for (layer, full) in cache.layers.iter_mut().zip(&decisions) {
                            for (seq, _) in layer.iter_mut().zip(full).filter(|(_, &f)| !f) {
                                seq.evict_outside(sink, window);
                            }
                        }
                    }
                    Some(plan_from_decisions(&decisions, b, sparse_mode)?)
                }
                (None, None) => None,
            };
        }
        Ok(x.normed(&self.norm).1)
    }

    /// Training forward pass (no cache): each layer's router draws Gumbel-softmax weights `z`
    /// (`gumbel`: temperature, straight-through or soft) from `rng`, both branches run and the
    /// layer's attention is `z * full + (1 - z) * sparse`. Gradients reach the routers only: the backbone holds
    /// plain tensors, not parameters. `spans` as in [`Model::forward_routed`].
    pub fn forward_train(
        &self,
        tokens: Tensor<B, 2, Int>,
        spans: Option<&[Range<usize>]>,
        routers: &RouterSet<B>,
        sparse_mode: AttentionMode,
        gumbel: GumbelSoftmax,
        rng: &mut StdRng,
    ) -> Result<TrainForward<B>> {
        let [b, n] = tokens.dims();
        let spans = self.check_input(b, n, spans)?;
        self.check_routers(routers)?;
        if gumbel.tau.is_nan() || gumbel.tau <= 0.0 {
            return Err(ModelError::InvalidArgument {
                argument: "gumbel".into(),
                message: format!("temperature {} must be positive", gumbel.tau),
            });
        }
        let ropes = self.rope_tables(&spans);
        let mut x = self.embed(tokens);
        let mut z_full = Vec::with_capacity(self.layers.len());
        let mut decisions = Vec::with_capacity(self.layers.len());
        for (l, router) in routers.routers.iter().enumerate() {
            let step = TrainLayer {
                ropes: &ropes,
                spans: &spans,
                pool_spans: &spans,
                router,
                sparse_mode,
                gumbel,
                forced: None,
            };
            let (y, z, full) = self.train_layer(l, x, step, rng)?;
            x = y;
            z_full.push(z);
            decisions.push(full);
        }
        Ok(TrainForward {
            hidden: self.norm.forward(x),
            z_full,
            plan: plan_from_decisions(&decisions, b, sparse_mode)?,
        })
    }

    /// What each layer's router sees for `tokens` (`[b, n]`, no padding) under full attention:
    /// the pooled pre-RoPE query states `[b, head_dim]` over `pool_spans[i]` (`pool_tokens` at
    /// each end), one tensor per layer.
    pub fn router_inputs(
        &self,
        tokens: Tensor<B, 2, Int>,
        pool_spans: &[Range<usize>],
        pool_tokens: usize,
    ) -> Result<Vec<Tensor<B, 2>>> {
        let [b, n] = tokens.dims();
        let spans = self.check_input(b, n, None)?;
        self.check_input(b, n, Some(pool_spans))?;
        let ropes = self.rope_tables(&spans);
        let mut x = self.embed(tokens);
        let mut pooled = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let choice = LayerChoice::Observe {
                pool_spans,
                pool_tokens,
            };
            let (y, decision) = layer.forward(x, &ropes, &spans, None, choice, &self.timer)?;
            x = y;
            match decision {
                LayerDecision::Pooled(p) => pooled.push(p),
                _ => unreachable!("an observed layer reports its router input"),
            }
        }
        Ok(pooled)
    }

    /// Token embeddings `[b, n, hidden]` of `tokens` `[b, n]`.
    pub(crate) fn embed(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        embedding(self.embed_tokens.clone(), tokens)
    }

    /// RoPE tables of each sequence of a batch, from position 0.
    pub(crate) fn rope_tables(&self, spans: &[Range<usize>]) -> Vec<RopeTables<B>> {
        spans
            .iter()
            .map(|s| self.rope.tables::<B>(0, s.len(), &self.device, self.dtype))
            .collect()
    }

    /// The final norm of the hidden states leaving the last layer.
    pub(crate) fn final_norm(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.norm.forward(x)
    }

    /// Layer `l` of a training pass: both branches mixed by the router's straight-through
    /// weights. Returns the layer output, the weights of full attention `[b]` and the hard
    /// choices.
    pub(crate) fn train_layer(
        &self,
        l: usize,
        x: Tensor<B, 3>,
        step: TrainLayer<'_, B>,
        rng: &mut StdRng,
    ) -> Result<(Tensor<B, 3>, Tensor<B, 1>, Vec<bool>)> {
        let choice = LayerChoice::Mix {
            router: step.router,
            sparse_mode: step.sparse_mode,
            gumbel: step.gumbel,
            rng,
            pool_spans: step.pool_spans,
            forced: step.forced,
        };
        let (y, decision) =
            self.layers[l].forward(x, step.ropes, step.spans, None, choice, &self.timer)?;
        match decision {
            LayerDecision::Soft(z, full) => Ok((y, z, full)),
            _ => unreachable!("a mixed layer reports soft decisions"),
        }
    }

    /// Layers of the model.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Checks a batch of `b` sequences of `n` tokens and its spans; returns the spans.
    pub(crate) fn check_input(
        &self,
        b: usize,
        n: usize,
        spans: Option<&[Range<usize>]>,
    ) -> Result<Vec<Range<usize>>> {
        let invalid = |message: String| ModelError::InvalidArgument {
            argument: "tokens".into(),
            message,
        };
        if n == 0 || b == 0 {
            return Err(invalid("no token to process".into()));
        }
        match spans {
            None => Ok(vec![0..n; b]),
            Some(spans) if spans.len() != b => Err(ModelError::InvalidArgument {
                argument: "spans".into(),
                message: format!("{} spans for {b} sequences", spans.len()),
            }),
            Some(spans) => {
                if let Some((i, s)) = spans
                    .iter()
                    .enumerate()
                    .find(|(_, s)| s.is_empty() || s.end > n)
                {
                    return Err(ModelError::InvalidArgument {
                        argument: "spans".into(),
                        message: format!(
                            "span {s:?} of sequence {i} is empty or beyond {n} tokens"
                        ),
                    });
                }
                Ok(spans.to_vec())
            }
        }
    }

    pub(crate) fn check_plan(&self, plan: &RoutingPlan, b: usize) -> Result<()> {
        if plan.sequences() != b || plan.num_layers() != self.layers.len() {
            return Err(ModelError::InvalidArgument {
                argument: "plan".into(),
                message: format!(
                    "covers {} sequences x {} layers, the input has {b} sequences and the model {} layers",
                    plan.sequences(),
                    plan.num_layers(),
                    self.layers.len()
                ),
            });
        }
        Ok(())
    }

    pub(crate) fn check_routers(&self, routers: &RouterSet<B>) -> Result<()> {
        let invalid = |message: String| ModelError::InvalidArgument {
            argument: "routers".into(),
            message,
        };
        if routers.num_layers() != self.layers.len() {
            return Err(invalid(format!(
                "{} routers for a model of {} layers",
                routers.num_layers(),
                self.layers.len()
            )));
        }
        if let Some(r) = routers.routers.first() {
            if r.head_dim() != self.config.head_dim {
                return Err(invalid(format!(
                    "routers take head_dim {}, the model has {}",
                    r.head_dim(),
                    self.config.head_dim
                )));
            }
        }
        Ok(())
    }

    /// Next-token logits `[b, n, vocab]` of hidden states from [`Model::forward`]: in f32 for
    /// bf16, f16 and f32 models (f64 for f64 ones), so softmaxes, losses and sampling never
    /// read half precision.
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        let logits = match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => {
                // Tied head: the [vocab, d] embedding is the weight in [out, in] order.
                let [b, n, d] = hidden.dims();
                let vocab = self.embed_tokens.dims()[0];
                flux_attention::linear(
                    hidden.reshape([b * n, d]),
                    self.embed_tokens.clone(),
                    None,
                    flux_attention::WeightLayout::OutIn,
                )
                .reshape([b, n, vocab])
            }
        };
        logits.cast(flux_attention::accumulation_dtype(self.dtype.into()))
    }

    /// The logits of position `ends[i] - 1` of each sequence `i` of `hidden` `[b, n, d]` (a
    /// sequence's last token), read back in one transfer as one `vocab`-long row per sequence.
    pub fn last_logits(&self, hidden: Tensor<B, 3>, ends: &[usize]) -> Result<Vec<Vec<f32>>> {
        let [b, n, _] = hidden.dims();
        if ends.len() != b || ends.iter().any(|&e| e == 0 || e > n) {
            return Err(ModelError::InvalidArgument {
                argument: "ends".into(),
                message: format!("{ends:?} for {b} sequences of {n} positions"),
            });
        }
        let last = if ends.iter().all(|&e| e == n) {
            hidden.narrow(1, n - 1, 1)
        } else {
            let rows = ends
                .iter()
                .enumerate()
                .map(|(i, &end)| hidden.clone().narrow(0, i, 1).narrow(1, end - 1, 1))
                .collect();
            Tensor::cat(rows, 0)
        };
        let flat = self
            .logits(last)
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| ModelError::InvalidArgument {
                argument: "logits".into(),
                message: format!("could not read logits back from the device: {e:?}"),
            })?;
        let vocab = flat.len() / b;
        Ok(flat.chunks(vocab).map(<[f32]>::to_vec).collect())
    }

    /// Token ids as a `[b, n]` tensor on the model's device; checks they are in the vocabulary.
    pub fn token_tensor(&self, batch: &[Vec<u32>]) -> Result<Tensor<B, 2, Int>> {
        let n = batch.first().map_or(0, Vec::len);
        let vocab = self.config.vocab_size;
        let mut flat = Vec::with_capacity(batch.len() * n);
        for (i, seq) in batch.iter().enumerate() {
            if seq.len() != n {
                return Err(ModelError::InvalidArgument {
                    argument: "tokens".into(),
                    message: format!("sequence {i} has {} tokens, sequence 0 has {n}", seq.len()),
                });
            }
            if let Some(&bad) = seq.iter().find(|&&t| t as usize >= vocab) {
                return Err(ModelError::InvalidArgument {
                    argument: "tokens".into(),
                    message: format!("token id {bad} is outside the vocabulary of {vocab}"),
                });
            }
            flat.extend(seq.iter().map(|&t| t as i64));
        }
        Ok(Tensor::<B, 2, Int>::from_data(
            burn::tensor::TensorData::new(flat, [batch.len(), n]),
            &self.device,
        ))
    }
}
