//! `silu`, `swiglu`, `rms_norm`, `add_rms_norm` and `rope` against float64: on ndarray (burn's ops), on wgpu (lavapipe in CI) through
//! the fused kernels on CubeBackend and through burn's Wgpu (fusion custom ops), and through
//! autodiff, where tracked inputs take burn's ops and must carry silu's exact gradient.

use burn::backend::Autodiff;
use burn::tensor::{Tensor, TensorData};
use flux_attention::{add_rms_norm, rms_norm, rope, silu, swiglu, ActivationBackend};
use rand::{rngs::StdRng, Rng, SeedableRng};

fn silu64(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

/// Values over the range activations reach, the capped exponent's edge included.
fn inputs(rng: &mut StdRng, n: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..n).map(|_| rng.random_range(-12.0f32..12.0)).collect();
    v.extend([-100.0, -80.0, 0.0, 90.0]);
    v
}

fn max_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(g, w)| (*g as f64 - w).abs() / w.abs().max(1.0))
        .fold(0.0, f64::max)
}

fn check<B: ActivationBackend>(device: &B::Device) {
    let mut rng = StdRng::seed_from_u64(1);
    let x = inputs(&mut rng, 3 * 60);
    let rows = x.len() / 2;
    let t = Tensor::<B, 2>::from_data(TensorData::new(x.clone(), [2, rows]), device);
    let got: Vec<f32> = silu(t.clone()).into_data().to_vec().unwrap();
    let want: Vec<f64> = x.iter().map(|&v| silu64(v as f64)).collect();
    assert!(
        max_err(&got, &want) < 1e-6,
        "silu: {}",
        max_err(&got, &want)
    );

    // Each row holds [gate | up].
    let width = rows / 2;
    let got: Vec<f32> = swiglu(t).unwrap().into_data().to_vec().unwrap();
    let want: Vec<f64> = (0..2)
        .flat_map(|r| {
            let row = &x[r * rows..(r + 1) * rows];
            (0..width).map(move |c| silu64(row[c] as f64) * row[width + c] as f64)
        })
        .collect();
    assert!(
        max_err(&got, &want) < 1e-6,
        "swiglu: {}",
        max_err(&got, &want)
    );

    let odd = Tensor::<B, 2>::zeros([2, 3], device);
    assert!(swiglu(odd).unwrap_err().to_string().contains("even"));

    // RMS norm: rows wider and narrower than a cube's 256 threads, a 3-d input.
    for (rows, d) in [(3usize, 300usize), (5, 64), (1, 1000)] {
        let x: Vec<f32> = (0..rows * d)
            .map(|_| rng.random_range(-3.0f32..3.0))
            .collect();
        let w: Vec<f32> = (0..d).map(|_| rng.random_range(0.5f32..1.5)).collect();
        let eps = 1e-5;
        let xt = Tensor::<B, 3>::from_data(TensorData::new(x.clone(), [1, rows, d]), device);
        let wt = Tensor::<B, 1>::from_data(TensorData::new(w.clone(), [d]), device);
        let got: Vec<f32> = rms_norm(xt.clone(), wt.clone(), eps)
            .into_data()
            .to_vec()
            .unwrap();
        let want: Vec<f64> = x
            .chunks(d)
            .flat_map(|row| {
                let ms = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / d as f64;
                let inv = 1.0 / (ms + eps).sqrt();
                row.iter()
                    .zip(&w)
                    .map(move |(&v, &s)| v as f64 * inv * s as f64)
                    .collect::<Vec<_>>()
            })
            .collect();
        let err = max_err(&got, &want);
        assert!(err < 1e-5, "rms_norm [{rows}, {d}]: {err}");

        // The residual add and the norm of the sum, in one call.
        let r: Vec<f32> = (0..rows * d)
            .map(|_| rng.random_range(-3.0f32..3.0))
            .collect();
        let rt = Tensor::<B, 3>::from_data(TensorData::new(r.clone(), [1, rows, d]), device);
        let (h, normed) = add_rms_norm(xt, rt, wt, eps);
        let sum64: Vec<f64> = x
            .iter()
            .zip(&r)
            .map(|(&a, &b)| a as f64 + b as f64)
            .collect();
        let got_h: Vec<f32> = h.into_data().to_vec().unwrap();
        let err = max_err(&got_h, &sum64);
        assert!(err < 1e-6, "add_rms_norm sum [{rows}, {d}]: {err}");
        let want: Vec<f64> = sum64
            .chunks(d)
            .flat_map(|row| {
                let inv = 1.0 / (row.iter().map(|v| v * v).sum::<f64>() / d as f64 + eps).sqrt();
                row.iter()
                    .zip(&w)
                    .map(move |(v, &s)| v * inv * s as f64)
                    .collect::<Vec<_>>()
            })
            .collect();
        let got: Vec<f32> = normed.into_data().to_vec().unwrap();
        let err = max_err(&got, &want);
        assert!(err < 1e-5, "add_rms_norm [{rows}, {d}]: {err}");
    }

    // RoPE of a strided view (heads swapped in, as the model's projections are, then a window
    // of positions and one sequence of two), against float64.
    let (b, n, h, d) = (2usize, 7usize, 3usize, 8usize);
    let x: Vec<f32> = (0..b * n * h * d)
        .map(|_| rng.random_range(-3.0f32..3.0))
        .collect();
    let angles: Vec<f64> = (0..5 * d / 2)
        .map(|_| rng.random_range(-3.0..3.0))
        .collect();
    let table = |f: fn(f64) -> f64| -> Vec<f32> { angles.iter().map(|&a| f(a) as f32).collect() };
    let (cos, sin) = (table(f64::cos), table(f64::sin));
    let xt = Tensor::<B, 4>::from_data(TensorData::new(x.clone(), [b, n, h, d]), device)
        .swap_dims(1, 2)
        .narrow(0, 1, 1)
        .narrow(2, 2, 5);
    let tab = |v: &Vec<f32>| {
        Tensor::<B, 4>::from_data(TensorData::new(v.clone(), [1, 1, 5, d / 2]), device)
    };
    let got: Vec<f32> = rope(xt.clone(), tab(&cos), tab(&sin))
        .unwrap()
        .into_data()
        .to_vec()
        .unwrap();
    let mut want = Vec::new();
    for hi in 0..h {
        for p in 0..5 {
            let row = &x[((n + 2 + p) * h + hi) * d..][..d];
            let (c, s) = (&cos[p * d / 2..][..d / 2], &sin[p * d / 2..][..d / 2]);
            let half = |i: usize| {
                (
                    row[i] as f64,
                    row[i + d / 2] as f64,
                    c[i] as f64,
                    s[i] as f64,
                )
            };
            want.extend((0..d / 2).map(|i| {
                let (x1, x2, c, s) = half(i);
                x1 * c - x2 * s
            }));
            want.extend((0..d / 2).map(|i| {
                let (x1, x2, c, s) = half(i);
                x2 * c + x1 * s
            }));
        }
    }
    let err = max_err(&got, &want);
    assert!(err < 1e-6, "rope: {err}");
    let short = Tensor::<B, 4>::zeros([1, 1, 4, d / 2], device);
    let e = rope(xt, short.clone(), short).unwrap_err().to_string();
    assert!(e.contains("cos"), "{e}");
}

