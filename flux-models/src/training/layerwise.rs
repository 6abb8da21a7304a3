//! Router gradients by layer-wise recomputation: memory of one layer's graph instead of all.
//!
//! Only the routers (and the constraint multipliers) train, so the backbone's activations need
//! no gradient of their own. A step runs:
//! 1. a forward pass with no graph (untracked routers), keeping each layer's input `x_l` and
//!    its hard choices; every layer draws its Gumbel noise from its own seeded generator;
//! 2. the LM loss on the answer tokens from the last hidden state (a fresh leaf), whose
//!    backward gives `g_L = dLoss/dx_L`; the sparsity penalty from the hard choices, whose
//!    backward gives the multipliers' gradients and `dP/ds`;
//! 3. for `l = L-1 .. 0`: layer `l` again, from a leaf copy of `x_l`, with the tracked router,
//!    the same noise and the same choices; the surrogate `sum(y_l * g_{l+1}) + sum(z_l * c)`
//!    (`c = dP/ds * ds/dz_l`) backpropagates into router `l` and gives `g_l = dLoss/dx_l`.
//!
//! The gradients equal those of one backward pass through the whole graph (a test checks it
//! in float64); the cost is two forward passes and one backward pass.

use std::ops::Range;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{
    activation::log_softmax,
    backend::{AutodiffBackend, Backend},
    Int, Tensor, TensorData,
};
use flux_attention::{AttentionMode, FluxBackend};
use flux_router::{GumbelSoftmax, RouterSet, SparsityObjective, TaskCategory};
use rand::{rngs::StdRng, SeedableRng};

use super::peers::{trace, PeerAgreement};
use crate::error::{ModelError, Result};
use crate::model::{Model, TrainLayer};

/// What a training step measured.
#[derive(Debug, Clone, PartialEq)]
pub struct StepStats {
    /// Mean next-token loss over the answer tokens of the batch.
    pub lm_loss: f64,
    /// Answer tokens scored.
    pub lm_tokens: usize,
    /// The sparsity penalty (mean over the batch).
    pub penalty: f64,
    /// Share of sparse layers of each sequence (hard choices).
    pub sparsity: Vec<f64>,
    /// `decisions[layer][sequence]`: `true` for full attention.
    pub decisions: Vec<Vec<bool>>,
}

/// One batch of a routed training step.
#[derive(Debug, Clone, Copy)]
pub struct StepInput<'a> {
    /// Where each sequence's tokens are.
    pub spans: &'a [Range<usize>],
    /// What each sequence's router pools.
    pub pool_spans: &'a [Range<usize>],
    /// The tokens the LM loss scores, per sequence.
    pub answers: &'a [Range<usize>],
    /// The token ids, per sequence (labels are read from them).
    pub ids: &'a [Vec<u32>],
    /// Category of each sequence.
    pub categories: &'a [TaskCategory],
    /// Sparsity target of each sequence.
    pub targets: &'a [f64],
}

/// The generator of layer `layer`'s Gumbel noise in the step seeded `seed`.
fn layer_rng(seed: u64, layer: usize) -> StdRng {
    StdRng::seed_from_u64(seed ^ (layer as u64 + 1).wrapping_mul(0xD6E8_FEB8_6659_FD93))
}

/// Adds `scale` times the gradient of every float parameter of the visited module found in
/// `grads` into `into`.
struct AddGrads<'a, B: AutodiffBackend> {
    grads: &'a mut B::Gradients,
    into: &'a mut GradientsParams,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for AddGrads<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = param.val().grad_remove(self.grads) {
            let total = match self.into.remove::<B::InnerBackend, D>(param.id) {
                Some(t) => t + g,
                None => g,
            };
            self.into.register::<B::InnerBackend, D>(param.id, total);
        }
    }
}

/// Replaces every parameter's tensor by an untracked copy that requires a gradient: a new
/// graph leaf, with the parameter's id (so gradients land under it) and none of the marks
/// burn's data-parallel training puts on the original.
struct FreshLeaves;

