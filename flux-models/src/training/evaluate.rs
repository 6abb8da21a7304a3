//! Scoring a sample as inference would run it: the prompt is prefilled with a routing
//! (the routers decide from the prompt alone), then the answer continues from the cache under
//! the plan of that prefill. Validation, the comparison against static plans and the report
//! all score samples this way.

use std::ops::Range;

use burn::tensor::{activation::log_softmax, Int, Tensor, TensorData};
use flux_attention::{AttentionMode, FluxBackend};
use flux_router::{LayerRoute, RoutingPlan};

use super::layerwise::scalar;
use crate::error::{ModelError, Result};
use crate::model::{Model, Routing};

/// The score of one sample.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleScore {
    /// Sum of the negative log-likelihoods of the answer tokens.
    pub nll_sum: f64,
    /// Answer tokens scored.
    pub tokens: usize,
    /// Share of sparse layers in the plan used.
    pub sparsity: f64,
    /// The plan's routes (empty for full attention).
    pub routes: Vec<LayerRoute>,
}

/// Scores the answer `ids[answer]` of one sample given the prompt `ids[..answer.start]`.
pub fn score_sample<B: FluxBackend>(
    model: &Model<B>,
    ids: &[u32],
    answer: Range<usize>,
    routing: Routing<'_, B>,
) -> Result<SampleScore> {
    if answer.start == 0 || answer.is_empty() || answer.end > ids.len() {
        return Err(ModelError::InvalidArgument {
            argument: "answer".into(),
            message: format!(
                "{answer:?} must be non-empty, after the first token and within {} tokens",
                ids.len()
            ),
        });
    }
    let mut cache = model.new_cache();
    let prompt = model.token_tensor(&[ids[..answer.start].to_vec()])?;
    let hidden = model.forward_routed(prompt, None, &mut cache, routing)?;
    let [_, p, d] = hidden.dims();
    let mut rows = vec![hidden.narrow(1, p - 1, 1)];
    if answer.len() > 1 {
        let rest = model.token_tensor(&[ids[answer.start..answer.end - 1].to_vec()])?;
        rows.push(model.forward_routed(rest, None, &mut cache, Routing::Full)?);
    }
    let rows = Tensor::cat(rows, 1);
    let count = answer.len();
    let logp = log_softmax(model.logits(rows.reshape([1, count, d])), 2);
    let labels: Vec<i64> = ids[answer].iter().map(|&t| t as i64).collect();
    let labels =
        Tensor::<B, 3, Int>::from_data(TensorData::new(labels, [1, count, 1]), model.device());
    let nll_sum = scalar(logp.gather(2, labels).sum().neg());
    let routes = cache
        .plan()
        .map(|plan| plan.routes(0).to_vec())
        .unwrap_or_default();
    let sparse = routes.iter().filter(|r| **r == LayerRoute::Sparse).count();
    Ok(SampleScore {
        nll_sum,
        tokens: count,
        sparsity: sparse as f64 / model.num_layers() as f64,
        routes,
    })
}

/// Mean next-token loss (per answer token) of `samples` under `choice`, with each sample's
/// share of sparse layers.
pub fn mean_loss<B: FluxBackend>(
    model: &Model<B>,
    samples: &[&crate::router_data::RouterSample],
    routing: Routing<'_, B>,
    mut progress: impl FnMut(),
) -> Result<(f64, Vec<SampleScore>)> {
    let mut scores = Vec::with_capacity(samples.len());
    let (mut nll, mut tokens) = (0.0, 0usize);
    for s in samples {
        let score = score_sample(model, &s.ids, s.answer.clone(), routing)?;
        nll += score.nll_sum;
        tokens += score.tokens;
        scores.push(score);
        progress();
    }
    Ok((nll / tokens.max(1) as f64, scores))
}

/// The cost of making each layer alone sparse: the mean answer loss over `samples` with only
/// that layer running `sparse_mode`, minus the loss with full attention everywhere. Layers
/// whose sparsification costs least are the ones a static plan makes sparse first (the
/// DuoAttention / TriangleMix idea at layer granularity).
pub fn layer_sparsification_costs<B: FluxBackend>(
    model: &Model<B>,
    samples: &[&crate::router_data::RouterSample],
    sparse_mode: AttentionMode,
    mut progress: impl FnMut(),
) -> Result<Vec<f64>> {
    let (full, _) = mean_loss(model, samples, Routing::Full, &mut progress)?;
    let layers = model.num_layers();
    let mut costs = Vec::with_capacity(layers);
    for l in 0..layers {
        let mut routes = vec![LayerRoute::Full; layers];
        routes[l] = LayerRoute::Sparse;
        let plan = RoutingPlan::new(sparse_mode, vec![routes]).map_err(|e| {
            ModelError::InvalidArgument {
                argument: "sparse_mode".into(),
                message: e.to_string(),
            }
        })?;
        let (loss, _) = mean_loss(model, samples, Routing::Plan(&plan), &mut progress)?;
        costs.push(loss - full);
    }
    Ok(costs)
}

/// The static plan with the `k` layers of lowest cost sparse (see
/// [`layer_sparsification_costs`]).
pub fn cheapest_layers_plan(
    costs: &[f64],
    k: usize,
    sparse_mode: AttentionMode,
) -> Result<RoutingPlan> {
    let mut order: Vec<usize> = (0..costs.len()).collect();
    order.sort_by(|&a, &b| costs[a].total_cmp(&costs[b]));
    let mut routes = vec![LayerRoute::Full; costs.len()];
    for &l in order.iter().take(k) {
        routes[l] = LayerRoute::Sparse;
    }
    RoutingPlan::new(sparse_mode, vec![routes]).map_err(|e| ModelError::InvalidArgument {
        argument: "sparse_mode".into(),
        message: e.to_string(),
    })
}
