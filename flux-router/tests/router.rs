//! The Layer Router, its argmax decisions, schedule, plans and files, against independent
//! computations. (Gradients: training.rs.)

use burn::backend::NdArray;
use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Tensor, TensorData};
use flux_attention::AttentionMode;
use flux_router::{
    argmax_decisions, full_flags, pool_query_states, ForcedPlan, LayerRoute, LayerRouterConfig,
    RouterError, RouterMeta, RouterSet, RoutingPlan, TemperatureSchedule,
};
use rand::{rngs::StdRng, Rng, SeedableRng};

type B = NdArray<f32>;

fn random(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn to_vec<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec().unwrap()
}

#[test]
fn router_has_the_published_widths_and_starts_all_full() {
    let device = Default::default();
    let router = LayerRouterConfig::new(128).init::<B>(&device);
    // d -> 8d -> 2d (encoder), 2d -> 4d -> d -> 2 (head), with biases: 0.59 M for d = 128.
    let d = 128;
    let expected = d * 8 * d
        + 8 * d
        + 8 * d * 2 * d
        + 2 * d
        + 2 * d * 4 * d
        + 4 * d
        + 4 * d * d
        + d
        + d * 2
        + 2;
    assert_eq!(router.num_params(), expected);
    assert_eq!(expected, 592_002);
    let mut rng = StdRng::seed_from_u64(1);
    let q = Tensor::<B, 4>::from_data(
        TensorData::new(random(&mut rng, 3 * 4 * 37 * 128), [3, 4, 37, 128]),
        &device,
    );
    let logits = to_vec(router.forward(q, None).unwrap());
    for row in logits.chunks(2) {
        assert_eq!(row, [4.5, 0.0], "zero last layer, FA bias 4.5");
    }
}

#[test]
fn pooling_means_the_first_and_last_p_tokens_then_heads() {
    let device = Default::default();
    let mut rng = StdRng::seed_from_u64(2);
    let (b, h, n, d, p) = (3, 2, 40, 8, 6);
    let data = random(&mut rng, b * h * n * d);
    let q = Tensor::<B, 4>::from_data(TensorData::new(data.clone(), [b, h, n, d]), &device);
    // Sequence 0: the whole row (40 > 2p: first 6 and last 6); sequence 1: left padding (span
    // 30..40, 10 <= 2p: all 10); sequence 2: right padding (span 0..25).
    let spans = [0..40, 30..40, 0..25];
    let pooled = to_vec(pool_query_states(q, Some(&spans), p, d).unwrap());
    for (i, span) in spans.iter().enumerate() {
        let tokens: Vec<usize> = if span.len() <= 2 * p {
            span.clone().collect()
        } else {
            (span.start..span.start + p)
                .chain(span.end - p..span.end)
                .collect()
        };
        for c in 0..d {
            let mut sum = 0f64;
            for head in 0..h {
                for &t in &tokens {
                    sum += data[((i * h + head) * n + t) * d + c] as f64;
                }
            }
            let want = sum / (h * tokens.len()) as f64;
            let got = pooled[i * d + c] as f64;
            assert!(
                (got - want).abs() < 1e-6,
                "seq {i} channel {c}: {got} vs {want}"
            );
        }
    }
    let q = Tensor::<B, 4>::zeros([1, 2, 5, 8], &device);
    // One span, 3..9, past the 5 rows.
    let spans = [std::ops::Range { start: 3, end: 9 }];
    let err = pool_query_states(q.clone(), Some(&spans), p, d).unwrap_err();
    assert!(err.to_string().contains("`spans`"), "{err}");
    let err = pool_query_states(q, None, p, 16).unwrap_err();
    assert!(err.to_string().contains("`q`"), "{err}");
}

#[test]
fn temperature_anneals_by_cosine_over_sixty_percent() {
    let s = TemperatureSchedule::new(300);
    assert_eq!(s.at(0), 1.5);
    assert!(
        (s.at(90) - 1.25).abs() < 1e-12,
        "half-way through annealing"
    );
    assert!(
        (s.at(45) - (1.0 + 0.5 * 0.5 * (1.0 + (std::f64::consts::PI / 4.0).cos()))).abs() < 1e-12
    );
    assert_eq!(s.at(180), 1.0);
    assert_eq!(s.at(299), 1.0);
    let values: Vec<f64> = (0..300).map(|i| s.at(i)).collect();
    assert!(values.windows(2).all(|w| w[1] <= w[0]));
}

