//! Every attention mode against a naive float64 implementation of its own mask, the equalities
//! between modes at their limits, decode through the cache (with and without eviction), and
//! parameter validation.

mod common;

use burn::tensor::Tensor;
use common::{max_abs_diff, max_abs_diff_f32, naive_masked, random, tensor, to_vec, Case, B};
use flux_attention::xattention::{block_scores, select_blocks};
use flux_attention::{attend, attention, AttentionMode, LayerKvCache};
use rand::{rngs::StdRng, SeedableRng};

/// Random shapes: odd lengths, GQA ratios 1, 3 and 7, head_dim 64 and 128.
fn cases() -> Vec<Case> {
    let case = |b, hq, hkv, n, d| Case {
        b,
        hq,
        hkv,
        nq: n,
        nk: n,
        d,
    };
    vec![
        case(1, 4, 4, 53, 64),
        case(2, 6, 2, 41, 128),
        case(1, 7, 1, 67, 64),
    ]
}

struct Inputs {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

impl Inputs {
    fn new(rng: &mut StdRng, c: &Case) -> Self {
        Self {
            q: random(rng, c.b * c.hq * c.nq * c.d),
            k: random(rng, c.b * c.hkv * c.nk * c.d),
            v: random(rng, c.b * c.hkv * c.nk * c.d),
        }
    }

    fn tensors(&self, c: &Case) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
        (
            tensor(&self.q, [c.b, c.hq, c.nq, c.d]),
            tensor(&self.k, [c.b, c.hkv, c.nk, c.d]),
            tensor(&self.v, [c.b, c.hkv, c.nk, c.d]),
        )
    }

    fn run(&self, c: &Case, mode: &AttentionMode) -> Vec<f32> {
        let (q, k, v) = self.tensors(c);
        to_vec(attention(q, k, v, mode).unwrap())
    }
}

#[test]
fn modes_at_their_limits_equal_full_attention() {
    let mut rng = StdRng::seed_from_u64(21);
    for c in cases() {
        let x = Inputs::new(&mut rng, &c);
        let full = x.run(&c, &AttentionMode::Full);
        let limits = [
            AttentionMode::Streaming {
                sink: 0,
                window: c.nk,
            },
            AttentionMode::Streaming {
                sink: 5,
                window: c.nk + 10,
            },
            AttentionMode::Triangle {
                sink: 2,
                window: 3,
                last_queries: c.nq,
            },
            AttentionMode::XAttention {
                block: 8,
                stride: 4,
                threshold: 1.0,
            },
        ];
        for mode in limits {
            let err = max_abs_diff_f32(&x.run(&c, &mode), &full);
            assert!(err < 1e-5, "{c:?} {mode}: max error {err} against full");
        }
    }
}

/// Streaming and triangle against their naive f64 masks; returns the streaming output.
fn check_sink_window(c: &Case, x: &Inputs, sink: usize, window: usize, last: usize) -> Vec<f32> {
    let streaming = x.run(c, &AttentionMode::Streaming { sink, window });
    let want = naive_masked(c, &x.q, &x.k, &x.v, |_, _, p, j| {
        j <= p && (j < sink || p - j < window)
    });
    let err = max_abs_diff(&streaming, &want);
    assert!(err < 1e-5, "{c:?} streaming: max error {err}");
    let triangle = x.run(
        c,
        &AttentionMode::Triangle {
            sink,
            window,
            last_queries: last,
        },
    );
    let want = naive_masked(c, &x.q, &x.k, &x.v, |_, _, p, j| {
        j <= p && (j < sink || p - j < window || p >= c.nk - last)
    });
    let err = max_abs_diff(&triangle, &want);
    assert!(err < 1e-5, "{c:?} triangle: max error {err}");
    streaming
}

#[test]
fn sink_window_modes_match_float64_masks() {
    let mut rng = StdRng::seed_from_u64(22);
    for c in cases() {
        let x = Inputs::new(&mut rng, &c);
        let streaming = check_sink_window(&c, &x, 3, 9, 7);
        // And it is really sparse: streaming differs from full.
        let full = x.run(&c, &AttentionMode::Full);
        assert!(max_abs_diff_f32(&streaming, &full) > 1e-3);
    }
}