impl<B: AutodiffBackend> ModuleMapper<B> for FreshLeaves {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let mut leaf = Tensor::from_inner(tensor.clone().inner());
        if tensor.is_require_grad() {
            leaf = leaf.require_grad();
        }
        Param::from_mapped_value(id, leaf, mapper)
    }
}

/// What every layer of a training pass shares.
struct Pass<B: Backend> {
    spans: Vec<Range<usize>>,
    ropes: Vec<crate::model::RopeTables<B>>,
    gumbel: GumbelSoftmax,
}

/// Checks a step's input and prepares what its layers share.
fn prepare<B: FluxBackend>(
    model: &Model<B>,
    routers: &RouterSet<B>,
    tokens: &Tensor<B, 2, Int>,
    input: &StepInput<'_>,
    tau: f64,
) -> Result<Pass<B>> {
    let [b, n] = tokens.dims();
    let spans = model.check_input(b, n, Some(input.spans))?;
    model.check_routers(routers)?;
    check_batch(input, b, n)?;
    let ropes = model.rope_tables(&spans);
    Ok(Pass {
        spans,
        ropes,
        gumbel: GumbelSoftmax::straight_through(tau),
    })
}

/// What a forward pass through every layer kept.
struct Layers<B: Backend> {
    /// The output of the last layer.
    output: Tensor<B, 3>,
    /// Each layer's input.
    inputs: Vec<Tensor<B, 3>>,
    /// Each layer's straight-through weights of full attention.
    z_full: Vec<Tensor<B, 1>>,
    /// Each layer's hard choices.
    decisions: Vec<Vec<bool>>,
}

/// Every layer from the embeddings of `tokens`, each with its own noise generator.
#[allow(clippy::too_many_arguments)]
fn forward_layers<B: FluxBackend>(
    model: &Model<B>,
    routers: &RouterSet<B>,
    tokens: Tensor<B, 2, Int>,
    pass: &Pass<B>,
    pool_spans: &[Range<usize>],
    sparse_mode: AttentionMode,
    seed: u64,
) -> Result<Layers<B>> {
    let layers = model.num_layers();
    let mut out = Layers {
        output: model.embed(tokens),
        inputs: Vec::with_capacity(layers),
        z_full: Vec::with_capacity(layers),
        decisions: Vec::with_capacity(layers),
    };
    for l in 0..layers {
        out.inputs.push(out.output.clone());
        let step = TrainLayer {
            ropes: &pass.ropes,
            spans: &pass.spans,
            pool_spans,
            router: &routers.routers[l],
            sparse_mode,
            gumbel: pass.gumbel,
            forced: None,
        };
        let (y, z, full) = model.train_layer(l, out.output, step, &mut layer_rng(seed, l))?;
        out.output = y;
        out.z_full.push(z);
        out.decisions.push(full);
    }
    Ok(out)
}

/// Gradients of `scale * (LM loss + penalty)` for the routers and the multipliers, by
/// layer-wise recomputation (see the module docs), with Gumbel temperature `tau`.
#[allow(clippy::too_many_arguments)]
pub fn router_gradients<B>(
    model: &Model<B>,
    routers: &RouterSet<B>,
    objective: &SparsityObjective<B>,
    tokens: Tensor<B, 2, Int>,
    input: StepInput<'_>,
    sparse_mode: AttentionMode,
    tau: f64,
    seed: u64,
    scale: f64,
) -> Result<(GradientsParams, StepStats)>
where
    B: AutodiffBackend + FluxBackend,
{
    router_gradients_agreed(
        model,
        routers,
        objective,
        tokens,
        input,
        sparse_mode,
        tau,
        seed,
        scale,
        &PeerAgreement::new(1),
        &|_| {},
    )
}

/// What the forward pass of a step leaves for its backward passes.
struct Forward<B: AutodiffBackend> {
    pass: Pass<B>,
    inputs: Vec<Tensor<B, 3>>,
    decisions: Vec<Vec<bool>>,
    top: Tensor<B, 3>,
    lm: Tensor<B, 1>,
    lm_value: f64,
    lm_tokens: usize,
    s: Tensor<B, 1>,
    sparsity: Vec<f64>,
    penalty: Tensor<B, 1>,
    penalty_value: f64,
}

