//! RMS norm of each row in one kernel (burn's ops take nine launches: casts, square, mean, add,
//! square root, reciprocal and two products), and the residual add before it in the same kernel
//! (`h = x + r; (h, norm(h))`, one launch less per norm of a decoder layer).

use burn::tensor::DType;
use burn_cubecl::{
    kernel::into_contiguous, ops::numeric::empty_device_contiguous_dtype, tensor::CubeTensor,
    CubeRuntime,
};
use cubecl::prelude::*;

use crate::KernelError;

/// Threads per row.
const THREADS: u32 = 256;
/// Most cubes along one grid axis on every runtime (wgpu's limit).
const MAX_CUBES_X: usize = 65535;

/// One cube per row of `x [rows, d]`: `round(x / sqrt(mean(x^2) + eps)) * weight`, the norm in
/// f32 and rounded to `F` before the scale, as transformers computes it.
#[cube(launch_unchecked)]
fn rms_norm_kernel<F: Float>(
    x: &Array<F>,
    weight: &Array<F>,
    out: &mut Array<F>,
    rows: u32,
    eps: f32,
    #[comptime] d: u32,
    #[define(F)] _dtype: StorageType,
) {
    let row = CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X;
    if row >= rows {
        terminate!();
    }
    let t = UNIT_POS;
    let base = (row * d) as usize;
    let mut sum = 0.0f32.runtime();
    let mut c = t;
    while c < d {
        let v = f32::cast_from(x[base + c as usize]);
        sum += v * v;
        c += THREADS;
    }
    let inv = inverse_rms(sum, t, d, eps);
    let mut c = t;
    while c < d {
        out[base + c as usize] = scaled_norm::<F>(x[base + c as usize], inv, weight[c as usize]);
        c += THREADS;
    }
}

/// `round(round(v * inv) * w)`: the norm rounded to `F` before the scale, as transformers does.
#[cube]
fn scaled_norm<F: Float>(v: F, inv: f32, w: F) -> F {
    let normed = F::cast_from(f32::cast_from(v) * inv);
    F::cast_from(f32::cast_from(normed) * f32::cast_from(w))
}

/// `1 / sqrt(mean + eps)` of a row from each thread's partial sum of squares.
#[cube]
fn inverse_rms(sum: f32, t: u32, #[comptime] d: u32, eps: f32) -> f32 {
    let mut partial = SharedMemory::<f32>::new(THREADS as usize);
    partial[t as usize] = sum;
    sync_cube();
    let mut stride = (THREADS / 2).runtime();
    while stride > 0 {
        if t < stride {
            partial[t as usize] = partial[t as usize] + partial[(t + stride) as usize];
        }
        sync_cube();
        stride /= 2;
    }
    1.0f32 / (partial[0] / f32::cast_from(d) + eps).sqrt()
}

/// One cube per row: `h = round(x + r)` written to `sum`, then [`rms_norm_kernel`] of `h`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn add_rms_norm_kernel<F: Float>(
    x: &Array<F>,
    residual: &Array<F>,
    weight: &Array<F>,
    sum: &mut Array<F>,
    out: &mut Array<F>,
    rows: u32,
    eps: f32,
    #[comptime] d: u32,
    #[define(F)] _dtype: StorageType,
) {
    let row = CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X;
    if row >= rows {
        terminate!();
    }
    let t = UNIT_POS;
    let base = (row * d) as usize;
    let mut squares = 0.0f32.runtime();
    let mut c = t;
    while c < d {
        let i = base + c as usize;
        // Rounded to F first, as a separate add would leave it.
        let h = F::cast_from(f32::cast_from(x[i]) + f32::cast_from(residual[i]));
        sum[i] = h;
        let v = f32::cast_from(h);
        squares += v * v;
        c += THREADS;
    }
    let inv = inverse_rms(squares, t, d, eps);
    let mut c = t;
    while c < d {
        let i = base + c as usize;
        // Recomputed rather than read back from `sum`: the same bits, no global round trip.
        let h = F::cast_from(f32::cast_from(x[i]) + f32::cast_from(residual[i]));
        out[i] = scaled_norm::<F>(h, inv, weight[c as usize]);
        c += THREADS;
    }
}

/// Whether [`rms_norm`] serves tensors of `dtype`.
pub fn has_fused_rms_norm(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
}

