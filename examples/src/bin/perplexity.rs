//! Scores a text file with a model: a log-prob for every token after the first, and the
//! perplexity. Windows of `--context` tokens overlap by one token so each token is scored once.

use flux_attention::FluxBackend;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::tensor::{activation::log_softmax, Int, Tensor, TensorData};
use clap::Parser;
use flux_examples::dtype_args::DTypeArgs;
use flux_examples::routing_args::{describe_plan, RoutingArgs};
use flux_models::backend::{run_on, BackendChoice, BackendTask};
use flux_models::load_as;
use indicatif::{ProgressBar, ProgressStyle};

/// Perplexity of a text under a Llama / Qwen model.
#[derive(Parser, Clone)]
struct Args {
    /// Model folder or GGUF file.
    #[arg(long)]
    model: PathBuf,
    /// UTF-8 text file to score.
    #[arg(long)]
    file: PathBuf,
    /// Tokens per window (default: the model's max_position_embeddings, at most 4096).
    #[arg(long)]
    context: Option<usize>,
    /// Put the BOS token first (scored text then starts at the first real token).
    #[arg(long)]
    add_bos: bool,
    /// One JSON object per scored token on stdout, then a summary object.
    #[arg(long)]
    json: bool,
    /// Backend to run on.
    #[arg(long, default_value_t = BackendChoice::Ndarray)]
    backend: BackendChoice,
    #[command(flatten)]
    dtype: DTypeArgs,
    #[command(flatten)]
    routing: RoutingArgs,
}

/// Rows of logits turned into log-probs at once (bounds memory to rows x vocab).
const LOGIT_ROWS: usize = 256;

impl BackendTask for Args {
    type Output = ();
    type Error = anyhow::Error;

    fn run<B: FluxBackend>(self, device: B::Device) -> Result<()> {
        let text = std::fs::read_to_string(&self.file)
            .with_context(|| format!("reading {}", self.file.display()))?;
        let loaded = load_as::<B>(
            &self.model,
            &device,
            self.dtype.resolve::<B>(self.backend, &device)?,
        )?;
        let (model, tokenizer) = (&loaded.model, &loaded.tokenizer);
        let routing = self.routing.setup(model)?;
        let layers = model.config().num_layers;
        // Per window: routed windows may get different plans; count sparse layers over all.
        let mut sparse_layers = 0usize;
        let mut windows = 0usize;
        let mut first_plan = None;
        let mut ids = tokenizer.encode(&text, false)?;
        if self.add_bos {
            let bos = tokenizer
                .bos_id()
                .context("--add-bos: this tokenizer has no BOS token")?;
            ids.insert(0, bos);
        }
        if ids.len() < 2 {
            anyhow::bail!(
                "{}: fewer than two tokens, nothing to score",
                self.file.display()
            );
        }
        let context = self
            .context
            .unwrap_or(model.config().max_position_embeddings.min(4096));
        if context < 2 {
            anyhow::bail!("--context must be at least 2");
        }
        let progress = ProgressBar::new(ids.len() as u64 - 1).with_style(
            ProgressStyle::with_template(
                "scoring [{bar:30}] {pos}/{len} tokens {per_sec} eta {eta}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        let mut total_logprob = 0f64;
        let mut scored = 0usize;
        let mut start = 0;
        while start + 1 < ids.len() {
            let window = &ids[start..(start + context).min(ids.len())];
            let mut cache = model.new_cache();
            let hidden = model.forward_routed(
                model.token_tensor(&[window.to_vec()])?,
                None,
                &mut cache,
                routing.routing(),
            )?;
            windows += 1;
            if let Some(plan) = cache.plan() {
                sparse_layers += plan.sparse_layers(0);
                first_plan.get_or_insert_with(|| plan.clone());
            }
            let n = window.len();
            let mut row = 0;
            while row + 1 < n {
                let rows = LOGIT_ROWS.min(n - 1 - row);
                let logits = model.logits(hidden.clone().narrow(1, row, rows));
                let targets: Vec<i64> = window[row + 1..row + 1 + rows]
                    .iter()
                    .map(|&t| t as i64)
                    .collect();
                let targets =
                    Tensor::<B, 3, Int>::from_data(TensorData::new(targets, [1, rows, 1]), &device);
                let picked = log_softmax(logits, 2).gather(2, targets);
                let logprobs = picked
                    .into_data()
                    .convert::<f32>()
                    .to_vec::<f32>()
                    .map_err(|e| anyhow::anyhow!("reading log-probs back: {e:?}"))?;
                for (i, lp) in logprobs.iter().enumerate() {
                    let pos = start + row + 1 + i;
                    total_logprob += *lp as f64;
                    scored += 1;
                    if self.json {
                        let token = tokenizer.token_text(ids[pos]).unwrap_or_default();
                        let line = serde_json::json!({"pos": pos, "token_id": ids[pos], "token": token, "logprob": lp});
                        writeln!(out, "{line}")?;
                    }
                }
                progress.inc(rows as u64);
                row += rows;
            }
            start += n - 1;
        }
        progress.finish_and_clear();
        eprintln!(
            "{}{}",
            describe_plan(first_plan.as_ref(), layers),
            if windows > 1 {
                format!(
                    " (first window; {:.1} % of layers sparse over {windows} windows)",
                    100.0 * sparse_layers as f64 / (windows * layers) as f64
                )
            } else {
                String::new()
            }
        );
        let perplexity = (-total_logprob / scored as f64).exp();
        if self.json {
            writeln!(
                out,
                "{}",
                serde_json::json!({"tokens": scored, "perplexity": perplexity})
            )?;
        } else {
            writeln!(
                out,
                "{}: {scored} tokens scored, mean log-prob {:.4}, perplexity {perplexity:.4}",
                self.file.display(),
                total_logprob / scored as f64
            )?;
        }
        Ok(())
    }
}

fn main() {
    let args = Args::parse();
    flux_examples::exit::exit_on_error("perplexity", || run_on(args.backend, args.clone()));
}
