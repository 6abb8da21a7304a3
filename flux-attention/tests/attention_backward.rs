//! The FlashAttention-style backward (`reference_backward`, and `attention` on a tracked call)
//! against autodiff of the reference's own operations, in float64: every rule, GQA, queries
//! that end a longer key range, an evicted cache, and enough rows for several chunks.

mod common;

use burn::backend::{Autodiff, NdArray};
use burn::tensor::{Tensor, TensorData};
use common::random;
use flux_attention::reference_backward::{attention_backward, attention_with_lse};
use flux_attention::{attention, reference, AttentionMode, BlockSelection, KeyLayout, Visibility};
use rand::{rngs::StdRng, SeedableRng};

type F64 = NdArray<f64>;
type Grad = Autodiff<F64>;

fn tensor<B: burn::tensor::backend::Backend, const D: usize>(
    x: &[f32],
    shape: [usize; D],
) -> Tensor<B, D> {
    let x: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    Tensor::from_data(TensorData::new(x, shape), &Default::default())
}

fn values<B: burn::tensor::backend::Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f64> {
    t.into_data().convert::<f64>().to_vec().unwrap()
}

fn relative_error(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f64, |m, x| m.max(x.abs()));
    assert!(scale > 0.0, "an all-zero reference proves nothing");
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max)
        / scale
}

/// Inputs of one call: data and shapes.
struct Inputs<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    /// The output's gradient (the loss is `sum(w * out)`).
    w: &'a [f32],
    qs: [usize; 4],
    ks: [usize; 4],
}

/// Output and `[dq, dk, dv]` by autodiff of the reference's recorded operations (softmax over
/// N x N scores).
fn recorded(x: &Inputs, layout: KeyLayout, visibility: &Visibility) -> (Vec<f64>, [Vec<f64>; 3]) {
    let [q, k, v] = [(x.q, x.qs), (x.k, x.ks), (x.v, x.ks)]
        .map(|(d, s)| tensor::<Grad, 4>(d, s).require_grad());
    let out = reference::masked_attention(q.clone(), k.clone(), v.clone(), layout, visibility);
    let grads = (out.clone() * tensor::<Grad, 4>(x.w, x.qs))
        .sum()
        .backward();
    let g = [q, k, v].map(|t| values(t.grad(&grads).expect("a gradient")));
    (values(out.inner()), g)
}

/// Output and `[dq, dk, dv]` by the chunked forward with log-sum-exps and backward.
fn chunked(x: &Inputs, layout: KeyLayout, visibility: &Visibility) -> (Vec<f64>, [Vec<f64>; 3]) {
    let [q, k, v] = [(x.q, x.qs), (x.k, x.ks), (x.v, x.ks)].map(|(d, s)| tensor::<F64, 4>(d, s));
    let (out, lse) = attention_with_lse(q.clone(), k.clone(), v.clone(), layout, visibility);
    let d_out = tensor::<F64, 4>(x.w, x.qs);
    let (dq, dk, dv) = attention_backward(q, k, v, out.clone(), lse, d_out, layout, visibility);
    (values(out), [dq, dk, dv].map(values))
}

struct Case {
    name: &'static str,
    shape: [usize; 5], // b, hq, hkv, nq, nk (stored keys)
    d: usize,
    layout: KeyLayout,
    visibility: Visibility,
}

