//! attention_kernels' part for the backward pass: a correctness suite of the backward kernels
//! (and of the forward's log-sum-exps) against the chunked reference backward in f32 on the
//! same rounded inputs, and timings beside the forward's.
//!
//! The reference (`flux_attention::reference_backward`) is itself checked against autodiff of
//! the reference forward in float64 (`flux-attention/tests/attention_backward.rs`).

use anyhow::{ensure, Context, Result};
use burn::tensor::{
    backend::Backend, DType, Distribution, ElementConversion, Tensor, TensorPrimitive,
};
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime};
use flux_attention::{reference_backward, AttentionSpec, Visibility};

type Gpu<R, BT> = CubeBackend<R, f32, i32, BT>;

fn prim<R: CubeRuntime, BT: BoolElement, const D: usize>(
    t: &Tensor<Gpu<R, BT>, D>,
) -> burn_cubecl::tensor::CubeTensor<R> {
    t.clone().into_primitive().tensor()
}

fn tensor<R: CubeRuntime, BT: BoolElement, const D: usize>(
    t: burn_cubecl::tensor::CubeTensor<R>,
) -> Tensor<Gpu<R, BT>, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// `||a - b|| / ||b||` over whole tensors (computed on the device in f32).
fn relative_error<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f64 {
    let (a, b) = (a.cast(DType::F32), b.cast(DType::F32));
    let num: f32 = (a - b.clone())
        .powi_scalar(2)
        .sum()
        .into_scalar()
        .elem::<f32>();
    let den: f32 = b.powi_scalar(2).sum().into_scalar().elem::<f32>();
    (num as f64 / (den as f64).max(1e-30)).sqrt()
}

/// The kernels' forward (with log-sum-exps) and backward of one call, and the chunked
/// reference's on the same inputs widened to f32; returns the worst relative error over
/// out, dq, dk, dv and the largest log-sum-exp difference.
fn compare<R: CubeRuntime, BT: BoolElement>(
    q: &Tensor<Gpu<R, BT>, 4>,
    k: &Tensor<Gpu<R, BT>, 4>,
    v: &Tensor<Gpu<R, BT>, 4>,
    d_out: &Tensor<Gpu<R, BT>, 4>,
    spec: &AttentionSpec,
) -> Result<(f64, f64)> {
    let (out, lse) = kernels_cubecl::fused_attention_with_lse(prim(q), prim(k), prim(v), spec)
        .context("the forward with log-sum-exps refused a call check_backward accepted")?;
    let [dq, dk, dv] = kernels_cubecl::fused_attention_backward(
        prim(q),
        prim(k),
        prim(v),
        out.clone(),
        lse.clone(),
        prim(d_out),
        spec,
    )
    .context("the backward refused a call check_backward accepted")?;
    let wide = |t: &Tensor<Gpu<R, BT>, 4>| t.clone().cast(DType::F32);
    let (out_r, lse_r) = reference_backward::attention_with_lse(
        wide(q),
        wide(k),
        wide(v),
        spec.layout,
        &spec.visibility,
    );
    let (dq_r, dk_r, dv_r) = reference_backward::attention_backward(
        wide(q),
        wide(k),
        wide(v),
        out_r.clone(),
        lse_r.clone(),
        wide(d_out),
        spec.layout,
        &spec.visibility,
    );
    let lse_err: f32 = (tensor::<R, BT, 3>(lse) - lse_r)
        .abs()
        .max()
        .into_scalar()
        .elem::<f32>();
    let errs = [
        relative_error(tensor::<R, BT, 4>(out), out_r),
        relative_error(tensor::<R, BT, 4>(dq), dq_r),
        relative_error(tensor::<R, BT, 4>(dk), dk_r),
        relative_error(tensor::<R, BT, 4>(dv), dv_r),
    ];
    ensure!(
        errs.iter().all(|e| e.is_finite()) && lse_err.is_finite(),
        "non-finite gradients: {errs:?}, lse {lse_err}"
    );
    Ok((errs.into_iter().fold(0.0, f64::max), lse_err as f64))
}

