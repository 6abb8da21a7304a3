//! Shared helpers of the attention tests: random inputs and a naive float64 attention.

#![allow(dead_code)]

use burn::backend::NdArray;
use burn::tensor::{Tensor, TensorData};
use rand::{rngs::StdRng, Rng};

pub type B = NdArray<f32>;

/// Shapes of one attention call: the `nq` queries are the last of `nk` positions.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    pub b: usize,
    pub hq: usize,
    pub hkv: usize,
    pub nq: usize,
    pub nk: usize,
    pub d: usize,
}

/// Uniform values in [-1, 1): never zeros, so unwritten outputs show.
pub fn random(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

pub fn tensor(data: &[f32], shape: [usize; 4]) -> Tensor<B, 4> {
    Tensor::from_data(TensorData::new(data.to_vec(), shape), &Default::default())
}

pub fn to_vec(t: Tensor<B, 4>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().unwrap()
}

/// `out[b][h][i] = softmax_{j visible} (q_i . k_j / sqrt(d)) v_j` in f64, where key `j` is
/// visible to the query at sequence position `p = nk - nq + i` when `sees(b, h, p, j)`; the
/// K/V head of query head `h` is `h / (hq / hkv)`.
pub fn naive_masked(
    c: &Case,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    sees: impl Fn(usize, usize, usize, usize) -> bool,
) -> Vec<f64> {
    let group = c.hq / c.hkv;
    let past = c.nk - c.nq;
    let mut out = vec![0f64; c.b * c.hq * c.nq * c.d];
    for b in 0..c.b {
        for h in 0..c.hq {
            let kh = h / group;
            for i in 0..c.nq {
                let p = past + i;
                let qi = &q[((b * c.hq + h) * c.nq + i) * c.d..][..c.d];
                let visible: Vec<usize> = (0..c.nk).filter(|&j| sees(b, h, p, j)).collect();
                let scores: Vec<f64> = visible
                    .iter()
                    .map(|&j| {
                        let kj = &k[((b * c.hkv + kh) * c.nk + j) * c.d..][..c.d];
                        qi.iter()
                            .zip(kj)
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum::<f64>()
                            / (c.d as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                let o = &mut out[((b * c.hq + h) * c.nq + i) * c.d..][..c.d];
                for (&j, w) in visible.iter().zip(&weights) {
                    let vj = &v[((b * c.hkv + kh) * c.nk + j) * c.d..][..c.d];
                    for (o, x) in o.iter_mut().zip(vj) {
                        *o += w / total * *x as f64;
                    }
                }
            }
        }
    }
    out
}

/// Plain causal attention in f64.
pub fn naive(c: &Case, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f64> {
    naive_masked(c, q, k, v, |_, _, p, j| j <= p)
}

pub fn max_abs_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - y).abs())
        .fold(0.0, f64::max)
}

pub fn max_abs_diff_f32(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).abs())
        .fold(0.0, f64::max)
}
