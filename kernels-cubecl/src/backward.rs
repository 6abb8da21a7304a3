//! Host side of attention's backward pass: the forward that also leaves each row's
//! log-sum-exp, and the two backward kernels (`backward_mma.rs`), on CUDA sm_80+ for causal
//! and sink + window (triangle) calls without padding or eviction gap.

use burn::tensor::{DType, Shape};
use burn_cubecl::{
    kernel::into_contiguous, ops::numeric::empty_device_contiguous_dtype, tensor::CubeTensor,
    CubeRuntime,
};
use cubecl::prelude::*;

use crate::{
    backward_mma::{
        attention_delta, attention_dkdv_mma, attention_dq_mma, dkdv_shared_bytes, dq_shared_bytes,
    },
    launch::{
        arg_err, check_call, launch_kernel, mask_params, mma_usable, prepare_call, rule_of,
        switched_off, tensor_err, u32_array, CallDims, KernelChoice,
    },
    prefill_mma::{KEYS, PLANE_SIZE, WARP_ROWS},
    spec::{AttentionSpec, KeyLayout, Visibility},
    visibility::{MetaOffsetsLaunch, NO_ROUTE},
    KernelError,
};

/// Warps per cube of the dQ kernel (one 16-row MMA tile each).
const DQ_PLANES: usize = 4;

/// Whether the backward kernels serve a checked call on this device: what the MMA forward
/// serves, under the causal or sink + window rule, every row and key a real one (no padding),
/// no eviction gap. `FLUX_NO_MMA_BACKWARD` turns them off (the chunked reference runs).
pub fn backward_usable<R: CubeRuntime>(
    client: &ComputeClient<R>,
    dims: &CallDims,
    dtype: DType,
    spec: &AttentionSpec,
) -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let smem = client.properties().hardware.max_shared_memory_size;
    let rows = DQ_PLANES * WARP_ROWS as usize;
    !switched_off(&OFF, "FLUX_NO_MMA_BACKWARD")
        && mma_usable(client, dims, dtype)
        && matches!(
            spec.visibility,
            Visibility::Causal | Visibility::Window { .. }
        )
        && spec.layout == KeyLayout::default()
        && spec.q_lens.is_none()
        && spec.kv_lens.is_none()
        && dq_shared_bytes(rows, dims.d).max(dkdv_shared_bytes(dims.d)) <= smem
}

fn refuse_unserved<R: CubeRuntime>(
    client: &ComputeClient<R>,
    dims: &CallDims,
    dtype: DType,
    spec: &AttentionSpec,
) -> Result<(), KernelError> {
    if backward_usable(client, dims, dtype, spec) {
        Ok(())
    } else {
        Err(arg_err(
            "spec",
            "has no backward kernel on this device (16-bit inputs, head_dim 64 or 128, CUDA \
             sm_80+, causal or sink + window, no padding or eviction gap)"
                .into(),
        ))
    }
}

/// Fused attention that also returns each query row's log-sum-exp of its scaled scores,
/// `[b, hq, nq]` f32: the forward of a call whose gradients [`fused_attention_backward`] computes.
pub fn fused_attention_with_lse<R: CubeRuntime>(
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    spec: &AttentionSpec,
) -> Result<(CubeTensor<R>, CubeTensor<R>), KernelError> {
    let (dims, choice) = prepare_call(&q, &[(&k, "k"), (&v, "v")], spec)?;
    refuse_unserved(&q.client, &dims, q.dtype, spec)?;
    debug_assert_eq!(choice, KernelChoice::Mma);
    let out = empty_device_contiguous_dtype::<R>(
        q.client.clone(),
        q.device.clone(),
        q.meta.shape().clone(),
        q.dtype,
    );
    let lse = empty_device_contiguous_dtype::<R>(
        q.client.clone(),
        q.device.clone(),
        Shape::new([dims.b, dims.hq, dims.nq]),
        DType::F32,
    );
    launch_kernel(
        q,
        k,
        v,
        out.clone(),
        None,
        spec,
        &dims,
        KernelChoice::Mma,
        Some(&lse),
    );
    Ok((out, lse))
}

