//! The routing options shared by `generate` and `perplexity`: `--router`, `--plan`,
//! `--sparse-mode` and its parameters, `--evict-kv`.

use flux_attention::FluxBackend;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use burn::tensor::backend::Backend;
use clap::{Args, ValueEnum};
use flux_attention::AttentionMode;
use flux_models::{Model, Routing};
use flux_router::{ForcedPlan, RouterSet, RoutingPlan};

/// The sparse attention of layers routed away from full attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SparseModeChoice {
    /// Sink + sliding window.
    Streaming,
    /// Block-sparse prefill chosen by anti-diagonal scoring (full at decode).
    Xattention,
    /// Streaming, with the last prompt queries dense.
    Triangle,
}

/// The sparse mode and its parameters.
#[derive(Debug, Clone, Args)]
pub struct SparseModeArgs {
    /// Sparse mode of sparse layers (default: the router file's, else streaming).
    #[arg(long, value_enum)]
    pub sparse_mode: Option<SparseModeChoice>,
    /// Sink tokens of streaming / triangle.
    #[arg(long, default_value_t = 128)]
    pub sink: usize,
    /// Window tokens of streaming / triangle.
    #[arg(long, default_value_t = 2048)]
    pub window: usize,
    /// Dense trailing prompt queries of triangle.
    #[arg(long, default_value_t = 128)]
    pub last_queries: usize,
    /// Block size of xattention.
    #[arg(long, default_value_t = 128)]
    pub block: usize,
    /// Anti-diagonal stride of xattention.
    #[arg(long, default_value_t = 16)]
    pub stride: usize,
    /// Attention mass threshold of xattention.
    #[arg(long, default_value_t = 0.9)]
    pub threshold: f64,
}

impl SparseModeArgs {
    /// The mode `choice` with these parameters.
    pub fn mode_of(&self, choice: SparseModeChoice) -> AttentionMode {
        match choice {
            SparseModeChoice::Streaming => AttentionMode::Streaming {
                sink: self.sink,
                window: self.window,
            },
            SparseModeChoice::Xattention => AttentionMode::XAttention {
                block: self.block,
                stride: self.stride,
                threshold: self.threshold,
            },
            SparseModeChoice::Triangle => AttentionMode::Triangle {
                sink: self.sink,
                window: self.window,
                last_queries: self.last_queries,
            },
        }
    }

    /// The chosen mode, streaming when none was chosen.
    pub fn mode(&self) -> AttentionMode {
        self.mode_of(self.sparse_mode.unwrap_or(SparseModeChoice::Streaming))
    }

    /// Chooses `mode` with its parameters (the others keep their values); `Full` is no sparse
    /// mode and leaves everything as it is.
    pub fn set_mode(&mut self, mode: AttentionMode) {
        match mode {
            AttentionMode::Full => {}
            AttentionMode::Streaming { sink, window } => {
                self.sparse_mode = Some(SparseModeChoice::Streaming);
                (self.sink, self.window) = (sink, window);
            }
            AttentionMode::XAttention {
                block,
                stride,
                threshold,
            } => {
                self.sparse_mode = Some(SparseModeChoice::Xattention);
                (self.block, self.stride, self.threshold) = (block, stride, threshold);
            }
            AttentionMode::Triangle {
                sink,
                window,
                last_queries,
            } => {
                self.sparse_mode = Some(SparseModeChoice::Triangle);
                (self.sink, self.window, self.last_queries) = (sink, window, last_queries);
            }
        }
    }
}

/// How layers choose their attention.
#[derive(Debug, Clone, Args)]
pub struct RoutingArgs {
    /// Trained routers (safetensors from flux) that choose per layer at prefill.
    #[arg(long, conflicts_with = "plan")]
    pub router: Option<PathBuf>,
    /// A forced plan: all-full, all-sparse, first:K, last:K, fraction:F or layers:A,B,..
    #[arg(long)]
    pub plan: Option<String>,
    #[command(flatten)]
    pub sparse: SparseModeArgs,
    /// Sink + window layers keep only the sink and the window in the KV cache.
    #[arg(long)]
    pub evict_kv: bool,
}

/// Routers or a plan, ready for a forward pass.
pub struct RoutingSetup<B: Backend> {
    /// Loaded routers, with `--router`.
    pub routers: Option<RouterSet<B>>,
    /// The forced plan for one sequence, with `--plan`.
    pub plan: Option<RoutingPlan>,
    /// The sparse mode in use.
    pub sparse_mode: AttentionMode,
}

impl<B: FluxBackend> RoutingSetup<B> {
    /// The routing of a prefill.
    pub fn routing(&self) -> Routing<'_, B> {
        match (&self.routers, &self.plan) {
            (Some(routers), _) => Routing::Routers {
                routers,
                sparse_mode: self.sparse_mode,
            },
            (None, Some(plan)) => Routing::Plan(plan),
            (None, None) => Routing::Full,
        }
    }
}

impl RoutingArgs {
    /// Loads the routers or builds the plan for `model`.
    pub fn setup<B: FluxBackend>(&self, model: &Model<B>) -> Result<RoutingSetup<B>> {
        let layers = model.config().num_layers;
        if let Some(path) = &self.router {
            let file_meta = RouterSet::<B>::read_meta(path)?;
            let sparse_mode = match self.sparse.sparse_mode {
                Some(choice) => self.sparse.mode_of(choice),
                None => file_meta.sparse_mode,
            };
            sparse_mode.validate()?;
            let expected = model.router_meta(sparse_mode, file_meta.pool_tokens);
            let (routers, _) = RouterSet::load(path, &expected, model.device())?;
            return Ok(RoutingSetup {
                routers: Some(routers),
                plan: None,
                sparse_mode,
            });
        }
        let sparse_mode = self.sparse.mode();
        sparse_mode.validate()?;
        let plan = match &self.plan {
            Some(text) => {
                let forced: ForcedPlan = text.parse().context("--plan")?;
                Some(RoutingPlan::forced(&forced, layers, sparse_mode, 1)?)
            }
            None => None,
        };
        if self.sparse.sparse_mode.is_some() && plan.is_none() {
            bail!("--sparse-mode needs --plan or --router to say which layers are sparse");
        }
        Ok(RoutingSetup {
            routers: None,
            plan,
            sparse_mode,
        })
    }
}

/// One line describing the plan of sequence 0: per-layer F/S, the sparse mode and the share.
pub fn describe_plan(plan: Option<&RoutingPlan>, num_layers: usize) -> String {
    match plan {
        Some(plan) => format!(
            "plan: {} ({} of {} layers sparse: {})",
            plan.layer_string(0),
            plan.sparse_layers(0),
            plan.num_layers(),
            plan.sparse_mode()
        ),
        None => format!("plan: {} (all full attention)", "F".repeat(num_layers)),
    }
}
