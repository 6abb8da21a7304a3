//! The routed model: batched prefill and decode with per-sequence plans and padding equal each
//! sequence alone; routers' plans are kept for decode. (Training: router_gradients.rs.)

mod common;

use std::ops::Range;

use burn::module::Module;
use burn::tensor::Tensor;
use common::routed::{tiny, tokens, values, Randomize};
use common::{max_abs_diff, B};
use flux_attention::AttentionMode;
use flux_models::Routing;
use flux_router::{ForcedPlan, LayerRoute, LayerRouterConfig, RouterSet, RoutingPlan};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// Hidden states `[n, hidden]` of one sequence of a batch output, at `span`.
fn rows_of(hidden: &Tensor<B, 3>, i: usize, span: Range<usize>) -> Vec<f64> {
    values(
        hidden
            .clone()
            .narrow(0, i, 1)
            .narrow(1, span.start, span.len()),
    )
}

#[test]
fn batched_prefill_and_decode_with_plans_and_padding_equal_each_sequence_alone() {
    let mut rng = StdRng::seed_from_u64(31);
    let (sink, window) = (2, 8);
    let streaming = AttentionMode::Streaming { sink, window };
    let triangle = AttentionMode::Triangle {
        sink,
        window,
        last_queries: 5,
    };
    for name in ["tiny-llama3", "tiny-qwen3"] {
        let model = tiny::<B>(name);
        let layers = model.config().num_layers;
        let lengths = [37usize, 25, 30];
        let seqs: Vec<Vec<u32>> = lengths
            .iter()
            .map(|&n| (0..n).map(|_| rng.random_range(3..500)).collect())
            .collect();
        // Sequence 0 all full, 1 all streaming, 2 triangle in layer 1 only.
        let routes = [
            vec![LayerRoute::Full; layers],
            vec![LayerRoute::Sparse; layers],
            ForcedPlan::Layers(vec![1]).routes(layers).unwrap(),
        ];
        let alone: Vec<(Vec<f64>, Vec<Vec<f64>>)> = (0..3)
            .map(|i| {
                let mode = if i == 2 { triangle } else { streaming };
                let plan = RoutingPlan::new(mode, vec![routes[i].clone()]).unwrap();
                let mut cache = model.new_cache_with_eviction(true);
                let h = model
                    .forward_routed(
                        tokens(&[seqs[i].clone()]),
                        None,
                        &mut cache,
                        Routing::Plan(&plan),
                    )
                    .unwrap();
                let prefill = rows_of(&h, 0, 0..lengths[i]);
                let steps = (0..3)
                    .map(|s| {
                        let h = model
                            .forward(tokens(&[vec![7 + s as u32]]), &mut cache)
                            .unwrap();
                        rows_of(&h, 0, 0..1)
                    })
                    .collect();
                (prefill, steps)
            })
            .collect();
        let n = *lengths.iter().max().unwrap();
        for left in [false, true] {
            let spans: Vec<Range<usize>> = lengths
                .iter()
                .map(|&len| if left { n - len..n } else { 0..len })
                .collect();
            let padded: Vec<Vec<u32>> = seqs
                .iter()
                .zip(&spans)
                .map(|(s, span)| {
                    let mut row = vec![0u32; n];
                    row[span.clone()].copy_from_slice(s);
                    row
                })
                .collect();
            // One plan for the batch: its sparse mode is streaming, so sequence 2 gets its
            // triangle through a batch of its own below; here sequences 0 and 1 share a call.
            let plan = RoutingPlan::new(streaming, routes[..2].to_vec()).unwrap();
            let mut cache = model.new_cache_with_eviction(true);
            let h = model
                .forward_routed(
                    tokens(&padded[..2]),
                    Some(&spans[..2]),
                    &mut cache,
                    Routing::Plan(&plan),
                )
                .unwrap();
            for i in 0..2 {
                let err = max_abs_diff(&rows_of(&h, i, spans[i].clone()), &alone[i].0);
                assert!(
                    err < 1e-4,
                    "{name} left {left} seq {i}: prefill off by {err}"
                );
            }
            for s in 0..3 {
                let step = vec![vec![7 + s as u32]; 2];
                let h = model.forward(tokens(&step), &mut cache).unwrap();
                for (i, (_, steps)) in alone.iter().enumerate().take(2) {
                    let err = max_abs_diff(&rows_of(&h, i, 0..1), &steps[s]);
                    assert!(
                        err < 1e-4,
                        "{name} left {left} seq {i} step {s}: off by {err}"
                    );
                }
            }
            // All three with triangle as the sparse mode: sequence 2's plan, 0 and 1 full.
            let plan = RoutingPlan::new(
                triangle,
                vec![routes[0].clone(), routes[0].clone(), routes[2].clone()],
            )
            .unwrap();
            let mut cache = model.new_cache();
            let h = model
                .forward_routed(
                    tokens(&padded),
                    Some(&spans),
                    &mut cache,
                    Routing::Plan(&plan),
                )
                .unwrap();
            let err = max_abs_diff(&rows_of(&h, 2, spans[2].clone()), &alone[2].0);
            assert!(
                err < 1e-4,
                "{name} left {left}: triangle sequence off by {err}"
            );
            let err = max_abs_diff(&rows_of(&h, 0, spans[0].clone()), &alone[0].0);
            assert!(err < 1e-4, "{name} left {left}: full sequence off by {err}");
        }
        // Sparse attention really changes the result at this length.
        let mut cache = model.new_cache();
        let full = model
            .forward(tokens(&[seqs[1].clone()]), &mut cache)
            .unwrap();
        assert!(max_abs_diff(&rows_of(&full, 0, 0..lengths[1]), &alone[1].0) > 1e-3);
    }
}

