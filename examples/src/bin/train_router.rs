//! Trains the Layer Routers of a frozen model on router data (`make_router_data`), with
//! burn-train: checkpoints every K steps, `--resume`, metrics while it runs, and a router file
//! that `generate`, `perplexity` and `e2e` take with `--router`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use flux_attention::FluxBackend;
use flux_examples::dtype_args::DTypeArgs;
use flux_examples::routing_args::SparseModeArgs;
use flux_models::backend::{
    device_number, run_autodiff_on, AutodiffTask, BackendChoice, DataParallelBackend,
};
use flux_models::router_data::{read_split, RouterSample};
#[cfg(not(feature = "distributed"))]
use flux_models::training::train_routers;
use flux_models::training::{RunManifest, TrainConfig, TrainDisplay};
use flux_models::{load_as, ModelError};
use flux_router::Dtype;
use sha2::{Digest, Sha256};

/// Train flux Layer Routers for a frozen Llama / Qwen model.
#[derive(Parser, Clone)]
struct Args {
    /// Model folder (config.json, *.safetensors, tokenizer.json) or GGUF file.
    #[arg(long)]
    model: PathBuf,
    /// Router data folder from make_router_data (train.bin.gz, valid.bin.gz, manifest.json).
    #[arg(long, required_unless_present = "export")]
    data: Option<PathBuf>,
    /// Where the trained routers are written (safetensors), with `<out>.manifest.json` beside.
    #[arg(long)]
    out: PathBuf,
    /// Run folder (checkpoints, logs, metrics.jsonl); default `<out without extension>-run`.
    #[arg(long, conflicts_with = "resume")]
    run_dir: Option<PathBuf>,
    /// Continue the run in this folder from its newest complete checkpoint. The training
    /// settings (steps, batch, accum, checkpoint interval, learning rates, multipliers, seed,
    /// validation, standardisation, pool size, sparse mode) are the run's, from its run.json,
    /// unless given here; --model, --data and --out are given again.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// With --resume DIR: do not train, write the routers of DIR's newest checkpoint
    /// to --out (a run that was killed, or whose router file was lost).
    #[arg(long, requires = "resume")]
    export: bool,
    /// Optimizer steps.
    #[arg(long, default_value_t = 300)]
    steps: usize,
    /// Sequences per micro-batch, over all devices (each of D devices takes batch / D).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Micro-batches per optimizer step (gradient accumulation).
    #[arg(long, default_value_t = 1)]
    accum: usize,
    /// Optimizer steps between checkpoints.
    #[arg(long, default_value_t = 25)]
    checkpoint_every: usize,
    /// Drop samples longer than this many tokens.
    #[arg(long)]
    seq_len: Option<usize>,
    /// Peak learning rate of the routers.
    #[arg(long, default_value_t = 5e-4)]
    lr: f64,
    /// Learning rate of the multipliers over the routers'.
    #[arg(long, default_value_t = 2.0)]
    lambda_lr_ratio: f64,
    /// Initial lambda1 and lambda2 of every category.
    #[arg(long, default_value_t = 0.0)]
    lambda_init: f32,
    /// Seed of the data order and the Gumbel noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Validation samples scored at each checkpoint.
    #[arg(long, default_value_t = 32)]
    max_valid: usize,
    /// Standardise the routers' inputs with their mean and spread over this many training
    /// prompts before the first step (0: raw inputs, as the reference does).
    #[arg(long, default_value_t = 32)]
    standardize_samples: usize,
    /// Prompt tokens each router pools at each end of the prompt (P of the method; the
    /// reference uses 150). Smaller values weigh the request at either end more than the
    /// document between.
    #[arg(long, default_value_t = 150)]
    pool_tokens: usize,
    /// A progress line every N steps (without the terminal UI).
    #[arg(long, default_value_t = 10)]
    print_every: usize,
    /// Stop at the first checkpoint after this many seconds, write the routers of that
    /// checkpoint (the manifest says the run is partial), and leave the run to `--resume`.
    #[arg(long)]
    time_limit: Option<f64>,
    /// Never use the terminal UI.
    #[arg(long)]
    quiet: bool,
    /// Storage type of the router file.
    #[arg(long, default_value = "bf16", value_parser = ["f32", "bf16"])]
    router_dtype: String,
    /// Backend to run on.
    #[arg(long, default_value_t = BackendChoice::Ndarray)]
    backend: BackendChoice,
    #[command(flatten)]
    dtype: DTypeArgs,
    /// Devices (GPU numbers) to train on, data-parallel when more than one (burn's DDP over
    /// NCCL; needs a build with the `distributed` feature and --backend cuda).
    #[arg(long, value_delimiter = ',', default_value = "0")]
    devices: Vec<usize>,
    #[command(flatten)]
    sparse: SparseModeArgs,
}