/// The forward pass with no graph, then the LM loss (from a leaf copy of the last hidden
/// state) and the penalty (from a leaf of the hard sparsities), both checked finite.
#[allow(clippy::too_many_arguments)]
fn forward_and_losses<B>(
    model: &Model<B>,
    routers: &RouterSet<B>,
    objective: &SparsityObjective<B>,
    tokens: Tensor<B, 2, Int>,
    input: &StepInput<'_>,
    sparse_mode: AttentionMode,
    tau: f64,
    seed: u64,
) -> Result<Forward<B>>
where
    B: AutodiffBackend + FluxBackend,
{
    let pass = prepare(model, routers, &tokens, input, tau)?;
    let b = pass.spans.len();
    let num_layers = model.num_layers();
    // 1. Forward with no graph: untracked routers, untracked backbone.
    let first = forward_layers(
        model,
        &routers.clone().no_grad(),
        tokens,
        &pass,
        input.pool_spans,
        sparse_mode,
        seed,
    )?;
    let (x, inputs, decisions) = (first.output, first.inputs, first.decisions);

    // 2. The LM loss from the top, and the penalty from the hard choices.
    let top = x.detach().require_grad();
    let (lm, lm_tokens) = answer_loss(model, top.clone(), input)?;
    let lm_value = scalar(lm.clone());
    if !lm_value.is_finite() {
        return Err(ModelError::InvalidArgument {
            argument: "training".into(),
            message: format!("the LM loss is not finite ({lm_value})"),
        });
    }
    let sparsity: Vec<f64> = (0..b)
        .map(|i| decisions.iter().filter(|d| !d[i]).count() as f64 / num_layers as f64)
        .collect();
    let s = Tensor::<B, 1>::from_data(
        TensorData::new(sparsity.clone(), [b]).convert::<B::FloatElem>(),
        model.device(),
    )
    .require_grad();
    let penalty = objective
        .penalty(s.clone(), input.categories, input.targets)
        .map_err(|e| internal(&e.to_string()))?;
    let penalty_value = scalar(penalty.clone());
    if !penalty_value.is_finite() {
        return Err(ModelError::InvalidArgument {
            argument: "training".into(),
            message: format!("the sparsity penalty is not finite ({penalty_value})"),
        });
    }
    Ok(Forward {
        pass,
        inputs,
        decisions,
        top,
        lm,
        lm_value,
        lm_tokens,
        s,
        sparsity,
        penalty,
        penalty_value,
    })
}