fn cases() -> Vec<Case> {
    let window = |sink, window, dense| Visibility::Window {
        sink,
        window,
        dense,
    };
    let keep: Vec<bool> = (0..2 * 4 * 5 * 5).map(|i| (i * 7) % 3 != 0).collect();
    vec![
        Case {
            name: "causal, GQA 3",
            shape: [2, 6, 2, 37, 37],
            d: 16,
            layout: KeyLayout::default(),
            visibility: Visibility::Causal,
        },
        Case {
            name: "causal, 300 rows (two chunks)",
            shape: [1, 2, 1, 300, 300],
            d: 8,
            layout: KeyLayout::default(),
            visibility: Visibility::Causal,
        },
        Case {
            name: "sink + window, 300 rows",
            shape: [1, 2, 1, 300, 300],
            d: 8,
            layout: KeyLayout::default(),
            visibility: window(4, 50, 0..0),
        },
        Case {
            name: "triangle",
            shape: [1, 4, 2, 70, 70],
            d: 16,
            layout: KeyLayout::default(),
            visibility: window(3, 9, 60..70),
        },
        Case {
            name: "queries ending a longer key range",
            shape: [1, 4, 1, 5, 40],
            d: 16,
            layout: KeyLayout::default(),
            visibility: window(2, 11, 0..0),
        },
        Case {
            name: "evicted cache",
            shape: [1, 2, 2, 6, 30],
            d: 8,
            layout: KeyLayout {
                kept_sink: 4,
                dropped: 10,
            },
            visibility: window(4, 26, 0..0),
        },
        Case {
            name: "block lists",
            shape: [2, 4, 2, 40, 40],
            d: 8,
            layout: KeyLayout::default(),
            visibility: Visibility::Blocks(BlockSelection {
                block: 8,
                first_q_block: 0,
                q_blocks: 5,
                k_blocks: 5,
                heads: 4,
                // The diagonal block is always kept: every query sees a key.
                keep: keep
                    .iter()
                    .enumerate()
                    .map(|(i, &k)| k || (i / 5) % 5 == i % 5)
                    .collect(),
            }),
        },
    ]
}

#[test]
fn backward_matches_autodiff_of_the_reference() {
    let mut rng = StdRng::seed_from_u64(11);
    for case in cases() {
        let [b, hq, hkv, nq, nk] = case.shape;
        let d = case.d;
        let (qs, ks) = ([b, hq, nq, d], [b, hkv, nk, d]);
        let q = random(&mut rng, b * hq * nq * d);
        let k = random(&mut rng, b * hkv * nk * d);
        let v = random(&mut rng, b * hkv * nk * d);
        let w = random(&mut rng, b * hq * nq * d);

        let x = Inputs {
            q: &q,
            k: &k,
            v: &v,
            w: &w,
            qs,
            ks,
        };
        let (out_want, want) = recorded(&x, case.layout, &case.visibility);
        let (out, got) = chunked(&x, case.layout, &case.visibility);
        let err = relative_error(&out, &out_want);
        assert!(err < 1e-12, "{}: output, relative error {err}", case.name);
        for ((name, got), want) in ["dq", "dk", "dv"].iter().zip(&got).zip(&want) {
            let err = relative_error(got, want);
            assert!(err < 1e-10, "{}: {name}, relative error {err}", case.name);
        }
    }
}

/// `attention` on tracked inputs is one graph operation with the chunked backward: its
/// gradients are the backward's bits, and they differ (in the last bits) from autodiff of the
/// recorded reference.
#[test]
fn tracked_attention_runs_the_chunked_backward() {
    let mut rng = StdRng::seed_from_u64(12);
    let (qs, ks) = ([1, 4, 45, 16], [1, 2, 45, 16]);
    let q = random(&mut rng, 4 * 45 * 16);
    let k = random(&mut rng, 2 * 45 * 16);
    let v = random(&mut rng, 2 * 45 * 16);
    let w = random(&mut rng, 4 * 45 * 16);
    let x = Inputs {
        q: &q,
        k: &k,
        v: &v,
        w: &w,
        qs,
        ks,
    };
    for (mode, visibility) in [
        (AttentionMode::Full, Visibility::Causal),
        (
            AttentionMode::Streaming { sink: 2, window: 7 },
            Visibility::Window {
                sink: 2,
                window: 7,
                dense: 0..0,
            },
        ),
    ] {
        let [qa, ka, va] =
            [(&q, qs), (&k, ks), (&v, ks)].map(|(x, s)| tensor::<Grad, 4>(x, s).require_grad());
        let out = attention(qa.clone(), ka.clone(), va.clone(), &mode).unwrap();
        let grads = (out * tensor::<Grad, 4>(&w, qs)).sum().backward();
        let got = [qa, ka, va].map(|t| values(t.grad(&grads).expect("a gradient")));

        let (_, want) = chunked(&x, KeyLayout::default(), &visibility);
        for ((name, g), want) in ["dq", "dk", "dv"].iter().zip(&got).zip(&want) {
            assert_eq!(g, want, "{mode:?}: {name}");
        }
        let (_, recorded) = recorded(&x, KeyLayout::default(), &visibility);
        assert_ne!(got, recorded, "{mode:?}: cannot tell the two paths apart");
    }
}