fn sha256_of(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
    Ok(format!("{:x}", Sha256::digest(&bytes)))
}

fn read_data(
    dir: &Path,
    seq_len: Option<usize>,
) -> Result<(Vec<RouterSample>, Vec<RouterSample>, String)> {
    if !dir.is_dir() {
        bail!(
            "{}: not a router data folder (make it with make_router_data)",
            dir.display()
        );
    }
    let train_path = dir.join("train.bin.gz");
    let valid_path = dir.join("valid.bin.gz");
    let mut train = read_split(&train_path)?;
    let mut valid = read_split(&valid_path)?;
    if let Some(max) = seq_len {
        let (t, v) = (train.len(), valid.len());
        train.retain(|s| s.ids.len() <= max);
        valid.retain(|s| s.ids.len() <= max);
        eprintln!(
            "--seq-len {max}: kept {} of {t} training and {} of {v} validation samples",
            train.len(),
            valid.len()
        );
        if train.is_empty() || valid.is_empty() {
            bail!("--seq-len {max} leaves no training or no validation sample");
        }
    }
    Ok((train, valid, sha256_of(&train_path)?))
}

impl Args {
    fn config(&self) -> Result<TrainConfig> {
        let sparse_mode = self.sparse.mode();
        sparse_mode.validate()?;
        Ok(TrainConfig {
            steps: self.steps,
            batch_size: self.batch,
            accumulation: self.accum,
            checkpoint_every: self.checkpoint_every,
            lr: self.lr,
            lambda_lr_ratio: self.lambda_lr_ratio,
            lambda_init: (self.lambda_init, self.lambda_init),
            sparse_mode,
            seed: self.seed,
            devices: self.devices.len(),
            max_valid: self.max_valid,
            standardize_samples: self.standardize_samples,
            pool_tokens: self.pool_tokens,
            time_limit: self.time_limit,
            ..TrainConfig::default()
        })
    }

    fn run_dir(&self) -> PathBuf {
        if let Some(dir) = self.resume.clone().or_else(|| self.run_dir.clone()) {
            return dir;
        }
        let stem = self
            .out
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "routers".into());
        self.out.with_file_name(format!("{stem}-run"))
    }
}

/// The commit the program runs: `FLUX_COMMIT` at run time, else as built.
fn commit() -> String {
    std::env::var("FLUX_COMMIT")
        .ok()
        .or(option_env!("FLUX_COMMIT").map(String::from))
        .unwrap_or_else(|| "unknown".into())
}

impl Args {
    fn router_dtype(&self) -> Dtype {
        if self.router_dtype == "f32" {
            Dtype::F32
        } else {
            Dtype::BF16
        }
    }

    /// Writes `routers` to `--out` and `<out>.manifest.json` beside it: what every router file
    /// says (file, sha256, dtype, model, meta, commit), then `details`. Returns the manifest's
    /// path.
    fn write_routers<B: burn::tensor::backend::Backend>(
        &self,
        routers: &flux_router::RouterSet<B>,
        meta: &flux_router::RouterMeta,
        details: serde_json::Value,
    ) -> Result<PathBuf> {
        if let Some(parent) = self.out.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| ModelError::io(parent, e))?;
        }
        routers
            .save_as(meta, &self.out, self.router_dtype())
            .with_context(|| format!("writing {}", self.out.display()))?;
        let mut manifest = serde_json::json!({
            "router_file": self.out.file_name().map(|n| n.to_string_lossy().into_owned()),
            "router_sha256": sha256_of(&self.out)?,
            "router_dtype": self.router_dtype,
            "model": self.model.file_name().map(|n| n.to_string_lossy().into_owned()),
            "router_meta": meta,
            // At run time, else as built (`FLUX_COMMIT=$(git rev-parse --short HEAD) cargo build`).
            "commit": commit(),
        });
        if let (Some(all), serde_json::Value::Object(more)) = (manifest.as_object_mut(), details) {
            all.extend(more);
        }
        let manifest_path = self.out.with_extension("manifest.json");
        flux_models::training::write_atomically(
            &manifest_path,
            serde_json::to_string_pretty(&manifest)?.as_bytes(),
        )?;
        Ok(manifest_path)
    }

    /// `--export`: the routers of the run's newest checkpoint, written to `--out`.
    fn export_checkpoint<B: FluxBackend>(&self) -> Result<()> {
        let dir = self.resume.clone().context("--export needs --resume DIR")?;
        let run = RunManifest::read(&dir)?;
        let device = device_number::<B>(self.devices[0])?;
        let loaded = load_as::<B>(
            &self.model,
            &device,
            self.dtype.resolve::<B>(self.backend, &device)?,
        )?;
        let (routers, epochs) = flux_models::training::checkpoint_routers(&loaded.model, &dir)?;
        let meta = loaded
            .model
            .router_meta(run.config.sparse_mode, run.config.pool_tokens);
        let manifest_path = self.write_routers(
            &routers,
            &meta,
            serde_json::json!({
                "exported_from": dir.display().to_string(),
                "train_data_sha256": run.train_data_sha256,
                "train_samples": run.train_samples,
                "config": run.config,
                "completed": epochs >= run.config.epochs(),
                "checkpoint_intervals_done": epochs,
                "steps_done": epochs * run.config.checkpoint_every,
                "final_validation": last_valid_metrics(&dir.join("metrics.jsonl")),
            }),
        )?;
        eprintln!(
            "wrote {} and {}: the routers of checkpoint interval {epochs} ({} steps) of {}",
            self.out.display(),
            manifest_path.display(),
            epochs * run.config.checkpoint_every,
            dir.display()
        );
        Ok(())
    }
}