/// The backward kernels against the chunked reference, or a line saying this device has none.
pub fn check_suite<R: CubeRuntime, BT: BoolElement>(
    device: &R::Device,
    dtype: DType,
) -> Result<()> {
    let window = |sink, window, dense| Visibility::Window {
        sink,
        window,
        dense,
    };
    // b, hq, hkv, n, d, rule
    let cases = [
        (1, 8, 2, 300, 128, Visibility::Causal),
        (2, 4, 1, 1000, 64, Visibility::Causal),
        (1, 8, 2, 700, 128, window(16, 100, 0..0)),
        (1, 4, 4, 500, 128, window(4, 64, 436..500)),
        (1, 32, 8, 2048, 128, Visibility::Causal),
        (1, 32, 8, 2048, 128, window(128, 256, 0..0)),
    ];
    let tol = 2e-2;
    let mut worst = 0f64;
    for (b, hq, hkv, n, d, visibility) in cases {
        let spec = AttentionSpec::new(visibility.clone(), d);
        let client = R::client(device);
        if let Err(why) =
            kernels_cubecl::check_backward(&client, &[b, hq, n, d], &[b, hkv, n, d], dtype, &spec)
        {
            println!("check backward {dtype:?}: skipped, {why}");
            return Ok(());
        }
        let dist = Distribution::Uniform(-1.0, 1.0);
        let make = |s: [usize; 4]| Tensor::<Gpu<R, BT>, 4>::random(s, dist, (device, dtype));
        let (q, k, v) = (
            make([b, hq, n, d]),
            make([b, hkv, n, d]),
            make([b, hkv, n, d]),
        );
        let d_out = make([b, hq, n, d]);
        let (err, lse_err) = compare(&q, &k, &v, &d_out, &spec)?;
        println!(
            "check backward {dtype:?} b={b} hq={hq} hkv={hkv} n={n} d={d} {visibility:?}: rel err {err:.2e} (out, dq, dk, dv), lse abs err {lse_err:.2e}"
        );
        ensure!(
            err < tol && lse_err < 1e-2,
            "backward {dtype:?} n={n} {visibility:?}: relative error {err:e}, lse {lse_err:e}"
        );
        worst = worst.max(err);
    }
    println!("check backward {dtype:?}: all cases pass, worst relative error {worst:.2e} (limit {tol:e})");
    Ok(())
}

/// Median seconds of the backward kernels (given the forward's output and log-sum-exps) for
/// `[1, hq, n, d]` queries under `visibility`, checked against the reference up to 8K tokens;
/// `None` where the device has no backward kernels.
pub fn time_backward<R: CubeRuntime, BT: BoolElement>(
    device: &R::Device,
    q: &Tensor<Gpu<R, BT>, 4>,
    k: &Tensor<Gpu<R, BT>, 4>,
    v: &Tensor<Gpu<R, BT>, 4>,
    visibility: &Visibility,
    seconds: f64,
) -> Result<Option<(f64, f64)>> {
    let [_, _, n, d] = q.dims();
    let spec = AttentionSpec::new(visibility.clone(), d);
    let client = R::client(device);
    if kernels_cubecl::check_backward(&client, &q.dims(), &k.dims(), q.dtype(), &spec).is_err() {
        return Ok(None);
    }
    let d_out = Tensor::<Gpu<R, BT>, 4>::random(
        q.dims(),
        Distribution::Uniform(-1.0, 1.0),
        (device, q.dtype()),
    );
    let (out, lse) = kernels_cubecl::fused_attention_with_lse(prim(q), prim(k), prim(v), &spec)
        .context("forward with log-sum-exps")?;
    let mut grads = None;
    let secs = crate::timing::time::<Gpu<R, BT>>(device, seconds, || {
        grads = Some(
            kernels_cubecl::fused_attention_backward(
                prim(q),
                prim(k),
                prim(v),
                out.clone(),
                lse.clone(),
                prim(&d_out),
                &spec,
            )
            .expect("checked call"),
        )
    });
    let err = if n <= 8192 {
        compare(q, k, v, &d_out, &spec)?.0
    } else {
        // Past 8K the f32 reference is slow: the gradients must be finite and non-zero.
        let [dq, dk, dv] = grads.expect("ran");
        for (name, g) in [("dq", dq), ("dk", dk), ("dv", dv)] {
            let g = tensor::<R, BT, 4>(g).cast(DType::F32);
            let norm: f32 = g.powi_scalar(2).sum().into_scalar().elem::<f32>();
            ensure!(
                norm.is_finite() && norm > 0.0,
                "{name} at {n}: squared norm {norm}"
            );
        }
        0.0
    };
    ensure!(
        err < 2e-2,
        "backward at {n} ({visibility:?}): relative error {err:e}"
    );
    Ok(Some((secs, err)))
}