/// XAttention's estimate in f64, straight from its definition.
fn naive_block_scores(c: &Case, x: &Inputs, block: usize, s: usize) -> Vec<f64> {
    assert_eq!(c.nq, c.nk, "prefill of the whole sequence");
    let n = c.nk;
    let group = c.hq / c.hkv;
    let groups = n.div_ceil(s);
    let blocks = n.div_ceil(block);
    let at = |data: &[f32], heads: usize, b: usize, h: usize, p: usize, i: usize| -> f64 {
        if p < n {
            data[((b * heads + h) * n + p) * c.d + i] as f64
        } else {
            0.0
        }
    };
    let mut out = vec![0f64; c.b * c.hq * blocks * blocks];
    for b in 0..c.b {
        for h in 0..c.hq {
            for m in 0..groups {
                let est: Vec<f64> = (0..=m)
                    .map(|g| {
                        let mut sum = 0.0;
                        for t in 0..s {
                            for i in 0..c.d {
                                sum += at(&x.q, c.hq, b, h, m * s + s - 1 - t, i)
                                    * at(&x.k, c.hkv, b, h / group, g * s + t, i);
                            }
                        }
                        sum / ((c.d as f64).sqrt() * s as f64)
                    })
                    .collect();
                let max = est.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let total: f64 = est.iter().map(|e| (e - max).exp()).sum();
                let qb = m * s / block;
                for (g, e) in est.iter().enumerate() {
                    out[((b * c.hq + h) * blocks + qb) * blocks + g * s / block] +=
                        (e - max).exp() / total;
                }
            }
        }
    }
    for row in out.chunks_mut(blocks) {
        let total: f64 = row.iter().sum();
        row.iter_mut().for_each(|x| *x /= total);
    }
    out
}

#[test]
fn xattention_estimate_and_selection_match_float64() {
    let mut rng = StdRng::seed_from_u64(23);
    let (block, stride, threshold) = (8, 4, 0.6);
    for c in cases() {
        let x = Inputs::new(&mut rng, &c);
        let (q, k, _) = x.tensors(&c);
        let scores = block_scores(&q, &k, block, stride);
        let want = naive_block_scores(&c, &x, block, stride);
        let err = scores
            .scores
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-5, "{c:?}: block scores off by {err}");

        // Selection: the highest blocks until the threshold, plus the sink and diagonal blocks.
        let selection = select_blocks(&scores, threshold);
        for b in 0..c.b {
            for h in 0..c.hq {
                for qb in 0..scores.q_blocks {
                    let row =
                        &want[((b * c.hq + h) * scores.q_blocks + qb) * scores.k_blocks..][..=qb];
                    let kept: Vec<usize> = (0..=qb)
                        .filter(|&kb| selection.keeps(b, h, qb, kb))
                        .collect();
                    // Highest first until the mass reaches the threshold (f64 scores).
                    let mut order: Vec<usize> = (0..=qb).collect();
                    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
                    let mut expected = vec![0, qb];
                    let mut mass = 0.0;
                    for kb in order {
                        if mass >= threshold {
                            break;
                        }
                        mass += row[kb];
                        expected.push(kb);
                    }
                    expected.sort();
                    expected.dedup();
                    assert_eq!(kept, expected, "{c:?} b{b} h{h} qb{qb}: scores {row:?}");
                }
            }
        }
        assert!(selection.density() < 1.0, "{c:?}: nothing was dropped");

        // Attention over the chosen blocks equals the naive attention under the same mask.
        let out = x.run(
            &c,
            &AttentionMode::XAttention {
                block,
                stride,
                threshold,
            },
        );
        let want = naive_masked(&c, &x.q, &x.k, &x.v, |b, h, p, j| {
            j <= p && selection.keeps(b, h, p / block, j / block)
        });
        let err = max_abs_diff(&out, &want);
        assert!(err < 1e-5, "{c:?} xattention: max error {err}");
    }
}

