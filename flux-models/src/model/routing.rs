//! How a forward pass chooses each layer's attention: full, a plan, or the routers.

use std::ops::Range;

use burn::tensor::{backend::Backend, Tensor};
use flux_attention::AttentionMode;
use flux_router::{GumbelSoftmax, LayerRouter, RouterSet, RoutingPlan};
use rand::rngs::StdRng;

/// The attention choice of an inference forward pass ([`crate::Model::forward_routed`]).
#[derive(Debug)]
pub enum Routing<'a, B: Backend> {
    /// Full attention everywhere, unless the cache holds a plan from its prefill.
    Full,
    /// This plan (one row per sequence of the batch); it is stored in the cache for decode.
    Plan(&'a RoutingPlan),
    /// At prefill, each layer's router chooses per sequence (argmax, no noise) from the layer's
    /// query states, and only the chosen branch runs; the resulting plan is stored in the cache
    /// and reused at decode.
    Routers {
        /// One router per layer.
        routers: &'a RouterSet<B>,
        /// The mode of layers routed to sparse attention.
        sparse_mode: AttentionMode,
    },
}

// Manual: a derive would ask `B: Copy`.
impl<B: Backend> Clone for Routing<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B: Backend> Copy for Routing<'_, B> {}

/// What one layer does in one forward pass.
pub(crate) enum LayerChoice<'a, B: Backend> {
    /// These modes, one per sequence.
    Modes(Vec<AttentionMode>),
    /// The router decides per sequence; the chosen branch runs.
    Route {
        router: &'a LayerRouter<B>,
        sparse_mode: AttentionMode,
    },
    /// Training: both branches, mixed by Gumbel straight-through weights.
    Mix {
        router: &'a LayerRouter<B>,
        sparse_mode: AttentionMode,
        gumbel: GumbelSoftmax,
        rng: &'a mut StdRng,
        /// The tokens each sequence's router pools (the prompt, without the answer).
        pool_spans: &'a [Range<usize>],
        /// Hard choices to repeat (a recomputation), instead of the sampled ones.
        forced: Option<&'a [bool]>,
    },
    /// Full attention, reporting what a router would see: the pooled query states.
    Observe {
        /// The tokens each sequence's router pools.
        pool_spans: &'a [Range<usize>],
        /// Tokens pooled at each end.
        pool_tokens: usize,
    },
}

/// What a layer reports about its choice.
pub(crate) enum LayerDecision<B: Backend> {
    /// Nothing was decided (modes were given).
    Given,
    /// Decisions per sequence still on the device, `[b]` (1: full attention).
    OnDevice(Tensor<B, 1>),
    /// Straight-through weights of full attention `[b]` and the hard decisions.
    Soft(Tensor<B, 1>, Vec<bool>),
    /// A router's input `[b, head_dim]` (the layer ran full attention).
    Pooled(Tensor<B, 2>),
}
