//! Rotary position embedding (HF's split-halves layout) in one kernel: burn's ops take two
//! narrows, four products, a sum, a difference and a concatenation per tensor, twice a layer.

use burn::tensor::DType;
use burn_cubecl::{
    kernel::into_contiguous, ops::numeric::empty_device_contiguous_dtype, tensor::CubeTensor,
    CubeRuntime,
};
use cubecl::{calculate_cube_count_elemwise, prelude::*};

use crate::KernelError;

/// One unit per (row, i < d / 2) of `x [b, h, n, d]` (any strides): `x1 cos - x2 sin` and
/// `x2 cos + x1 sin` in f32, rounded once to `F`, into the contiguous `out`.
#[cube(launch_unchecked)]
fn rope_kernel<F: Float>(
    x: &Tensor<F>,
    cos: &Array<F>,
    sin: &Array<F>,
    out: &mut Tensor<F>,
    #[define(F)] _dtype: StorageType,
) {
    let half = out.shape(3) / 2;
    let n = out.shape(2);
    let h = out.shape(1);
    let pos = ABSOLUTE_POS;
    if pos >= out.len() / 2 {
        terminate!();
    }
    let i = pos % half;
    let row = pos / half;
    let ni = row % n;
    let hi = (row / n) % h;
    let bi = row / (n * h);
    let xb = bi * x.stride(0) + hi * x.stride(1) + ni * x.stride(2);
    let x1 = f32::cast_from(x[xb + i * x.stride(3)]);
    let x2 = f32::cast_from(x[xb + (i + half) * x.stride(3)]);
    let c = f32::cast_from(cos[ni * half + i]);
    let s = f32::cast_from(sin[ni * half + i]);
    let ob = row * 2 * half;
    out[ob + i] = F::cast_from(x1 * c - x2 * s);
    out[ob + i + half] = F::cast_from(x2 * c + x1 * s);
}

/// Whether [`rope`] serves tensors of `dtype`.
pub fn has_fused_rope(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
}

/// RoPE of `x [b, h, n, d]` (any strides) with tables `cos`, `sin` of `n * d / 2` elements
/// (`[1, 1, n, d / 2]`), all one dtype; the result is contiguous.
pub fn rope<R: CubeRuntime>(
    x: CubeTensor<R>,
    cos: CubeTensor<R>,
    sin: CubeTensor<R>,
) -> Result<CubeTensor<R>, KernelError> {
    let err = |tensor, message| Err(KernelError::Tensor { tensor, message });
    if !has_fused_rope(x.dtype) || cos.dtype != x.dtype || sin.dtype != x.dtype {
        return err(
            "x",
            format!(
                "x is {:?}, cos {:?}, sin {:?}: all f32, f16 or bf16",
                x.dtype, cos.dtype, sin.dtype
            ),
        );
    }
    let dims = x.meta.shape().as_slice().to_vec();
    let [_, _, n, d] = dims[..] else {
        return err("x", format!("shape {dims:?} is not [b, h, n, d]"));
    };
    if !d.is_multiple_of(2) {
        return err("x", format!("head_dim {d} is odd"));
    }
    for (name, table) in [("cos", &cos), ("sin", &sin)] {
        let count = table.meta.shape().num_elements();
        if count != n * d / 2 {
            return err(
                name,
                format!(
                    "{count} elements for {n} positions of {} frequencies",
                    d / 2
                ),
            );
        }
    }
    let (cos, sin) = (into_contiguous(cos), into_contiguous(sin));
    let out = empty_device_contiguous_dtype::<R>(
        x.client.clone(),
        x.device.clone(),
        x.meta.shape().clone(),
        x.dtype,
    );
    let pairs = out.meta.shape().num_elements() / 2;
    if pairs == 0 {
        return Ok(out);
    }
    let dim = CubeDim::new(&x.client, pairs);
    let count = calculate_cube_count_elemwise(&x.client, pairs, dim);
    let table = n * d / 2;
    let dtype = x.dtype;
    // SAFETY: one unit per output pair, bounded by the output length; reads stay inside `x`'s
    // own shape and strides and the tables' `n * d / 2` elements.
    unsafe {
        rope_kernel::launch_unchecked::<R>(
            &x.client.clone(),
            count,
            dim,
            x.into_tensor_arg(),
            ArrayArg::from_raw_parts(cos.handle.clone(), table),
            ArrayArg::from_raw_parts(sin.handle.clone(), table),
            out.clone().into_tensor_arg(),
            dtype.into(),
        )
    };
    Ok(out)
}