/// Prefills the first `prompt` positions, then decodes the rest `step` positions at a time.
fn prefill_then_decode(
    x: &Inputs,
    c: &Case,
    mode: &AttentionMode,
    prompt: usize,
    step: usize,
    evict: bool,
) -> (Vec<f32>, LayerKvCache<B>) {
    let (q, k, v) = x.tensors(c);
    let mut cache = LayerKvCache::with_eviction(evict);
    let mut parts = vec![attend(
        q.clone().narrow(2, 0, prompt),
        k.clone().narrow(2, 0, prompt),
        v.clone().narrow(2, 0, prompt),
        &mut cache,
        mode,
    )
    .unwrap()];
    let mut i = prompt;
    while i < c.nk {
        let n = step.min(c.nk - i);
        parts.push(
            attend(
                q.clone().narrow(2, i, n),
                k.clone().narrow(2, i, n),
                v.clone().narrow(2, i, n),
                &mut cache,
                mode,
            )
            .unwrap(),
        );
        i += n;
    }
    assert_eq!(cache.len(), c.nk);
    (to_vec(Tensor::cat(parts, 2)), cache)
}

/// The values of positions `from..` of a `[b, h, n, d]` buffer.
fn tail(data: &[f32], c: &Case, from: usize) -> Vec<f32> {
    data.chunks(c.nq * c.d)
        .flat_map(|head| head[from * c.d..].to_vec())
        .collect()
}

#[test]
fn decode_through_the_cache_equals_prefill() {
    let mut rng = StdRng::seed_from_u64(24);
    let (sink, window) = (3, 6);
    for c in cases() {
        let x = Inputs::new(&mut rng, &c);
        let prompt = c.nk - 20;
        let streaming = AttentionMode::Streaming { sink, window };
        // Decode positions of each mode compute what a prefill of the whole sequence computes
        // under its decode rule: triangle decodes as streaming, XAttention as full.
        let pairs = [
            (AttentionMode::Full, AttentionMode::Full),
            (streaming, streaming),
            (
                AttentionMode::Triangle {
                    sink,
                    window,
                    last_queries: 5,
                },
                streaming,
            ),
            (
                AttentionMode::XAttention {
                    block: 8,
                    stride: 4,
                    threshold: 0.5,
                },
                AttentionMode::Full,
            ),
        ];
        for (mode, prefill_rule) in pairs {
            let want = tail(&x.run(&c, &prefill_rule), &c, prompt);
            for evict in [false, true] {
                for step in [1, 3] {
                    let (got, cache) = prefill_then_decode(&x, &c, &mode, prompt, step, evict);
                    let err = max_abs_diff_f32(&tail(&got, &c, prompt), &want);
                    assert!(
                        err < 1e-5,
                        "{c:?} {mode} evict {evict} step {step}: max error {err}"
                    );
                    let evicted = evict && mode.decode_window().is_some();
                    assert_eq!(cache.stored_len() < c.nk, evicted, "{mode} evict {evict}");
                }
            }
        }
    }
}

#[test]
fn eviction_keeps_sink_window_caches_bounded() {
    let mut rng = StdRng::seed_from_u64(25);
    let (b, hq, hkv, d) = (1, 4, 2, 64);
    let (sink, window) = (4, 16);
    let mode = AttentionMode::Streaming { sink, window };
    let mut kept = LayerKvCache::<B>::new();
    let mut evicting = LayerKvCache::<B>::with_eviction(true);
    for i in 0..400 {
        let n = if i == 0 { 100 } else { 1 };
        let q = tensor(&random(&mut rng, b * hq * n * d), [b, hq, n, d]);
        let k = tensor(&random(&mut rng, b * hkv * n * d), [b, hkv, n, d]);
        let v = tensor(&random(&mut rng, b * hkv * n * d), [b, hkv, n, d]);
        let a = attend(q.clone(), k.clone(), v.clone(), &mut kept, &mode).unwrap();
        let e = attend(q, k, v, &mut evicting, &mode).unwrap();
        assert!(max_abs_diff_f32(&to_vec(a), &to_vec(e)) < 1e-5, "step {i}");
        assert!(evicting.stored_len() <= sink + 2 * window + 1);
    }
    assert_eq!(evicting.len(), kept.len());
    // 4 + 2 * 16 + 64 slots at most, against at least 499 for the growing cache.
    assert!(evicting.allocated_bytes() <= (sink + 2 * window + 64) * 2 * hkv * d * 4);
    assert!(kept.allocated_bytes() >= 499 * 2 * hkv * d * 4);
}

