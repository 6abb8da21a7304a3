//! Every fused kernel against flux-attention's reference, on wgpu (lavapipe in CI, f32).
//!
//! Inputs are fresh uniform randoms (never zeros); the output buffer is filled with NaN before
//! each launch so that an element no kernel writes fails the check. Sequences of a padded batch
//! are compared one by one with the reference on their own lengths.
#![cfg(feature = "wgpu")]

mod common;

use burn::backend::wgpu::WgpuRuntime;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use burn_cubecl::CubeBackend;
use common::{random, Case};
use flux_attention::{reference, AttentionSpec, BlockSelection, KeyLayout, Visibility};
use rand::{rngs::StdRng, Rng, SeedableRng};

type Gpu = CubeBackend<WgpuRuntime, f32, i32, u32>;
type Cpu = burn::backend::NdArray<f32>;

fn gpu(data: &[f32], shape: [usize; 4]) -> Tensor<Gpu, 4> {
    Tensor::from_data(TensorData::new(data.to_vec(), shape), &Default::default())
}

fn cpu(data: &[f32], shape: [usize; 4]) -> Tensor<Cpu, 4> {
    Tensor::from_data(TensorData::new(data.to_vec(), shape), &Default::default())
}

/// Rows `[.., rows)` of axis 2 of a `[b, h, n, d]` buffer for sequence `bi`.
fn slice(x: &[f32], [_, h, n, d]: [usize; 4], bi: usize, rows: usize) -> Vec<f32> {
    (0..h)
        .flat_map(|hi| x[((bi * h + hi) * n) * d..][..rows * d].to_vec())
        .collect()
}

struct Run {
    case: Case,
    spec: AttentionSpec,
    q_lens: Vec<usize>,
    kv_lens: Vec<usize>,
}

/// Launches the fused kernel into a NaN-poisoned output and returns the largest relative error
/// against the reference over every sequence (each on its own lengths).
fn check(run: &Run, rng: &mut StdRng) -> f64 {
    let c = run.case;
    let (qs, ks) = ([c.b, c.hq, c.nq, c.d], [c.b, c.hkv, c.nk, c.d]);
    let q = random(rng, c.b * c.hq * c.nq * c.d);
    let k = random(rng, c.b * c.hkv * c.nk * c.d);
    let v = random(rng, c.b * c.hkv * c.nk * c.d);
    let mut spec = run.spec.clone();
    spec.q_lens = Some(run.q_lens.clone());
    spec.kv_lens = Some(run.kv_lens.clone());

    let out = gpu(&vec![f32::NAN; q.len()], qs);
    let prim = |t: Tensor<Gpu, 4>| t.into_primitive().tensor();
    kernels_cubecl::fused_attention_into(
        prim(gpu(&q, qs)),
        prim(gpu(&k, ks)),
        prim(gpu(&v, ks)),
        prim(out.clone()),
        &spec,
    )
    .expect("the call is valid");
    let got: Vec<f32> = out.into_data().to_vec().unwrap();

    let mut worst = 0f64;
    for bi in 0..c.b {
        let (ql, kl) = (run.q_lens[bi], run.kv_lens[bi]);
        // Padding rows are zeros.
        for hi in 0..c.hq {
            for i in ql..c.nq {
                let row = &got[((bi * c.hq + hi) * c.nq + i) * c.d..][..c.d];
                assert!(
                    row.iter().all(|&x| x == 0.0),
                    "padding row {i} of sequence {bi} is {row:?}"
                );
            }
        }
        if ql == 0 {
            continue;
        }
        // The reference's queries are the first `ql` rows, its keys the first `kl`.
        let q1 = slice(&q, qs, bi, c.nq);
        let q1: Vec<f32> = (0..c.hq)
            .flat_map(|h| q1[h * c.nq * c.d..][..ql * c.d].to_vec())
            .collect();
        let visibility = match &spec.visibility {
            Visibility::Blocks(s) => {
                let per = s.heads * s.q_blocks * s.k_blocks;
                Visibility::Blocks(BlockSelection {
                    keep: s.keep[bi * per..(bi + 1) * per].to_vec(),
                    ..s.clone()
                })
            }
            other => other.clone(),
        };
        let want = reference::masked_attention(
            cpu(&q1, [1, c.hq, ql, c.d]),
            cpu(&slice(&k, ks, bi, kl), [1, c.hkv, kl, c.d]),
            cpu(&slice(&v, ks, bi, kl), [1, c.hkv, kl, c.d]),
            spec.layout,
            &visibility,
        );
        let want: Vec<f32> = want.into_data().to_vec().unwrap();
        let have = slice(&got, qs, bi, ql);
        let (mut num, mut den) = (0f64, 0f64);
        for (a, b) in have.iter().zip(&want) {
            assert!(a.is_finite(), "sequence {bi}: non-finite output {a}");
            num += ((a - b) as f64).powi(2);
            den += (*b as f64).powi(2);
        }
        worst = worst.max((num / den.max(1e-30)).sqrt());
    }
    worst
}

