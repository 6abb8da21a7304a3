//! The module burn-train trains: the routers and the multipliers (the only parameters) beside
//! the frozen backbone, with the training step (layer-wise recomputation) and the validation
//! step (hard routing decisions, as at inference).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burn::module::{AutodiffModule, Module};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::train::{InferenceStep, Interrupter, ItemLazy, TrainOutput, TrainStep};
use flux_attention::{AttentionMode, FluxBackend};
use flux_router::{RouterSet, SparsityObjective, TaskCategory, TemperatureSchedule};

use super::backbone::Backbone;
use super::batch::RouterBatch;
use super::evaluate::score_sample;
use super::layerwise::{router_gradients_agreed, StepInput};
use super::peers::{trace, PeerAgreement};
use crate::error::ModelError;
use crate::model::Routing;

/// Settings of the training step that are not parameters.
#[derive(Debug, Clone)]
pub struct StepSettings {
    /// The attention of layers routed away from full attention.
    pub sparse_mode: AttentionMode,
    /// Gumbel temperature over optimizer steps.
    pub temperature: TemperatureSchedule,
    /// Micro-batches per optimizer step on each device (their gradients are summed, so each
    /// is scaled by `1 / accumulation`).
    pub accumulation: usize,
    /// Optimizer steps per checkpoint interval (burn-train epoch).
    pub steps_per_epoch: usize,
    /// Seed of the Gumbel noise (mixed with the batch's place in the run).
    pub seed: u64,
    /// Stop at the first checkpoint boundary after this instant.
    pub deadline: Option<Deadline>,
}

/// A wall-clock limit that ends a run at a checkpoint boundary.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    /// When to stop.
    pub at: Instant,
    /// The checkpoint interval this call started at (its start is no boundary to stop at).
    pub first_epoch: usize,
}

/// The message of a stop at the deadline.
pub const DEADLINE_MESSAGE: &str = "time limit reached at a checkpoint";

/// The first error of a training step, kept so the program can report it after burn-train's
/// loop stopped.
#[derive(Debug, Clone, Default)]
pub struct StepFailure(Arc<Mutex<Option<String>>>);

impl StepFailure {
    /// The error, if a step failed.
    pub fn get(&self) -> Option<String> {
        self.0.lock().ok().and_then(|m| m.clone())
    }

    fn set(&self, message: String) {
        if let Ok(mut m) = self.0.lock() {
            m.get_or_insert(message);
        }
    }
}

/// burn-train's interrupter, which a failed step uses to stop the loop.
#[derive(Clone)]
pub struct StopHandle(pub Interrupter);

impl std::fmt::Debug for StopHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StopHandle")
    }
}

/// Routers, multipliers and the frozen backbone, as one burn module.
#[derive(Module, Debug)]
pub struct RouterTrainer<B: Backend> {
    /// One router per layer (trained by descent).
    pub routers: RouterSet<B>,
    /// The per-category multipliers (trained by ascent).
    pub objective: SparsityObjective<B>,
    /// The frozen model.
    pub backbone: Backbone<B>,
    /// Step settings.
    pub settings: StepSettings,
    /// The devices of the run deciding together to go on or stop (shared by the copies
    /// burn-train forks to each device).
    pub peers: PeerAgreement,
    /// Tokens trained on by this call, over all devices.
    pub tokens_trained: Arc<AtomicUsize>,
    /// Stops the loop when a step fails.
    pub interrupter: StopHandle,
    /// The failure that stopped it.
    pub failure: StepFailure,
}

/// What one training or validation step reports to the metrics.
#[derive(Debug, Clone, Default)]
pub struct RouterStepOutput {
    /// Mean next-token loss over the answer tokens.
    pub lm_loss: f64,
    /// Answer tokens scored.
    pub lm_tokens: usize,
    /// Sparsity penalty (training only).
    pub penalty: Option<f64>,
    /// Share of sparse layers of each sequence, with its category.
    pub sparsity: Vec<(TaskCategory, f64)>,
    /// Multipliers `(lambda1, lambda2)` per category (training only).
    pub lambdas: Option<(Vec<f32>, Vec<f32>)>,
    /// Gumbel temperature (training only).
    pub tau: Option<f64>,
    /// Tokens processed (padding excluded).
    pub tokens: usize,
    /// Wall time of the step.
    pub seconds: f64,
}

impl ItemLazy for RouterStepOutput {
    type ItemSync = RouterStepOutput;

    fn sync(self) -> Self::ItemSync {
        self
    }
}

