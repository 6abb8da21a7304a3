//! `generate_batch`: three prompts of different lengths generated together (one right-padded
//! prefill, one decode step per token for the batch) give each the continuation it gets alone,
//! greedy and sampled, with full attention and with a sink + window plan; a sequence that ends
//! early (a stop string) stops there while the others go on. SmolLM2-135M-Instruct on ndarray.

mod common;

use common::*;
use flux_attention::AttentionMode;
use flux_models::generation::Sampling;
use flux_models::{
    generate_batch, generate_routed, load, GenerationConfig, LoadedModel, Routing, StopReason,
};
use flux_router::{ForcedPlan, RoutingPlan};

/// SmolLM2 and the token ids of [`PROMPTS`].
fn smollm2_and_prompts() -> (LoadedModel<B>, Vec<Vec<u32>>) {
    let loaded = load::<B>(
        &cached("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"),
        &Default::default(),
    )
    .unwrap();
    let prompts = PROMPTS
        .iter()
        .map(|p| loaded.tokenizer.encode(p, false).unwrap())
        .collect();
    (loaded, prompts)
}

const PROMPTS: [&str; 3] = [
    "The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is",
    "def add(a, b):\n    return",
    "Once upon a time",
];

/// A sink + window plan on every layer, for `sequences` sequences (a window shorter than the
/// prompts, so that the sparse rule matters).
fn streaming(layers: usize, sequences: usize) -> RoutingPlan {
    let mode = AttentionMode::Streaming { sink: 2, window: 6 };
    RoutingPlan::forced(&ForcedPlan::AllSparse, layers, mode, sequences).unwrap()
}

#[test]
fn a_batch_of_prompts_of_different_lengths_generates_what_each_does_alone() {
    let (LoadedModel { model, tokenizer }, prompts) = smollm2_and_prompts();
    let lengths: Vec<usize> = prompts.iter().map(Vec::len).collect();
    assert!(
        lengths[0] > lengths[1] && lengths[1] > lengths[2],
        "{lengths:?}"
    );
    let layers = model.config().num_layers;
    let greedy = GenerationConfig {
        stop_on_eos: false,
        ..GenerationConfig::greedy(10)
    };
    let sampled = GenerationConfig {
        sampling: Sampling {
            temperature: 0.8,
            top_k: Some(40),
            top_p: Some(0.95),
        },
        seed: 7,
        ..greedy.clone()
    };
    for (what, config) in [("greedy", &greedy), ("sampled", &sampled)] {
        for sparse in [false, true] {
            let batch_plan = streaming(layers, prompts.len());
            let one_plan = streaming(layers, 1);
            let routing = |plan| {
                if sparse {
                    Routing::Plan(plan)
                } else {
                    Routing::Full
                }
            };
            let mut streamed = vec![String::new(); prompts.len()];
            let together = generate_batch(
                &model,
                &tokenizer,
                &prompts,
                config,
                routing(&batch_plan),
                |i, piece| streamed[i].push_str(piece),
            )
            .unwrap();
            assert_eq!(together.len(), prompts.len());
            for (i, prompt) in prompts.iter().enumerate() {
                let alone = generate_routed(
                    &model,
                    &tokenizer,
                    prompt,
                    config,
                    routing(&one_plan),
                    |_| {},
                )
                .unwrap();
                let case = format!(
                    "{what}, sparse {sparse}, prompt {i} ({} tokens)",
                    prompt.len()
                );
                assert_eq!(together[i].tokens, alone.tokens, "{case}");
                assert_eq!(together[i].text, alone.text, "{case}");
                assert_eq!(streamed[i], alone.text, "{case}: streamed text");
                assert_eq!(together[i].stop_reason, StopReason::MaxTokens, "{case}");
                assert_eq!(together[i].prompt_tokens, prompt.len(), "{case}");
                if sparse {
                    let plan = together[i].plan.as_ref().expect("a plan");
                    assert_eq!(plan.sequences(), 1, "{case}");
                    assert_eq!(plan.sparse_layers(0), layers, "{case}");
                }
            }
        }
    }
}

#[test]
fn a_sequence_that_stops_early_leaves_the_others_running() {
    let (LoadedModel { model, tokenizer }, prompts) = smollm2_and_prompts();
    let free = GenerationConfig {
        stop_on_eos: false,
        ..GenerationConfig::greedy(8)
    };
    let alone: Vec<_> = prompts
        .iter()
        .map(|p| generate_routed(&model, &tokenizer, p, &free, Routing::Full, |_| {}).unwrap())
        .collect();
    // A stop string made of the second sequence's third generated piece: it stops there, the
    // others (whose texts do not contain it) run to the token limit.
    let stop = tokenizer.decode(&alone[1].tokens[2..3], false).unwrap();
    assert!(!stop.trim().is_empty(), "{:?}", alone[1].text);
    for i in [0, 2] {
        assert!(
            !alone[i].text.contains(&stop),
            "prompt {i}: {:?} holds {stop:?}",
            alone[i].text
        );
    }
    let config = GenerationConfig {
        stop_strings: vec![stop.clone()],
        ..free.clone()
    };
    let together = generate_batch(
        &model,
        &tokenizer,
        &prompts,
        &config,
        Routing::Full,
        |_, _| {},
    )
    .unwrap();
    assert_eq!(
        together[1].stop_reason,
        StopReason::StopString(stop.clone())
    );
    assert!(together[1].tokens.len() < free.max_new_tokens);
    assert!(alone[1].text.starts_with(&together[1].text));
    for i in [0, 2] {
        assert_eq!(together[i].tokens, alone[i].tokens, "prompt {i}");
        assert_eq!(together[i].stop_reason, StopReason::MaxTokens, "prompt {i}");
    }
    // No prompt, or an empty one, is refused naming it.
    let err = generate_batch(&model, &tokenizer, &[], &config, Routing::Full, |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("at least one prompt"), "{err}");
    let err = generate_batch(
        &model,
        &tokenizer,
        &[prompts[0].clone(), Vec::new()],
        &config,
        Routing::Full,
        |_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("prompt 1: generation needs at least one prompt token"),
        "{err}"
    );
}