#[test]
fn a_reserved_cache_allocates_once_and_computes_the_same() {
    let mut rng = StdRng::seed_from_u64(26);
    let (b, hq, hkv, d) = (1, 2, 1, 16);
    let mut growing = LayerKvCache::<B>::new();
    let mut reserved = LayerKvCache::<B>::new();
    reserved.reserve(300);
    let (mut capacities, mut grown) = (Vec::new(), Vec::new());
    for i in 0..200 {
        let n = if i == 0 { 101 } else { 1 };
        let q = tensor(&random(&mut rng, b * hq * n * d), [b, hq, n, d]);
        let k = tensor(&random(&mut rng, b * hkv * n * d), [b, hkv, n, d]);
        let v = tensor(&random(&mut rng, b * hkv * n * d), [b, hkv, n, d]);
        let mode = AttentionMode::Full;
        let g = attend(q.clone(), k.clone(), v.clone(), &mut growing, &mode).unwrap();
        let r = attend(q, k, v, &mut reserved, &mode).unwrap();
        assert_eq!(to_vec(g), to_vec(r), "step {i}");
        capacities.push(reserved.capacity());
        grown.push(growing.capacity());
    }
    assert!(
        capacities.iter().all(|&c| c == 300),
        "one allocation of the reserved size: {capacities:?}"
    );
    grown.dedup();
    assert!(
        grown.len() > 3,
        "without a reservation the cache grows: {grown:?}"
    );
    // f32 keys and values: 2 x 300 positions x d.
    assert_eq!(reserved.allocated_bytes(), 2 * 300 * hkv * d * 4);
}

#[test]
fn invalid_parameters_name_the_argument() {
    let bad = [
        (AttentionMode::Streaming { sink: 4, window: 0 }, "window"),
        (
            AttentionMode::Triangle {
                sink: 4,
                window: 0,
                last_queries: 3,
            },
            "window",
        ),
        (
            AttentionMode::XAttention {
                block: 0,
                stride: 1,
                threshold: 0.9,
            },
            "block",
        ),
        (
            AttentionMode::XAttention {
                block: 128,
                stride: 24,
                threshold: 0.9,
            },
            "stride",
        ),
        (
            AttentionMode::XAttention {
                block: 128,
                stride: 16,
                threshold: 0.0,
            },
            "threshold",
        ),
        (
            AttentionMode::XAttention {
                block: 128,
                stride: 16,
                threshold: f64::NAN,
            },
            "threshold",
        ),
    ];
    let q = Tensor::<B, 4>::ones([1, 2, 4, 8], &Default::default());
    let k = Tensor::<B, 4>::ones([1, 1, 4, 8], &Default::default());
    for (mode, argument) in bad {
        let err = attention(q.clone(), k.clone(), k.clone(), &mode).unwrap_err();
        assert!(
            err.to_string().contains(&format!("`{argument}`")),
            "{mode:?}: {err}"
        );
        let mut cache = LayerKvCache::new();
        assert!(attend(q.clone(), k.clone(), k.clone(), &mut cache, &mode).is_err());
    }
    for mode in [
        AttentionMode::Full,
        AttentionMode::streaming(),
        AttentionMode::xattention(),
        AttentionMode::triangle(),
    ] {
        mode.validate().unwrap();
    }
}

#[test]
fn modes_round_trip_through_json() {
    for mode in [
        AttentionMode::Full,
        AttentionMode::streaming(),
        AttentionMode::xattention(),
        AttentionMode::triangle(),
    ] {
        let json = serde_json::to_string(&mode).unwrap();
        assert_eq!(
            serde_json::from_str::<AttentionMode>(&json).unwrap(),
            mode,
            "{json}"
        );
    }
    assert_eq!(
        serde_json::to_string(&AttentionMode::streaming()).unwrap(),
        r#"{"kind":"streaming","sink":128,"window":2048}"#
    );
}

#[test]
fn long_sink_window_prefill_over_many_chunks_matches_float64() {
    // 700 queries: chunks of 256 rows, so later chunks gather the sink and the window as two
    // separate key ranges; triangle's dense queries straddle a chunk boundary.
    let mut rng = StdRng::seed_from_u64(26);
    let c = Case {
        b: 1,
        hq: 3,
        hkv: 1,
        nq: 700,
        nk: 700,
        d: 64,
    };
    let x = Inputs::new(&mut rng, &c);
    check_sink_window(&c, &x, 5, 40, 200);
}
