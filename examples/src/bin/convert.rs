//! Converts a GGUF model file into a Hugging Face folder (config.json, model.safetensors,
//! tokenizer.json, tokenizer_config.json).

use std::path::PathBuf;

use clap::Parser;

/// Convert a GGUF model to a Hugging Face safetensors folder.
#[derive(Parser)]
struct Args {
    /// The GGUF file.
    #[arg(long)]
    gguf: PathBuf,
    /// Output folder (created if missing).
    #[arg(long)]
    out: PathBuf,
}

fn main() {
    let args = Args::parse();
    flux_examples::exit::exit_on_error("convert", || {
        flux_models::convert::gguf_to_hf(&args.gguf, &args.out)?;
        eprintln!("wrote {}", args.out.display());
        Ok(())
    });
}