impl AutodiffTask for Args {
    type Output = ();
    type Error = anyhow::Error;

    fn run<B>(self, _default_device: B::Device) -> Result<()>
    where
        B: burn::tensor::backend::AutodiffBackend + FluxBackend + DataParallelBackend,
        B::InnerBackend: FluxBackend,
    {
        if self.export {
            return self.export_checkpoint::<B>();
        }
        let config = self.config()?;
        let dir = self.run_dir();
        // Settings first: a bad option should not wait for the model to load.
        config.validate(&dir)?;
        let mut seen = std::collections::HashSet::new();
        if let Some(d) = self.devices.iter().find(|&&d| !seen.insert(d)) {
            bail!("--devices names device {d} twice");
        }
        if self.devices.len() > 1
            && (!cfg!(feature = "distributed") || self.backend != BackendChoice::Cuda)
        {
            bail!(
                "--devices with {} devices needs --backend cuda and a build with the `distributed` feature (cargo build --release -p flux-examples --no-default-features --features cuda,distributed,tui)",
                self.devices.len()
            );
        }
        let devices = self
            .devices
            .iter()
            .map(|&i| device_number::<B>(i))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let device = devices[0].clone();
        let data = self.data.clone().context("--data is required")?;
        let (train, valid, data_sha) = read_data(&data, self.seq_len)?;
        let loaded = load_as::<B>(
            &self.model,
            &device,
            self.dtype.resolve::<B>(self.backend, &device)?,
        )?;
        let meta = loaded
            .model
            .router_meta(config.sparse_mode, config.pool_tokens);
        let (n_train, n_valid) = (train.len(), valid.len());
        eprintln!(
            "training routers for {} ({} layers, backbone in {}, routers in f32) on {n_train} samples ({n_valid} for validation), {} steps, run folder {}",
            meta.architecture,
            meta.num_layers,
            flux_models::dtype_name(loaded.model.dtype()),
            config.steps,
            dir.display()
        );
        // The terminal UI's quit key stops one device's loop at any moment, which would leave
        // the others waiting for it: several devices print quiet lines.
        let display = if self.quiet || self.devices.len() > 1 {
            TrainDisplay::Quiet {
                every: self.print_every,
            }
        } else {
            TrainDisplay::Terminal
        };
        let start = Instant::now();
        #[cfg(feature = "distributed")]
        let outcome = flux_models::training::train_routers_data_parallel(
            loaded.model,
            train,
            valid,
            &data_sha,
            &config,
            &dir,
            self.resume.is_some(),
            display,
            devices,
        )?;
        #[cfg(not(feature = "distributed"))]
        let outcome = train_routers(
            loaded.model,
            train,
            valid,
            &data_sha,
            &config,
            &dir,
            self.resume.is_some(),
            display,
        )?;
        let seconds = start.elapsed().as_secs_f64();
        let last_valid = last_valid_metrics(&dir.join("metrics.jsonl"));
        let manifest_path = self.write_routers(
            &outcome.routers,
            &meta,
            serde_json::json!({
                "data": data.display().to_string(),
                "train_data_sha256": data_sha,
                "data_manifest": std::fs::read_to_string(data.join("manifest.json")).ok()
                    .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok()),
                "train_samples": n_train,
                "valid_samples": n_valid,
                "config": RunManifest::read(&dir).ok().map(|m| m.config),
                "completed": outcome.completed,
                "checkpoint_intervals_done": outcome.epochs_done,
                "steps_done": outcome.epochs_done * config.checkpoint_every,
                "steps_run_by_this_call": outcome.steps_run,
                "resumed_from_checkpoint_interval": outcome.resumed_from_epoch,
                "seconds_of_this_call": seconds,
                "devices": self.devices,
                "tokens_trained_by_this_call": outcome.tokens_trained,
                "training_loop_seconds": outcome.seconds,
                "tokens_per_second": outcome.tokens_trained as f64 / outcome.seconds.max(1e-9),
                "backend": self.backend.to_string(),
                "final_multipliers": {"lambda1": outcome.multipliers.0, "lambda2": outcome.multipliers.1},
                "final_validation": last_valid,
            }),
        )?;
        if !outcome.completed {
            eprintln!(
                "time limit: {} of {} steps done; the routers written are those of that checkpoint; continue with --resume {}",
                outcome.epochs_done * config.checkpoint_every,
                config.epochs() * config.checkpoint_every,
                dir.display()
            );
        }
        eprintln!(
            "trained on {} tokens in {:.1} s over {} device(s): {:.0} tokens/s (validation and checkpoints included)",
            outcome.tokens_trained,
            outcome.seconds,
            self.devices.len(),
            outcome.tokens_trained as f64 / outcome.seconds.max(1e-9)
        );
        eprintln!(
            "wrote {} and {} ({:.1} s); use it with --router {}",
            self.out.display(),
            manifest_path.display(),
            seconds,
            self.out.display()
        );
        Ok(())
    }
}

