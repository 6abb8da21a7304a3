//! Builds the router training data for one model's tokenizer: `train.bin.gz`,
//! `valid.bin.gz` and `manifest.json` (see `flux_models::router_data`).
//!
//! ```text
//! make_router_data --tokenizer SmolLM2-135M-Instruct.Q4_1.gguf \
//!     --sotu ~/.cache/flux-models/texts/sotu --out data/smollm2 --lengths 2048,4096
//! ```

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use flux_models::router_data::{
    build_split, default_cargo_home, write_router_data, DataConfig, Sources, Split,
};
use flux_models::Tokenizer;
use indicatif::{ProgressBar, ProgressStyle};

/// Build the router training data (five task categories, deterministic) for one tokenizer.
#[derive(Parser)]
struct Args {
    /// The model whose tokenizer and chat template to use: a GGUF file or a HF folder.
    #[arg(long)]
    tokenizer: PathBuf,
    /// Folder of the State of the Union addresses (`*.txt`, scripts/fetch-models.sh puts
    /// them in ~/.cache/flux-models/texts/sotu).
    #[arg(long)]
    sotu: PathBuf,
    /// Output folder (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Seed of the whole set.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Number of training samples.
    #[arg(long, default_value_t = 600)]
    train: usize,
    /// Number of validation samples.
    #[arg(long, default_value_t = 60)]
    valid: usize,
    /// Token budgets, comma-separated (each at least 512); each sample draws one.
    #[arg(long, default_value = "2048,4096")]
    lengths: String,
}

/// `"2048, 4096"` -> `[2048, 4096]`; an empty list is left to `DataConfig::validate`.
fn parse_lengths(s: &str) -> Result<Vec<usize>> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse()
                .with_context(|| format!("--lengths: `{t}` is not a token count"))
        })
        .collect()
}

fn run(args: Args) -> Result<()> {
    let start = Instant::now();
    let config = DataConfig {
        seed: args.seed,
        train: args.train,
        valid: args.valid,
        lengths: parse_lengths(&args.lengths)?,
    };
    config.validate().context("--lengths")?;
    if !args.sotu.is_dir() {
        bail!("{}: no such folder (--sotu)", args.sotu.display());
    }
    let tokenizer = Tokenizer::load(&args.tokenizer)?;
    let cargo_home = default_cargo_home();
    let sources = Sources::load(&args.sotu, &cargo_home)?;
    eprintln!(
        "tokenizer {} (vocab {}), {} addresses, {} crates, loaded in {:.1} s",
        args.tokenizer.display(),
        tokenizer.vocab_size(),
        sources.addresses.len(),
        sources.crates.len(),
        start.elapsed().as_secs_f64()
    );
    let style =
        ProgressStyle::with_template("{msg:5} [{bar:30}] {pos}/{len} samples {per_sec} eta {eta}")
            .expect("static template")
            .progress_chars("=> ");
    let mut splits = Vec::new();
    for (split, count) in [(Split::Train, config.train), (Split::Valid, config.valid)] {
        let bar = ProgressBar::new(count as u64)
            .with_style(style.clone())
            .with_message(split.name());
        let (samples, stats) = build_split(&config, &tokenizer, &sources, split, &mut |done| {
            bar.set_position(done as u64)
        })?;
        bar.finish();
        let redrawn: usize = stats.redraws.values().sum();
        if redrawn > 0 {
            let reasons: Vec<String> = stats
                .redraws
                .iter()
                .map(|(r, n)| format!("{n} {r}"))
                .collect();
            eprintln!(
                "{}: {redrawn} draws redone ({})",
                split.name(),
                reasons.join(", ")
            );
        }
        splits.push(samples);
    }
    let manifest = write_router_data(
        &args.out, &config, &tokenizer, &sources, &splits[0], &splits[1],
    )?;
    for s in &manifest.splits {
        let size = std::fs::metadata(args.out.join(&s.file))
            .map(|m| m.len())
            .unwrap_or(0);
        println!(
            "{:5} {:>5} samples {:>9} tokens {:>7} answer tokens {:>9} bytes sha256 {}",
            s.name, s.samples, s.tokens, s.answer_tokens, size, s.sha256
        );
        let families: Vec<String> = s.families.iter().map(|(f, n)| format!("{f} {n}")).collect();
        println!("      {}", families.join(", "));
    }
    println!(
        "wrote {} in {:.1} s",
        args.out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() {
    let args = Args::parse();
    flux_examples::exit::exit_on_error("make_router_data", || run(args));
}
