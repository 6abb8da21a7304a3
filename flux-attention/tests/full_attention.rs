//! Full causal attention against a naive float64 implementation.

mod common;

use burn::tensor::Tensor;
use common::{max_abs_diff, naive, random, tensor, Case, B};
use flux_attention::{attend, attention, AttentionMode, LayerKvCache};
use rand::{rngs::StdRng, SeedableRng};

#[test]
fn full_attention_matches_float64_reference() {
    let mut rng = StdRng::seed_from_u64(7);
    let cases = [
        Case {
            b: 1,
            hq: 4,
            hkv: 4,
            nq: 37,
            nk: 37,
            d: 64,
        },
        Case {
            b: 2,
            hq: 6,
            hkv: 2,
            nq: 29,
            nk: 29,
            d: 64,
        },
        Case {
            b: 1,
            hq: 7,
            hkv: 1,
            nq: 13,
            nk: 50,
            d: 128,
        },
        Case {
            b: 3,
            hq: 14,
            hkv: 2,
            nq: 1,
            nk: 33,
            d: 64,
        },
    ];
    for c in cases {
        let q = random(&mut rng, c.b * c.hq * c.nq * c.d);
        let k = random(&mut rng, c.b * c.hkv * c.nk * c.d);
        let v = random(&mut rng, c.b * c.hkv * c.nk * c.d);
        let out = attention(
            tensor(&q, [c.b, c.hq, c.nq, c.d]),
            tensor(&k, [c.b, c.hkv, c.nk, c.d]),
            tensor(&v, [c.b, c.hkv, c.nk, c.d]),
            &AttentionMode::Full,
        )
        .unwrap();
        assert_eq!(out.dims(), [c.b, c.hq, c.nq, c.d]);
        let got = out.into_data().to_vec::<f32>().unwrap();
        let err = max_abs_diff(&got, &naive(&c, &q, &k, &v));
        assert!(
            err < 1e-5,
            "b{} hq{} hkv{} nq{} nk{} d{}: max error {err}",
            c.b,
            c.hq,
            c.hkv,
            c.nq,
            c.nk,
            c.d
        );
    }
}

#[test]
fn chunked_long_prompt_matches_reference() {
    // 4200 queries: chunks of 256 rows, the last partial.
    let mut rng = StdRng::seed_from_u64(11);
    let c = Case {
        b: 1,
        hq: 2,
        hkv: 1,
        nq: 4200,
        nk: 4200,
        d: 64,
    };
    let q = random(&mut rng, c.hq * c.nq * c.d);
    let k = random(&mut rng, c.hkv * c.nk * c.d);
    let v = random(&mut rng, c.hkv * c.nk * c.d);
    let got = attention(
        tensor(&q, [1, c.hq, c.nq, c.d]),
        tensor(&k, [1, c.hkv, c.nk, c.d]),
        tensor(&v, [1, c.hkv, c.nk, c.d]),
        &AttentionMode::Full,
    )
    .unwrap()
    .into_data()
    .to_vec::<f32>()
    .unwrap();
    let err = max_abs_diff(&got, &naive(&c, &q, &k, &v));
    assert!(err < 1e-5, "max error {err}");
}

#[test]
fn decode_steps_through_cache_equal_prefill() {
    let mut rng = StdRng::seed_from_u64(3);
    let (b, hq, hkv, n, d) = (2, 6, 3, 70, 64);
    let q = random(&mut rng, b * hq * n * d);
    let k = random(&mut rng, b * hkv * n * d);
    let v = random(&mut rng, b * hkv * n * d);
    let (qt, kt, vt) = (
        tensor(&q, [b, hq, n, d]),
        tensor(&k, [b, hkv, n, d]),
        tensor(&v, [b, hkv, n, d]),
    );
    let full = attention(qt.clone(), kt.clone(), vt.clone(), &AttentionMode::Full).unwrap();

    // Prefill 65 positions (grows past the initial 64-slot capacity), then one at a time.
    let mut cache = LayerKvCache::new();
    let mut parts = vec![attend(
        qt.clone().narrow(2, 0, 65),
        kt.clone().narrow(2, 0, 65),
        vt.clone().narrow(2, 0, 65),
        &mut cache,
        &AttentionMode::Full,
    )
    .unwrap()];
    for i in 65..n {
        parts.push(
            attend(
                qt.clone().narrow(2, i, 1),
                kt.clone().narrow(2, i, 1),
                vt.clone().narrow(2, i, 1),
                &mut cache,
                &AttentionMode::Full,
            )
            .unwrap(),
        );
    }
    assert_eq!(cache.len(), n);
    let stepped = Tensor::cat(parts, 2).into_data().to_vec::<f32>().unwrap();
    let full = full.into_data().to_vec::<f32>().unwrap();
    let err = stepped
        .iter()
        .zip(&full)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(err < 1e-5, "max error {err}");
}

#[test]
fn shape_errors_name_the_tensor() {
    let q = Tensor::<B, 4>::zeros([1, 4, 3, 16], &Default::default());
    let k = Tensor::<B, 4>::zeros([1, 3, 3, 16], &Default::default());
    let err = attention(q.clone(), k.clone(), k, &AttentionMode::Full).unwrap_err();
    assert!(err.to_string().contains("`k`"), "{err}");
    let k = Tensor::<B, 4>::zeros([1, 2, 3, 16], &Default::default());
    let v = Tensor::<B, 4>::zeros([1, 2, 4, 16], &Default::default());
    let err = attention(q.clone(), k.clone(), v, &AttentionMode::Full).unwrap_err();
    assert!(err.to_string().contains("`v`"), "{err}");
    let short = Tensor::<B, 4>::zeros([1, 2, 2, 16], &Default::default());
    let err = attention(q.clone(), short.clone(), short, &AttentionMode::Full).unwrap_err();
    assert!(err.to_string().contains("`q`"), "{err}");
    let mut cache = LayerKvCache::new();
    attend(
        q.clone(),
        k.clone(),
        k.clone(),
        &mut cache,
        &AttentionMode::Full,
    )
    .unwrap();
    let q2 = Tensor::<B, 4>::zeros([2, 4, 3, 16], &Default::default());
    let k2 = Tensor::<B, 4>::zeros([2, 2, 3, 16], &Default::default());
    let err = attend(q2, k2.clone(), k2, &mut cache, &AttentionMode::Full).unwrap_err();
    assert!(err.to_string().contains("`cache`"), "{err}");
}