/// The last validation line of a run's metrics.jsonl.
fn last_valid_metrics(path: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .rfind(|v| v.get("split").and_then(|s| s.as_str()) == Some("valid"))
}

impl Args {
    /// With `--resume DIR`: every training setting not given on the command line takes the
    /// value the run was started with (DIR/run.json), so that a resume needs only the paths.
    /// A run.json that cannot be read is left to the resume itself to report.
    fn adopt_run_settings(&mut self, matches: &clap::ArgMatches) {
        let Some(run) = self
            .resume
            .as_deref()
            .and_then(|d| RunManifest::read(d).ok())
        else {
            return;
        };
        let given =
            |id: &str| matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
        let c = &run.config;
        let mut adopted = Vec::new();
        macro_rules! adopt {
            ($field:ident, $id:literal, $value:expr) => {
                if !given($id) && self.$field != $value {
                    self.$field = $value;
                    adopted.push(format!("--{} {:?}", $id.replace('_', "-"), self.$field));
                }
            };
        }
        adopt!(steps, "steps", c.steps);
        adopt!(batch, "batch", c.batch_size);
        adopt!(accum, "accum", c.accumulation);
        adopt!(checkpoint_every, "checkpoint_every", c.checkpoint_every);
        adopt!(lr, "lr", c.lr);
        adopt!(lambda_lr_ratio, "lambda_lr_ratio", c.lambda_lr_ratio);
        adopt!(lambda_init, "lambda_init", c.lambda_init.0);
        adopt!(seed, "seed", c.seed);
        adopt!(max_valid, "max_valid", c.max_valid);
        adopt!(
            standardize_samples,
            "standardize_samples",
            c.standardize_samples
        );
        adopt!(pool_tokens, "pool_tokens", c.pool_tokens);
        let sparse_flags = [
            "sparse_mode",
            "sink",
            "window",
            "last_queries",
            "block",
            "stride",
            "threshold",
        ];
        if !sparse_flags.iter().any(|id| given(id)) && self.sparse.mode() != c.sparse_mode {
            self.sparse.set_mode(c.sparse_mode);
            adopted.push(format!("sparse mode {}", c.sparse_mode));
        }
        if !adopted.is_empty() {
            eprintln!(
                "--resume: the run's settings from its run.json: {}",
                adopted.join(", ")
            );
        }
    }
}

fn main() {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Args::command().get_matches();
    let mut args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    args.adopt_run_settings(&matches);
    flux_examples::exit::exit_on_error("train_router", || {
        run_autodiff_on(args.backend, args.clone())
    });
}