/// Gradients `[dq, dk, dv]` of fused attention, given its inputs, its output `out`, the row
/// log-sum-exps `lse` of [`fused_attention_with_lse`] and the output's gradient `d_out`; `dk` and
/// `dv` sum the query heads of each KV group. Memory: O(N), nothing N x N.
#[allow(clippy::too_many_arguments)]
pub fn fused_attention_backward<R: CubeRuntime>(
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    out: CubeTensor<R>,
    lse: CubeTensor<R>,
    d_out: CubeTensor<R>,
    spec: &AttentionSpec,
) -> Result<[CubeTensor<R>; 3], KernelError> {
    let (dims, _) = prepare_call(
        &q,
        &[(&k, "k"), (&v, "v"), (&out, "out"), (&d_out, "d_out")],
        spec,
    )?;
    refuse_unserved(&q.client, &dims, q.dtype, spec)?;
    for (t, name) in [(&out, "out"), (&d_out, "d_out")] {
        if t.meta.shape() != q.meta.shape() {
            return Err(tensor_err(
                name,
                format!(
                    "must have q's shape {:?}, has {:?}",
                    q.meta.shape(),
                    t.meta.shape()
                ),
            ));
        }
    }
    let rows = dims.b * dims.hq * dims.nq;
    if lse.dtype != DType::F32 || lse.meta.shape().as_slice() != [dims.b, dims.hq, dims.nq] {
        return Err(tensor_err(
            "lse",
            format!(
                "must be f32 [{}, {}, {}], is {:?} {:?}",
                dims.b,
                dims.hq,
                dims.nq,
                lse.dtype,
                lse.meta.shape()
            ),
        ));
    }
    let [q, k, v, out, lse, d_out] = [q, k, v, out, lse, d_out].map(into_contiguous);
    let client = q.client.clone();
    let dtype = q.dtype;
    let empty = |shape: Shape, dtype: DType| {
        empty_device_contiguous_dtype::<R>(client.clone(), q.device.clone(), shape, dtype)
    };
    let delta = empty(Shape::new([rows]), DType::F32);
    // SAFETY: one thread per row of `out` / `d_out` (contiguous, d columns each), bounded by
    // `delta`'s length.
    unsafe {
        attention_delta::launch_unchecked::<R>(
            &client,
            CubeCount::Static(rows.div_ceil(256) as u32, 1, 1),
            CubeDim::new_1d(256),
            out.into_tensor_arg(),
            d_out.clone().into_tensor_arg(),
            ArrayArg::from_raw_parts(delta.handle.clone(), rows),
            dims.d as u32,
            dtype.into(),
        );
    }

    let b = dims.b as u32;
    let lens = |n: usize| vec![n as u32; dims.b];
    let (meta, meta_n) = u32_array(&client, &[lens(dims.nq), lens(dims.nk)].concat());
    let meta_at = || MetaOffsetsLaunch::new(0, b, 2 * b, 2 * b, NO_ROUTE, 0);
    let rule = rule_of(&spec.visibility);
    let dq = empty(q.meta.shape().clone(), dtype);
    let dk = empty(k.meta.shape().clone(), dtype);
    let dv = empty(k.meta.shape().clone(), dtype);
    let q_tiles = (dims.group() * dims.nq).div_ceil(DQ_PLANES * WARP_ROWS as usize);
    // SAFETY: shapes checked by `prepare_call`, d in {64, 128} and the rule by
    // `backward_usable`; each cube writes only its own rows of dq (its keys of dk, dv), bounded
    // by nq (nk) inside the kernels.
    unsafe {
        attention_dq_mma::launch_unchecked::<R>(
            &client,
            CubeCount::Static(q_tiles as u32, dims.hkv as u32, b),
            CubeDim::new_2d(PLANE_SIZE, DQ_PLANES as u32),
            8,
            q.clone().into_tensor_arg(),
            k.clone().into_tensor_arg(),
            v.clone().into_tensor_arg(),
            d_out.clone().into_tensor_arg(),
            ArrayArg::from_raw_parts(lse.handle.clone(), rows),
            ArrayArg::from_raw_parts(delta.handle.clone(), rows),
            dq.clone().into_tensor_arg(),
            ArrayArg::from_raw_parts(meta.clone(), meta_n),
            meta_at(),
            mask_params(spec, 0),
            spec.scale,
            dims.d as u32,
            dims.group() as u32,
            rule,
            DQ_PLANES as u32,
            1,
            dtype.into(),
        );
        attention_dkdv_mma::launch_unchecked::<R>(
            &client,
            CubeCount::Static(dims.nk.div_ceil(KEYS as usize) as u32, dims.hkv as u32, b),
            CubeDim::new_2d(PLANE_SIZE, KEYS / WARP_ROWS),
            8,
            q.into_tensor_arg(),
            k.into_tensor_arg(),
            v.into_tensor_arg(),
            d_out.into_tensor_arg(),
            ArrayArg::from_raw_parts(lse.handle, rows),
            ArrayArg::from_raw_parts(delta.handle, rows),
            dk.clone().into_tensor_arg(),
            dv.clone().into_tensor_arg(),
            ArrayArg::from_raw_parts(meta, meta_n),
            meta_at(),
            mask_params(spec, 0),
            spec.scale,
            dims.d as u32,
            dims.group() as u32,
            rule,
            dtype.into(),
        );
    }
    Ok([dq, dk, dv])
}

/// Checks a backward call's shapes and whether the kernels serve it, before any launch.
pub fn check_backward<R: CubeRuntime>(
    client: &ComputeClient<R>,
    q: &[usize],
    k: &[usize],
    dtype: DType,
    spec: &AttentionSpec,
) -> Result<CallDims, KernelError> {
    let dims = check_call(q, k, k, dtype, spec)?;
    refuse_unserved(client, &dims, dtype, spec)?;
    Ok(dims)
}