fn lens(
    rng: &mut StdRng,
    b: usize,
    nq: usize,
    nk: usize,
    padded: bool,
) -> (Vec<usize>, Vec<usize>) {
    (0..b)
        .map(|i| {
            if !padded || i == 0 {
                (nq, nk)
            } else {
                let kl = rng.random_range(nk / 2..=nk);
                (nq.min(kl).saturating_sub(rng.random_range(0..3)).max(1), kl)
            }
        })
        .unzip()
}

fn run_all(runs: Vec<(Case, Visibility, KeyLayout, bool)>) {
    let mut rng = StdRng::seed_from_u64(7);
    for (case, visibility, layout, padded) in runs {
        let (q_lens, kv_lens) = lens(&mut rng, case.b, case.nq, case.nk, padded);
        let mut spec = AttentionSpec::new(visibility, case.d);
        spec.layout = layout;
        let run = Run {
            case,
            spec,
            q_lens,
            kv_lens,
        };
        let err = check(&run, &mut rng);
        assert!(
            err < 1e-4,
            "{case:?} {:?}: relative error {err:e}",
            run.spec.visibility
        );
    }
}

fn case(b: usize, hq: usize, hkv: usize, nq: usize, nk: usize, d: usize) -> Case {
    Case {
        b,
        hq,
        hkv,
        nq,
        nk,
        d,
    }
}

#[test]
fn causal_prefill_matches_reference() {
    let none = KeyLayout::default();
    run_all(vec![
        (case(1, 4, 1, 67, 67, 64), Visibility::Causal, none, false),
        (case(3, 7, 1, 45, 45, 128), Visibility::Causal, none, true),
        (case(1, 2, 2, 130, 130, 64), Visibility::Causal, none, false),
        (case(3, 4, 1, 33, 97, 64), Visibility::Causal, none, true),
    ]);
}

#[test]
fn sink_window_and_triangle_match_reference() {
    let none = KeyLayout::default();
    let window = |sink, window, dense| Visibility::Window {
        sink,
        window,
        dense,
    };
    run_all(vec![
        (
            case(1, 4, 1, 201, 201, 64),
            window(5, 40, 0..0),
            none,
            false,
        ),
        (case(3, 7, 1, 90, 90, 128), window(3, 17, 0..0), none, true),
        (
            case(1, 4, 4, 150, 150, 64),
            window(4, 33, 120..150),
            none,
            false,
        ),
        (case(1, 4, 1, 70, 70, 64), window(0, 1, 0..0), none, false),
        // An evicted cache: 5 sink keys kept, 60 positions dropped.
        (
            case(1, 4, 1, 3, 50, 64),
            window(5, 40, 0..0),
            KeyLayout {
                kept_sink: 5,
                dropped: 60,
            },
            false,
        ),
    ]);
}

#[test]
fn decode_steps_match_reference() {
    let none = KeyLayout::default();
    run_all(vec![
        (case(1, 4, 1, 1, 300, 64), Visibility::Causal, none, false),
        // Dozens of splits: the combine's eight-wide loop and its tail.
        (case(1, 4, 1, 1, 2000, 64), Visibility::Causal, none, false),
        (case(3, 7, 1, 3, 120, 128), Visibility::Causal, none, true),
        (
            case(1, 4, 4, 2, 257, 64),
            Visibility::Window {
                sink: 4,
                window: 64,
                dense: 0..0,
            },
            none,
            false,
        ),
    ]);
}

/// A block table over a whole prompt of `blocks` query and key blocks of `block` positions.
fn square_table(block: usize, blocks: usize, heads: usize, keep: Vec<bool>) -> Visibility {
    Visibility::Blocks(BlockSelection {
        block,
        first_q_block: 0,
        q_blocks: blocks,
        k_blocks: blocks,
        heads,
        keep,
    })
}