#[test]
fn silu_swiglu_rms_norm_and_rope_match_float64_on_ndarray() {
    check::<burn::backend::NdArray<f32>>(&Default::default());
}

#[cfg(feature = "wgpu")]
#[test]
fn fused_silu_swiglu_rms_norm_and_rope_match_float64_on_wgpu() {
    type Cube = burn_cubecl::CubeBackend<burn::backend::wgpu::WgpuRuntime, f32, i32, u32>;
    assert!(Cube::has_fused_activation(burn::tensor::DType::F32));
    check::<Cube>(&Default::default());
    check::<burn::backend::Wgpu>(&Default::default());
}

#[test]
fn tracked_silu_has_the_exact_gradient() {
    type B = Autodiff<burn::backend::NdArray<f64>>;
    let device = Default::default();
    let xs = [-3.0f64, -0.5, 0.0, 0.7, 4.0];
    let x = Tensor::<B, 1>::from_data(
        TensorData::new(xs.to_vec(), [5]),
        (&device, burn::tensor::DType::F64),
    )
    .require_grad();
    let grads = silu(x.clone()).sum().backward();
    let g: Vec<f64> = x
        .grad(&grads)
        .unwrap()
        .into_data()
        .convert::<f64>()
        .to_vec()
        .unwrap();
    for (x, g) in xs.iter().zip(g) {
        let s = 1.0 / (1.0 + (-x).exp());
        let want = s * (1.0 + x * (1.0 - s));
        assert!(
            (g - want).abs() < 1e-12,
            "d silu({x}) = {g}, expected {want}"
        );
    }
}
