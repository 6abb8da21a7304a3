//! SiLU and SwiGLU as single elementwise kernels. Written out of burn's ops they take five
//! launches (and burn's sigmoid seven), which in launch-bound work (decode, small models, the
//! routers) costs more than the arithmetic.

use burn::tensor::{DType, Shape};
use burn_cubecl::{
    kernel::into_contiguous, ops::numeric::empty_device_contiguous_dtype, tensor::CubeTensor,
    CubeRuntime,
};
use cubecl::{calculate_cube_count_elemwise, prelude::*};

use crate::KernelError;

/// `x / (1 + exp(min(-x, 80)))` in f32: the exponent is capped so that it never overflows
/// (below -80 the result is below 1e-33 in magnitude either way).
#[cube]
fn silu_f32(x: f32) -> f32 {
    x / (1.0 + (-x).min(80.0).exp())
}

#[cube(launch_unchecked)]
fn silu_kernel<F: Float>(x: &Array<F>, out: &mut Array<F>, #[define(F)] _dtype: StorageType) {
    let i = ABSOLUTE_POS;
    if i < out.len() {
        out[i] = F::cast_from(silu_f32(f32::cast_from(x[i])));
    }
}

/// Row `r` of `x` holds `[gate (width), up (width)]`; `out[r, c] = silu(gate[c]) * up[c]`.
#[cube(launch_unchecked)]
fn swiglu_kernel<F: Float>(
    x: &Array<F>,
    out: &mut Array<F>,
    width: u32,
    #[define(F)] _dtype: StorageType,
) {
    let i = ABSOLUTE_POS;
    if i < out.len() {
        let w = width as usize;
        let at = (i / w) * 2 * w + i % w;
        let gate = f32::cast_from(x[at]);
        let up = f32::cast_from(x[at + w]);
        out[i] = F::cast_from(silu_f32(gate) * up);
    }
}

fn check_dtype(dtype: DType) -> Result<(), KernelError> {
    match dtype {
        DType::F32 | DType::F16 | DType::BF16 => Ok(()),
        other => Err(KernelError::Tensor {
            tensor: "x",
            message: format!("dtype {other:?} is not f32, f16 or bf16"),
        }),
    }
}

/// Whether [`silu`] and [`swiglu`] serve tensors of `dtype`.
pub fn has_fused_activation(dtype: DType) -> bool {
    check_dtype(dtype).is_ok()
}

/// `silu(x)` elementwise, computed in f32, in `x`'s dtype.
pub fn silu<R: CubeRuntime>(x: CubeTensor<R>) -> Result<CubeTensor<R>, KernelError> {
    check_dtype(x.dtype)?;
    let shape = x.meta.shape().clone();
    let (x, out, n) = contiguous_with_output(x, shape);
    if let Some((count, dim)) = launch_shape(&x, n) {
        // SAFETY: one unit per element, bounded by the output length; both arrays hold `n`.
        unsafe {
            silu_kernel::launch_unchecked::<R>(
                &x.client,
                count,
                dim,
                ArrayArg::from_raw_parts(x.handle.clone(), n),
                ArrayArg::from_raw_parts(out.handle.clone(), n),
                x.dtype.into(),
            )
        };
    }
    Ok(out)
}

/// SwiGLU of a fused gate/up product: `x [.., 2w]` holds the gate in its first `w` columns and
/// `up` in the last `w`; returns `silu(gate) * up` `[.., w]`, computed in f32, in `x`'s dtype.
pub fn swiglu<R: CubeRuntime>(x: CubeTensor<R>) -> Result<CubeTensor<R>, KernelError> {
    check_dtype(x.dtype)?;
    let dims = x.meta.shape().as_slice().to_vec();
    let last = dims.last().copied().unwrap_or(0);
    if dims.is_empty() || !last.is_multiple_of(2) {
        return Err(KernelError::Tensor {
            tensor: "x",
            message: format!("shape {dims:?} must end in an even width (gate, up)"),
        });
    }
    let width = last / 2;
    if width > u32::MAX as usize {
        return Err(KernelError::Tensor {
            tensor: "x",
            message: format!("width {width} does not fit in 32 bits"),
        });
    }
    let mut out_dims = dims;
    *out_dims.last_mut().expect("non-empty") = width;
    let (x, out, n) = contiguous_with_output(x, Shape::from(out_dims));
    if let Some((count, dim)) = launch_shape(&x, n) {
        // SAFETY: one unit per output element, bounded by the output length; row `r` of `x`
        // holds `2 * width` elements.
        unsafe {
            swiglu_kernel::launch_unchecked::<R>(
                &x.client,
                count,
                dim,
                ArrayArg::from_raw_parts(x.handle.clone(), 2 * n),
                ArrayArg::from_raw_parts(out.handle.clone(), n),
                width as u32,
                x.dtype.into(),
            )
        };
    }
    Ok(out)
}

/// `x` made contiguous, and an output of `shape` in its dtype with its element count.
fn contiguous_with_output<R: CubeRuntime>(
    x: CubeTensor<R>,
    shape: Shape,
) -> (CubeTensor<R>, CubeTensor<R>, usize) {
    let x = into_contiguous(x);
    let n = shape.num_elements();
    let out =
        empty_device_contiguous_dtype::<R>(x.client.clone(), x.device.clone(), shape, x.dtype);
    (x, out, n)
}

/// Cubes and units for one unit per element of `n`, or `None` when there is nothing to do.
fn launch_shape<R: CubeRuntime>(x: &CubeTensor<R>, n: usize) -> Option<(CubeCount, CubeDim)> {
    (n > 0).then(|| {
        let dim = CubeDim::new(&x.client, n);
        (calculate_cube_count_elemwise(&x.client, n, dim), dim)
    })
}
