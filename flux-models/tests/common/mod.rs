//! Shared helpers of the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use burn::backend::NdArray;
use burn::tensor::activation::log_softmax;
use flux_attention::FluxBackend;
use flux_models::Model;

pub type B = NdArray<f32>;

pub mod routed;

/// The model cache of scripts/fetch-models.sh (`FLUX_MODELS_DIR`, default ~/.cache/flux-models).
pub fn models_dir() -> PathBuf {
    std::env::var_os("FLUX_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/flux-models")
        })
}

/// A file of the model cache; fails with the command to run when it is missing.
pub fn cached(relative: &str) -> PathBuf {
    let path = models_dir().join(relative);
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-models.sh first (it downloads and converts the test models)",
        path.display()
    );
    path
}

pub fn fixture(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(relative)
}

pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

pub fn u32s(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

pub fn f64s(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// Log-prob of each next token (`ids[i + 1]` given `ids[..=i]`) and the full logits.
pub fn score<Bk: FluxBackend>(model: &Model<Bk>, ids: &[u32]) -> (Vec<f64>, Vec<Vec<f32>>) {
    let mut cache = model.new_cache();
    let hidden = model
        .forward(model.token_tensor(&[ids.to_vec()]).unwrap(), &mut cache)
        .unwrap();
    let logits = model.logits(hidden);
    let [_, n, vocab] = logits.dims();
    let lp = log_softmax(logits.clone(), 2)
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap();
    let logits = logits.into_data().convert::<f32>().to_vec::<f32>().unwrap();
    let logprobs = (0..n - 1)
        .map(|i| lp[i * vocab + ids[i + 1] as usize] as f64)
        .collect();
    let rows = logits.chunks(vocab).map(<[f32]>::to_vec).collect();
    (logprobs, rows)
}

/// Greedy continuation of `steps` tokens through the KV cache, without stopping at EOS.
pub fn greedy<Bk: FluxBackend>(model: &Model<Bk>, ids: &[u32], steps: usize) -> Vec<u32> {
    let mut cache = model.new_cache();
    let mut input = ids.to_vec();
    let mut out = Vec::new();
    for _ in 0..steps {
        let hidden = model
            .forward(model.token_tensor(&[input]).unwrap(), &mut cache)
            .unwrap();
        let n = hidden.dims()[1];
        let row = model.last_logits(hidden, &[n]).unwrap().remove(0);
        let next = flux_models::generation::argmax(&row) as u32;
        out.push(next);
        input = vec![next];
    }
    out
}

pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length differs");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}