#[test]
fn block_index_matches_reference() {
    let mut rng = StdRng::seed_from_u64(11);
    let mut runs = Vec::new();
    // The dense case makes whole key tiles (marked full in the tile lists, no mask).
    for (c, block, p) in [
        (case(1, 4, 1, 150, 150, 64), 16, 0.4),
        (case(3, 7, 1, 64, 64, 128), 32, 0.4),
        (case(1, 4, 2, 260, 260, 64), 64, 0.9),
    ] {
        let blocks = c.nk.div_ceil(block);
        let keep: Vec<bool> = (0..c.b * c.hq * blocks * blocks)
            .map(|i| i % blocks == 0 || rng.random_bool(p))
            .collect();
        runs.push((
            c,
            square_table(block, blocks, c.hq, keep),
            KeyLayout::default(),
            false,
        ));
    }
    run_all(runs);
}

/// Seeded random shapes against the reference (issue 14's property test, bounded for CI): GQA
/// groups 1-7, head_dim 32-128, lengths from 1 (one query over one key) up to a few hundred,
/// prefill and decode-like query counts, padded batches, windows wider than the sequence, no
/// sink, triangles, evicted caches, block lists with query blocks that keep only the diagonal.
#[test]
fn random_shapes_match_reference() {
    let mut rng = StdRng::seed_from_u64(2026);
    let mut runs = Vec::new();
    while runs.len() < 24 {
        let hkv = rng.random_range(1..=3);
        let group = [1, 2, 3, 4, 7][rng.random_range(0..5)];
        let d = [32, 64, 128][rng.random_range(0..3)];
        let b = rng.random_range(1..=3);
        let nk = [1, 2, 63, 64, 65, rng.random_range(1..=300)][rng.random_range(0..6)];
        let nq = if rng.random_bool(0.5) {
            nk
        } else {
            rng.random_range(1..=nk.min(4))
        };
        let c = case(b, hkv * group, hkv, nq, nk, d);
        let (visibility, layout) = match rng.random_range(0..4) {
            0 => (Visibility::Causal, KeyLayout::default()),
            1 => {
                let window = rng.random_range(1..=nk + 20);
                let dense = if rng.random_bool(0.3) {
                    let from = rng.random_range(0..=nk);
                    from..nk
                } else {
                    0..0
                };
                let sink = rng.random_range(0..=8);
                (
                    Visibility::Window {
                        sink,
                        window,
                        dense,
                    },
                    KeyLayout::default(),
                )
            }
            2 if nq < nk => {
                // A cache that kept its sink and evicted positions after it.
                let sink = rng.random_range(0..=4).min(nk - nq);
                // The window stays inside the kept keys (what the model's eviction guarantees).
                let window = rng.random_range(1..=nk - nq - sink + 1);
                let layout = KeyLayout {
                    kept_sink: sink,
                    dropped: rng.random_range(1..100),
                };
                (
                    Visibility::Window {
                        sink,
                        window,
                        dense: 0..0,
                    },
                    layout,
                )
            }
            _ if nq == nk => {
                let block = [16, 32, 64][rng.random_range(0..3)];
                let blocks = nk.div_ceil(block);
                let sparse = rng.random_bool(0.5);
                let keep = (0..b * c.hq * blocks * blocks)
                    .map(|i| {
                        let (qb, kb) = ((i / blocks) % blocks, i % blocks);
                        qb == kb || (!sparse && rng.random_bool(0.5))
                    })
                    .collect();
                (
                    square_table(block, blocks, c.hq, keep),
                    KeyLayout::default(),
                )
            }
            _ => continue,
        };
        runs.push((c, visibility, layout, b > 1 && nk >= 4));
    }
    run_all(runs);
}

