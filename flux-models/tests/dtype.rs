//! Models loaded in another dtype than f32 (`load_as`): every tensor the model makes follows
//! the weights' dtype (RoPE tables, padding, KV cache, the mix of a training layer), norms and
//! softmaxes run in f32 at least, routers read their own dtype (f32) and logits come out in f32
//! (f64 for an f64 model).
//!
//! - f64 on ndarray, which refuses to mix dtypes in one operation, so a tensor made in the
//!   wrong dtype fails the test: log-probs and the greedy continuation match transformers' f32
//!   reference, trained routers choose the plan they choose in f32, a padded batch equals its
//!   sequences run alone, and a training pass runs.
//! - bf16 and f16 on burn's Flex CPU backend: log-probs within half precision's error of the
//!   reference, and the greedy continuation starts as transformers'.
//! - A dtype the backend cannot compute in is an error naming it.

mod common;

use std::path::PathBuf;

use burn::backend::{Flex, NdArray};
use burn::tensor::FloatDType;
use common::*;
use flux_attention::{AttentionMode, FluxBackend};
use flux_models::backend::{BackendChoice, DTypeChoice};
use flux_models::{load_as, LoadedModel, Model, Routing};
use flux_router::{GumbelSoftmax, RouterSet};
use rand::{rngs::StdRng, SeedableRng};

fn smollm2<Bk: FluxBackend>(dtype: FloatDType) -> LoadedModel<Bk> {
    load_as::<Bk>(
        &cached("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"),
        &Default::default(),
        dtype,
    )
    .unwrap()
}

/// The first reference case of transformers (f32): token ids, log-probs, greedy ids.
fn reference_case() -> (Vec<u32>, Vec<f64>, Vec<u32>) {
    let reference = read_json(&fixture("reference/smollm2.json"));
    let case = &reference["cases"][1];
    (
        u32s(&case["ids"]),
        f64s(&case["logprobs"]),
        u32s(&case["greedy"]),
    )
}

fn shipped_routers<Bk: FluxBackend>(model: &Model<Bk>) -> RouterSet<Bk> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../routers/smollm2-135m-instruct/routers.safetensors");
    let meta = RouterSet::<Bk>::read_meta(&path).unwrap();
    let expected = model.router_meta(meta.sparse_mode, meta.pool_tokens);
    RouterSet::<Bk>::load(&path, &expected, model.device())
        .unwrap()
        .0
}

/// The plan the routers choose for `ids`, and the last position's logits.
fn routed<Bk: FluxBackend>(model: &Model<Bk>, ids: &[u32]) -> (String, Vec<f32>) {
    let routers = shipped_routers(model);
    let mut cache = model.new_cache();
    let hidden = model
        .forward_routed(
            model.token_tensor(&[ids.to_vec()]).unwrap(),
            None,
            &mut cache,
            Routing::Routers {
                routers: &routers,
                sparse_mode: AttentionMode::Streaming { sink: 4, window: 8 },
            },
        )
        .unwrap();
    let n = hidden.dims()[1];
    let logits = model.logits(hidden.narrow(1, n - 1, 1));
    let expected = match model.dtype() {
        FloatDType::F64 => burn::tensor::DType::F64,
        _ => burn::tensor::DType::F32,
    };
    assert_eq!(
        logits.dtype(),
        expected,
        "logits in f32, or f64 for an f64 model"
    );
    let plan = cache.plan().unwrap().layer_string(0);
    (
        plan,
        logits.into_data().convert::<f32>().to_vec::<f32>().unwrap(),
    )
}

