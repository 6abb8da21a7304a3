//! Autoregressive generation with a KV cache: prefill once, then one token per step, text
//! streamed as it is produced.

mod sampling;
mod stop;

pub use sampling::{argmax, Sampling};
pub use stop::StopStrings;

use flux_attention::FluxBackend;
use std::ops::Range;
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
    let outputs = generate_batch(
        model,
        tokenizer,
        &[prompt.to_vec()],
        config,
        routing,
        |_, piece| on_text(piece),
    )?;
    Ok(outputs.into_iter().next().expect("one output per prompt"))
}

/// The prompts as the rows of one right-padded batch (padded with token 0 to the longest) and
/// the span of each one's tokens.
pub fn right_padded(prompts: &[Vec<u32>]) -> (Vec<Vec<u32>>, Vec<Range<usize>>) {
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let rows = prompts
        .iter()
        .map(|p| {
            p.iter()
                .copied()
                .chain(std::iter::repeat(0))
                .take(longest)
                .collect()
        })
        .collect();
    let spans = prompts.iter().map(|p| 0..p.len()).collect();
    (rows, spans)
}

/// One sequence of a batch being generated.
struct Sequence<'t> {
    prompt_tokens: usize,
    decoder: StreamDecoder<'t>,
    stops: StopStrings,
    rng: StdRng,
    tokens: Vec<u32>,
    text: String,
    /// Set when the sequence has ended.
    stop_reason: Option<StopReason>,
    prefill_seconds: f64,
}

impl Sequence<'_> {
    /// Takes the token sampled from `row`; false when the sequence ends with it.
    fn push(
        &mut self,
        row: &[f32],
        config: &GenerationConfig,
        tokenizer: &Tokenizer,
        on_text: &mut impl FnMut(&str),
    ) -> bool {
        let id = config.sampling.pick(row, &mut self.rng) as u32;
        if config.stop_on_eos && tokenizer.eos_ids().contains(&id) {
            self.stop_reason = Some(StopReason::Eos);
            return false;
        }
        self.tokens.push(id);
        if let Some(piece) = self.decoder.push(id) {
            let (ready, hit) = self.stops.push(&piece);
            self.text.push_str(&ready);
            on_text(&ready);
            if let Some(hit) = hit {
                self.stop_reason = Some(StopReason::StopString(hit));
                return false;
            }
        }
        if self.tokens.len() >= config.max_new_tokens {
            self.stop_reason = Some(StopReason::MaxTokens);
            return false;
        }
        true
    }

    /// Releases the text held back (an unfinished character, a possible stop string's start).
    fn finish(&mut self, on_text: &mut impl FnMut(&str)) {
        if matches!(self.stop_reason, Some(StopReason::StopString(_))) {
            return;
        }
        let rest = self.decoder.finish();
        let (mut ready, hit) = self.stops.push(&rest);
        if let Some(hit) = hit {
            self.stop_reason = Some(StopReason::StopString(hit));
        } else {
            ready.push_str(&self.stops.finish());
        }
        self.text.push_str(&ready);
        on_text(&ready);
    }
}