/// Rows and width of a call, after checking dtypes and shapes.
fn check_call<R: CubeRuntime>(
    x: &CubeTensor<R>,
    residual: Option<&CubeTensor<R>>,
    weight: &CubeTensor<R>,
) -> Result<(usize, usize), KernelError> {
    let err = |tensor, message| Err(KernelError::Tensor { tensor, message });
    if !has_fused_rms_norm(x.dtype) || weight.dtype != x.dtype {
        return err(
            "x",
            format!(
                "x is {:?}, weight {:?}: both f32, f16 or bf16",
                x.dtype, weight.dtype
            ),
        );
    }
    if let Some(r) = residual {
        if r.dtype != x.dtype || r.meta.shape() != x.meta.shape() {
            return err(
                "residual",
                format!(
                    "{:?} {:?}, where x is {:?} {:?}",
                    r.dtype,
                    r.meta.shape(),
                    x.dtype,
                    x.meta.shape()
                ),
            );
        }
    }
    let dims = x.meta.shape().as_slice().to_vec();
    let d = dims.last().copied().unwrap_or(0);
    if d == 0 || weight.meta.shape().as_slice() != [d] || d > u32::MAX as usize {
        return err(
            "weight",
            format!("shape {:?} for rows of {d}", weight.meta.shape()),
        );
    }
    let rows = dims.iter().product::<usize>() / d;
    if rows > u32::MAX as usize / d {
        return err(
            "x",
            format!("{rows} rows of {d} do not fit in 32-bit indices"),
        );
    }
    Ok((rows, d))
}

/// One cube per row, over at most two grid axes.
fn row_cubes(rows: usize) -> CubeCount {
    let cubes_x = rows.min(MAX_CUBES_X);
    CubeCount::Static(cubes_x as u32, rows.div_ceil(cubes_x) as u32, 1)
}

/// A contiguous output shaped and typed as `x`.
fn empty_like<R: CubeRuntime>(x: &CubeTensor<R>) -> CubeTensor<R> {
    empty_device_contiguous_dtype::<R>(
        x.client.clone(),
        x.device.clone(),
        x.meta.shape().clone(),
        x.dtype,
    )
}

/// RMS norm over the last axis of `x` with the scale `weight [d]` (same dtype), in `x`'s dtype.
pub fn rms_norm<R: CubeRuntime>(
    x: CubeTensor<R>,
    weight: CubeTensor<R>,
    eps: f64,
) -> Result<CubeTensor<R>, KernelError> {
    let (rows, d) = check_call(&x, None, &weight)?;
    let (x, weight) = (into_contiguous(x), into_contiguous(weight));
    let out = empty_like(&x);
    if rows == 0 {
        return Ok(out);
    }
    let n = rows * d;
    // SAFETY: cubes past the last row exit; each reads and writes its own row of `d` elements.
    unsafe {
        rms_norm_kernel::launch_unchecked::<R>(
            &x.client,
            row_cubes(rows),
            CubeDim::new_1d(THREADS),
            ArrayArg::from_raw_parts(x.handle.clone(), n),
            ArrayArg::from_raw_parts(weight.handle.clone(), d),
            ArrayArg::from_raw_parts(out.handle.clone(), n),
            rows as u32,
            eps as f32,
            d as u32,
            x.dtype.into(),
        )
    };
    Ok(out)
}

/// `h = x + residual` (rounded to their dtype) and the RMS norm of `h` with `weight [d]`, in
/// one kernel: returns `(h, norm(h))`. `x` and `residual` have the same shape and dtype.
pub fn add_rms_norm<R: CubeRuntime>(
    x: CubeTensor<R>,
    residual: CubeTensor<R>,
    weight: CubeTensor<R>,
    eps: f64,
) -> Result<(CubeTensor<R>, CubeTensor<R>), KernelError> {
    let (rows, d) = check_call(&x, Some(&residual), &weight)?;
    let (x, residual, weight) = (
        into_contiguous(x),
        into_contiguous(residual),
        into_contiguous(weight),
    );
    let (sum, out) = (empty_like(&x), empty_like(&x));
    if rows == 0 {
        return Ok((sum, out));
    }
    let n = rows * d;
    // SAFETY: cubes past the last row exit; each reads and writes its own row of `d` elements.
    unsafe {
        add_rms_norm_kernel::launch_unchecked::<R>(
            &x.client,
            row_cubes(rows),
            CubeDim::new_1d(THREADS),
            ArrayArg::from_raw_parts(x.handle.clone(), n),
            ArrayArg::from_raw_parts(residual.handle.clone(), n),
            ArrayArg::from_raw_parts(weight.handle.clone(), d),
            ArrayArg::from_raw_parts(sum.handle.clone(), n),
            ArrayArg::from_raw_parts(out.handle.clone(), n),
            rows as u32,
            eps as f32,
            d as u32,
            x.dtype.into(),
        )
    };
    Ok((sum, out))
}
