//! End-to-end speed of a model: prefill (prompt tokens/s) and decode (generated tokens/s after
//! that prompt) under one or more routing plans, median of `--repeats` runs after one warm-up;
//! the share of time in attention, the KV cache size with and without eviction, and the cost
//! of running the routers at prefill. Prints a markdown table.
//!
//! Outputs are read back and checked to be finite, so a failed backend op cannot produce a
//! timing (platform.md: burn prints a device-thread panic and carries on).

use flux_attention::FluxBackend;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use burn::tensor::{Distribution, Tensor};
use clap::Parser;
use flux_examples::dtype_args::DTypeArgs;
use flux_examples::routing_args::SparseModeArgs;
use flux_models::backend::{run_on, BackendChoice, BackendTask};
use flux_models::generation::argmax;
use flux_models::{load_as, Model, Routing, TransformerConfig};
use flux_router::{ForcedPlan, LayerRouterConfig, RouterSet, RoutingPlan};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// Prefill and decode speed of a model on one backend.
#[derive(Parser, Clone)]
struct Args {
    /// Model folder or GGUF file.
    #[arg(long, required_unless_present = "config", conflicts_with = "config")]
    model: Option<PathBuf>,
    /// Instead of --model: a model built from a configuration (a preset, llama-3.1-8b or
    /// qwen3-8b, or a config.json file) with seeded random weights made on the device (needs
    /// --random-weights: the speed does not depend on the values, the text does).
    #[arg(long, requires = "random_weights")]
    config: Option<String>,
    /// With --config: random weights (the only kind a configuration has).
    #[arg(long, requires = "config")]
    random_weights: bool,
    /// Seed of --random-weights.
    #[arg(long, default_value_t = 0)]
    weights_seed: u64,
    /// Prompt lengths, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "512,4096")]
    prompt_tokens: Vec<usize>,
    /// Decode steps timed after each prompt.
    #[arg(long, default_value_t = 32)]
    decode_tokens: usize,
    /// Timed repetitions (after one warm-up); the median is reported.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Backend to run on.
    #[arg(long, default_value_t = BackendChoice::Ndarray)]
    backend: BackendChoice,
    #[command(flatten)]
    dtype: DTypeArgs,
    /// Plans, comma-separated: all-full, all-sparse, first:K, last:K, fraction:F
    /// (`layers:` lists need `;` instead of `,` between layers here).
    #[arg(long, value_delimiter = ',', default_value = "all-full")]
    plans: Vec<String>,
    #[command(flatten)]
    sparse: SparseModeArgs,
    /// Prompt length of the warm-up run of each plan (default: the shortest of --prompt-tokens,
    /// so that the kernels of the timed shapes compile there).
    #[arg(long)]
    warmup_tokens: Option<usize>,
    /// Trained routers: adds a row per prompt length with the plan they choose for that prompt
    /// (chosen by one untimed routed prefill; the routers' own cost is the last column).
    #[arg(long)]
    router: Option<std::path::PathBuf>,
    /// Sink + window layers keep only the sink and the window in the KV cache (full-attention
    /// layers keep everything, so an all-full row gives the size without eviction).
    #[arg(long)]
    evict_kv: bool,
}

/// What one run measured.
struct Run {
    prefill: f64,
    decode: f64,
    attention: f64,
    kv_bytes: usize,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Logits of the last position, read back and checked.
fn last_logits<B: FluxBackend>(
    model: &Model<B>,
    hidden: burn::tensor::Tensor<B, 3>,
) -> Result<Vec<f32>> {
    let n = hidden.dims()[1];
    let row = model
        .logits(hidden.narrow(1, n - 1, 1))
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("reading logits: {e:?}"))?;
    if row.iter().any(|x| !x.is_finite()) {
        bail!("non-finite logits: the backend failed");
    }
    Ok(row)
}

/// One prefill of `prompt` then `steps` greedy decode steps under `plan`.
fn run_once<B: FluxBackend>(
    model: &Model<B>,
    prompt: &[u32],
    steps: usize,
    plan: &RoutingPlan,
    evict: bool,
) -> Result<Run> {
    let timer = model.attention_timer();
    timer.reset();
    timer.set_enabled(true);
    let mut cache = model.new_cache_with_eviction(evict);
    let t0 = Instant::now();
    let hidden = model.forward_routed(
        model.token_tensor(&[prompt.to_vec()])?,
        None,
        &mut cache,
        Routing::Plan(plan),
    )?;
    let mut next = argmax(&last_logits(model, hidden)?) as u32;
    let prefill = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for _ in 0..steps {
        let hidden = model.forward(model.token_tensor(&[vec![next]])?, &mut cache)?;
        next = argmax(&last_logits(model, hidden)?) as u32;
    }
    let decode = t1.elapsed().as_secs_f64();
    timer.set_enabled(false);
    Ok(Run {
        prefill,
        decode,
        attention: timer.elapsed().as_secs_f64(),
        kv_bytes: cache.allocated_bytes(),
    })
}

/// Seconds the routers of every layer take at prefill: pooling and MLP on query states of
/// `n` tokens (median of 3).
fn router_seconds<B: FluxBackend>(model: &Model<B>, n: usize) -> Result<f64> {
    let c = model.config();
    let router = LayerRouterConfig::new(c.head_dim).init::<B>(model.device());
    let q = Tensor::<B, 4>::random(
        [1, c.num_heads, n, c.head_dim],
        Distribution::Default,
        model.device(),
    );
    let mut times = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..c.num_layers {
            let logits = router.forward(q.clone(), None)?;
            let v = logits
                .into_data()
                .to_vec::<f32>()
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            if v.iter().any(|x| !x.is_finite()) {
                bail!("non-finite router logits");
            }
        }
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(median(times))
}

