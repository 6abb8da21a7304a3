//! Autoregressive generation with a KV cache: prefill once, then one token per step, text
//! streamed as it is produced.

mod sampling;
mod stop;

pub use sampling::{argmax, Sampling};
pub use stop::StopStrings;

use flux_attention::FluxBackend;
use std::time::Instant;

use rand::{rngs::StdRng, SeedableRng};

use crate::error::{ModelError, Result};
use crate::model::{Model, Routing};
use crate::tokenizer::{StreamDecoder, Tokenizer};
use flux_router::RoutingPlan;

/// What to generate and when to stop.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// Upper bound on generated tokens.
    pub max_new_tokens: usize,
    /// Token choice.
    pub sampling: Sampling,
    /// Seed of the sampler (sampling with the same seed repeats itself).
    pub seed: u64,
    /// Stop when the model emits one of its end-of-sequence tokens.
    pub stop_on_eos: bool,
    /// Stop when the generated text contains one of these; the text is cut before it.
    pub stop_strings: Vec<String>,
    /// Layers routed to a sink + window mode keep only the sink and the window in the KV cache.
    pub evict_kv: bool,
}

impl GenerationConfig {
    /// Greedy decoding of up to `max_new_tokens`, stopping at EOS.
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self {
            max_new_tokens,
            sampling: Sampling {
                temperature: 0.0,
                top_k: None,
                top_p: None,
            },
            seed: 0,
            stop_on_eos: true,
            stop_strings: Vec::new(),
            evict_kv: false,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// `max_new_tokens` were produced.
    MaxTokens,
    /// An end-of-sequence token was produced (not included in `tokens`).
    Eos,
    /// A stop string appeared (text cut before it).
    StopString(String),
    /// The prompt and the generated tokens filled the model's context.
    ContextFull,
}

/// The result of [`generate`].
#[derive(Debug, Clone)]
pub struct GenerationOutput {
    /// Generated token ids (without the prompt, without a final EOS).
    pub tokens: Vec<u32>,
    /// Generated text (cut before a stop string).
    pub text: String,
    /// Why it stopped.
    pub stop_reason: StopReason,
    /// Prompt length.
    pub prompt_tokens: usize,
    /// Seconds of the prefill (including the first token's logits).
    pub prefill_seconds: f64,
    /// Seconds of the decode steps after the first token.
    pub decode_seconds: f64,
    /// The per-layer plan used (prefill and decode), when the generation was routed.
    pub plan: Option<RoutingPlan>,
    /// Bytes held by the KV cache at the end.
    pub kv_cache_bytes: usize,
}

impl GenerationOutput {
    /// Prompt tokens per second of the prefill.
    pub fn prompt_tokens_per_second(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_seconds.max(1e-9)
    }

    /// Generated tokens per second over the decode steps (the first token comes from the prefill).
    pub fn generated_tokens_per_second(&self) -> f64 {
        let steps = self.tokens.len().saturating_sub(1);
        steps as f64 / self.decode_seconds.max(1e-9)
    }
}

/// Generates a continuation of `prompt` (token ids), calling `on_text` with each piece of text
/// as soon as it is final (never half a UTF-8 character, never part of a stop string).
pub fn generate<B: FluxBackend>(
    model: &Model<B>,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    config: &GenerationConfig,
    on_text: impl FnMut(&str),
) -> Result<GenerationOutput> {
    generate_routed(model, tokenizer, prompt, config, Routing::Full, on_text)
}

/// [`generate`] with a routing choice for the prefill (a plan, or the routers), kept for every
/// decode step.
pub fn generate_routed<B: FluxBackend>(
    model: &Model<B>,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    config: &GenerationConfig,
    routing: Routing<'_, B>,
    mut on_text: impl FnMut(&str),
) -> Result<GenerationOutput> {
    if prompt.is_empty() {
        return Err(ModelError::InvalidArgument {
            argument: "prompt".into(),
            message: "generation needs at least one prompt token".into(),
        });
    }
    let context = model.config().max_position_embeddings;
    if prompt.len() > context {
        return Err(ModelError::InvalidArgument {
            argument: "prompt".into(),
            message: format!(
                "{} tokens, longer than the model's context of {context} (max_position_embeddings): shorten it",
                prompt.len()
            ),
        });
    }
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut cache = model.new_cache_with_eviction(config.evict_kv);
    // One allocation per layer for the whole generation (never past the context).
    cache.reserve(
        prompt
            .len()
            .saturating_add(config.max_new_tokens)
            .min(context),
    );
    let mut decoder = StreamDecoder::new(tokenizer);
    let mut stops = StopStrings::new(&config.stop_strings);
    let mut tokens = Vec::new();
    let mut text = String::new();
    let mut stop_reason = StopReason::MaxTokens;

    let start = Instant::now();
    let mut next_input = prompt.to_vec();
    let mut prefill_seconds = 0.0;
    while tokens.len() < config.max_new_tokens {
        // A decode step feeds the last token at position prompt + tokens - 1, which must be
        // inside the context.
        if !tokens.is_empty() && prompt.len() + tokens.len() > context {
            stop_reason = StopReason::ContextFull;
            break;
        }
        let hidden = model.forward_routed(
            model.token_tensor(&[next_input])?,
            None,
            &mut cache,
            routing,
        )?;
        let [_, n, _] = hidden.dims();
        let logits = model.logits(hidden.narrow(1, n - 1, 1));
        let row = logits
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| ModelError::InvalidArgument {
                argument: "logits".into(),
                message: format!("could not read logits back from the device: {e:?}"),
            })?;
        let id = config.sampling.pick(&row, &mut rng) as u32;
        if tokens.is_empty() {
            prefill_seconds = start.elapsed().as_secs_f64();
        }
        if config.stop_on_eos && tokenizer.eos_ids().contains(&id) {
            stop_reason = StopReason::Eos;
            break;
        }
        tokens.push(id);
        if let Some(piece) = decoder.push(id) {
            let (ready, hit) = stops.push(&piece);
            text.push_str(&ready);
            on_text(&ready);
            if let Some(hit) = hit {
                stop_reason = StopReason::StopString(hit);
                break;
            }
        }
        next_input = vec![id];
    }
    if !matches!(stop_reason, StopReason::StopString(_)) {
        let rest = decoder.finish();
        let (mut ready, hit) = stops.push(&rest);
        if let Some(hit) = hit {
            stop_reason = StopReason::StopString(hit);
        } else {
            ready.push_str(&stops.finish());
        }
        text.push_str(&ready);
        on_text(&ready);
    }
    let total = start.elapsed().as_secs_f64();
    if tokens.is_empty() {
        prefill_seconds = total;
    }
    Ok(GenerationOutput {
        tokens,
        text,
        stop_reason,
        prompt_tokens: prompt.len(),
        prefill_seconds,
        decode_seconds: total - prefill_seconds,
        plan: cache.plan().cloned(),
        kv_cache_bytes: cache.allocated_bytes(),
    })
}
