//! Models built from a configuration with seeded random weights (`Model::random`), and the
//! configuration presets of the 8B models.

mod common;

use burn::tensor::FloatDType;
use common::*;
use flux_models::{Model, RopeScaling, TransformerConfig};

fn logits(model: &Model<B>, ids: &[u32]) -> Vec<f32> {
    score(model, ids).1.concat()
}

#[test]
fn random_weights_are_seeded_finite_and_shaped_by_the_config() {
    let config =
        TransformerConfig::from_file(&fixture("tiny-models/tiny-llama3/config.json")).unwrap();
    let device = Default::default();
    let ids: Vec<u32> = (3..40).collect();
    let make = |seed| Model::<B>::random(config.clone(), &device, FloatDType::F32, seed).unwrap();
    let a = logits(&make(7), &ids);
    assert_eq!(a.len(), ids.len() * config.vocab_size);
    assert!(a.iter().all(|x| x.is_finite()));
    assert_eq!(a, logits(&make(7), &ids), "the same seed, the same model");
    assert_ne!(a, logits(&make(8), &ids), "another seed, another model");
    // Decoding through the cache works as with loaded weights.
    assert_eq!(greedy(&make(7), &ids, 4).len(), 4);
    // A dtype the backend lacks is refused before anything is made.
    let err = Model::<B>::random(config, &device, FloatDType::BF16, 0)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("bf16"), "{err}");
}

#[test]
fn presets_hold_the_8b_models_shapes() {
    let llama = TransformerConfig::preset("llama-3.1-8b").unwrap();
    assert_eq!(
        (llama.num_layers, llama.hidden_size, llama.intermediate_size),
        (32, 4096, 14336)
    );
    assert_eq!(
        (
            llama.num_heads,
            llama.num_kv_heads,
            llama.head_dim,
            llama.vocab_size
        ),
        (32, 8, 128, 128256)
    );
    assert!(matches!(llama.rope_scaling, RopeScaling::Llama3 { factor, .. } if factor == 8.0));
    assert!(!llama.tie_word_embeddings && !llama.qk_norm);
    let qwen = TransformerConfig::preset("qwen3-8b").unwrap();
    assert_eq!(
        (qwen.num_layers, qwen.intermediate_size, qwen.vocab_size),
        (36, 12288, 151936)
    );
    assert!(qwen.qk_norm && !qwen.tie_word_embeddings);
    assert_eq!(qwen.max_position_embeddings, 40960);
    let err = TransformerConfig::preset("llama-9b")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("llama-3.1-8b") && err.contains("llama-9b"),
        "{err}"
    );
    // A name that is no preset is read as a file.
    let err = TransformerConfig::preset_or_file("/nonexistent/config.json")
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/config.json"), "{err}");
}
