//! Long generation that stays right (issue 14 item 4): a prompt, then many greedy decode steps
//! under each plan, watching every step's logits for non-finite values, and the KV cache, the
//! device memory and the decode speed at evenly spaced steps; at the end, the last step's
//! logits against a fresh prefill of the same tokens under the same plan.
//!
//! The decode path (KV cache, eviction, decode kernels) and the prefill path (prefill kernels,
//! no cache) compute the same function by different routes, so their agreement after tens of
//! thousands of steps shows that nothing drifts: positions, RoPE, the eviction ring, the
//! window bounds. Exits 1 when a check fails.

use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use flux_attention::FluxBackend;
use flux_examples::dtype_args::DTypeArgs;
use flux_examples::logits::last_logits;
use flux_examples::model_args::ModelSourceArgs;
use flux_examples::routing_args::SparseModeArgs;
use flux_models::backend::{run_on, BackendChoice, BackendTask};
use flux_models::generation::argmax;
use flux_models::Routing;
use flux_router::{ForcedPlan, RoutingPlan};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// Decode many tokens under each plan and check that the result stays finite, bounded and equal
/// to a fresh prefill.
#[derive(Parser, Clone)]
struct Args {
    #[command(flatten)]
    source: ModelSourceArgs,
    /// Prompt tokens (seeded random ids from the lower vocabulary).
    #[arg(long, default_value_t = 4096)]
    prompt_tokens: usize,
    /// Greedy decode steps after the prompt.
    #[arg(long, default_value_t = 32768)]
    decode_tokens: usize,
    /// Plans, comma-separated: all-full, all-sparse, first:K, last:K, fraction:F.
    #[arg(long, value_delimiter = ',', default_value = "all-full,all-sparse")]
    plans: Vec<String>,
    #[command(flatten)]
    sparse: SparseModeArgs,
    /// Sink + window layers keep only the sink and the window in the KV cache.
    #[arg(long)]
    evict_kv: bool,
    /// Progress lines (KV bytes, device memory, decode speed) per plan, evenly spaced.
    #[arg(long, default_value_t = 16)]
    reports: usize,
    /// Largest accepted |decode logit - fresh prefill logit|, relative to the largest |logit|.
    #[arg(long, default_value_t = 0.05)]
    tolerance: f32,
    /// Read this process's GPU memory with nvidia-smi at each progress line.
    #[arg(long)]
    gpu_memory: bool,
    /// Seed of the prompt.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Backend to run on.
    #[arg(long, default_value_t = BackendChoice::Ndarray)]
    backend: BackendChoice,
    #[command(flatten)]
    dtype: DTypeArgs,
}

/// GPU memory held by this process in MiB, from nvidia-smi ("-" when it cannot be read), so
/// that other programs on the same GPU do not count.
fn gpu_memory_mib() -> String {
    let pid = std::process::id().to_string();
    Command::new("nvidia-smi")
        .args([
            "--query-compute-apps=pid,used_memory",
            "--format=csv,noheader,nounits",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout).lines().find_map(|line| {
                let (p, mib) = line.split_once(',')?;
                (p.trim() == pid).then(|| mib.trim().to_string())
            })
        })
        .unwrap_or_else(|| "-".to_string())
}

/// How the decode's last logits compare with a fresh prefill's.
struct Agreement {
    max_abs_diff: f32,
    max_abs_logit: f32,
    same_argmax: bool,
    /// Of the fresh prefill's 10 largest logits, how many are among the decode's 10 largest.
    top10_overlap: usize,
}

impl Agreement {
    fn of(decode: &[f32], fresh: &[f32]) -> Self {
        let top10 = |v: &[f32]| {
            let mut idx: Vec<usize> = (0..v.len()).collect();
            idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]));
            idx.truncate(10);
            idx
        };
        let (td, tf) = (top10(decode), top10(fresh));
        Self {
            max_abs_diff: decode
                .iter()
                .zip(fresh)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max),
            max_abs_logit: fresh.iter().map(|x| x.abs()).fold(0.0, f32::max),
            same_argmax: argmax(decode) == argmax(fresh),
            top10_overlap: tf.iter().filter(|i| td.contains(i)).count(),
        }
    }

    fn relative(&self) -> f32 {
        self.max_abs_diff / self.max_abs_logit.max(f32::MIN_POSITIVE)
    }
}

impl BackendTask for Args {
    type Output = ();
    type Error = anyhow::Error;