impl<B> TrainStep for RouterTrainer<B>
where
    B: AutodiffBackend + FluxBackend,
    B::InnerBackend: FluxBackend,
{
    type Input = RouterBatch<B>;
    type Output = RouterStepOutput;

    fn step(&self, batch: RouterBatch<B>) -> TrainOutput<RouterStepOutput> {
        let start = Instant::now();
        let stopped = || TrainOutput {
            grads: GradientsParams::new(),
            item: RouterStepOutput {
                lm_loss: f64::NAN,
                ..Default::default()
            },
        };
        let position = batch.position;
        let device = self.backbone.model().device().clone();
        trace(&device, format_args!("step starts at {position:?}"));
        if let Some(d) = self.settings.deadline {
            // The first micro-batch of an interval: the previous one is checkpointed.
            if position.micro_batch == 0 && position.epoch > d.first_epoch {
                // Every device stops at the same boundary, or none does. burn-train's
                // interrupter is set only once all of them have agreed: a device that saw it
                // earlier would leave its loop before the agreement and hang the others.
                let past = Instant::now() >= d.at;
                if !self.peers.all_go_on(!past) {
                    self.interrupter.0.stop(Some(DEADLINE_MESSAGE));
                    return stopped();
                }
            }
        }
        let accumulation = self.settings.accumulation.max(1);
        let step =
            position.epoch * self.settings.steps_per_epoch + position.micro_batch / accumulation;
        let tau = self.settings.temperature.at(step);
        // Resumable without saved generator state, and different on every device: the noise
        // depends on the batch's place in the run alone.
        let seed = self
            .settings
            .seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(position.first_item as u64);
        let input = StepInput {
            spans: &batch.spans,
            pool_spans: &batch.pool_spans,
            answers: &batch.answers,
            ids: &batch.ids,
            categories: &batch.categories,
            targets: &batch.targets,
        };
        let record = |e: &dyn std::fmt::Display| {
            let message = format!("training step {step}: {e}");
            self.failure.set(message.clone());
            message
        };
        let result = router_gradients_agreed(
            self.backbone.model(),
            &self.routers,
            &self.objective,
            batch.tokens.clone(),
            input,
            self.settings.sparse_mode,
            tau,
            seed,
            1.0 / accumulation as f64,
            &self.peers,
            // Before the agreement only the reason is kept (see the deadline above).
            &|e: &ModelError| {
                record(e);
            },
        );
        trace(
            &device,
            format_args!("gradients done (ok: {})", result.is_ok()),
        );
        let (lambda1, lambda2) = self.objective.valid().all_multipliers();
        match result {
            Ok((mut grads, stats)) => {
                // The mean over the devices (every device got here: they agreed to go on).
                self.peers.average::<B, _>(self, &mut grads);
                trace(&device, format_args!("gradients averaged"));
                self.tokens_trained
                    .fetch_add(batch.num_tokens(), Ordering::Relaxed);
                TrainOutput {
                    grads,
                    item: RouterStepOutput {
                        lm_loss: stats.lm_loss,
                        lm_tokens: stats.lm_tokens,
                        penalty: Some(stats.penalty),
                        sparsity: batch
                            .categories
                            .iter()
                            .copied()
                            .zip(stats.sparsity)
                            .collect(),
                        lambdas: Some((lambda1, lambda2)),
                        tau: Some(tau),
                        tokens: batch.num_tokens(),
                        seconds: start.elapsed().as_secs_f64(),
                    },
                }
            }
            Err(e) => {
                // First error wins: a device that stopped because another failed keeps that
                // device's reason.
                let message = record(&e);
                self.interrupter.0.stop(Some(&message));
                stopped()
            }
        }
    }
}

impl<B> InferenceStep for RouterTrainer<B>
where
    B: FluxBackend,
{
    type Input = RouterBatch<B>;
    type Output = RouterStepOutput;

    fn step(&self, batch: RouterBatch<B>) -> RouterStepOutput {
        let start = Instant::now();
        let mut out = RouterStepOutput {
            tokens: batch.num_tokens(),
            ..Default::default()
        };
        let (mut nll, mut count) = (0.0, 0usize);
        for i in 0..batch.len() {
            let choice = Routing::Routers {
                routers: &self.routers,
                sparse_mode: self.settings.sparse_mode,
            };
            match score_sample(
                self.backbone.model(),
                &batch.ids[i],
                batch.answers[i].clone(),
                choice,
            ) {
                Ok(score) => {
                    nll += score.nll_sum;
                    count += score.tokens;
                    out.sparsity.push((batch.categories[i], score.sparsity));
                }
                Err(e) => {
                    let message = format!("validation: {e}");
                    self.failure.set(message.clone());
                    self.interrupter.0.stop(Some(&message));
                    out.lm_loss = f64::NAN;
                    return out;
                }
            }
        }
        out.lm_loss = nll / count.max(1) as f64;
        out.lm_tokens = count;
        out.seconds = start.elapsed().as_secs_f64();
        out
    }
}
