//! Router training on the routed model, in f64 on the autodiff backend: gradients through the
//! soft mixture against finite differences, the layer-wise recomputation of the trainer
//! against one backward pass through the whole graph, and training steps that never touch the
//! backbone.
//!
//! Its own test binary: burn-ndarray keeps one default float dtype per device, so f32 and f64
//! tensors created concurrently in one process can come out in the wrong precision.

mod common;

use std::ops::Range;

use burn::backend::{Autodiff, NdArray};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::{Tensor, TensorData};
use common::max_abs_diff;
use common::routed::{tiny, tokens, values, Randomize};
use flux_attention::AttentionMode;
use flux_models::training::{router_gradients, router_gradients_full_graph, StepInput};
use flux_models::Model;
use flux_router::{GumbelSoftmax, LayerRouterConfig, RouterSet};
use flux_router::{SparsityObjective, TaskCategory};
use rand::{rngs::StdRng, Rng, SeedableRng};

type AD = Autodiff<NdArray<f64>>;

/// Adds `eps` to element `index` of float parameter number `target` (in visiting order).
struct Nudge {
    target: usize,
    index: usize,
    eps: f64,
    seen: usize,
}

impl ModuleMapper<AD> for Nudge {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<AD, D>>) -> Param<Tensor<AD, D>> {
        let hit = self.seen == self.target;
        self.seen += 1;
        if !hit {
            return param;
        }
        let (index, eps) = (self.index, self.eps);
        param.map(|t| {
            let n = t.shape().num_elements();
            let mut delta = vec![0f64; n];
            delta[index] = eps;
            let delta = Tensor::<AD, 1>::from_data(TensorData::new(delta, [n]), &t.device());
            (t.clone() + delta.reshape(t.shape()))
                .detach()
                .require_grad()
        })
    }
}

/// Every float parameter's gradient, flattened, in visiting order.
struct CollectGrads<'a> {
    grads: &'a <AD as burn::tensor::backend::AutodiffBackend>::Gradients,
    out: Vec<Vec<f64>>,
}

impl ModuleVisitor<AD> for CollectGrads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AD, D>>) {
        let g = param
            .val()
            .grad(self.grads)
            .map(|g| g.into_data().convert::<f64>().into_vec().unwrap())
            .unwrap_or_else(|| vec![0.0; param.val().shape().num_elements()]);
        self.out.push(g);
    }
}

/// Loss of the soft mixture: hidden states against fixed random weights.
fn soft_loss(
    model: &Model<AD>,
    routers: &RouterSet<AD>,
    ids: &[Vec<u32>],
    weights: &Tensor<AD, 3>,
) -> Tensor<AD, 1> {
    let mode = AttentionMode::Streaming { sink: 1, window: 4 };
    let gumbel = GumbelSoftmax {
        tau: 1.0,
        straight_through: false,
    };
    let out = model
        .forward_train(
            tokens(ids),
            None,
            routers,
            mode,
            gumbel,
            &mut StdRng::seed_from_u64(3),
        )
        .unwrap();
    (out.hidden * weights.clone()).sum()
}

#[test]
fn router_gradients_through_the_soft_mixture_match_finite_differences() {
    let model = tiny::<AD>("tiny-llama3");
    let device = Default::default();
    let config = LayerRouterConfig {
        head_dim: 16,
        pool_tokens: 3,
        full_bias: 0.0,
    };
    let routers = RouterSet::<AD>::new(&config, 2, &device).map(&mut Randomize::<AD>::new(5, 2.0));
    let nb = 2;
    let ids: Vec<Vec<u32>> = vec![(10..30).collect(), (200..220).collect()];
    let mut rng = StdRng::seed_from_u64(4);
    let hidden = model.config().hidden_size;
    let w: Vec<f64> = (0..nb * 20 * hidden)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let weights = Tensor::<AD, 3>::from_data(TensorData::new(w, [nb, 20, hidden]), &device);

    let loss = soft_loss(&model, &routers, &ids, &weights);
    let grads = loss.backward();
    let mut collect = CollectGrads {
        grads: &grads,
        out: Vec::new(),
    };
    routers.visit(&mut collect);
    let analytic = collect.out;
    // 2 routers x 5 linears x (weight, bias).
    assert_eq!(analytic.len(), 20);
    let eps = 1e-5;
    let mut checked = 0;
    for (target, g) in analytic.iter().enumerate() {
        // The largest gradient entry of each parameter, and one more.
        let largest = (0..g.len())
            .max_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs()))
            .unwrap();
        for index in [largest, g.len() / 2] {
            let at = |e: f64| {
                let nudged = routers.clone().map(&mut Nudge {
                    target,
                    index,
                    eps: e,
                    seen: 0,
                });
                values(soft_loss(&model, &nudged, &ids, &weights))[0]
            };
            let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
            // Central differences in f64 (SiLU is flux's exact form: burn-ndarray's sigmoid
            // rounds to f32 precision and would add noise).
            let err = (numeric - g[index]).abs();
            assert!(
                err < 1e-6 * numeric.abs().max(1.0),
                "param {target} [{index}]: analytic {} vs numeric {numeric}",
                g[index]
            );
            checked += (numeric.abs() > 0.05) as usize;
        }
    }
    assert!(
        checked >= 20,
        "only {checked} non-zero gradients were checked"
    );
}

