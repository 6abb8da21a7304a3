//! Router-only training on burn-train: the routers and the per-category multipliers of a
//! frozen model learn, from labelled samples ([`crate::router_data`]), which layers may run
//! sparse attention.
//!
//! burn-train drives it (`SupervisedTraining` + `Learner`: the loop, gradient accumulation,
//! the learning-rate schedule, metrics and their logs, checkpoints and resume); this module
//! writes what burn 0.21 lacks:
//! - [`RouterTrainer`]: the trained module, with the frozen backbone as a parameter-less
//!   [`Backbone`], and its training step by layer-wise recomputation ([`router_gradients`]),
//!   so memory holds one layer's graph, not all of them;
//! - [`RouterOptimizer`]: router descent (AdamW, global-norm clipping) and multiplier ascent in
//!   one optimizer, both states checkpointed;
//! - [`WarmupCosine`], the reference schedule; [`RouterMetric`], the numbers shown;
//!   [`MetricsLog`], the step log behind the training curves;
//! - [`RouterLoader`]: epochs of a fixed number of steps over seeded shuffles, so checkpoints
//!   come every K steps and a resumed run sees the batches an uninterrupted run would;
//! - [`AtomicRecorder`]: checkpoint files that are whole or absent.

mod backbone;
mod batch;
mod checkpoint;
mod evaluate;
mod export;
mod layerwise;
mod loader;
mod metrics;
mod optim;
mod peers;
mod renderer;
mod schedule;
mod standardize;
mod trainer;

pub use backbone::Backbone;
pub use batch::{BatchPosition, RouterBatch};
pub use checkpoint::{latest_complete_epoch, AtomicRecorder};
pub use evaluate::{
    cheapest_layers_plan, layer_sparsification_costs, mean_loss, score_sample, SampleScore,
};
pub use export::checkpoint_routers;
pub use layerwise::{
    answer_loss, router_gradients, router_gradients_agreed, router_gradients_full_graph, StepInput,
    StepStats,
};
pub use loader::RouterLoader;
pub use metrics::{RouterMetric, RouterMetricKind};
pub use optim::{clip_global_norm, RouterOptimizer, RouterOptimizerConfig};
pub use peers::PeerAgreement;
pub use renderer::MetricsLog;
pub use schedule::WarmupCosine;
pub use standardize::{router_input_statistics, standardize_routers, RouterInputStatistics};
pub use trainer::{
    Deadline, RouterStepOutput, RouterTrainer, StepFailure, StepSettings, StopHandle,
    DEADLINE_MESSAGE,
};

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use burn::tensor::backend::AutodiffBackend;
use burn::train::checkpoint::KeepLastNCheckpoints;
use burn::train::metric::LearningRateMetric;
use burn::train::renderer::MetricsRenderer;
use burn::train::{Interrupter, Learner, SupervisedTraining};
use flux_attention::{AttentionMode, FluxBackend};
use flux_router::{
    LayerRouterConfig, RouterMeta, RouterSet, SparsityObjective, TemperatureSchedule,
};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::model::Model;
use crate::router_data::RouterSample;

/// Extension of checkpoint files (burn's named MessagePack, full precision).
pub const CHECKPOINT_EXTENSION: &str = "mpk";

