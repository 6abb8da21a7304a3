//! Parity with HF transformers (float32, on the H200; see scripts/make-reference.py) for the
//! real SmolLM2 and Qwen2.5 GGUF files, their converted HF folders, and tiny random Llama-3.1
//! (llama3 rope scaling) and Qwen3 checkpoints.

mod common;

use std::path::Path;

use common::*;
use flux_models::{load, load_weights};

const LOGPROB_TOLERANCE: f64 = 2e-3;

/// Checks the chat template, and the ids and per-token log-probs of every reference case; the
/// 32-token greedy continuation (the KV cache's decode path) of the first `greedy_cases`.
fn check_against_reference(model_path: &Path, reference: &str, greedy_cases: usize) {
    let reference = read_json(&fixture(&format!("reference/{reference}")));
    let loaded = load::<B>(model_path, &Default::default()).unwrap();
    let messages: Vec<flux_models::tokenizer::ChatMessage> = reference["chat_messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| flux_models::tokenizer::ChatMessage {
            role: m["role"].as_str().unwrap().into(),
            content: m["content"].as_str().unwrap().into(),
        })
        .collect();
    let chat = loaded
        .tokenizer
        .apply_chat_template(&messages, true)
        .unwrap();
    assert_eq!(
        chat,
        reference["chat_prompt"].as_str().unwrap(),
        "{}: chat template",
        model_path.display()
    );
    for (i, case) in reference["cases"].as_array().unwrap().iter().enumerate() {
        let text = case["text"].as_str().unwrap();
        let ids = loaded.tokenizer.encode(text, false).unwrap();
        assert_eq!(
            ids,
            u32s(&case["ids"]),
            "{}: token ids of {text:?}",
            model_path.display()
        );
        let (logprobs, _) = score(&loaded.model, &ids);
        let err = max_abs_diff(&logprobs, &f64s(&case["logprobs"]));
        assert!(
            err < LOGPROB_TOLERANCE,
            "{}: log-probs of {text:?} differ by {err}",
            model_path.display()
        );
        if i >= greedy_cases {
            continue;
        }
        let continuation = greedy(&loaded.model, &ids, 32);
        assert_eq!(
            continuation,
            u32s(&case["greedy"]),
            "{}: greedy continuation of {text:?}",
            model_path.display()
        );
        assert_eq!(
            loaded.tokenizer.decode(&continuation, false).unwrap(),
            case["greedy_text"].as_str().unwrap()
        );
    }
}

#[test]
fn smollm2_gguf_matches_transformers() {
    check_against_reference(
        &cached("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"),
        "smollm2.json",
        usize::MAX,
    );
}

// A converted folder holds the GGUF's weights: log-probs at every position of every case to
// 2e-3 show they load the same; one greedy continuation covers its decode path, which the GGUF
// test above walks for every case (CI time: the Qwen2.5 continuations dominate this file).
#[test]
fn smollm2_converted_folder_matches_transformers() {
    check_against_reference(&cached("smollm2-135m-instruct/hf"), "smollm2.json", 1);
}

#[test]
fn qwen25_gguf_matches_transformers() {
    check_against_reference(
        &cached("qwen2.5-coder-0.5b-instruct/qwen2.5-coder-0.5b-instruct.gguf"),
        "qwen2.5.json",
        usize::MAX,
    );
}

#[test]
fn qwen25_converted_folder_matches_transformers() {
    check_against_reference(&cached("qwen2.5-coder-0.5b-instruct/hf"), "qwen2.5.json", 1);
}

fn check_tiny(name: &str) {
    let dir = fixture(&format!("tiny-models/{name}"));
    let reference = read_json(&dir.join("reference.json"));
    let model = load_weights::<B>(&dir, &Default::default()).unwrap();
    let ids = u32s(&reference["ids"]);
    let (logprobs, logits) = score(&model, &ids);
    let err = max_abs_diff(&logprobs, &f64s(&reference["logprobs"]));
    assert!(err < LOGPROB_TOLERANCE, "{name}: log-probs differ by {err}");
    for (row, expected) in u32s(&reference["logit_rows"])
        .iter()
        .zip(reference["logits"].as_array().unwrap())
    {
        let got: Vec<f64> = logits[*row as usize].iter().map(|&x| x as f64).collect();
        let err = max_abs_diff(&got, &f64s(expected));
        assert!(
            err < 1e-3,
            "{name}: logits of position {row} differ by {err}"
        );
    }
    assert_eq!(
        greedy(&model, &ids[..50], 32),
        u32s(&reference["greedy"]),
        "{name}: greedy continuation"
    );
}

#[test]
fn tiny_llama31_rope_scaling_matches_transformers() {
    let config =
        flux_models::TransformerConfig::from_file(&fixture("tiny-models/tiny-llama3/config.json"))
            .unwrap();
    assert!(matches!(
        config.rope_scaling,
        flux_models::RopeScaling::Llama3 { .. }
    ));
    assert!(config.tie_word_embeddings);
    check_tiny("tiny-llama3");
}

#[test]
fn tiny_qwen3_sharded_matches_transformers() {
    let config =
        flux_models::TransformerConfig::from_file(&fixture("tiny-models/tiny-qwen3/config.json"))
            .unwrap();
    assert!(config.qk_norm && !config.tie_word_embeddings);
    assert_ne!(
        config.num_heads * config.head_dim,
        config.hidden_size,
        "head_dim is decoupled"
    );
    check_tiny("tiny-qwen3");
}