/// [`router_gradients`] for one device of several. The graphs are built from untracked copies
/// of the parameters (same ids), so no backward pass exchanges anything; after the forward
/// pass this device's failure, if any, goes to `on_failure` and then `peers` decide whether
/// every device goes on (an error says so when another one stopped the step), so that all of
/// them reach the gradient exchange that follows ([`PeerAgreement::average`]).
#[allow(clippy::too_many_arguments)]
pub fn router_gradients_agreed<B>(
    model: &Model<B>,
    routers: &RouterSet<B>,
    objective: &SparsityObjective<B>,
    tokens: Tensor<B, 2, Int>,
    input: StepInput<'_>,
    sparse_mode: AttentionMode,
    tau: f64,
    seed: u64,
    scale: f64,
    peers: &PeerAgreement,
    on_failure: &dyn Fn(&ModelError),
) -> Result<(GradientsParams, StepStats)>
where
    B: AutodiffBackend + FluxBackend,
{
    // Fresh leaves, not the learner's parameters: burn would all-reduce those inside every
    // backward pass of a data-parallel run (see `peers`).
    let routers = &routers.clone().map(&mut FreshLeaves);
    let objective = &objective.clone().map(&mut FreshLeaves);
    let forward = forward_and_losses(
        model,
        routers,
        objective,
        tokens,
        &input,
        sparse_mode,
        tau,
        seed,
    );
    if let Err(e) = &forward {
        // Recorded before the other devices can see the stop.
        on_failure(e);
    }
    let device = model.device().clone();
    trace(
        &device,
        format_args!("forward done (ok: {})", forward.is_ok()),
    );
    let go_on = peers.all_go_on(forward.is_ok());
    trace(&device, format_args!("agreed: go on {go_on}"));
    let Forward {
        pass,
        inputs,
        decisions,
        top,
        lm,
        lm_value,
        lm_tokens,
        s,
        sparsity,
        penalty,
        penalty_value,
    } = forward?;
    if !go_on {
        return Err(internal("another device's step failed"));
    }
    let num_layers = model.num_layers();

    let grads = lm.mul_scalar(scale).backward();
    let mut g = top
        .grad(&grads)
        .ok_or_else(|| internal("no gradient reached the last layer"))?;
    let mut out = GradientsParams::new();
    trace(&device, format_args!("LM backward done"));
    let mut penalty_grads = penalty.mul_scalar(scale).backward();
    trace(&device, format_args!("penalty backward done"));
    // ds_i / dz_{l,i} = -1 / L for every layer.
    let dp_ds = s
        .grad(&penalty_grads)
        .ok_or_else(|| internal("no gradient reached the sparsity"))?;
    let c = Tensor::<B, 1>::from_inner(dp_ds.div_scalar(-(num_layers as f64)));
    objective.visit(&mut AddGrads::<B> {
        grads: &mut penalty_grads,
        into: &mut out,
    });

    // 3. Layer by layer, from the top: recompute, backpropagate, pass the gradient down.
    for l in (0..num_layers).rev() {
        let leaf = inputs[l].clone().require_grad();
        let step = TrainLayer {
            ropes: &pass.ropes,
            spans: &pass.spans,
            pool_spans: input.pool_spans,
            router: &routers.routers[l],
            sparse_mode,
            gumbel: pass.gumbel,
            forced: Some(&decisions[l]),
        };
        let (y, z, _) = model.train_layer(l, leaf.clone(), step, &mut layer_rng(seed, l))?;
        let surrogate = (y * Tensor::from_inner(g)).sum() + (z * c.clone()).sum();
        let mut grads = surrogate.backward();
        trace(&device, format_args!("layer {l} backward done"));
        routers.routers[l].visit(&mut AddGrads::<B> {
            grads: &mut grads,
            into: &mut out,
        });
        g = match leaf.grad(&grads) {
            Some(g) => g,
            None if l == 0 => break,
            None => return Err(internal("no gradient reached a layer input")),
        };
    }
    Ok((
        out,
        StepStats {
            lm_loss: lm_value,
            lm_tokens,
            penalty: penalty_value,
            sparsity,
            decisions,
        },
    ))
}

/// The same gradients as [`router_gradients`] by one backward pass through the whole graph
/// (the straightforward way: memory holds every layer's graph). The reference the
/// recomputation is tested against; fine for small models and short sequences.
#[allow(clippy::too_many_arguments)]
pub fn router_gradients_full_graph<B>(
    model: &Model<B>,
    routers: &RouterSet<B>,
    objective: &SparsityObjective<B>,
    tokens: Tensor<B, 2, Int>,
    input: StepInput<'_>,
    sparse_mode: AttentionMode,
    tau: f64,
    seed: u64,
    scale: f64,
) -> Result<(GradientsParams, StepStats)>
where
    B: AutodiffBackend + FluxBackend,
{
    let pass = prepare(model, routers, &tokens, &input, tau)?;
    let Layers {
        output: x,
        z_full,
        decisions,
        ..
    } = forward_layers(
        model,
        routers,
        tokens,
        &pass,
        input.pool_spans,
        sparse_mode,
        seed,
    )?;
    let (lm, lm_tokens) = answer_loss(model, x, &input)?;
    let s = flux_router::sparsity_of(&z_full).map_err(|e| internal(&e.to_string()))?;
    let sparsity: Vec<f64> = s
        .clone()
        .into_data()
        .convert::<f64>()
        .into_vec::<f64>()
        .unwrap_or_default();
    let penalty = objective
        .penalty(s, input.categories, input.targets)
        .map_err(|e| internal(&e.to_string()))?;
    let (lm_value, penalty_value) = (scalar(lm.clone()), scalar(penalty.clone()));
    let lm = lm.cast(penalty.dtype());
    let mut grads = (lm + penalty).mul_scalar(scale).backward();
    let mut out = GradientsParams::new();
    routers.visit(&mut AddGrads::<B> {
        grads: &mut grads,
        into: &mut out,
    });
    objective.visit(&mut AddGrads::<B> {
        grads: &mut grads,
        into: &mut out,
    });
    Ok((
        out,
        StepStats {
            lm_loss: lm_value,
            lm_tokens,
            penalty: penalty_value,
            sparsity,
            decisions,
        },
    ))
}