/// Generates a continuation of each of `prompts` (token ids, any lengths) together: one
/// right-padded prefill, then one decode step for the whole batch per token, each sequence
/// sampled with its own generator seeded with `config.seed` (so each continuation is the one
/// [`generate_routed`] gives for that prompt alone, up to the rounding of batched arithmetic).
/// `on_text(i, piece)` streams sequence `i`'s text. A sequence that has ended is fed its last
/// token until the others end; its output stops where it ended. The timings, and the KV bytes,
/// are the batch's; `plan` is each sequence's own. `routing` with a plan must cover every
/// sequence ([`RoutingPlan::uniform`]); routers choose per sequence.
pub fn generate_batch<B: FluxBackend>(
    model: &Model<B>,
    tokenizer: &Tokenizer,
    prompts: &[Vec<u32>],
    config: &GenerationConfig,
    routing: Routing<'_, B>,
    mut on_text: impl FnMut(usize, &str),
) -> Result<Vec<GenerationOutput>> {
    let invalid = |message: String| ModelError::InvalidArgument {
        argument: "prompt".into(),
        message,
    };
    if prompts.is_empty() {
        return Err(invalid("generation needs at least one prompt".into()));
    }
    let context = model.config().max_position_embeddings;
    for (i, prompt) in prompts.iter().enumerate() {
        let which = if prompts.len() == 1 {
            String::new()
        } else {
            format!("prompt {i}: ")
        };
        if prompt.is_empty() {
            return Err(invalid(format!(
                "{which}generation needs at least one prompt token"
            )));
        }
        if prompt.len() > context {
            return Err(invalid(format!(
                "{which}{} tokens, longer than the model's context of {context} (max_position_embeddings): shorten it",
                prompt.len()
            )));
        }
    }
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut cache = model.new_cache_with_eviction(config.evict_kv);
    // One allocation per layer for the whole generation (never past the context).
    cache.reserve(longest.saturating_add(config.max_new_tokens).min(context));
    let mut seqs: Vec<Sequence> = prompts
        .iter()
        .map(|p| Sequence {
            prompt_tokens: p.len(),
            decoder: StreamDecoder::new(tokenizer),
            stops: StopStrings::new(&config.stop_strings),
            rng: StdRng::seed_from_u64(config.seed),
            tokens: Vec::new(),
            text: String::new(),
            stop_reason: (config.max_new_tokens == 0).then_some(StopReason::MaxTokens),
            prefill_seconds: 0.0,
        })
        .collect();
    let (padded, spans) = right_padded(prompts);

    let start = Instant::now();
    let mut inputs = padded;
    let mut ends: Vec<usize> = spans.iter().map(|s| s.end).collect();
    let mut first = true;
    while seqs.iter().any(|s| s.stop_reason.is_none()) {
        if !first {
            // A decode step feeds each sequence's last token at position prompt + tokens - 1,
            // which must be inside the context.
            for seq in seqs.iter_mut().filter(|s| s.stop_reason.is_none()) {
                if seq.prompt_tokens + seq.tokens.len() > context {
                    seq.stop_reason = Some(StopReason::ContextFull);
                }
            }
            if seqs.iter().all(|s| s.stop_reason.is_some()) {
                break;
            }
        }
        let batch_spans = (first && prompts.len() > 1).then_some(&spans[..]);
        let hidden = model.forward_routed(
            model.token_tensor(&inputs)?,
            batch_spans,
            &mut cache,
            routing,
        )?;
        let rows = model.last_logits(hidden, &ends)?;
        let now = start.elapsed().as_secs_f64();
        for (i, seq) in seqs.iter_mut().enumerate() {
            if seq.stop_reason.is_some() {
                continue;
            }
            if first {
                seq.prefill_seconds = now;
            }
            seq.push(&rows[i], config, tokenizer, &mut |piece: &str| {
                on_text(i, piece)
            });
        }
        first = false;
        inputs = seqs
            .iter()
            .zip(prompts)
            .map(|(s, p)| {
                vec![*s
                    .tokens
                    .last()
                    .unwrap_or(p.last().expect("prompts are not empty"))]
            })
            .collect();
        ends = vec![1; prompts.len()];
    }
    let total = start.elapsed().as_secs_f64();
    let kv_cache_bytes = cache.allocated_bytes();
    let plan = cache.plan().cloned();
    Ok(seqs
        .into_iter()
        .enumerate()
        .map(|(i, mut seq)| {
            seq.finish(&mut |piece: &str| on_text(i, piece));
            let prefill_seconds = if seq.prefill_seconds > 0.0 {
                seq.prefill_seconds
            } else {
                total
            };
            GenerationOutput {
                tokens: seq.tokens,
                text: seq.text,
                stop_reason: seq.stop_reason.unwrap_or(StopReason::MaxTokens),
                prompt_tokens: seq.prompt_tokens,
                prefill_seconds,
                decode_seconds: total - prefill_seconds,
                plan: plan.as_ref().map(|p| p.of_sequence(i, 1)),
                kv_cache_bytes,
            }
        })
        .collect())
}