#[test]
fn training_steps_move_the_routers_and_never_the_backbone() {
    let model = tiny::<AD>("tiny-qwen3");
    let device = Default::default();
    let mut routers = RouterSet::<AD>::new(&LayerRouterConfig::new(32), 2, &device)
        .map(&mut Randomize::<AD>::new(6, 1.0));
    let ids: Vec<Vec<u32>> = vec![(40..64).collect()];
    let reference = values(model.forward(tokens(&ids), &mut model.new_cache()).unwrap());
    let before = routers.clone();
    let mut optim = AdamWConfig::new().init::<AD, RouterSet<AD>>();
    let mut rng = StdRng::seed_from_u64(2);
    let mode = AttentionMode::Streaming { sink: 1, window: 4 };
    for _ in 0..3 {
        let out = model
            .forward_train(
                tokens(&ids),
                None,
                &routers,
                mode,
                GumbelSoftmax::straight_through(1.5),
                &mut rng,
            )
            .unwrap();
        assert_eq!(out.z_full.len(), 2);
        let loss = out.hidden.powi_scalar(2).mean();
        let grads = GradientsParams::from_grads(loss.backward(), &routers);
        routers = optim.step(1e-2, routers, grads);
    }
    // No backbone tensor is tracked, so none can receive a gradient; and the backbone computes
    // exactly what it computed before training.
    assert!(!model.backbone_requires_grad());
    let after = values(model.forward(tokens(&ids), &mut model.new_cache()).unwrap());
    assert_eq!(reference, after);
    // The routers moved.
    let logits = |r: &RouterSet<AD>| {
        let q = Tensor::<AD, 4>::ones([1, 4, 10, 32], &device);
        values(r.routers[0].forward(q, None).unwrap())
    };
    assert!(max_abs_diff(&logits(&before), &logits(&routers)) > 1e-4);
}

/// Every float parameter's registered gradient, flattened, in visiting order.
struct CollectRegistered<'a> {
    grads: &'a GradientsParams,
    out: Vec<Vec<f64>>,
}

impl<B: burn::tensor::backend::AutodiffBackend> ModuleVisitor<B> for CollectRegistered<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let g = self
            .grads
            .get::<B::InnerBackend, D>(param.id)
            .map(|g| g.into_data().convert::<f64>().into_vec().unwrap())
            .unwrap_or_default();
        self.out.push(g);
    }
}

fn grads_of<B: burn::tensor::backend::AutodiffBackend, M: Module<B>>(
    module: &M,
    grads: &GradientsParams,
) -> Vec<Vec<f64>> {
    let mut c = CollectRegistered {
        grads,
        out: Vec::new(),
    };
    module.visit(&mut c);
    c.out
}

#[test]
fn layerwise_recomputation_gives_the_gradients_of_one_backward_pass() {
    let model = tiny::<AD>("tiny-llama3");
    let device = Default::default();
    let config = LayerRouterConfig {
        head_dim: 16,
        pool_tokens: 3,
        full_bias: 0.0,
    };
    let routers = RouterSet::<AD>::new(&config, 2, &device).map(&mut Randomize::<AD>::new(11, 3.0));
    let objective = SparsityObjective::<AD>::new(0.7, 1.3, &device);
    // Two sequences of different lengths (the second padded), different categories.
    let mut rng = StdRng::seed_from_u64(5);
    let ids: Vec<Vec<u32>> = vec![
        (0..24).map(|_| rng.random_range(3..500)).collect(),
        (0..17).map(|_| rng.random_range(3..500)).collect(),
    ];
    let spans: Vec<Range<usize>> = vec![0..24, 0..17];
    let pool: Vec<Range<usize>> = vec![0..18, 0..12];
    let answers: Vec<Range<usize>> = vec![18..24, 12..17];
    let categories = [TaskCategory::Code, TaskCategory::SingleDocQa];
    let targets = [1.0, 0.45];
    let mut padded = ids.clone();
    padded[1].resize(24, 0);
    let input = StepInput {
        spans: &spans,
        pool_spans: &pool,
        answers: &answers,
        ids: &ids,
        categories: &categories,
        targets: &targets,
    };
    let mode = AttentionMode::Streaming { sink: 2, window: 5 };
    let mut checked = 0;
    for seed in 0..4u64 {
        let (a, sa) = router_gradients(
            &model,
            &routers,
            &objective,
            common::routed::tokens(&padded),
            input,
            mode,
            1.3,
            seed,
            0.5,
        )
        .unwrap();
        let (b, sb) = router_gradients_full_graph(
            &model,
            &routers,
            &objective,
            common::routed::tokens(&padded),
            input,
            mode,
            1.3,
            seed,
            0.5,
        )
        .unwrap();
        assert_eq!(
            sa.decisions, sb.decisions,
            "seed {seed}: same noise, same choices"
        );
        assert!((sa.lm_loss - sb.lm_loss).abs() < 1e-12);
        assert!((sa.penalty - sb.penalty).abs() < 1e-12);
        for (module_a, module_b) in [
            (grads_of(&routers, &a), grads_of(&routers, &b)),
            (grads_of(&objective, &a), grads_of(&objective, &b)),
        ] {
            assert_eq!(module_a.len(), module_b.len());
            for (ga, gb) in module_a.iter().zip(&module_b) {
                assert_eq!(ga.len(), gb.len(), "a gradient is missing on one side");
                for (x, y) in ga.iter().zip(gb) {
                    assert!(
                        (x - y).abs() <= 1e-10 * y.abs().max(1e-3),
                        "seed {seed}: layer-wise {x} vs whole graph {y}"
                    );
                    checked += (y.abs() > 1e-6) as usize;
                }
            }
        }
    }
    assert!(
        checked > 1000,
        "only {checked} non-zero gradient entries compared"
    );
}