#[test]
fn forced_plans_parse_and_place_layers() {
    use LayerRoute::{Full as F, Sparse as S};
    let routes = |s: &str, l| s.parse::<ForcedPlan>().unwrap().routes(l).unwrap();
    assert_eq!(routes("all-full", 3), vec![F, F, F]);
    assert_eq!(routes("all-sparse", 3), vec![S, S, S]);
    assert_eq!(routes("first:2", 4), vec![S, S, F, F]);
    assert_eq!(routes("last:1", 4), vec![F, F, F, S]);
    assert_eq!(routes("layers:0,3", 5), vec![S, F, F, S, F]);
    // Half of 8 layers, evenly spread: centres of 4 slices of 2 layers.
    assert_eq!(routes("fraction:0.5", 8), vec![F, S, F, S, F, S, F, S]);
    assert_eq!(routes("fraction:0.25", 8), vec![F, F, S, F, F, F, S, F]);
    assert_eq!(routes("fraction:1", 5), vec![S; 5]);
    assert_eq!(routes("fraction:0", 5), vec![F; 5]);
    for (bad, what) in [
        ("layers:1,9", "layer 9"),
        ("first:7", "7 sparse layers"),
        ("fraction:1.5", "fraction 1.5"),
    ] {
        let err = bad.parse::<ForcedPlan>().unwrap().routes(6).unwrap_err();
        assert!(err.to_string().contains(what), "{bad}: {err}");
    }
    for bad in ["some", "layers:a", "fraction:x", "first:"] {
        let err = bad.parse::<ForcedPlan>().unwrap_err();
        assert!(err.to_string().contains("`plan`"), "{bad}: {err}");
    }
    let plan = RoutingPlan::forced(
        &ForcedPlan::Layers(vec![1]),
        3,
        AttentionMode::streaming(),
        2,
    )
    .unwrap();
    assert_eq!(plan.mode(1, 1), AttentionMode::streaming());
    assert_eq!(plan.mode(1, 0), AttentionMode::Full);
    assert_eq!(plan.layer_string(0), "FSF");
    assert!((plan.sparsity(0) - 1.0 / 3.0).abs() < 1e-12);
    assert!(RoutingPlan::uniform(AttentionMode::Full, vec![F], 1).is_err());
    assert!(RoutingPlan::new(AttentionMode::streaming(), vec![vec![F], vec![F, S]]).is_err());
}

/// Adds uniform noise to every float parameter.
struct Jitter(StdRng);

impl ModuleMapper<B> for Jitter {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let rng = &mut self.0;
        param.map(|t| {
            let n = t.shape().num_elements();
            let noise: Vec<f32> = (0..n).map(|_| rng.random_range(-0.3f32..0.3)).collect();
            let noise = Tensor::<B, 1>::from_data(TensorData::new(noise, [n]), &t.device());
            // A fresh leaf: a parameter must not be the output of another op.
            (t.clone() + noise.reshape(t.shape()))
                .detach()
                .require_grad()
        })
    }
}

fn meta(layers: usize, head_dim: usize) -> RouterMeta {
    RouterMeta {
        architecture: "LlamaForCausalLM".into(),
        num_layers: layers,
        num_heads: 4,
        head_dim,
        pool_tokens: 7,
        sparse_mode: AttentionMode::triangle(),
    }
}