/// Everything a training run is configured with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Optimizer steps (rounded up to whole checkpoint intervals).
    pub steps: usize,
    /// Sequences per micro-batch, over all devices (each takes `batch_size / devices`).
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub accumulation: usize,
    /// Devices training data-parallel (burn's DDP; 1: one device). Part of what a resume
    /// must match: the devices split each batch, so their number sets the data order.
    #[serde(default = "one")]
    pub devices: usize,
    /// Optimizer steps between checkpoints (one burn-train epoch).
    pub checkpoint_every: usize,
    /// Peak learning rate of the routers (5e-4).
    pub lr: f64,
    /// Share of the steps spent warming up (0.2).
    pub warmup_fraction: f64,
    /// Adam beta2 (0.95).
    pub beta_2: f32,
    /// Router weight decay (0.1).
    pub weight_decay: f32,
    /// The multipliers' learning rate over the routers' (2).
    pub lambda_lr_ratio: f64,
    /// Global-norm clipping of router gradients (5).
    pub max_grad_norm: Option<f64>,
    /// Initial `lambda1`, `lambda2` of every category.
    pub lambda_init: (f32, f32),
    /// The sparse attention routers choose against.
    pub sparse_mode: AttentionMode,
    /// Tokens pooled at each end of the prompt (150).
    pub pool_tokens: usize,
    /// Seed of the data order and the Gumbel noise.
    pub seed: u64,
    /// Validation samples scored after each checkpoint interval (at most).
    pub max_valid: usize,
    /// Checkpoints kept.
    pub keep_checkpoints: usize,
    /// Training prompts whose router inputs standardise the routers' first layer before the
    /// first step (0: none, the raw inputs of the reference; see [`standardize_routers`]).
    #[serde(default)]
    pub standardize_samples: usize,
    /// Stop at the first checkpoint after this many seconds (the run can be resumed); not part
    /// of what a resume must match.
    #[serde(skip)]
    pub time_limit: Option<f64>,
}

fn one() -> usize {
    1
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 300,
            batch_size: 1,
            accumulation: 1,
            devices: 1,
            checkpoint_every: 25,
            lr: 5e-4,
            warmup_fraction: 0.2,
            beta_2: 0.95,
            weight_decay: 0.1,
            lambda_lr_ratio: 2.0,
            max_grad_norm: Some(5.0),
            lambda_init: (0.0, 0.0),
            sparse_mode: AttentionMode::Streaming {
                sink: 128,
                window: 2048,
            },
            pool_tokens: 150,
            seed: 0,
            max_valid: 32,
            keep_checkpoints: 3,
            standardize_samples: 0,
            time_limit: None,
        }
    }
}

impl TrainConfig {
    /// Checkpoint intervals (burn-train epochs) of the run.
    pub fn epochs(&self) -> usize {
        self.steps.div_ceil(self.checkpoint_every.max(1))
    }

    /// Micro-batches per checkpoint interval on each device.
    pub fn micro_batches_per_epoch(&self) -> usize {
        self.checkpoint_every * self.accumulation
    }

    /// Sequences per micro-batch on each device.
    pub fn device_batch_size(&self) -> usize {
        (self.batch_size / self.devices.max(1)).max(1)
    }

    /// Checks the settings (the error names the option at fault and the run folder `dir`).
    pub fn validate(&self, dir: &Path) -> Result<()> {
        let bad = |message: String| ModelError::Training {
            path: dir.to_path_buf(),
            message,
        };
        for (name, v) in [
            ("steps", self.steps),
            ("batch", self.batch_size),
            ("accum", self.accumulation),
            ("checkpoint-every", self.checkpoint_every),
            ("pool-tokens", self.pool_tokens),
            ("devices", self.devices),
        ] {
            if v == 0 {
                return Err(bad(format!("--{name} must be at least 1")));
            }
        }
        if self.standardize_samples == 1 {
            return Err(bad(
                "--standardize-samples must be 0 (off) or at least 2 (a spread needs two prompts)"
                    .into(),
            ));
        }
        if !self.batch_size.is_multiple_of(self.devices) {
            return Err(bad(format!(
                "--batch {} must be a multiple of the {} devices (each device takes an equal share of every batch)",
                self.batch_size, self.devices
            )));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(bad(format!("--lr {} must be a positive number", self.lr)));
        }
        if !(0.0..1.0).contains(&self.warmup_fraction) {
            return Err(bad(format!(
                "warm-up fraction {} must be in [0, 1)",
                self.warmup_fraction
            )));
        }
        if self.sparse_mode.is_full() {
            return Err(bad("the sparse mode cannot be full attention".into()));
        }
        self.sparse_mode
            .validate()
            .map_err(|e| bad(format!("sparse mode: {e}")))
    }
}

