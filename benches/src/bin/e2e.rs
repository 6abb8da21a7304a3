//! End-to-end speed of a model: prefill (prompt tokens/s) and decode (generated tokens/s after
//! that prompt), median of `--repeats` runs after one warm-up. Prints a markdown table.
//!
//! Outputs are read back and checked to be finite, so a failed backend op cannot produce a
//! timing (platform.md: burn prints a device-thread panic and carries on).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use burn::tensor::backend::Backend;
use clap::Parser;
use flux_models::backend::{run_on, BackendChoice, BackendTask};
use flux_models::generation::argmax;
use flux_models::{load, Model};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// Prefill and decode speed of a model on one backend.
#[derive(Parser, Clone)]
struct Args {
    /// Model folder or GGUF file.
    #[arg(long)]
    model: PathBuf,
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
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Logits of the last position, read back and checked.
fn last_logits<B: Backend>(
    model: &Model<B>,
    hidden: burn::tensor::Tensor<B, 3>,
) -> Result<Vec<f32>> {
    let n = hidden.dims()[1];
    let row = model
        .logits(hidden.narrow(1, n - 1, 1))
        .into_data()
        .to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("reading logits: {e:?}"))?;
    if row.iter().any(|x| !x.is_finite()) {
        bail!("non-finite logits: the backend failed");
    }
    Ok(row)
}

/// One prefill of `prompt` then `steps` greedy decode steps; returns (prefill s, decode s).
fn run_once<B: Backend>(model: &Model<B>, prompt: &[u32], steps: usize) -> Result<(f64, f64)> {
    let mut cache = model.new_cache();
    let t0 = Instant::now();
    let hidden = model.forward(model.token_tensor(&[prompt.to_vec()])?, &mut cache)?;
    let mut next = argmax(&last_logits(model, hidden)?) as u32;
    let prefill = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for _ in 0..steps {
        let hidden = model.forward(model.token_tensor(&[vec![next]])?, &mut cache)?;
        next = argmax(&last_logits(model, hidden)?) as u32;
    }
    Ok((prefill, t1.elapsed().as_secs_f64()))
}

impl BackendTask for Args {
    type Output = ();
    type Error = anyhow::Error;

    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        let loaded = load::<B>(&self.model, &device)?;
        let model = &loaded.model;
        let vocab = model.config().vocab_size as u32;
        let mut rng = StdRng::seed_from_u64(0);
        let name = self
            .model
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut rows = Vec::new();
        for &n in &self.prompt_tokens {
            // Token ids drawn from the lower vocabulary (ordinary tokens, no specials).
            let prompt: Vec<u32> = (0..n)
                .map(|_| rng.random_range(0..vocab.min(30_000)))
                .collect();
            run_once(model, &prompt, 2)?; // warm-up
            let mut prefill = Vec::new();
            let mut decode = Vec::new();
            for _ in 0..self.repeats.max(1) {
                let (p, d) = run_once(model, &prompt, self.decode_tokens)?;
                prefill.push(p);
                decode.push(d);
                eprintln!(
                    "{name} N={n}: prefill {p:.3} s, decode {d:.3} s for {} tokens",
                    self.decode_tokens
                );
            }
            let (p, d) = (median(prefill), median(decode));
            rows.push(format!(
                "| {name} | {:?} | {n} | {p:.3} | {:.1} | {:.2} |",
                self.backend,
                n as f64 / p,
                self.decode_tokens as f64 / d
            ));
        }
        println!("| model | backend | prompt tokens | prefill s (median) | prompt tokens/s | decode tokens/s |");
        println!("|---|---|---|---|---|---|");
        for r in rows {
            println!("{r}");
        }
        Ok(())
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    run_on(args.backend, args.clone())
}
