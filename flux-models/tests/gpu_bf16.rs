//! SmolLM2 in bf16 on CUDA against transformers in bf16 on the same GPU (issue 13 item 1).
//!
//! Both runs round weights and activations to bf16, so neither equals the f32 reference; the
//! test asks that flux's bf16 error (log-probs against transformers' f32 outputs,
//! `reference/smollm2.json`) stay within transformers' own bf16 error
//! (`reference/smollm2-bf16.json`, from `scripts/make-reference.py --bf16`) times 1.5 plus a
//! small margin, over the positions of all cases pooled, and that both greedy continuations of
//! each case start with the same token, where that token is not a near tie (the f32 model's
//! top two logits at least `NEAR_TIE` apart; bf16 logits near 36 are 0.25 apart, and case 2's
//! first choice is 0.09 ahead of the second).
//!
//! Built only with `--features cuda` and run on a CUDA machine:
//! `cargo test --release -p flux-models --no-default-features --features cuda --test gpu_bf16 -- --nocapture`.
#![cfg(feature = "cuda")]

mod common;

use burn::backend::Cuda;
use burn::tensor::FloatDType;
use common::*;
use flux_models::load_as;

/// Mean of |a - b|.
fn mean_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length differs");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f64>() / a.len() as f64
}

/// The gap between the two largest logits of the prompt's last position, in flux's f32 model
/// (which matches transformers' f32 to 2e-3, the parity tests).
fn top_two_margin(model: &flux_models::Model<Cuda>, ids: &[u32]) -> f32 {
    let mut cache = model.new_cache();
    let hidden = model
        .forward(model.token_tensor(&[ids.to_vec()]).unwrap(), &mut cache)
        .unwrap();
    let n = hidden.dims()[1];
    let mut row = model.last_logits(hidden, &[n]).unwrap().remove(0);
    row.sort_by(|a, b| b.total_cmp(a));
    row[0] - row[1]
}

/// bf16 logits between 32 and 64 are 0.25 apart: below twice that, the f32 model's first choice
/// is a near tie that any bf16 run may break either way.
const NEAR_TIE: f32 = 0.5;

/// Tokens two continuations share from the start.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[test]
fn smollm2_bf16_on_cuda_is_as_close_to_f32_as_transformers_bf16() {
    let f32_ref = read_json(&fixture("reference/smollm2.json"));
    let bf16_ref = read_json(&fixture("reference/smollm2-bf16.json"));
    assert_eq!(
        bf16_ref["dtype"], "bfloat16",
        "smollm2-bf16.json is not a bf16 run"
    );
    let smollm2 = |dtype| {
        load_as::<Cuda>(
            &cached("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"),
            &Default::default(),
            dtype,
        )
        .unwrap()
        .model
    };
    let (model, exact_model) = (smollm2(FloatDType::BF16), smollm2(FloatDType::F32));
    let (f32_cases, bf16_cases) = (
        f32_ref["cases"].as_array().unwrap(),
        bf16_ref["cases"].as_array().unwrap(),
    );
    assert_eq!(f32_cases.len(), bf16_cases.len());
    println!("| case | tokens | flux bf16 max / mean abs error | transformers bf16 max / mean | greedy tokens shared: flux-transformers bf16, flux-f32 | f32 top-two margin |");
    println!("|---|---|---|---|---|---|");
    // Every position of every case, pooled: a case of a few tokens is too noisy to judge alone
    // (bf16 rounding errors are close to random), so the tables of all cases print first.
    let (mut ours_all, mut theirs_all, mut truth_all) = (vec![], vec![], vec![]);
    let mut first_tokens = vec![];
    for (i, (exact, half)) in f32_cases.iter().zip(bf16_cases).enumerate() {
        let ids = u32s(&exact["ids"]);
        assert_eq!(
            ids,
            u32s(&half["ids"]),
            "case {i}: the two references tokenised differently"
        );
        let truth = f64s(&exact["logprobs"]);
        let (ours, _) = score(&model, &ids);
        let theirs = f64s(&half["logprobs"]);
        let steps = u32s(&half["greedy"]).len();
        let continuation = greedy(&model, &ids, steps);
        let shared_half = common_prefix(&continuation, &u32s(&half["greedy"]));
        let shared_exact = common_prefix(&continuation, &u32s(&exact["greedy"]));
        let margin = top_two_margin(&exact_model, &ids);
        println!(
            "| {i} | {} | {:.4} / {:.4} | {:.4} / {:.4} | {shared_half}, {shared_exact} of {steps} | {margin:.3} |",
            ids.len(),
            max_abs_diff(&ours, &truth),
            mean_abs_diff(&ours, &truth),
            max_abs_diff(&theirs, &truth),
            mean_abs_diff(&theirs, &truth),
        );
        first_tokens.push((i, margin, shared_half, continuation, u32s(&half["greedy"])));
        ours_all.extend(ours);
        theirs_all.extend(theirs);
        truth_all.extend(truth);
    }
    let (ours_max, ours_mean) = (
        max_abs_diff(&ours_all, &truth_all),
        mean_abs_diff(&ours_all, &truth_all),
    );
    let (theirs_max, theirs_mean) = (
        max_abs_diff(&theirs_all, &truth_all),
        mean_abs_diff(&theirs_all, &truth_all),
    );
    println!(
        "| all | {} | {ours_max:.4} / {ours_mean:.4} | {theirs_max:.4} / {theirs_mean:.4} | |",
        truth_all.len()
    );
    assert!(
        ours_max <= 1.5 * theirs_max + 0.05,
        "max log-prob error {ours_max} against transformers bf16's {theirs_max}"
    );
    assert!(
        ours_mean <= 1.5 * theirs_mean + 0.01,
        "mean log-prob error {ours_mean} against transformers bf16's {theirs_mean}"
    );
    let decided: Vec<_> = first_tokens
        .into_iter()
        .filter(|(_, margin, ..)| *margin >= NEAR_TIE)
        .collect();
    assert!(
        decided.len() >= 3,
        "only {} cases have a first token the f32 model prefers by {NEAR_TIE} or more",
        decided.len()
    );
    for (i, margin, shared, ours, theirs) in decided {
        assert!(
            shared >= 1,
            "case {i} (f32 margin {margin}): greedy starts {ours:?}, transformers bf16 {theirs:?}"
        );
    }
}