/// What a run directory was started with; a resume must match it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunManifest {
    /// What the routers are for (architecture, layers, heads, head_dim, pool, mode).
    pub routers: RouterMeta,
    /// Hidden size and vocabulary of the model (with `routers`, its identity).
    pub hidden_size: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// sha256 of the training split file (as given by the caller).
    pub train_data_sha256: String,
    /// Training samples.
    pub train_samples: usize,
    /// The configuration.
    pub config: TrainConfig,
}

impl RunManifest {
    /// The manifest of a run of `config` on `model` with data identified by `data_sha256`.
    pub fn new<B: FluxBackend>(
        model: &Model<B>,
        config: &TrainConfig,
        data_sha256: &str,
        train_samples: usize,
    ) -> Self {
        Self {
            routers: model.router_meta(config.sparse_mode, config.pool_tokens),
            hidden_size: model.config().hidden_size,
            vocab_size: model.config().vocab_size,
            train_data_sha256: data_sha256.to_string(),
            train_samples,
            config: config.clone(),
        }
    }

    /// `<dir>/run.json`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("run.json")
    }

    /// Reads `<dir>/run.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = Self::path(dir);
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| ModelError::Json {
            path,
            message: e.to_string(),
        })
    }

    /// Writes `<dir>/run.json` atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|e| ModelError::Training {
            path: Self::path(dir),
            message: e.to_string(),
        })?;
        write_atomically(&Self::path(dir), text.as_bytes())
    }

    /// The first difference from `other` that forbids resuming, as a message.
    pub fn mismatch(&self, other: &RunManifest) -> Option<String> {
        let (a, b) = (&self.routers, &other.routers);
        let same_model = a.architecture == b.architecture
            && a.num_layers == b.num_layers
            && a.num_heads == b.num_heads
            && a.head_dim == b.head_dim
            && self.hidden_size == other.hidden_size
            && self.vocab_size == other.vocab_size;
        if same_model && (a.pool_tokens != b.pool_tokens || a.sparse_mode != b.sparse_mode) {
            return Some(format!(
                "the run's routers pool {} tokens and train against {}, these settings ask for {} tokens and {}: resume with the run's --pool-tokens and sparse-mode options",
                a.pool_tokens, a.sparse_mode, b.pool_tokens, b.sparse_mode
            ));
        }
        if !same_model {
            return Some(format!(
                "the run was started for another model ({} with {} layers, hidden {}), this is {} with {} layers, hidden {}",
                self.routers.architecture,
                self.routers.num_layers,
                self.hidden_size,
                other.routers.architecture,
                other.routers.num_layers,
                other.hidden_size
            ));
        }
        if self.train_data_sha256 != other.train_data_sha256 {
            return Some(format!(
                "the run was started on training data {}, this is {}",
                self.train_data_sha256, other.train_data_sha256
            ));
        }
        let same = |c: &TrainConfig| TrainConfig {
            time_limit: None,
            ..c.clone()
        };
        if same(&self.config) != same(&other.config) {
            return Some(format!(
                "the run was started with other settings ({:?}), these are {:?}",
                self.config, other.config
            ));
        }
        None
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename
/// ([`flux_router::write_atomically`]), with the error naming `path`.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    flux_router::write_atomically(path, bytes).map_err(|e| ModelError::io(path, e))
}

/// How a training run shows its progress (every step goes to `metrics.jsonl` either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainDisplay {
    /// A line every `every` optimizer steps and after each validation.
    Quiet {
        /// Optimizer steps between lines.
        every: usize,
    },
    /// burn-train's terminal UI (cargo feature `tui`; quiet lines every 10 steps without it).
    Terminal,
}

