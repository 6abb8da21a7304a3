//! End-to-end speed of a model: prefill (prompt tokens/s) and decode (generated tokens/s after
//! that prompt) under one or more routing plans, median of `--repeats` runs after one warm-up;
//! the KV cache size with and without eviction, the cost of running the routers at prefill
//! (a routed prefill against the same plan forced) and, on request, the share of time in
//! attention (from a separate run: timing each call synchronises the device). Prints a
//! markdown table.
//!
//! Outputs are read back and checked to be finite, so a failed backend op cannot produce a
//! timing (platform.md: burn prints a device-thread panic and carries on).

use flux_attention::FluxBackend;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use flux_examples::dtype_args::DTypeArgs;
use flux_examples::logits::{last_logits, last_logits_of_each};
use flux_examples::model_args::ModelSourceArgs;
use flux_examples::routing_args::SparseModeArgs;
use flux_models::backend::{run_on, BackendChoice, BackendTask};
use flux_models::generation::{argmax, right_padded};
use flux_models::{Model, Routing};
use flux_router::{ForcedPlan, LayerRouterConfig, RouterSet, RoutingPlan};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// Prefill and decode speed of a model on one backend.
#[derive(Parser, Clone)]
struct Args {
    #[command(flatten)]
    source: ModelSourceArgs,
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
    /// Trained routers: adds a row per prompt length with the plan they choose for that prompt,
    /// run forced; the last column is what routing itself costs (routed prefill minus that).
    #[arg(long)]
    router: Option<std::path::PathBuf>,
    /// Instead of --router: fresh, untrained routers on every layer (they choose full
    /// attention), to measure the routers' cost on a model that has none trained.
    #[arg(long, conflicts_with = "router")]
    random_routers: bool,
    /// Also measure the share of time in attention, in one more run per row whose attention
    /// calls are each synchronised and timed (the timed runs are not).
    #[arg(long)]
    attention_share: bool,
    /// Also append one JSON object per row to this file (the fields of torch_e2e.py's rows,
    /// plus the plan), for benches/e2e_table.py.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The model's name in the JSON rows (default: the model file or config).
    #[arg(long)]
    name: Option<String>,
    /// Sink + window layers keep only the sink and the window in the KV cache (full-attention
    /// layers keep everything, so an all-full row gives the size without eviction).
    #[arg(long)]
    evict_kv: bool,
    /// Prompts per prefill: B prompts of N, N - N/(2B), N - 2N/(2B), ... tokens, right-padded
    /// into one batch (the tokens/s columns count real tokens); each row then also times the
    /// same prompts one at a time. Routed rows (--router) stay at one prompt.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=256))]
    batch: u64,
}