    fn run<B: FluxBackend>(self, device: B::Device) -> Result<()> {
        if self.decode_tokens == 0 || self.prompt_tokens == 0 {
            bail!("--prompt-tokens and --decode-tokens must be at least 1");
        }
        let dtype = self.dtype.resolve::<B>(self.backend, &device)?;
        let (model, name) = self.source.load::<B>(&device, dtype)?;
        let config = model.config();
        let total = self.prompt_tokens + self.decode_tokens;
        if total > config.max_position_embeddings {
            bail!(
                "--prompt-tokens {} + --decode-tokens {} = {total} positions, more than the model's context of {} (max_position_embeddings)",
                self.prompt_tokens,
                self.decode_tokens,
                config.max_position_embeddings
            );
        }
        let sparse_mode = self.sparse.mode();
        let vocab = config.vocab_size as u32;
        let mut rng = StdRng::seed_from_u64(self.seed);
        let prompt: Vec<u32> = (0..self.prompt_tokens)
            .map(|_| rng.random_range(0..vocab.min(30_000)))
            .collect();
        println!(
            "{name}, {:?} {}: prompt {} tokens, {} decode steps, sparse mode {sparse_mode}, KV eviction {}",
            self.backend,
            flux_models::dtype_name(model.dtype()),
            self.prompt_tokens,
            self.decode_tokens,
            if self.evict_kv { "on" } else { "off" }
        );
        let every = self.decode_tokens.div_ceil(self.reports.max(1));
        let mut failures = Vec::new();
        let mut summary = Vec::new();
        for plan_name in &self.plans {
            let forced: ForcedPlan = plan_name
                .parse()
                .with_context(|| format!("--plans: `{plan_name}`"))?;
            let plan = RoutingPlan::forced(&forced, config.num_layers, sparse_mode, 1)?;
            println!("\n## {plan_name} ({})", plan.layer_string(0));
            println!("| step | positions | KV MiB | GPU MiB | ms/token since last line |");
            println!("|---|---|---|---|---|");
            let mib = |b: usize| b as f64 / (1 << 20) as f64;
            let mut cache = model.new_cache_with_eviction(self.evict_kv);
            cache.reserve(total);
            let t0 = Instant::now();
            let hidden = model.forward_routed(
                model.token_tensor(std::slice::from_ref(&prompt))?,
                None,
                &mut cache,
                Routing::Plan(&plan),
            )?;
            let mut logits = last_logits(&model, hidden, "the prefill")?;
            let prefill = t0.elapsed().as_secs_f64();
            let mut fed = prompt.clone();
            let mut kv_at_report = Vec::new();
            let mut segment = Instant::now();
            let mut decode_seconds = 0.0;
            for step in 1..=self.decode_tokens {
                let next = argmax(&logits) as u32;
                fed.push(next);
                let hidden = model.forward(model.token_tensor(&[vec![next]])?, &mut cache)?;
                logits = last_logits(&model, hidden, &format!("decode step {step}"))?;
                if step % every == 0 || step == self.decode_tokens {
                    let seconds = segment.elapsed().as_secs_f64();
                    decode_seconds += seconds;
                    let steps = if step % every == 0 {
                        every
                    } else {
                        step % every
                    };
                    let kv = cache.allocated_bytes();
                    kv_at_report.push(kv);
                    println!(
                        "| {step} | {} | {:.3} | {} | {:.2} |",
                        fed.len(),
                        mib(kv),
                        if self.gpu_memory {
                            gpu_memory_mib()
                        } else {
                            "-".into()
                        },
                        1e3 * seconds / steps as f64
                    );
                    segment = Instant::now();
                }
            }
            // The decode's last logits are those of the last fed token: a fresh prefill of
            // every fed token must give them again.
            let t1 = Instant::now();
            let mut fresh_cache = model.new_cache_with_eviction(self.evict_kv);
            let hidden = model.forward_routed(
                model.token_tensor(&[fed.clone()])?,
                None,
                &mut fresh_cache,
                Routing::Plan(&plan),
            )?;
            let fresh = last_logits(&model, hidden, "the fresh prefill")?;
            let fresh_seconds = t1.elapsed().as_secs_f64();
            let agreement = Agreement::of(&logits, &fresh);
            let kv_growth = kv_at_report.last().copied().unwrap_or(0) as f64
                - kv_at_report.first().copied().unwrap_or(0) as f64;
            println!(
                "prefill {prefill:.2} s; {} decode steps in {decode_seconds:.1} s; fresh prefill of {} tokens {fresh_seconds:.2} s",
                self.decode_tokens,
                fed.len()
            );
            println!(
                "last step against the fresh prefill: max |diff| {:.4} of max |logit| {:.3} (relative {:.2e}), same argmax: {}, top-10 overlap {}/10",
                agreement.max_abs_diff,
                agreement.max_abs_logit,
                agreement.relative(),
                agreement.same_argmax,
                agreement.top10_overlap
            );
            if agreement.relative() > self.tolerance {
                failures.push(format!(
                    "{plan_name}: relative difference {:.2e} over --tolerance {}",
                    agreement.relative(),
                    self.tolerance
                ));
            }
            summary.push(format!(
                "| {plan_name} | {} | {} | {prefill:.2} | {:.2} | {:.3} -> {:.3} | {:.2e} | {} | {}/10 |",
                self.prompt_tokens,
                self.decode_tokens,
                1e3 * decode_seconds / self.decode_tokens as f64,
                mib(kv_at_report.first().copied().unwrap_or(0)),
                mib(kv_at_report.last().copied().unwrap_or(0)),
                agreement.relative(),
                agreement.same_argmax,
                agreement.top10_overlap,
            ));
            if kv_growth < 0.0 {
                failures.push(format!("{plan_name}: the KV cache shrank while decoding"));
            }
        }
        println!("\n| plan | prompt | decode steps | prefill s | decode ms/token (mean) | KV MiB first -> last line | last logits vs fresh prefill (relative) | same argmax | top-10 overlap |");
        println!("|---|---|---|---|---|---|---|---|---|");
        for row in summary {
            println!("{row}");
        }
        if !failures.is_empty() {
            bail!("{}", failures.join("; "));
        }
        println!(
            "every step finite; every plan within --tolerance {}",
            self.tolerance
        );
        Ok(())
    }
}

fn main() {
    let args = Args::parse();
    flux_examples::exit::exit_on_error("long_generation", || run_on(args.backend, args.clone()));
}