/// The result of a training run.
#[derive(Debug)]
pub struct TrainOutcome<B: FluxBackend> {
    /// The trained routers (inference backend).
    pub routers: RouterSet<B>,
    /// The multipliers at the end.
    pub multipliers: (Vec<f32>, Vec<f32>),
    /// Optimizer steps done by this call (after a resume, only the new ones).
    pub steps_run: usize,
    /// The checkpoint interval the run resumed after (0: a fresh run).
    pub resumed_from_epoch: usize,
    /// Checkpoint intervals done, over all calls.
    pub epochs_done: usize,
    /// Whether every step ran (`false`: the time limit stopped the run at a checkpoint; the
    /// routers are those of that checkpoint and the run can be resumed).
    pub completed: bool,
    /// Tokens trained on by this call, over all devices (padding excluded).
    pub tokens_trained: usize,
    /// Wall time of burn-train's loop in this call (validation and checkpoints included).
    pub seconds: f64,
}

/// Trains routers for `model` on `train` (validating on up to `config.max_valid` samples of
/// `valid` after each checkpoint interval) in the run directory `dir`: checkpoints in
/// `dir/checkpoint`, burn-train's metric logs in `dir/train` and `dir/valid`, every step in
/// `dir/metrics.jsonl`, the configuration in `dir/run.json`.
///
/// With `resume`, continues from the newest complete checkpoint of `dir` (the model, data and
/// settings must be those `dir` was started with); without it, `dir` must not hold a run.
/// A run stopped early (a failed step, the terminal UI's quit key) returns an error and leaves
/// the newest checkpoint as it was.
#[allow(clippy::too_many_arguments)]
pub fn train_routers<B>(
    model: Model<B>,
    train: Vec<RouterSample>,
    valid: Vec<RouterSample>,
    data_sha256: &str,
    config: &TrainConfig,
    dir: &Path,
    resume: bool,
    display: TrainDisplay,
) -> Result<TrainOutcome<B::InnerBackend>>
where
    B: AutodiffBackend + FluxBackend,
    B::InnerBackend: FluxBackend,
{
    if config.devices != 1 {
        return Err(ModelError::Training {
            path: dir.to_path_buf(),
            message: format!(
                "{} devices need train_routers_data_parallel (cargo feature `distributed`)",
                config.devices
            ),
        });
    }
    run_training(
        model,
        train,
        valid,
        data_sha256,
        config,
        dir,
        resume,
        display,
        None,
    )
}

/// [`train_routers`] on several devices with burn-train's distributed data parallel (DDP)
/// strategy: one copy of the routers and of the frozen model per device, each device a share
/// of every batch, router and multiplier gradients averaged over the devices after each step
/// ([`PeerAgreement::average`]). The model is given on `devices[0]`; `config.devices` must be
/// `devices.len()`.
#[cfg(feature = "distributed")]
#[allow(clippy::too_many_arguments)]
pub fn train_routers_data_parallel<B>(
    model: Model<B>,
    train: Vec<RouterSample>,
    valid: Vec<RouterSample>,
    data_sha256: &str,
    config: &TrainConfig,
    dir: &Path,
    resume: bool,
    display: TrainDisplay,
    devices: Vec<B::Device>,
) -> Result<TrainOutcome<B::InnerBackend>>
where
    B: AutodiffBackend + FluxBackend + burn::tensor::backend::distributed::DistributedBackend,
    B::InnerBackend: FluxBackend,
{
    use burn::tensor::backend::distributed::{DistributedConfig, ReduceOperation};
    use burn::train::ExecutionStrategy;
    if devices.len() != config.devices {
        return Err(ModelError::Training {
            path: dir.to_path_buf(),
            message: format!(
                "{} devices given for a run configured for {}",
                devices.len(),
                config.devices
            ),
        });
    }
    if devices.first() != Some(model.device()) {
        return Err(ModelError::Training {
            path: dir.to_path_buf(),
            message: "the model must be loaded on the first of the devices".into(),
        });
    }
    let strategy = (devices.len() > 1).then(|| {
        ExecutionStrategy::<B>::ddp(
            devices,
            DistributedConfig {
                all_reduce_op: ReduceOperation::Mean,
            },
        )
    });
    run_training(
        model,
        train,
        valid,
        data_sha256,
        config,
        dir,
        resume,
        display,
        strategy,
    )
}

