//! `Autodiff` over a kernel backend (wgpu on lavapipe in CI): a call outside the graph runs the
//! inner backend's fused kernel (same bits as calling it directly), a tracked call runs as one
//! graph operation whose gradients equal ndarray's autodiff of the reference's recorded ops.
#![cfg(feature = "wgpu")]

mod common;

use burn::backend::wgpu::WgpuRuntime;
use burn::backend::Autodiff;
use burn::tensor::{Tensor, TensorData};
use burn_cubecl::CubeBackend;
use common::random;
use flux_attention::{attention, reference, AttentionMode, KeyLayout, Visibility};
use rand::{rngs::StdRng, SeedableRng};

type Gpu = CubeBackend<WgpuRuntime, f32, i32, u32>;
type GpuGrad = Autodiff<Gpu>;
type CpuGrad = Autodiff<burn::backend::NdArray<f32>>;

const MODES: [AttentionMode; 2] = [
    AttentionMode::Full,
    AttentionMode::Streaming { sink: 4, window: 9 },
];

fn tensor<B: burn::tensor::backend::Backend>(x: &[f32], shape: [usize; 4]) -> Tensor<B, 4> {
    Tensor::from_data(TensorData::new(x.to_vec(), shape), &Default::default())
}

fn values<B: burn::tensor::backend::Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

fn visibility(mode: &AttentionMode) -> Visibility {
    match *mode {
        AttentionMode::Streaming { sink, window } => Visibility::Window {
            sink,
            window,
            dense: 0..0,
        },
        _ => Visibility::Causal,
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn untracked_calls_run_the_inner_kernel() {
    let mut rng = StdRng::seed_from_u64(7);
    let (qs, ks) = ([1, 4, 40, 16], [1, 2, 40, 16]);
    let q = random(&mut rng, 4 * 40 * 16);
    let k = random(&mut rng, 2 * 40 * 16);
    let v = random(&mut rng, 2 * 40 * 16);
    for mode in MODES {
        let inner = attention(
            tensor::<Gpu>(&q, qs),
            tensor::<Gpu>(&k, ks),
            tensor::<Gpu>(&v, ks),
            &mode,
        )
        .unwrap();
        let outer = attention(
            tensor::<GpuGrad>(&q, qs),
            tensor::<GpuGrad>(&k, ks),
            tensor::<GpuGrad>(&v, ks),
            &mode,
        )
        .unwrap();
        let by_reference = reference::masked_attention(
            tensor::<Gpu>(&q, qs),
            tensor::<Gpu>(&k, ks),
            tensor::<Gpu>(&v, ks),
            KeyLayout::default(),
            &visibility(&mode),
        );
        let (inner, outer, by_reference) = (values(inner), values(outer), values(by_reference));
        // The reference materialises the scores and sums in another order, so its bits differ
        // from the kernel's: equal bits mean the kernel ran.
        assert!(max_abs_diff(&inner, &by_reference) < 1e-5, "{mode:?}");
        assert_ne!(
            inner, by_reference,
            "{mode:?}: cannot tell the kernel from the reference"
        );
        assert_eq!(inner, outer, "{mode:?}");
    }
}

#[test]
fn tracked_calls_match_autodiff_of_the_reference() {
    let mut rng = StdRng::seed_from_u64(8);
    let (qs, ks) = ([1, 4, 33, 16], [1, 2, 33, 16]);
    let q = random(&mut rng, 4 * 33 * 16);
    let k = random(&mut rng, 2 * 33 * 16);
    let v = random(&mut rng, 2 * 33 * 16);
    let w = random(&mut rng, 4 * 33 * 16);
    for mode in MODES {
        // Gradients of sum(w * attention(q, k, v)) on the GPU's autodiff and on ndarray's.
        let gpu = {
            let [q, k, v] =
                [(&q, qs), (&k, ks), (&v, ks)].map(|(x, s)| tensor::<GpuGrad>(x, s).require_grad());
            let out = attention(q.clone(), k.clone(), v.clone(), &mode).unwrap();
            let grads = (out * tensor::<GpuGrad>(&w, qs)).sum().backward();
            [q, k, v].map(|t| values(t.grad(&grads).expect("a gradient")))
        };
        let cpu = {
            let [q, k, v] =
                [(&q, qs), (&k, ks), (&v, ks)].map(|(x, s)| tensor::<CpuGrad>(x, s).require_grad());
            let out = reference::masked_attention(
                q.clone(),
                k.clone(),
                v.clone(),
                KeyLayout::default(),
                &visibility(&mode),
            );
            let grads = (out * tensor::<CpuGrad>(&w, qs)).sum().backward();
            [q, k, v].map(|t| values(t.grad(&grads).expect("a gradient")))
        };
        for (name, (g, c)) in ["dq", "dk", "dv"].iter().zip(gpu.iter().zip(&cpu)) {
            let scale = c.iter().fold(0f32, |m, x| m.max(x.abs()));
            assert!(scale > 0.0, "{name} is zero under {mode:?}");
            let err = max_abs_diff(g, c) / scale;
            assert!(err < 1e-4, "{name} under {mode:?}: relative error {err}");
        }
    }
}
