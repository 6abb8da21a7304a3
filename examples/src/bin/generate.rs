//! Generates a continuation of a prompt, streaming it to stdout, then prints speed on stderr;
//! several prompts are generated together in one batch.

use flux_attention::FluxBackend;
use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use flux_examples::dtype_args::DTypeArgs;
use flux_examples::routing_args::{describe_plan, RoutingArgs, RoutingSetup};
use flux_models::backend::{run_on, BackendChoice, BackendTask};
use flux_models::generation::Sampling;
use flux_models::tokenizer::ChatMessage;
use flux_models::{generate_batch, generate_routed, load_as, GenerationConfig};

/// Generate text with a Llama / Qwen model (HF folder or GGUF file).
#[derive(Parser, Clone)]
struct Args {
    /// Model folder (config.json, *.safetensors, tokenizer.json) or GGUF file.
    #[arg(long)]
    model: PathBuf,
    /// The prompt; give it several times to generate for each, together in one batch
    /// (one right-padded prefill, one decode step per token for all; printed when all end).
    #[arg(long, required = true)]
    prompt: Vec<String>,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    chat: bool,
    /// System message for --chat.
    #[arg(long)]
    system: Option<String>,
    /// Maximum number of generated tokens.
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Sample among the k most likely tokens only.
    #[arg(long)]
    top_k: Option<usize>,
    /// Sample among the most likely tokens whose probabilities add up to p.
    #[arg(long)]
    top_p: Option<f32>,
    /// Sampler seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop when this text appears (repeatable).
    #[arg(long = "stop")]
    stop: Vec<String>,
    /// Keep going after an end-of-sequence token.
    #[arg(long)]
    ignore_eos: bool,
    /// Backend to run on.
    #[arg(long, default_value_t = BackendChoice::Ndarray)]
    backend: BackendChoice,
    #[command(flatten)]
    dtype: DTypeArgs,
    #[command(flatten)]
    routing: RoutingArgs,
}

impl BackendTask for Args {
    type Output = ();
    type Error = anyhow::Error;

    fn run<B: FluxBackend>(self, device: B::Device) -> Result<()> {
        let loaded = load_as::<B>(
            &self.model,
            &device,
            self.dtype.resolve::<B>(self.backend, &device)?,
        )?;
        let tokenizer = &loaded.tokenizer;
        let routing = self.routing.setup(&loaded.model)?;
        let encode = |prompt: &str| -> Result<Vec<u32>> {
            if !self.chat {
                return Ok(tokenizer.encode(prompt, true)?);
            }
            let mut messages = Vec::new();
            if let Some(system) = &self.system {
                messages.push(ChatMessage {
                    role: "system".into(),
                    content: system.clone(),
                });
            }
            messages.push(ChatMessage {
                role: "user".into(),
                content: prompt.to_string(),
            });
            let text = tokenizer.apply_chat_template(&messages, true)?;
            // The template writes the special tokens itself.
            Ok(tokenizer.encode(&text, false)?)
        };
        let prompts = self
            .prompt
            .iter()
            .map(|p| encode(p))
            .collect::<Result<Vec<_>>>()?;
        let config = GenerationConfig {
            max_new_tokens: self.max_new_tokens,
            sampling: Sampling {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
            },
            seed: self.seed,
            stop_on_eos: !self.ignore_eos,
            stop_strings: self.stop.clone(),
            evict_kv: self.routing.evict_kv,
        };
        let timer = loaded.model.attention_timer();
        timer.reset();
        timer.set_enabled(true);
        if prompts.len() > 1 {
            return self.generate_together(&loaded.model, tokenizer, &prompts, &config, &routing);
        }
        if !self.chat {
            print!("{}", self.prompt[0]);
        }
        let out = generate_routed(
            &loaded.model,
            tokenizer,
            &prompts[0],
            &config,
            routing.routing(),
            |text| {
                print!("{text}");
                let _ = std::io::stdout().flush();
            },
        )?;
        println!();
        let _ = std::io::stdout().flush();
        let total = out.prefill_seconds + out.decode_seconds;
        let attention = timer.elapsed().as_secs_f64();
        eprintln!(
            "{}",
            describe_plan(out.plan.as_ref(), loaded.model.config().num_layers)
        );
        eprintln!(
            "time: {total:.3} s, attention {attention:.3} s ({:.1} %), the rest {:.3} s; KV cache {:.1} MiB",
            100.0 * attention / total.max(1e-9),
            total - attention,
            out.kv_cache_bytes as f64 / (1 << 20) as f64,
        );
        eprintln!(
            "prompt: {} tokens in {:.3} s ({:.1} tokens/s); generated: {} tokens, {:.1} tokens/s; stop: {:?}",
            out.prompt_tokens,
            out.prefill_seconds,
            out.prompt_tokens_per_second(),
            out.tokens.len(),
            out.generated_tokens_per_second(),
            out.stop_reason,
        );
        Ok(())
    }
}

impl Args {
    /// Several prompts in one batch: each continuation printed after its prompt once all end,
    /// then each one's plan and stop on stderr, and the batch's speed.
    fn generate_together<B: FluxBackend>(
        &self,
        model: &flux_models::Model<B>,
        tokenizer: &flux_models::tokenizer::Tokenizer,
        prompts: &[Vec<u32>],
        config: &GenerationConfig,
        routing: &RoutingSetup<B>,
    ) -> Result<()> {
        // A forced plan covers every sequence of the batch; routers choose per sequence.
        let batch_plan = routing
            .plan
            .as_ref()
            .map(|p| p.of_sequence(0, prompts.len()));
        let how = match &batch_plan {
            Some(plan) => flux_models::Routing::Plan(plan),
            None => routing.routing(),
        };
        let outs = generate_batch(model, tokenizer, prompts, config, how, |_, _| {})?;
        let layers = model.config().num_layers;
        for (i, out) in outs.iter().enumerate() {
            println!("--- prompt {i} ---");
            if !self.chat {
                print!("{}", self.prompt[i]);
            }
            println!("{}", out.text);
            eprintln!(
                "prompt {i}: {} tokens, generated {}, stop: {:?}; {}",
                out.prompt_tokens,
                out.tokens.len(),
                out.stop_reason,
                describe_plan(out.plan.as_ref(), layers)
            );
        }
        let _ = std::io::stdout().flush();
        let first = &outs[0];
        let prompt_tokens: usize = outs.iter().map(|o| o.prompt_tokens).sum();
        let generated: usize = outs.iter().map(|o| o.tokens.len()).sum();
        eprintln!(
            "batch of {}: prompts {prompt_tokens} tokens in {:.3} s; generated {generated} tokens in {:.3} s more; KV cache {:.1} MiB",
            outs.len(),
            first.prefill_seconds,
            first.decode_seconds,
            first.kv_cache_bytes as f64 / (1 << 20) as f64,
        );
        Ok(())
    }
}

fn main() {
    let args = Args::parse();
    flux_examples::exit::exit_on_error("generate", || {
        if !(args.temperature >= 0.0 && args.temperature.is_finite()) {
            anyhow::bail!("--temperature must be a finite number >= 0");
        }
        if let Some(p) = args.top_p {
            if !(p > 0.0 && p <= 1.0) {
                anyhow::bail!("--top-p must be in (0, 1]");
            }
        }
        run_on(args.backend, args.clone())
    });
}