#[test]
fn router_files_round_trip_and_refuse_other_models() {
    let device = Default::default();
    let dir = std::env::temp_dir().join(format!("flux-router-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("routers.safetensors");
    let config = LayerRouterConfig {
        head_dim: 16,
        pool_tokens: 7,
        full_bias: 1.0,
    };
    // Every parameter moved away from its initial value, the zero last layer included.
    let set = RouterSet::<B>::new(&config, 3, &device).map(&mut Jitter(StdRng::seed_from_u64(4)));
    set.save(&meta(3, 16), &path).unwrap();
    assert_eq!(RouterSet::<B>::read_meta(&path).unwrap(), meta(3, 16));
    let (loaded, file_meta) = RouterSet::<B>::load(&path, &meta(3, 16), &device).unwrap();
    assert_eq!(file_meta.sparse_mode, AttentionMode::triangle());
    let mut rng = StdRng::seed_from_u64(9);
    let q = Tensor::<B, 4>::from_data(
        TensorData::new(random(&mut rng, 2 * 4 * 20 * 16), [2, 4, 20, 16]),
        &device,
    );
    for l in 0..3 {
        // Fresh routers' hidden layers are random; outputs must match exactly after the trip.
        // Same weights; the loaded ones are transposed views, so sums may round differently.
        let a = to_vec(set.routers[l].forward(q.clone(), None).unwrap());
        let b = to_vec(loaded.routers[l].forward(q.clone(), None).unwrap());
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5);
        assert!(close(&a, &b), "layer {l}: {a:?} vs {b:?}");
        assert!(
            a.iter().all(|x| *x != 0.0 && *x != 1.0),
            "the logits depend on the input"
        );
        let pooled =
            Tensor::<B, 2>::from_data(TensorData::new(random(&mut rng, 16), [1, 16]), &device);
        let hidden_a = to_vec(set.routers[l].forward_pooled(pooled.clone()));
        let hidden_b = to_vec(loaded.routers[l].forward_pooled(pooled));
        assert!(close(&hidden_a, &hidden_b));
    }
    assert_eq!(loaded.routers[0].pool_tokens(), 7);

    let mut other = meta(4, 16);
    let err = RouterSet::<B>::load(&path, &other, &device).unwrap_err();
    assert!(
        matches!(
            err,
            RouterError::Mismatch {
                field: "num_layers",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("routers.safetensors"), "{err}");
    other = meta(3, 32);
    let err = RouterSet::<B>::load(&path, &other, &device).unwrap_err();
    assert!(
        matches!(
            err,
            RouterError::Mismatch {
                field: "head_dim",
                ..
            }
        ),
        "{err}"
    );
    other = meta(3, 16);
    other.architecture = "Qwen3ForCausalLM".into();
    let err = RouterSet::<B>::load(&path, &other, &device).unwrap_err();
    assert!(err.to_string().contains("`architecture`"), "{err}");

    // Not a router file; a truncated one; a missing one.
    let bad = dir.join("bad.safetensors");
    std::fs::write(&bad, b"not safetensors at all").unwrap();
    let err = RouterSet::<B>::load(&bad, &meta(3, 16), &device).unwrap_err();
    assert!(err.to_string().contains("bad.safetensors"), "{err}");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() - 100]).unwrap();
    let err = RouterSet::<B>::load(&bad, &meta(3, 16), &device).unwrap_err();
    assert!(err.to_string().contains("bad.safetensors"), "{err}");
    let err = RouterSet::<B>::load(&dir.join("none"), &meta(3, 16), &device).unwrap_err();
    assert!(matches!(err, RouterError::Io { .. }), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn argmax_prefers_full_attention_on_ties() {
    let l = Tensor::<B, 2>::from_data(
        TensorData::new(vec![1.0f32, 2.0, 3.0, 3.0, 0.5, -1.0], [3, 2]),
        &Default::default(),
    );
    assert_eq!(argmax_decisions(l.clone()), vec![false, true, true]);
    // The device-side flags say the same, as 0 / 1.
    assert_eq!(to_vec(full_flags(l)), vec![0.0, 1.0, 1.0]);
}

#[test]
fn clones_of_a_fresh_router_share_its_weights() {
    let router = LayerRouterConfig::new(8).init::<B>(&Default::default());
    let copy = router.clone();
    let pooled = Tensor::<B, 2>::ones([1, 8], &Default::default());
    let hidden = |r: &flux_router::LayerRouter<B>| to_vec(r.forward_pooled(pooled.clone()));
    assert_eq!(hidden(&router), hidden(&copy));
}

#[test]
fn standardized_router_computes_on_raw_inputs_what_it_did_on_standardized_ones() {
    let d = 8;
    let mut rng = StdRng::seed_from_u64(5);
    let device = Default::default();
    // Jittered, so that the last layer is not all zeros and the logits depend on the input.
    let router = LayerRouterConfig::new(d)
        .init::<B>(&device)
        .map(&mut Jitter(StdRng::seed_from_u64(6)));
    // Inputs with a large common offset and a small spread, like pooled query states.
    let mean: Vec<f32> = (0..d).map(|i| 3.0 + i as f32).collect();
    let std: Vec<f32> = (0..d).map(|i| 0.01 * (i + 1) as f32).collect();
    let raw: Vec<f32> = (0..4 * d)
        .map(|k| mean[k % d] + std[k % d] * rng.random_range(-2.0f32..2.0))
        .collect();
    let standardized: Vec<f32> = raw
        .iter()
        .enumerate()
        .map(|(k, x)| (x - mean[k % d]) / std[k % d])
        .collect();
    let input = |x: &[f32]| Tensor::<B, 2>::from_data(TensorData::new(x.to_vec(), [4, d]), &device);
    let expected = to_vec(router.forward_pooled(input(&standardized)));
    let folded = router
        .clone()
        .standardize_inputs(
            Tensor::from_data(TensorData::new(mean.clone(), [d]), &device),
            Tensor::from_data(TensorData::new(std.clone(), [d]), &device),
        )
        .unwrap();
    let got = to_vec(folded.forward_pooled(input(&raw)));
    for (g, e) in got.iter().zip(&expected) {
        assert!(
            (g - e).abs() < 1e-3 * (1.0 + e.abs()),
            "{got:?} vs {expected:?}"
        );
    }
    // The standardized inputs spread the logits more than the raw ones did.
    let spread = |v: &[f32]| {
        let fa: Vec<f32> = v.chunks(2).map(|c| c[0] - c[1]).collect();
        fa.iter().cloned().fold(f32::MIN, f32::max) - fa.iter().cloned().fold(f32::MAX, f32::min)
    };
    assert!(spread(&got) > spread(&to_vec(router.forward_pooled(input(&raw)))));
    // Bad statistics are refused.
    let zeros = Tensor::<B, 1>::zeros([d], &device);
    assert!(router
        .clone()
        .standardize_inputs(zeros.clone(), zeros.clone())
        .is_err());
    assert!(router
        .standardize_inputs(zeros, Tensor::<B, 1>::ones([d + 1], &device))
        .is_err());
}