impl BackendTask for Args {
    type Output = ();
    type Error = anyhow::Error;

    fn run<B: FluxBackend>(self, device: B::Device) -> Result<()> {
        let dtype = self.dtype.resolve::<B>(self.backend, &device)?;
        let (model, name) = match (&self.config, &self.model) {
            (Some(config), _) => (
                Model::random(
                    TransformerConfig::preset_or_file(config)?,
                    &device,
                    dtype,
                    self.weights_seed,
                )?,
                format!("{config} (random weights)"),
            ),
            (None, Some(path)) => (
                load_as::<B>(path, &device, dtype)?.model,
                path.file_name()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            ),
            (None, None) => bail!("give --model, or --config with --random-weights"),
        };
        let model = &model;
        let vocab = model.config().vocab_size as u32;
        let mut rng = StdRng::seed_from_u64(0);
        let routers = match &self.router {
            Some(path) => {
                let meta = RouterSet::<B>::read_meta(path)?;
                let expected = model.router_meta(meta.sparse_mode, meta.pool_tokens);
                Some(RouterSet::<B>::load(path, &expected, &device)?)
            }
            None => None,
        };
        // Routers run the sparse mode they were trained against.
        let sparse_mode = match &routers {
            Some((_, meta)) => meta.sparse_mode,
            None => self.sparse.mode(),
        };
        let layers = model.config().num_layers;
        let plans = self
            .plans
            .iter()
            .map(|p| {
                let forced: ForcedPlan = p.replace(';', ",").parse()?;
                Ok((
                    p.clone(),
                    RoutingPlan::forced(&forced, layers, sparse_mode, 1)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let warmup_tokens = self
            .warmup_tokens
            .or_else(|| self.prompt_tokens.iter().copied().min())
            .unwrap_or(256);
        let warmup: Vec<u32> = (0..warmup_tokens.max(1))
            .map(|_| rng.random_range(0..vocab.min(30_000)))
            .collect();
        // Every plan once: its kernels compile here, not in its first timed run (with
        // --repeats 1 that run would otherwise be the figure).
        for (_, plan) in &plans {
            run_once(model, &warmup, 2, plan, false)?;
        }
        let mut rows = Vec::new();
        for &n in &self.prompt_tokens {
            // Token ids drawn from the lower vocabulary (ordinary tokens, no specials).
            let prompt: Vec<u32> = (0..n)
                .map(|_| rng.random_range(0..vocab.min(30_000)))
                .collect();
            let router_cost = router_seconds(model, n)?;
            let mut plans_n = plans.clone();
            if let Some((routers, _)) = &routers {
                let mut cache = model.new_cache();
                model.forward_routed(
                    model.token_tensor(&[prompt.clone()])?,
                    None,
                    &mut cache,
                    Routing::Routers {
                        routers,
                        sparse_mode,
                    },
                )?;
                let plan = cache
                    .plan()
                    .cloned()
                    .ok_or_else(|| anyhow::anyhow!("the routed prefill left no plan"))?;
                plans_n.push(("router".to_string(), plan));
            }
            for (name_of_plan, plan) in &plans_n {
                let mut runs = Vec::new();
                for _ in 0..self.repeats.max(1) {
                    let r = run_once(model, &prompt, self.decode_tokens, plan, self.evict_kv)?;
                    eprintln!(
                        "{name} N={n} {name_of_plan}: prefill {:.3} s, decode {:.3} s for {} tokens, attention {:.3} s",
                        r.prefill, r.decode, self.decode_tokens, r.attention
                    );
                    runs.push(r);
                }
                let p = median(runs.iter().map(|r| r.prefill).collect());
                let d = median(runs.iter().map(|r| r.decode).collect());
                let attn = median(
                    runs.iter()
                        .map(|r| r.attention / (r.prefill + r.decode))
                        .collect(),
                );
                let mib = |b: usize| b as f64 / (1 << 20) as f64;
                rows.push(format!(
                    "| {name} | {:?} {} | {n} | {name_of_plan} ({}) | {p:.3} | {:.1} | {:.2} | {:.0} % | {:.1} | {:.2} % |",
                    self.backend,
                    flux_models::dtype_name(model.dtype()),
                    plan.layer_string(0),
                    n as f64 / p,
                    self.decode_tokens as f64 / d,
                    100.0 * attn,
                    mib(runs[0].kv_bytes),
                    100.0 * router_cost / p,
                ));
            }
        }
        println!(
            "sparse mode: {sparse_mode}; KV eviction {}",
            if self.evict_kv { "on" } else { "off" }
        );
        println!("| model | backend, dtype | prompt tokens | plan | prefill s (median) | prompt tokens/s | decode tokens/s | attention share | KV MiB after decode | routers / prefill |");
        println!("|---|---|---|---|---|---|---|---|---|---|");
        for r in rows {
            println!("{r}");
        }
        Ok(())
    }
}

fn main() {
    let args = Args::parse();
    flux_examples::exit::exit_on_error("e2e", || run_on(args.backend, args.clone()));
}