/// What one run measured.
struct Run {
    prefill: f64,
    decode: f64,
    attention: f64,
    kv_bytes: usize,
    /// Logits of the prompt's last position.
    prompt_logits: Vec<f32>,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// One prefill of `prompts` (one sequence, or a right-padded batch) then `steps` greedy decode
/// steps of every sequence under `plan`; with `time_attention`, each attention call is
/// synchronised and timed (slower, so not a timed run).
fn run_once<B: FluxBackend>(
    model: &Model<B>,
    prompts: &[Vec<u32>],
    steps: usize,
    plan: &RoutingPlan,
    evict: bool,
    time_attention: bool,
) -> Result<Run> {
    let timer = model.attention_timer();
    timer.reset();
    timer.set_enabled(time_attention);
    let (rows, spans) = right_padded(prompts);
    // The plan's layer routes for every sequence of the batch.
    let plan = &plan.of_sequence(0, prompts.len());
    let longest = rows[0].len();
    let mut cache = model.new_cache_with_eviction(evict);
    cache.reserve(longest + steps);
    let t0 = Instant::now();
    let spans_arg = (prompts.len() > 1).then_some(&spans[..]);
    let hidden = model.forward_routed(
        model.token_tensor(&rows)?,
        spans_arg,
        &mut cache,
        Routing::Plan(plan),
    )?;
    let ends: Vec<usize> = spans.iter().map(|s| s.end).collect();
    let logits = last_logits_of_each(model, hidden, &ends, "the prefill")?;
    let mut next: Vec<u32> = logits.iter().map(|l| argmax(l) as u32).collect();
    let prefill = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for _ in 0..steps {
        let tokens: Vec<Vec<u32>> = next.iter().map(|&t| vec![t]).collect();
        let hidden = model.forward(model.token_tensor(&tokens)?, &mut cache)?;
        let ones = vec![1; next.len()];
        next = last_logits_of_each(model, hidden, &ones, "a decode step")?
            .iter()
            .map(|l| argmax(l) as u32)
            .collect();
    }
    let decode = t1.elapsed().as_secs_f64();
    timer.set_enabled(false);
    Ok(Run {
        prefill,
        decode,
        attention: timer.elapsed().as_secs_f64(),
        kv_bytes: cache.allocated_bytes(),
        prompt_logits: logits.into_iter().next().expect("one sequence at least"),
    })
}

/// One routed prefill of `prompt` (the routers choose each layer's attention on the device):
/// its seconds, up to the first token, the plan the routers chose and the last position's
/// logits.
fn routed_prefill<B: FluxBackend>(
    model: &Model<B>,
    prompt: &[u32],
    routers: &RouterSet<B>,
    sparse_mode: flux_attention::AttentionMode,
    evict: bool,
) -> Result<(f64, RoutingPlan, Vec<f32>)> {
    let mut cache = model.new_cache_with_eviction(evict);
    let t0 = Instant::now();
    let hidden = model.forward_routed(
        model.token_tensor(&[prompt.to_vec()])?,
        None,
        &mut cache,
        Routing::Routers {
            routers,
            sparse_mode,
        },
    )?;
    let logits = last_logits(model, hidden, "the routed prefill")?;
    argmax(&logits);
    let seconds = t0.elapsed().as_secs_f64();
    let plan = cache
        .plan()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("the routed prefill left no plan"))?;
    Ok((seconds, plan, logits))
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Where compiled kernels are cached for `backend` (CUDA programs turn cubecl's cache on).
fn kernel_cache_note(backend: BackendChoice) -> String {
    #[cfg(feature = "cuda")]
    if backend == BackendChoice::Cuda {
        return flux_attention::kernel_cache_dir()
            .map_or("off".to_string(), |d| d.display().to_string());
    }
    let _ = backend;
    "not used on this backend".to_string()
}

impl BackendTask for Args {
    type Output = ();
    type Error = anyhow::Error;

    fn run<B: FluxBackend>(self, device: B::Device) -> Result<()> {
        let dtype = self.dtype.resolve::<B>(self.backend, &device)?;
        let (model, name) = self.source.load::<B>(&device, dtype)?;
        let model = &model;
        let name = self.name.clone().unwrap_or(name);
        let mut json_rows = Vec::new();
        let vocab = model.config().vocab_size as u32;
        let mut rng = StdRng::seed_from_u64(0);
        let routers = match &self.router {
            Some(path) => {
                let meta = RouterSet::<B>::read_meta(path)?;
                let expected = model.router_meta(meta.sparse_mode, meta.pool_tokens);
                Some(RouterSet::<B>::load(path, &expected, &device)?)
            }
            None if self.random_routers => {
                let c = model.config();
                let config = LayerRouterConfig::new(c.head_dim);
                let meta = model.router_meta(self.sparse.mode(), config.pool_tokens);
                Some((RouterSet::new(&config, c.num_layers, &device), meta))
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
        // A user's first request: a short prompt right after loading, before anything else
        // ran (kernels compile here, or load from the kernel cache of an earlier run).
        if let Some((_, plan)) = plans.first() {
            let short: Vec<u32> = (0..5)
                .map(|_| rng.random_range(0..vocab.min(30_000)))
                .collect();
            let t = Instant::now();
            run_once(model, &[short], 1, plan, false, false)?;
            let cache = kernel_cache_note(self.backend);
            println!(
                "first token of a 5-token prompt after loading: {:.3} s (kernel cache: {cache})",
                t.elapsed().as_secs_f64()
            );
        }
        let warmup_tokens = self
            .warmup_tokens
            .or_else(|| self.prompt_tokens.iter().copied().min())
            .unwrap_or(256);
        let batch = self.batch as usize;
        // Token ids drawn from the lower vocabulary (ordinary tokens, no specials).
        let mut prompts_of = |n: usize| -> Vec<Vec<u32>> {
            (0..batch)
                .map(|i| {
                    let len = (n - i * n / (2 * batch)).max(1);
                    (0..len)
                        .map(|_| rng.random_range(0..vocab.min(30_000)))
                        .collect()
                })
                .collect()
        };
        let warmup_batch = prompts_of(warmup_tokens.max(1));
        let warmup = warmup_batch[0].clone();
        // Every plan once: its kernels compile here, not in its first timed run (with
        // --repeats 1 that run would otherwise be the figure).
        for (_, plan) in &plans {
            run_once(model, &warmup_batch, 2, plan, false, false)?;
        }
        if let Some((routers, _)) = &routers {
            routed_prefill(model, &warmup, routers, sparse_mode, self.evict_kv)?;
        }
        let mut rows = Vec::new();
        for &n in &self.prompt_tokens {
            let prompts = prompts_of(n);
            let prompt = prompts[0].clone();
            let real_tokens: usize = prompts.iter().map(Vec::len).sum();
            let mut plans_n = plans.clone();
            let mut routed_seconds = None;
            let mut routed_logits = None;
            if let Some((routers, _)) = &routers {
                let mut times = Vec::new();
                let mut plan = None;
                for _ in 0..self.repeats.max(1) {
                    let (t, p, logits) =
                        routed_prefill(model, &prompt, routers, sparse_mode, self.evict_kv)?;
                    eprintln!("{name} N={n} routed prefill: {t:.3} s");
                    times.push(t);
                    plan = Some(p);
                    routed_logits = Some(logits);
                }
                routed_seconds = Some(median(times));
                plans_n.push(("router".to_string(), plan.expect("at least one run")));
            }
            for (name_of_plan, plan) in &plans_n {
                let run = |time_attention| {
                    let steps = self.decode_tokens;
                    let batch_of = if name_of_plan == "router" {
                        std::slice::from_ref(&prompt)
                    } else {
                        &prompts[..]
                    };
                    run_once(model, batch_of, steps, plan, self.evict_kv, time_attention)
                };
                let mut runs = Vec::new();
                for _ in 0..self.repeats.max(1) {
                    let r = run(false)?;
                    eprintln!(
                        "{name} N={n} {name_of_plan}: prefill {:.3} s, decode {:.3} s for {} tokens",
                        r.prefill, r.decode, self.decode_tokens
                    );
                    runs.push(r);
                }
                let p = median(runs.iter().map(|r| r.prefill).collect());
                let in_batch = if name_of_plan == "router" { 1 } else { batch };
                let tokens_in = if in_batch == 1 { n } else { real_tokens };
                if in_batch > 1 {
                    // The same prompts, one prefill each: what the batch saves.
                    let mut alone = Vec::new();
                    for _ in 0..self.repeats.max(1) {
                        let mut total = 0.0;
                        for one in &prompts {
                            let one = std::slice::from_ref(one);
                            total += run_once(model, one, 0, plan, self.evict_kv, false)?.prefill;
                        }
                        alone.push(total);
                    }
                    let alone = median(alone);
                    println!(
                        "N={n} {name_of_plan}: a batch of {in_batch} prompts ({tokens_in} tokens) in one prefill: {p:.3} s; one at a time: {alone:.3} s ({:.2}x)",
                        alone / p
                    );
                }
                if let (Some(routed), "router") = (&routed_logits, name_of_plan.as_str()) {
                    // The decisions read on the device must compute what the same plan forced
                    // does.
                    let diff = routed
                        .iter()
                        .zip(&runs[0].prompt_logits)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0f32, f32::max);
                    println!(
                        "N={n}: routed prefill against its plan forced ({}): max |logit diff| {diff:.2e}",
                        plan.layer_string(0)
                    );
                }
                let d = median(runs.iter().map(|r| r.decode).collect());
                let attention_share = if self.attention_share {
                    let r = run(true)?;
                    format!("{:.0} %", 100.0 * r.attention / (r.prefill + r.decode))
                } else {
                    "-".to_string()
                };
                let router_share = match routed_seconds {
                    Some(routed) if name_of_plan == "router" => {
                        format!("{:.2} %", 100.0 * (routed - p) / p)
                    }
                    _ => "-".to_string(),
                };
                let mib = |b: usize| b as f64 / (1 << 20) as f64;
                json_rows.push(format!(
                    "{{\"impl\": \"flux\", \"model\": {}, \"backend\": \"{}\", \"dtype\": \"{}\", \"prompt_tokens\": {n}, \"batch\": {in_batch}, \"plan\": {}, \"layers\": \"{}\", \"prefill_s\": {p}, \"decode_ms_per_token\": {}, \"kv_mib\": {}, \"routing_cost\": {}, \"repeats\": {}}}",
                    json_string(&name),
                    self.backend,
                    flux_models::dtype_name(model.dtype()),
                    json_string(name_of_plan),
                    plan.layer_string(0),
                    1e3 * d / self.decode_tokens.max(1) as f64,
                    mib(runs[0].kv_bytes),
                    routed_seconds
                        .filter(|_| name_of_plan == "router")
                        .map_or("null".to_string(), |r| ((r - p) / p).to_string()),
                    self.repeats.max(1),
                ));
                rows.push(format!(
                    "| {name} | {:?} {} | {n} | {name_of_plan} ({}) | {p:.3} | {:.1} | {:.2} | {attention_share} | {:.1} | {router_share} |",
                    self.backend,
                    flux_models::dtype_name(model.dtype()),
                    plan.layer_string(0),
                    tokens_in as f64 / p,
                    (self.decode_tokens * in_batch) as f64 / d,
                    mib(runs[0].kv_bytes),
                ));
            }
        }
        println!(
            "sparse mode: {sparse_mode}; KV eviction {}",
            if self.evict_kv { "on" } else { "off" }
        );
        if batch > 1 {
            println!("batch: {batch} prompts per prefill and decode step (plans; routed rows: 1)");
        }
        println!("| model | backend, dtype | prompt tokens | plan | prefill s (median) | prompt tokens/s | decode tokens/s | attention share | KV MiB after decode | routing cost / prefill |");
        println!("|---|---|---|---|---|---|---|---|---|---|");
        for r in rows {
            println!("{r}");
        }
        if let Some(path) = &self.json {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()))?;
            for row in json_rows {
                writeln!(file, "{row}")
                    .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
            }
        }
        Ok(())
    }
}

fn main() {
    let args = Args::parse();
    flux_examples::exit::exit_on_error("e2e", || run_on(args.backend, args.clone()));
}
