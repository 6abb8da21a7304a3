//! Gradients of the router's decisions and of the sparsity objective, in f64 on the autodiff
//! backend.
//!
//! Its own test binary: burn-ndarray keeps one default float dtype per device, so f32 and f64
//! tensors created concurrently in one process can come out in the wrong precision.

use burn::backend::{Autodiff, NdArray};
use burn::tensor::{Tensor, TensorData};
use flux_router::{sparsity_of, GumbelSoftmax, SparsityObjective, TaskCategory};
use rand::{rngs::StdRng, Rng, SeedableRng};

type AD = Autodiff<NdArray<f64>>;

#[test]
fn gumbel_softmax_is_hard_forward_and_soft_backward() {
    let device = Default::default();
    let logits_data = vec![0.3f64, -0.2, -1.0, 0.7, 2.0, 2.5];
    let logits = Tensor::<AD, 2>::from_data(TensorData::new(logits_data.clone(), [3, 2]), &device)
        .require_grad();
    let tau = 1.3;
    let decision =
        GumbelSoftmax::straight_through(tau).sample(logits.clone(), &mut StdRng::seed_from_u64(5));
    // The same noise, drawn again, in f64.
    let mut rng = StdRng::seed_from_u64(5);
    let noise: Vec<f64> = (0..6)
        .map(|_| {
            let u: f64 = rng.random_range(1e-10..1.0 - 1e-10);
            -(-u.ln()).ln() as f32 as f64
        })
        .collect();
    let z: Vec<f64> = decision
        .z_full
        .clone()
        .into_data()
        .convert::<f64>()
        .into_vec()
        .unwrap();
    let weights = [0.5f64, -2.0, 1.5];
    let loss = (decision.z_full.clone()
        * Tensor::<AD, 1>::from_data(TensorData::new(weights.to_vec(), [3]), &device))
    .sum();
    let grads = loss.backward();
    let grad: Vec<f64> = logits
        .grad(&grads)
        .unwrap()
        .into_data()
        .convert::<f64>()
        .into_vec()
        .unwrap();
    for i in 0..3 {
        let a = (logits_data[2 * i] + noise[2 * i]) / tau;
        let b = (logits_data[2 * i + 1] + noise[2 * i + 1]) / tau;
        let y0 = 1.0 / (1.0 + (b - a).exp());
        let hard = if y0 >= 0.5 { 1.0 } else { 0.0 };
        assert_eq!(z[i], hard, "sequence {i}: forward value is the hard choice");
        assert_eq!(decision.full[i], hard == 1.0);
        // d y0 / d l0 = y0 (1 - y0) / tau, d y0 / d l1 = -y0 (1 - y0) / tau.
        let g = weights[i] * y0 * (1.0 - y0) / tau;
        // burn's softmax backward on ndarray agrees to ~1e-9, not to f64 rounding.
        assert!((grad[2 * i] - g).abs() < 1e-8, "{} vs {g}", grad[2 * i]);
        assert!((grad[2 * i + 1] + g).abs() < 1e-8);
    }
    // Soft mode returns the probability itself.
    let soft = GumbelSoftmax {
        tau,
        straight_through: false,
    }
    .sample(logits, &mut StdRng::seed_from_u64(5));
    let y: Vec<f64> = soft.z_full.into_data().convert::<f64>().into_vec().unwrap();
    let a = (logits_data[0] + noise[0]) / tau;
    let b = (logits_data[1] + noise[1]) / tau;
    assert!((y[0] - 1.0 / (1.0 + (b - a).exp())).abs() < 1e-8);
}

#[test]
fn multipliers_ascend_while_sparsity_misses_its_target() {
    let device = Default::default();
    let objective = SparsityObjective::<AD>::new(0.5, 0.5, &device);
    // Two layers, three sequences: z_full per layer.
    let z = [
        Tensor::<AD, 1>::from_data(TensorData::new(vec![1.0f64, 0.0, 0.0], [3]), &device),
        Tensor::<AD, 1>::from_data(TensorData::new(vec![0.0f64, 0.0, 1.0], [3]), &device),
    ];
    let s = sparsity_of(&z).unwrap();
    let sv: Vec<f64> = s.clone().into_data().convert::<f64>().into_vec().unwrap();
    assert_eq!(sv, vec![0.5, 1.0, 0.5]);
    // Code (target 1): s = 0.5 misses; Summarization (1): s = 1 hits; SingleDocQa (0.45): misses.
    let cats = [
        TaskCategory::Code,
        TaskCategory::Summarization,
        TaskCategory::SingleDocQa,
    ];
    let targets: Vec<f64> = cats.iter().map(|c| c.default_target()).collect();
    let penalty = |o: &SparsityObjective<AD>| -> f64 {
        o.penalty(s.clone(), &cats, &targets)
            .unwrap()
            .into_data()
            .convert::<f64>()
            .into_vec::<f64>()
            .unwrap()[0]
    };
    let before = penalty(&objective);
    let want = (0.5 * 0.5 + 0.5 * 0.25 + 0.0 + 0.5 * 0.05 + 0.5 * 0.0025) / 3.0;
    assert!((before - want).abs() < 1e-6, "{before} vs {want}");
    let loss = objective.penalty(s.clone(), &cats, &targets).unwrap();
    let grads = loss.backward();
    let objective = objective.ascent_step(&grads, 0.1);
    let after = penalty(&objective);
    assert!(
        after > before,
        "ascent raises the penalty: {before} -> {after}"
    );
    // Code's multipliers grew by lr * |s - t| / 3 and lr * (s - t)^2 / 3; Summarization's did
    // not move (it meets its target).
    let (l1, l2) = objective.multipliers(TaskCategory::Code);
    assert!((l1 - (0.5 + 0.1 * 0.5 / 3.0) as f32).abs() < 1e-6, "{l1}");
    assert!((l2 - (0.5 + 0.1 * 0.25 / 3.0) as f32).abs() < 1e-6, "{l2}");
    assert_eq!(
        objective.multipliers(TaskCategory::Summarization),
        (0.5, 0.5)
    );
    let err = SparsityObjective::<AD>::new(1.0, 1.0, &Default::default())
        .penalty(Tensor::zeros([2], &Default::default()), &cats, &targets)
        .unwrap_err();
    assert!(err.to_string().contains("`categories`"), "{err}");
}
