//! `linear` (the entry point of every projection) against a naive float64 product: both weight
//! layouts, with and without bias, odd shapes; through autodiff (tracked inputs take the
//! reference, whose gradients must be those of the product); on wgpu (lavapipe in CI), where
//! burn's matmul serves it. cuBLASLt itself is checked on the GPU machine by `linear_bench`.

mod common;

use burn::backend::Autodiff;
use burn::tensor::{backend::Backend, Tensor, TensorData};
use common::random;
use flux_attention::{linear, WeightLayout};
use rand::{rngs::StdRng, SeedableRng};

/// `x [m, k] · W (+ b)` in float64, `W` given as `layout` stores it.
fn naive(
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    m: usize,
    k: usize,
    n: usize,
    layout: WeightLayout,
) -> Vec<f64> {
    let mut y = vec![0f64; m * n];
    for r in 0..m {
        for c in 0..n {
            let mut s = b.map_or(0.0, |b| b[c] as f64);
            for i in 0..k {
                let wv = match layout {
                    WeightLayout::InOut => w[i * n + c],
                    WeightLayout::OutIn => w[c * k + i],
                };
                s += x[r * k + i] as f64 * wv as f64;
            }
            y[r * n + c] = s;
        }
    }
    y
}

fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

fn check_backend<B: flux_attention::LinearBackend>(device: &B::Device, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    for &(m, k, n) in &[(1, 8, 5), (7, 33, 19), (16, 64, 64), (3, 1, 9)] {
        for layout in [WeightLayout::InOut, WeightLayout::OutIn] {
            for with_bias in [false, true] {
                let (x, w) = (random(&mut rng, m * k), random(&mut rng, k * n));
                let bias = with_bias.then(|| random(&mut rng, n));
                let w_shape = match layout {
                    WeightLayout::InOut => [k, n],
                    WeightLayout::OutIn => [n, k],
                };
                let xt = Tensor::<B, 2>::from_data(TensorData::new(x.clone(), [m, k]), device);
                let wt = Tensor::<B, 2>::from_data(TensorData::new(w.clone(), w_shape), device);
                let bt = bias
                    .clone()
                    .map(|b| Tensor::<B, 1>::from_data(TensorData::new(b, [n]), device));
                let got = linear(xt, wt, bt, layout);
                assert_eq!(got.dims(), [m, n]);
                let want = naive(&x, &w, bias.as_deref(), m, k, n, layout);
                for (i, (g, e)) in values(got).iter().zip(&want).enumerate() {
                    assert!(
                        (*g as f64 - e).abs() <= 1e-5 * (1.0 + e.abs()),
                        "[{m}, {k}] x {layout:?} -> {n}, bias {with_bias}: element {i} is {g}, expected {e}"
                    );
                }
            }
        }
    }
}

#[test]
fn linear_matches_a_float64_product_on_ndarray() {
    check_backend::<common::B>(&Default::default(), 1);
}

#[test]
fn tracked_inputs_get_the_gradients_of_the_product() {
    type G = Autodiff<common::B>;
    let device = Default::default();
    let (m, k, n) = (5, 6, 4);
    let mut rng = StdRng::seed_from_u64(2);
    let (x, w) = (random(&mut rng, m * k), random(&mut rng, k * n));
    for layout in [WeightLayout::InOut, WeightLayout::OutIn] {
        let w_shape = match layout {
            WeightLayout::InOut => [k, n],
            WeightLayout::OutIn => [n, k],
        };
        let xt =
            Tensor::<G, 2>::from_data(TensorData::new(x.clone(), [m, k]), &device).require_grad();
        let wt = Tensor::<G, 2>::from_data(TensorData::new(w.clone(), w_shape), &device);
        let grads = linear(xt.clone(), wt, None, layout).sum().backward();
        // d(sum y)/dx[r][i] = sum over c of W[i][c].
        let dx = values(xt.grad(&grads).expect("x is tracked"));
        for r in 0..m {
            for i in 0..k {
                let want: f64 = (0..n)
                    .map(|c| match layout {
                        WeightLayout::InOut => w[i * n + c],
                        WeightLayout::OutIn => w[c * k + i],
                    } as f64)
                    .sum();
                assert!(
                    (dx[r * k + i] as f64 - want).abs() < 1e-5,
                    "{layout:?} dx[{r}][{i}]"
                );
            }
        }
    }
}

#[cfg(feature = "wgpu")]
#[test]
fn linear_matches_a_float64_product_on_wgpu() {
    type Gpu = burn_cubecl::CubeBackend<burn::backend::wgpu::WgpuRuntime, f32, i32, u32>;
    check_backend::<Gpu>(&Default::default(), 3);
}