/// The run behind [`train_routers`] and `train_routers_data_parallel`: `strategy` `None`
/// trains on the model's device.
#[allow(clippy::too_many_arguments)]
fn run_training<B>(
    model: Model<B>,
    train: Vec<RouterSample>,
    valid: Vec<RouterSample>,
    data_sha256: &str,
    config: &TrainConfig,
    dir: &Path,
    resume: bool,
    display: TrainDisplay,
    strategy: Option<burn::train::ExecutionStrategy<B>>,
) -> Result<TrainOutcome<B::InnerBackend>>
where
    B: AutodiffBackend + FluxBackend,
    B::InnerBackend: FluxBackend,
{
    config.validate(dir)?;
    let fail = |message: String| ModelError::Training {
        path: dir.to_path_buf(),
        message,
    };
    if train.is_empty() {
        return Err(fail("no training sample".into()));
    }
    if valid.is_empty() {
        return Err(fail("no validation sample".into()));
    }
    let context = model.config().max_position_embeddings;
    let vocab = model.config().vocab_size;
    for (split, samples) in [("train", &train), ("valid", &valid)] {
        for (i, s) in samples.iter().enumerate() {
            if s.ids.len() > context {
                return Err(fail(format!(
                    "{split} sample {i} has {} tokens, beyond the model's context of {context}",
                    s.ids.len()
                )));
            }
            if let Some(t) = s.ids.iter().find(|&&t| t as usize >= vocab) {
                return Err(fail(format!(
                    "{split} sample {i} holds token id {t}, outside the model's vocabulary of {vocab}: data built for another tokenizer?"
                )));
            }
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let manifest = RunManifest::new(&model, config, data_sha256, train.len());
    let checkpoints = dir.join("checkpoint");
    let done_epochs = if resume {
        let started = RunManifest::read(dir)?;
        if let Some(why) = started.mismatch(&manifest) {
            return Err(fail(format!("cannot resume: {why}")));
        }
        latest_complete_epoch(&checkpoints, CHECKPOINT_EXTENSION).ok_or_else(|| {
            fail(format!(
                "cannot resume: no complete checkpoint in {}",
                checkpoints.display()
            ))
        })?
    } else {
        if RunManifest::path(dir).exists() {
            return Err(fail(
                "already holds a training run: pass --resume to continue it, or choose another --out folder"
                    .into(),
            ));
        }
        manifest.write(dir)?;
        0
    };
    let epochs = config.epochs();
    if done_epochs >= epochs {
        return Err(fail(format!(
            "the run is complete ({done_epochs} of {epochs} checkpoint intervals)"
        )));
    }

    let device = model.device().clone();
    let c = model.config();
    let router_config = LayerRouterConfig {
        head_dim: c.head_dim,
        pool_tokens: config.pool_tokens,
        full_bias: 4.5,
    };
    let micro_per_epoch = config.micro_batches_per_epoch();
    let devices = config.devices.max(1);
    // The routers' initial weights come from the backend's generator: seeded, so that two
    // processes with the same seed train the same routers.
    B::seed(&device, config.seed);
    let mut routers = RouterSet::<B>::new(&router_config, c.num_layers, &device);
    // A resumed run's routers come from its checkpoint.
    if config.standardize_samples > 0 && done_epochs == 0 {
        let order = loader::permutation(train.len(), config.seed, 0);
        let picked: Vec<&RouterSample> = order
            .iter()
            .take(config.standardize_samples)
            .map(|&i| &train[i])
            .collect();
        let stats = router_input_statistics(&model, &picked, config.pool_tokens)?;
        let spread = stats.spread_ratios();
        let mut sorted = spread.clone();
        sorted.sort_by(f64::total_cmp);
        println!(
            "router inputs over {} training prompts: spread / offset per layer {:.3} (min) {:.3} (median) {:.3} (max); standardised",
            picked.len(),
            sorted[0],
            sorted[sorted.len() / 2],
            sorted[sorted.len() - 1]
        );
        routers = standardize_routers(routers, &stats)?;
    }
    let objective = SparsityObjective::new(config.lambda_init.0, config.lambda_init.1, &device);
    let interrupter = Interrupter::new();
    let failure = StepFailure::default();
    let trainer = RouterTrainer {
        routers,
        objective,
        backbone: Backbone::new(model),
        settings: StepSettings {
            sparse_mode: config.sparse_mode,
            temperature: TemperatureSchedule::new(epochs * config.checkpoint_every),
            accumulation: config.accumulation,
            steps_per_epoch: config.checkpoint_every,
            seed: config.seed,
            deadline: config.time_limit.map(|secs| Deadline {
                at: std::time::Instant::now() + std::time::Duration::from_secs_f64(secs.max(0.0)),
                first_epoch: done_epochs,
            }),
        },
        peers: PeerAgreement::new(devices),
        tokens_trained: Arc::new(AtomicUsize::new(0)),
        interrupter: StopHandle(interrupter.clone()),
        failure: failure.clone(),
    };

    let train = Arc::new(train);
    let valid: Vec<RouterSample> = valid.into_iter().take(config.max_valid.max(1)).collect();
    // Each device takes `devices`-th of every epoch's samples (burn-train's split), as whole
    // micro-batches of its share of the batch.
    let train_loader = RouterLoader::<B>::training(
        train,
        config.device_batch_size(),
        micro_per_epoch * config.batch_size,
        config.seed,
        done_epochs,
        device.clone(),
    );
    let valid_loader =
        RouterLoader::<B::InnerBackend>::validation(Arc::new(valid), 1, device.clone());
    let optimizer = RouterOptimizer::new(RouterOptimizerConfig {
        beta_2: config.beta_2,
        weight_decay: config.weight_decay,
        epsilon: 1e-8,
        lambda_lr_ratio: config.lambda_lr_ratio,
        max_grad_norm: config.max_grad_norm,
    });
    // burn-train steps the schedule once per micro-batch, and `devices` times per micro-batch
    // under DDP.
    let schedule = WarmupCosine::new(
        config.lr,
        config.warmup_fraction,
        epochs * micro_per_epoch * devices,
    );
    let (inner, print_every) = match display {
        TrainDisplay::Quiet { every } => (None, every),
        TrainDisplay::Terminal => (
            terminal_renderer(&interrupter, (done_epochs > 0).then_some(done_epochs)),
            10,
        ),
    };
    // Under DDP burn-train numbers each device's micro-batches as `devices` iterations.
    let log = MetricsLog::new(
        &dir.join("metrics.jsonl"),
        inner,
        micro_per_epoch * devices,
        config.accumulation * devices,
        print_every,
    )
    .map_err(|e| ModelError::io(dir.join("metrics.jsonl"), e))?;

    let mut training = SupervisedTraining::new(dir, Arc::new(train_loader), Arc::new(valid_loader))
        .with_interrupter(interrupter.clone())
        .with_application_logger(None)
        .with_file_checkpointer(AtomicRecorder::new(NamedMpkFileRecorder::<
            FullPrecisionSettings,
        >::new()))
        .with_checkpointing_strategy(KeepLastNCheckpoints::new(config.keep_checkpoints.max(1)))
        .grads_accumulation(config.accumulation)
        .num_epochs(epochs)
        .renderer(log)
        .metric_train_numeric(LearningRateMetric::new());
    for kind in RouterMetricKind::training() {
        training = training.metric_train_numeric(RouterMetric::new(kind));
    }
    for kind in RouterMetricKind::validation() {
        training = training.metric_valid_numeric(RouterMetric::new(kind));
    }
    if done_epochs > 0 {
        training = training.checkpoint(done_epochs);
    }
    if let Some(strategy) = strategy {
        training = training.with_training_strategy(strategy.into());
    }
    let tokens_trained = trainer.tokens_trained.clone();
    let started = std::time::Instant::now();
    let result = training.launch(Learner::new(trainer, optimizer, schedule));
    let seconds = started.elapsed().as_secs_f64();
    if let Some(message) = failure.get() {
        return Err(fail(format!(
            "training stopped: {message}; the last checkpoint in {} is kept",
            checkpoints.display()
        )));
    }
    let stopped_at_deadline = interrupter.get_message().as_deref() == Some(DEADLINE_MESSAGE);
    if interrupter.should_stop() && !stopped_at_deadline {
        return Err(fail(format!(
            "training was stopped ({}); resume it from the last checkpoint in {}",
            interrupter
                .get_message()
                .unwrap_or_else(|| "interrupted".into()),
            checkpoints.display()
        )));
    }
    let routers = result.model.routers;
    let multipliers = result.model.objective.all_multipliers();
    let epochs_done = if stopped_at_deadline {
        latest_complete_epoch(&checkpoints, CHECKPOINT_EXTENSION).unwrap_or(done_epochs)
    } else {
        epochs
    };
    Ok(TrainOutcome {
        routers,
        multipliers,
        steps_run: (epochs_done - done_epochs) * config.checkpoint_every,
        resumed_from_epoch: done_epochs,
        epochs_done,
        completed: !stopped_at_deadline,
        tokens_trained: tokens_trained.load(std::sync::atomic::Ordering::Relaxed),
        seconds,
    })
}

/// burn-train's terminal UI, when built with it and stdout is a terminal.
#[allow(unused_variables)]
fn terminal_renderer(
    interrupter: &Interrupter,
    checkpoint: Option<usize>,
) -> Option<Box<dyn MetricsRenderer>> {
    #[cfg(feature = "tui")]
    {
        use std::io::IsTerminal;
        if std::io::stdout().is_terminal() {
            return Some(Box::new(
                burn::train::renderer::tui::TuiMetricsRendererWrapper::new(
                    interrupter.clone(),
                    checkpoint,
                ),
            ));
        }
    }
    None
}

#[cfg(test)]
mod run_manifest_tests {
    use super::*;

    fn manifest(pool_tokens: usize, hidden_size: usize) -> RunManifest {
        let config = TrainConfig {
            pool_tokens,
            ..TrainConfig::default()
        };
        RunManifest {
            routers: RouterMeta {
                architecture: "LlamaForCausalLM".into(),
                num_layers: 30,
                num_heads: 9,
                head_dim: 64,
                pool_tokens,
                sparse_mode: config.sparse_mode,
            },
            hidden_size,
            vocab_size: 49152,
            train_data_sha256: "abc".into(),
            train_samples: 600,
            config,
        }
    }

    #[test]
    fn a_resume_with_another_pool_size_names_the_option() {
        let why = manifest(32, 576).mismatch(&manifest(150, 576)).unwrap();
        assert!(why.contains("--pool-tokens"), "{why}");
        assert!(why.contains("pool 32 tokens"), "{why}");
        assert!(!why.contains("another model"), "{why}");
    }

    #[test]
    fn a_resume_on_another_model_says_so() {
        let why = manifest(150, 576).mismatch(&manifest(150, 960)).unwrap();
        assert!(why.contains("another model"), "{why}");
        assert!(manifest(150, 576).mismatch(&manifest(150, 576)).is_none());
    }
}