#[test]
fn routers_choose_at_prefill_and_the_plan_is_reused_at_decode() {
    let model = tiny::<B>("tiny-llama3");
    let device = Default::default();
    let mode = AttentionMode::Streaming { sink: 2, window: 6 };
    let seqs: Vec<Vec<u32>> = vec![(3..43).collect(), (100..140).collect()];
    // Bias towards sparse attention and jittered weights: the decisions depend on the input.
    let config = LayerRouterConfig {
        head_dim: 16,
        pool_tokens: 5,
        full_bias: 0.0,
    };
    let routers = RouterSet::<B>::new(&config, 2, &device).map(&mut Randomize::<B>::new(8, 4.0));
    let mut cache = model.new_cache();
    let h = model
        .forward_routed(
            tokens(&seqs),
            None,
            &mut cache,
            Routing::Routers {
                routers: &routers,
                sparse_mode: mode,
            },
        )
        .unwrap();
    let plan = cache
        .plan()
        .expect("routed prefill stores its plan")
        .clone();
    assert_eq!((plan.sequences(), plan.num_layers()), (2, 2));
    // The same plan, given explicitly, computes the same thing, prefill and decode.
    let mut forced_cache = model.new_cache();
    let forced = model
        .forward_routed(tokens(&seqs), None, &mut forced_cache, Routing::Plan(&plan))
        .unwrap();
    assert_eq!(values(h), values(forced));
    let step = model
        .forward(tokens(&[vec![5], vec![6]]), &mut cache)
        .unwrap();
    let forced_step = model
        .forward(tokens(&[vec![5], vec![6]]), &mut forced_cache)
        .unwrap();
    assert_eq!(values(step), values(forced_step));
    assert_eq!(cache.plan(), Some(&plan), "decode keeps the prefill's plan");

    // With eviction, the layers the routers sent to sparse attention drop the middle of the
    // prompt once the decisions are read, as a forced plan's do during the prefill (a prompt
    // long enough that the dropped part is more than the cache's slack).
    let long: Vec<Vec<u32>> = vec![(3..163).collect(), (200..360).collect()];
    let routing = Routing::Routers {
        routers: &routers,
        sparse_mode: mode,
    };
    let mut kept = model.new_cache();
    let mut routed_evicting = model.new_cache_with_eviction(true);
    model
        .forward_routed(tokens(&long), None, &mut kept, routing)
        .unwrap();
    let h = model
        .forward_routed(tokens(&long), None, &mut routed_evicting, routing)
        .unwrap();
    let long_plan = routed_evicting.plan().unwrap().clone();
    assert!(
        (0..2).any(|i| long_plan.layer_string(i).contains('S')),
        "some layer goes sparse: {long_plan:?}"
    );
    let mut forced_evicting = model.new_cache_with_eviction(true);
    let forced = model
        .forward_routed(
            tokens(&long),
            None,
            &mut forced_evicting,
            Routing::Plan(&long_plan),
        )
        .unwrap();
    assert_eq!(values(h), values(forced));
    assert_eq!(
        routed_evicting.allocated_bytes(),
        forced_evicting.allocated_bytes()
    );
    assert!(routed_evicting.allocated_bytes() < kept.allocated_bytes());
    let step = model
        .forward(tokens(&[vec![5], vec![6]]), &mut routed_evicting)
        .unwrap();
    let forced_step = model
        .forward(tokens(&[vec![5], vec![6]]), &mut forced_evicting)
        .unwrap();
    assert_eq!(values(step), values(forced_step));

    // Routers for another model are refused with the reason.
    let wrong = RouterSet::<B>::new(&LayerRouterConfig::new(32), 2, &device);
    let err = model
        .forward_routed(
            tokens(&seqs),
            None,
            &mut model.new_cache(),
            Routing::Routers {
                routers: &wrong,
                sparse_mode: mode,
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains("head_dim"), "{err}");
}

/// A right-padded prompt batch whose sequences share a rule runs as one attention call per
/// layer (flux_attention::attend_padded_prompts); prefill rows, decode steps and the caches'
/// sizes equal each sequence run alone, for forced plans and for routers.
#[test]
fn right_padded_batches_sharing_a_rule_equal_each_sequence_alone() {
    let mut rng = StdRng::seed_from_u64(5);
    let mode = AttentionMode::Streaming { sink: 2, window: 8 };
    let device = Default::default();
    for name in ["tiny-llama3", "tiny-qwen3"] {
        let model = tiny::<B>(name);
        let layers = model.config().num_layers;
        let lengths = [41usize, 23, 34];
        let n = 41;
        let seqs: Vec<Vec<u32>> = lengths
            .iter()
            .map(|&len| (0..len).map(|_| rng.random_range(3..500)).collect())
            .collect();
        let spans: Vec<Range<usize>> = lengths.iter().map(|&len| 0..len).collect();
        let padded: Vec<Vec<u32>> = seqs
            .iter()
            .map(|s| {
                let mut row = vec![0u32; n];
                row[..s.len()].copy_from_slice(s);
                row
            })
            .collect();
        let config = LayerRouterConfig {
            head_dim: model.config().head_dim,
            pool_tokens: 5,
            full_bias: 0.0,
        };
        let routers =
            RouterSet::<B>::new(&config, layers, &device).map(&mut Randomize::<B>::new(3, 4.0));
        let plans = [
            RoutingPlan::new(mode, vec![vec![LayerRoute::Full; layers]; 3]).unwrap(),
            RoutingPlan::new(mode, vec![vec![LayerRoute::Sparse; layers]; 3]).unwrap(),
        ];
        let routings = [
            Routing::Plan(&plans[0]),
            Routing::Plan(&plans[1]),
            Routing::Routers {
                routers: &routers,
                sparse_mode: mode,
            },
        ];
        let plans_alone = [
            RoutingPlan::new(mode, vec![vec![LayerRoute::Full; layers]]).unwrap(),
            RoutingPlan::new(mode, vec![vec![LayerRoute::Sparse; layers]]).unwrap(),
        ];
        let routings_alone = [
            Routing::Plan(&plans_alone[0]),
            Routing::Plan(&plans_alone[1]),
            routings[2],
        ];
        for (r, (routing, routing_alone)) in routings.iter().zip(&routings_alone).enumerate() {
            let mut cache = model.new_cache_with_eviction(true);
            let h = model
                .forward_routed(tokens(&padded), Some(&spans), &mut cache, *routing)
                .unwrap();
            for i in 0..3 {
                let mut alone = model.new_cache_with_eviction(true);
                let own = model
                    .forward_routed(tokens(&[seqs[i].clone()]), None, &mut alone, *routing_alone)
                    .unwrap();
                let err = max_abs_diff(&rows_of(&h, i, spans[i].clone()), &values(own));
                assert!(
                    err < 1e-4,
                    "{name} routing {r} seq {i}: prefill off by {err}"
                );
                for s in 0..3u32 {
                    let step = model.forward(tokens(&[vec![9 + s]]), &mut alone).unwrap();
                    let steps: Vec<Vec<u32>> = (0..3).map(|_| vec![9 + s]).collect();
                    let batched = model.forward(tokens(&steps), &mut cache).unwrap();
                    let err = max_abs_diff(&rows_of(&batched, i, 0..1), &values(step));
                    assert!(
                        err < 1e-4,
                        "{name} routing {r} seq {i} step {s}: off by {err}"
                    );
                }
                cache = {
                    // Replay the batch for the next sequence's comparison: decode steps above
                    // advanced it.
                    let mut fresh = model.new_cache_with_eviction(true);
                    model
                        .forward_routed(tokens(&padded), Some(&spans), &mut fresh, *routing)
                        .unwrap();
                    fresh
                };
            }
        }
    }
}