/// Mean next-token loss over the answer tokens, from hidden states `[b, n, hidden]` that leave
/// the last layer (before the final norm); returns the loss `[1]` and the tokens scored.
pub fn answer_loss<B: FluxBackend>(
    model: &Model<B>,
    hidden: Tensor<B, 3>,
    input: &StepInput<'_>,
) -> Result<(Tensor<B, 1>, usize)> {
    let normed = model.final_norm(hidden);
    let [_, _, d] = normed.dims();
    let mut rows = Vec::with_capacity(input.answers.len());
    let mut labels = Vec::new();
    for (i, answer) in input.answers.iter().enumerate() {
        rows.push(
            normed
                .clone()
                .narrow(0, i, 1)
                .narrow(1, answer.start - 1, answer.len())
                .reshape([answer.len(), d]),
        );
        labels.extend(input.ids[i][answer.clone()].iter().map(|&t| t as i64));
    }
    let count = labels.len();
    let rows = Tensor::cat(rows, 0).reshape([1, count, d]);
    let logits = model.logits(rows);
    let logp = log_softmax(logits, 2);
    let labels =
        Tensor::<B, 3, Int>::from_data(TensorData::new(labels, [1, count, 1]), model.device());
    let nll = logp.gather(2, labels).neg().mean().reshape([1]);
    Ok((nll, count))
}

/// Checks answers and ids against the batch of `b` sequences of `n` tokens.
fn check_batch(input: &StepInput<'_>, b: usize, n: usize) -> Result<()> {
    let invalid = |message: String| ModelError::InvalidArgument {
        argument: "batch".into(),
        message,
    };
    for (name, len) in [
        ("pool spans", input.pool_spans.len()),
        ("answers", input.answers.len()),
        ("ids", input.ids.len()),
        ("categories", input.categories.len()),
        ("targets", input.targets.len()),
    ] {
        if len != b {
            return Err(invalid(format!("{len} {name} for {b} sequences")));
        }
    }
    for i in 0..b {
        let (a, p, len) = (&input.answers[i], &input.pool_spans[i], input.ids[i].len());
        if a.start == 0 || a.is_empty() || a.end > len || len > n {
            return Err(invalid(format!(
                "sequence {i}: answer {a:?} must be non-empty, after the first token and within {len} tokens"
            )));
        }
        if p.is_empty() || p.end > a.start {
            return Err(invalid(format!(
                "sequence {i}: pooled span {p:?} must be non-empty and end before the answer at {}",
                a.start
            )));
        }
    }
    Ok(())
}

/// The first value of `t` as f64 (NaN if it cannot be read).
pub(crate) fn scalar<B: Backend, const D: usize>(t: Tensor<B, D>) -> f64 {
    t.into_data()
        .convert::<f64>()
        .into_vec::<f64>()
        .map(|v| v[0])
        .unwrap_or(f64::NAN)
}

fn internal(message: &str) -> ModelError {
    ModelError::InvalidArgument {
        argument: "training".into(),
        message: message.into(),
    }
}