#[test]
fn invalid_calls_are_refused_naming_the_argument() {
    let call = |q: [usize; 4], k: [usize; 4], visibility: Visibility| {
        kernels_cubecl::check_call(
            &q,
            &k,
            &k,
            burn::tensor::DType::F32,
            &AttentionSpec::new(visibility, q[3]),
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    };
    let causal = || Visibility::Causal;
    // Head counts that do not divide, an empty call, a head_dim off the kernels' grid, a call
    // past 32-bit indexing (one query row less per head fits), a zero window.
    let cases = [
        (
            call([1, 6, 10, 64], [1, 4, 10, 64], causal()),
            "a divisor of 6",
        ),
        (call([1, 4, 0, 64], [1, 4, 10, 64], causal()), "empty"),
        (
            call([1, 4, 10, 60], [1, 4, 10, 60], causal()),
            "head_dim 60",
        ),
        (
            call([1, 32, 1 << 20, 128], [1, 8, 1 << 20, 128], causal()),
            "2^32",
        ),
        (
            call(
                [1, 4, 10, 64],
                [1, 4, 10, 64],
                Visibility::Window {
                    sink: 4,
                    window: 0,
                    dense: 0..0,
                },
            ),
            "window",
        ),
    ];
    for (result, needle) in cases {
        let err = result.expect_err(needle);
        assert!(err.contains(needle), "{needle}: {err}");
    }
    assert!(call([1, 32, (1 << 20) - 1, 128], [1, 8, 1 << 20, 128], causal()).is_ok());
}

/// `flux_attention::attention` on burn's `Wgpu` (Fusion over CubeBackend: the fused ops run as
/// custom fusion operations) against the same call on ndarray (the reference).
fn entry_point_matches_reference(seed: u64, c: Case, mode: flux_attention::AttentionMode) {
    type Fused = burn::backend::Wgpu;
    let mut rng = StdRng::seed_from_u64(seed);
    let (qs, ks) = ([c.b, c.hq, c.nq, c.d], [c.b, c.hkv, c.nk, c.d]);
    let q = random(&mut rng, qs.iter().product());
    let (k, v) = (
        random(&mut rng, ks.iter().product()),
        random(&mut rng, ks.iter().product()),
    );
    let dev = Default::default();
    let t = |x: &[f32], s: [usize; 4]| {
        Tensor::<Fused, 4>::from_data(TensorData::new(x.to_vec(), s), &dev)
    };
    let got: Vec<f32> = flux_attention::attention(t(&q, qs), t(&k, ks), t(&v, ks), &mode)
        .unwrap()
        .into_data()
        .to_vec()
        .unwrap();
    let want: Vec<f32> = flux_attention::attention(cpu(&q, qs), cpu(&k, ks), cpu(&v, ks), &mode)
        .unwrap()
        .into_data()
        .to_vec()
        .unwrap();
    let err = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(err < 1e-5, "{mode:?}: max abs error {err}");
}

#[test]
fn attention_entry_point_runs_fused_through_fusion() {
    let (c, window) = (
        case(1, 4, 2, 37, 37, 64),
        Visibility::Window {
            sink: 2,
            window: 9,
            dense: 0..0,
        },
    );
    assert!(
        <burn::backend::Wgpu as flux_attention::AttentionBackend>::has_fused_attention(
            &[c.b, c.hq, c.nq, c.d],
            &[c.b, c.hkv, c.nk, c.d],
            burn::tensor::DType::F32,
            &AttentionSpec::new(window, c.d),
            &Default::default(),
        )
    );
    entry_point_matches_reference(
        3,
        c,
        flux_attention::AttentionMode::Streaming { sink: 2, window: 9 },
    );
}

#[test]
fn xattention_scores_and_selection_match_reference() {
    let mut rng = StdRng::seed_from_u64(5);
    // (b, hq, hkv, nq, nk, d, block, stride): prefill, and queries that start mid-group.
    for (b, hq, hkv, nq, nk, d, block, stride) in [
        (1, 4, 1, 300, 300, 64, 32, 4),
        (2, 7, 1, 150, 301, 128, 16, 8),
        (1, 2, 2, 97, 97, 64, 64, 16),
    ] {
        let (qs, ks) = ([b, hq, nq, d], [b, hkv, nk, d]);
        let (q, k) = (
            random(&mut rng, b * hq * nq * d),
            random(&mut rng, b * hkv * nk * d),
        );
        let prim = |t: Tensor<Gpu, 4>| t.into_primitive().tensor();
        let (scores, blocks) = kernels_cubecl::xattention_block_scores(
            prim(gpu(&q, qs)),
            prim(gpu(&k, ks)),
            block,
            stride,
        )
        .expect("valid call");
        let keep = kernels_cubecl::xattention_keep(scores.clone(), blocks, 0.9);
        let read = |t| -> Vec<f32> {
            Tensor::<Gpu, 4>::from_primitive(TensorPrimitive::Float(t))
                .into_data()
                .to_vec()
                .unwrap()
        };
        let (got_scores, got_keep) = (read(scores), read(keep));

        let want =
            flux_attention::xattention::block_scores(&cpu(&q, qs), &cpu(&k, ks), block, stride);
        assert_eq!(
            (want.first_q_block, want.q_blocks, want.k_blocks),
            (blocks.first_q_block, blocks.q_blocks, blocks.k_blocks)
        );
        let err = got_scores
            .iter()
            .zip(&want.scores)
            .map(|(a, b)| (*a as f64 - b).abs())
            .fold(0f64, f64::max);
        if err >= 1e-5 {
            eprintln!(
                "got {:?}\nwant {:?}",
                &got_scores[..blocks.k_blocks * 4],
                &want.scores[..blocks.k_blocks * 4]
            );
        }
        assert!(err < 1e-5, "block scores differ by {err}");
        let selection = flux_attention::xattention::select_blocks(&want, 0.9);
        let kept: Vec<bool> = got_keep.iter().map(|&x| x == 1.0).collect();
        assert!(
            got_keep.iter().all(|&x| x == 0.0 || x == 1.0),
            "keep flags are not 0/1"
        );
        assert_eq!(
            kept, selection.keep,
            "selection differs (b={b} nq={nq} block={block})"
        );
    }
}

#[test]
fn xattention_mode_through_the_entry_point() {
    let mode = flux_attention::AttentionMode::XAttention {
        block: 32,
        stride: 4,
        threshold: 0.8,
    };
    entry_point_matches_reference(9, case(1, 4, 2, 200, 200, 64), mode);
}

/// `attend_routed` with its flags on the device, against float64 with the choice made on the
/// host: each sequence attends fully where its flag is set and under the sparse mode elsewhere.
/// Run on `B` (CubeBackend: the kernel reads the flags; burn's Wgpu: the same through a fusion
/// custom op; ndarray: the flags are read back).
fn routed_matches_naive<B: flux_attention::AttentionBackend>(
    seed: u64,
    c: Case,
    flags: &[bool],
    mode: flux_attention::AttentionMode,
) -> f64 {
    let mut rng = StdRng::seed_from_u64(seed);
    let (qs, ks) = ([c.b, c.hq, c.nq, c.d], [c.b, c.hkv, c.nk, c.d]);
    let q = random(&mut rng, qs.iter().product());
    let k = random(&mut rng, ks.iter().product());
    let v = random(&mut rng, ks.iter().product());
    let dev = Default::default();
    let t =
        |x: &[f32], s: [usize; 4]| Tensor::<B, 4>::from_data(TensorData::new(x.to_vec(), s), &dev);
    let full = Tensor::<B, 1>::from_data(
        TensorData::new(flags.iter().map(|&f| f as u8 as f32).collect(), [c.b]),
        &dev,
    );
    let mut cache = flux_attention::LayerKvCache::new();
    let got: Vec<f32> =
        flux_attention::attend_routed(t(&q, qs), t(&k, ks), t(&v, ks), &mut cache, full, &mode)
            .unwrap()
            .into_data()
            .to_vec()
            .unwrap();
    assert_eq!(
        cache.len(),
        c.nk,
        "the cache keeps every position of the prompt"
    );
    let (sink, window, dense) = match mode {
        flux_attention::AttentionMode::Streaming { sink, window } => (sink, window, 0..0),
        flux_attention::AttentionMode::Triangle {
            sink,
            window,
            last_queries,
        } => (sink, window, c.nk - last_queries.min(c.nk)..c.nk),
        other => panic!("{other:?} is not a sink + window mode"),
    };
    let want = common::naive_masked(&c, &q, &k, &v, |b, _, p, j| {
        if flags[b] {
            j <= p
        } else {
            Visibility::window_sees(sink, window, &dense, p, j)
        }
    });
    common::max_abs_diff(&got, &want)
}

#[test]
fn routed_attention_reads_its_choice_on_the_device() {
    use flux_attention::AttentionMode::{Streaming, Triangle};
    let triangle = Triangle {
        sink: 3,
        window: 17,
        last_queries: 20,
    };
    let streaming = Streaming {
        sink: 4,
        window: 33,
    };
    // (case, flags, mode): mixed and uniform batches, GQA, a split-KV-sized prompt and a longer one.
    for (i, (c, flags, mode)) in [
        (
            case(3, 4, 2, 100, 100, 64),
            vec![true, false, true],
            streaming,
        ),
        (case(2, 4, 1, 300, 300, 32), vec![false, true], triangle),
        (case(1, 2, 2, 130, 130, 64), vec![true], streaming),
        (case(1, 2, 2, 130, 130, 64), vec![false], triangle),
    ]
    .into_iter()
    .enumerate()
    {
        let seed = 40 + i as u64;
        let errors = [
            routed_matches_naive::<Gpu>(seed, c, &flags, mode),
            routed_matches_naive::<burn::backend::Wgpu>(seed, c, &flags, mode),
            routed_matches_naive::<Cpu>(seed, c, &flags, mode),
        ];
        for (backend, err) in ["CubeBackend", "Wgpu (fusion)", "ndarray"]
            .iter()
            .zip(errors)
        {
            assert!(
                err < 2e-5,
                "{backend} {c:?} {flags:?} {mode:?}: max abs error {err}"
            );
        }
    }
}

#[test]
fn routed_attention_refuses_a_started_cache_and_wrong_flags() {
    type B = Cpu;
    let dev = Default::default();
    let x = |n| Tensor::<B, 4>::ones([1, 2, n, 8], &dev);
    let mode = flux_attention::AttentionMode::Streaming { sink: 1, window: 4 };
    let mut cache = flux_attention::LayerKvCache::new();
    let flags = |n| Tensor::<B, 1>::ones([n], &dev);
    let err = flux_attention::attend_routed(x(3), x(3), x(3), &mut cache, flags(2), &mode)
        .unwrap_err()
        .to_string();
    assert!(err.contains("full"), "{err}");
    flux_attention::attend(x(3), x(3), x(3), &mut cache, &mode).unwrap();
    let err = flux_attention::attend_routed(x(1), x(1), x(1), &mut cache, flags(1), &mode)
        .unwrap_err()
        .to_string();
    assert!(err.contains("empty cache"), "{err}");
}

/// `attend_padded_prompts` (or its routed form, with `flags`) on `B` for a right-padded batch,
/// against `attend` on ndarray for each sequence on its own rows: the largest abs error over
/// the real rows; padding rows must be exactly zero and each cache must hold its own prompt.
fn padded_prompts_match_alone<B: flux_attention::AttentionBackend>(
    seed: u64,
    c: Case,
    lens: &[usize],
    mode: flux_attention::AttentionMode,
    flags: Option<&[bool]>,
) -> f32 {
    let mut rng = StdRng::seed_from_u64(seed);
    let (qs, ks) = ([c.b, c.hq, c.nq, c.d], [c.b, c.hkv, c.nk, c.d]);
    let q = random(&mut rng, qs.iter().product());
    let k = random(&mut rng, ks.iter().product());
    let v = random(&mut rng, ks.iter().product());
    let dev = Default::default();
    let t =
        |x: &[f32], s: [usize; 4]| Tensor::<B, 4>::from_data(TensorData::new(x.to_vec(), s), &dev);
    let mut caches: Vec<_> = (0..c.b)
        .map(|_| flux_attention::LayerKvCache::new())
        .collect();
    let out = match flags {
        None => flux_attention::attend_padded_prompts(
            t(&q, qs),
            t(&k, ks),
            t(&v, ks),
            &mut caches,
            &mode,
            lens,
        ),
        Some(flags) => {
            let full = Tensor::<B, 1>::from_data(
                TensorData::new(flags.iter().map(|&f| f as u8 as f32).collect(), [c.b]),
                &dev,
            );
            flux_attention::attend_padded_prompts_routed(
                t(&q, qs),
                t(&k, ks),
                t(&v, ks),
                &mut caches,
                full,
                &mode,
                lens,
            )
        }
    }
    .unwrap();
    let got: Vec<f32> = out.into_data().to_vec().unwrap();
    let mut err = 0f32;
    for (i, &len) in lens.iter().enumerate() {
        assert_eq!(caches[i].len(), len, "cache {i} holds its own prompt");
        let own = |x: &[f32], s: [usize; 4]| cpu(&slice(x, s, i, len), [1, s[1], len, s[3]]);
        let own_mode = match (flags, mode) {
            (Some(f), _) if f[i] => flux_attention::AttentionMode::Full,
            _ => mode,
        };
        let want: Vec<f32> = flux_attention::attend(
            own(&q, qs),
            own(&k, ks),
            own(&v, ks),
            &mut flux_attention::LayerKvCache::new(),
            &own_mode,
        )
        .unwrap()
        .into_data()
        .to_vec()
        .unwrap();
        let mine = slice(&got, qs, i, c.nq);
        for h in 0..c.hq {
            for row in 0..c.nq {
                for j in 0..c.d {
                    let x = mine[(h * c.nq + row) * c.d + j];
                    if row < len {
                        err = err.max((x - want[(h * len + row) * c.d + j]).abs());
                    } else {
                        assert_eq!(x, 0.0, "sequence {i} padding row {row}");
                    }
                }
            }
        }
    }
    err
}

#[test]
fn padded_prompt_batches_match_each_sequence_alone() {
    use flux_attention::AttentionMode::{Full, Streaming};
    let streaming = Streaming {
        sink: 3,
        window: 19,
    };
    for (i, (c, lens, mode, flags)) in [
        (case(3, 4, 2, 90, 90, 64), vec![90, 41, 67], Full, None),
        (case(3, 4, 2, 90, 90, 64), vec![17, 90, 55], streaming, None),
        (case(2, 2, 1, 150, 150, 32), vec![150, 99], streaming, None),
        (
            case(3, 4, 2, 90, 90, 64),
            vec![90, 30, 61],
            streaming,
            Some(vec![true, false, true]),
        ),
        (
            case(2, 4, 2, 70, 70, 64),
            vec![12, 70],
            streaming,
            Some(vec![false, false]),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let seed = 90 + i as u64;
        let flags = flags.as_deref();
        let errors = [
            padded_prompts_match_alone::<Gpu>(seed, c, &lens, mode, flags),
            padded_prompts_match_alone::<burn::backend::Wgpu>(seed, c, &lens, mode, flags),
            padded_prompts_match_alone::<Cpu>(seed, c, &lens, mode, flags),
        ];
        for (backend, err) in ["CubeBackend", "Wgpu (fusion)", "ndarray"]
            .iter()
            .zip(errors)
        {
            assert!(
                err < 2e-5,
                "{backend} {c:?} {lens:?} {mode:?} {flags:?}: max abs error {err}"
            );
        }
    }
}

#[test]
fn padded_prompts_refuse_length_dependent_modes_started_caches_and_bad_lengths() {
    type B = Cpu;
    let dev = Default::default();
    let x = |n| Tensor::<B, 4>::ones([2, 2, n, 8], &dev);
    let caches = || vec![flux_attention::LayerKvCache::<B>::new(); 2];
    let triangle = flux_attention::AttentionMode::Triangle {
        sink: 1,
        window: 4,
        last_queries: 2,
    };
    let full = flux_attention::AttentionMode::Full;
    let err =
        flux_attention::attend_padded_prompts(x(5), x(5), x(5), &mut caches(), &triangle, &[5, 3])
            .unwrap_err()
            .to_string();
    assert!(err.contains("mode") && err.contains("attend"), "{err}");
    let err =
        flux_attention::attend_padded_prompts(x(5), x(5), x(5), &mut caches(), &full, &[5, 0])
            .unwrap_err()
            .to_string();
    assert!(err.contains("lens") && err.contains("sequence 1"), "{err}");
    let err = flux_attention::attend_padded_prompts(x(5), x(5), x(5), &mut caches(), &full, &[5])
        .unwrap_err()
        .to_string();
    assert!(err.contains("caches"), "{err}");
    let mut started = caches();
    flux_attention::attend(
        Tensor::<B, 4>::ones([1, 2, 3, 8], &dev),
        Tensor::<B, 4>::ones([1, 2, 3, 8], &dev),
        Tensor::<B, 4>::ones([1, 2, 3, 8], &dev),
        &mut started[1],
        &full,
    )
    .unwrap();
    let err = flux_attention::attend_padded_prompts(x(5), x(5), x(5), &mut started, &full, &[5, 4])
        .unwrap_err()
        .to_string();
    assert!(err.contains("cache 1 holds 3 positions"), "{err}");
}