#[test]
fn an_f64_model_keeps_every_tensor_in_f64_and_matches_transformers() {
    let (ids, logprobs, greedy_ref) = reference_case();
    let wide = smollm2::<NdArray<f32>>(FloatDType::F64).model;
    assert_eq!(wide.dtype(), FloatDType::F64);
    let (got, _) = score(&wide, &ids);
    let err = max_abs_diff(&got, &logprobs);
    assert!(
        err < 2e-3,
        "f64 log-probs differ from transformers' by {err}"
    );
    // Decode through the KV cache (appended and grown in f64).
    assert_eq!(greedy(&wide, &ids, 16), greedy_ref[..16]);

    // Trained routers read f32 query states: the same plan as the f32 model.
    let narrow = smollm2::<NdArray<f32>>(FloatDType::F32).model;
    let (plan64, logits64) = routed(&wide, &ids);
    let (plan32, logits32) = routed(&narrow, &ids);
    assert_eq!(plan64, plan32, "routers chose another plan in f64");
    let diff = logits64
        .iter()
        .zip(&logits32)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        diff < 1e-2,
        "routed logits differ by {diff} between f64 and f32"
    );

    // A padded batch (zeros in the model's dtype around each span) equals its rows run alone.
    let short = ids[..ids.len() - 3].to_vec();
    let mut padded = vec![0u32; 3];
    padded.extend(&short);
    let batch = wide.token_tensor(&[ids.clone(), padded]).unwrap();
    let spans = [0..ids.len(), 3..ids.len()];
    let mut cache = wide.new_cache();
    let hidden = wide
        .forward_routed(batch, Some(&spans), &mut cache, Routing::Full)
        .unwrap();
    let last = |h: burn::tensor::Tensor<NdArray<f32>, 3>, row: usize, pos: usize| {
        wide.logits(h.narrow(0, row, 1).narrow(1, pos, 1))
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .unwrap()
    };
    let alone = |seq: &[u32]| {
        let mut c = wide.new_cache();
        let h = wide
            .forward(wide.token_tensor(&[seq.to_vec()]).unwrap(), &mut c)
            .unwrap();
        last(h, 0, seq.len() - 1)
    };
    for (row, seq) in [(0, &ids), (1, &short)] {
        let batched = last(hidden.clone(), row, ids.len() - 1);
        let single = alone(seq);
        let d = batched
            .iter()
            .zip(&single)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-4, "row {row} of the padded f64 batch differs by {d}");
    }

    // A training pass mixes both branches with the routers' f32 weights.
    let routers = shipped_routers(&wide);
    let out = wide
        .forward_train(
            wide.token_tensor(std::slice::from_ref(&ids)).unwrap(),
            None,
            &routers,
            AttentionMode::Streaming { sink: 4, window: 8 },
            GumbelSoftmax {
                tau: 1.0,
                straight_through: true,
            },
            &mut StdRng::seed_from_u64(1),
        )
        .unwrap();
    assert_eq!(out.hidden.dtype(), burn::tensor::DType::F64);
    let hidden: Vec<f64> = out.hidden.into_data().to_vec::<f64>().unwrap();
    assert!(hidden.iter().all(|x| x.is_finite()));
}

#[test]
fn half_precision_models_on_the_cpu_stay_close_to_transformers() {
    let (ids, logprobs, greedy_ref) = reference_case();
    // Half precision rounds each weight and activation to 8 (bf16) or 11 (f16) bits of
    // mantissa; measured errors on this case are well inside these bounds.
    for (dtype, tolerance, agreeing_tokens) in
        [(FloatDType::BF16, 0.35, 4), (FloatDType::F16, 0.1, 8)]
    {
        let model = smollm2::<Flex>(dtype).model;
        assert_eq!(model.dtype(), dtype);
        let (got, _) = score(&model, &ids);
        let err = max_abs_diff(&got, &logprobs);
        let mean = got
            .iter()
            .zip(&logprobs)
            .map(|(a, b)| (a - b).abs())
            .sum::<f64>()
            / got.len() as f64;
        eprintln!("{dtype:?}: log-probs differ from transformers' f32 by at most {err:.4}, {mean:.4} on average");
        assert!(err < tolerance, "{dtype:?} log-probs differ by {err}");
        assert_eq!(
            greedy(&model, &ids, agreeing_tokens),
            greedy_ref[..agreeing_tokens],
            "{dtype:?} greedy continuation"
        );
        let (plan, logits) = routed(&model, &ids);
        assert!(
            logits.iter().all(|x| x.is_finite()),
            "{dtype:?} routed logits"
        );
        assert_eq!(plan.len(), model.num_layers());
    }
}

#[test]
fn a_dtype_the_backend_cannot_compute_in_is_an_error_naming_it() {
    let path = cached("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    let err = load_as::<NdArray<f32>>(&path, &Default::default(), FloatDType::BF16)
        .err()
        .expect("ndarray has no bf16")
        .to_string();
    assert!(err.contains("bf16") && err.contains("ndarray"), "{err}");

    let device = Default::default();
    let resolve = |choice: &str| {
        choice
            .parse::<DTypeChoice>()
            .unwrap()
            .resolve::<NdArray<f32>>(BackendChoice::Ndarray, &device)
    };
    assert_eq!(resolve("auto").unwrap(), FloatDType::F32);
    assert_eq!(resolve("f32").unwrap(), FloatDType::F32);
    assert!(resolve("f16").unwrap_err().to_string().contains("f16"));
    let bad = "fp8".parse::<DTypeChoice>().unwrap_err();
    assert!(bad.contains("fp8") && bad.contains("bf16"), "{bad}");
    // Flex computes in both half types.
    let flex = |choice: &str| {
        choice
            .parse::<DTypeChoice>()
            .unwrap()
            .resolve::<Flex>(BackendChoice::Ndarray, &Default::default())
            .unwrap()
    };
    assert_eq!(flex("bf16"), FloatDType::BF16);
    assert_eq!(flex("auto"), FloatDType::F32);
}
