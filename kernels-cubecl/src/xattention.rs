//! XAttention's block selection on the device: strided anti-diagonal block scores, then the
//! per-query-block threshold selection (same rule as `flux_attention::xattention`).
//!
//! Scoring: one cube per (query block, query head, sequence) with `g x g` threads, `g = block /
//! stride` groups per block; thread `(m, j)` estimates query group `m` against key group `j` of
//! each key block, `sum_t q[mS + S-1-t] . k[jS + t] / (sqrt(d) S)`, from rows staged in shared
//! memory. A first pass finds each query group's softmax maximum and sum over its causal key
//! groups, a second sums the probabilities per key block; the row is then normalised to one.
//! Cost grows as `N^2 d / stride`.
//!
//! Selection: one cube per row; each thread takes key blocks and counts, over the whole row, the
//! mass of the blocks ranked before its own (descending score, ties by index): a block is kept
//! while that mass is under `threshold x total`, as the greedy rule of the reference. Block 0 and
//! the diagonal block are always kept.

#![allow(arithmetic_overflow)]

use cubecl::prelude::*;

use crate::prefill_portable::NEG;

/// Most groups per block the scoring kernel takes (`g^2` threads per cube).
pub const MAX_GROUPS: u32 = 16;

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn xattention_scores<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    scores: &mut Tensor<f32>,
    first_q_block: u32,
    scale: f32,
    #[comptime] head_dim: u32,
    #[comptime] groups: u32,
    #[comptime] stride: u32,
    #[comptime] max_k_blocks: u32,
    #[define(F)] _dtype: StorageType,
) {
    let t = UNIT_POS;
    let m = t / groups;
    let j = t % groups;
    let qb_local = CUBE_POS_X;
    let h = CUBE_POS_Y;
    let b = CUBE_POS_Z;
    let hq = q.shape(1) as u32;
    let nq = q.shape(2) as u32;
    let hkv = k.shape(1) as u32;
    let nk = k.shape(2) as u32;
    let kvh = h / (hq / hkv);
    let first_query = nk - nq;
    let g0 = first_query / stride;
    let q_groups = (first_query % stride + nq).div_ceil(stride);
    let qb = first_q_block + qb_local;
    let g = qb * groups + m; // sequence group of this thread's query group
    let exists = g >= g0 && g < g0 + q_groups;
    let k_blocks = scores.shape(3) as u32;
    let ld = comptime!(head_dim + 1);

    let mut qs = SharedMemory::<f32>::new(comptime!((groups * (head_dim + 1)) as usize));
    let mut ks = SharedMemory::<f32>::new(comptime!((groups * (head_dim + 1)) as usize));
    let mut red = SharedMemory::<f32>::new(comptime!((2 * groups * groups) as usize));
    let mut blk = SharedMemory::<f32>::new(max_k_blocks as usize);
    let threads = comptime!(groups * groups);

    let mut m_run = NEG.runtime();
    let mut l_run = 0.0f32.runtime();
    let mut m_row = NEG.runtime();
    let mut l_row = 0.0f32.runtime();
    // Key blocks past the query block see nothing (causal at group level).
    let last_kb = qb.min(k_blocks - 1);
    for pass in 0..2u32 {
        for kb in 0..last_kb + 1 {
            let mut est = 0.0f32.runtime();
            for tt in 0..stride {
                sync_cube();
                // Row S-1-tt of every query group of the block, row tt of every key group.
                let mut idx = t;
                while idx < groups * head_dim {
                    let row = idx / head_dim;
                    let c = idx % head_dim;
                    let qpos = (qb * groups + row) * stride + stride - 1 - tt;
                    let mut x = 0.0f32.runtime();
                    if qpos >= first_query && qpos < nk {
                        x = f32::cast_from(
                            q[(((b * hq + h) * nq + qpos - first_query) * head_dim + c) as usize],
                        );
                    }
                    qs[(row * ld + c) as usize] = x;
                    let kpos = (kb * groups + row) * stride + tt;
                    let mut y = 0.0f32.runtime();
                    if kpos < nk {
                        y = f32::cast_from(
                            k[(((b * hkv + kvh) * nk + kpos) * head_dim + c) as usize],
                        );
                    }
                    ks[(row * ld + c) as usize] = y;
                    idx += threads;
                }
                sync_cube();
                for c in 0..head_dim {
                    est += qs[(m * ld + c) as usize] * ks[(j * ld + c) as usize];
                }
            }
            est *= scale;
            let visible = exists && kb * groups + j <= g;
            if pass == 0 {
                if visible {
                    let mx = m_run.max(est);
                    l_run = l_run * (m_run - mx).exp() + (est - mx).exp();
                    m_run = mx;
                }
            } else {
                let mut p = 0.0f32.runtime();
                if visible {
                    p = (est - m_row).exp() / l_row;
                }
                // Sum of the block's g x g probabilities: a tree in shared memory.
                red[t as usize] = p;
                let mut width = (threads / 2).runtime();
                while width > 0 {
                    sync_cube();
                    if t < width {
                        red[t as usize] += red[(t + width) as usize];
                    }
                    width /= 2;
                }
                sync_cube();
                if t == 0 {
                    blk[kb as usize] = red[0];
                }
            }
        }
        if pass == 0 {
            // Merge the g partial (max, sum) of each query group.
            red[(2 * t) as usize] = m_run;
            red[(2 * t + 1) as usize] = l_run;
            sync_cube();
            let mut mm = NEG.runtime();
            for jj in 0..groups {
                mm = mm.max(red[(2 * (m * groups + jj)) as usize]);
            }
            let mut ll = 0.0f32.runtime();
            for jj in 0..groups {
                let at = 2 * (m * groups + jj);
                ll += red[(at + 1) as usize] * (red[at as usize] - mm).exp();
            }
            m_row = mm;
            l_row = ll;
        }
    }
    sync_cube();
    let mut total = 0.0f32.runtime();
    for kb in 0..last_kb + 1 {
        total += blk[kb as usize];
    }
    let inv = select(total > 0.0, 1.0 / total, 0.0f32);
    let row = ((b * hq + h) * CUBE_COUNT_X + qb_local) * k_blocks;
    let mut kb = t;
    while kb < k_blocks {
        let mut x = 0.0f32.runtime();
        if kb <= last_kb {
            x = blk[kb as usize] * inv;
        }
        scores[(row + kb) as usize] = x;
        kb += threads;
    }
}

#[cube(launch_unchecked)]
pub fn xattention_select(
    scores: &Tensor<f32>,
    keep: &mut Tensor<f32>,
    first_q_block: u32,
    threshold: f32,
) {
    let row = CUBE_POS_X;
    let t = UNIT_POS;
    let threads = CUBE_DIM;
    let q_blocks = scores.shape(2) as u32;
    let k_blocks = scores.shape(3) as u32;
    let qb = first_q_block + row % q_blocks;
    let causal = (qb + 1).min(k_blocks);
    let base = row * k_blocks;
    let mut total = 0.0f32.runtime();
    for j in 0..causal {
        total += scores[(base + j) as usize];
    }
    let mut i = t;
    while i < k_blocks {
        let mut kept = 0.0f32.runtime();
        if i < causal {
            let si = scores[(base + i) as usize];
            let mut before = 0.0f32.runtime();
            for j in 0..causal {
                let sj = scores[(base + j) as usize];
                if sj > si || (sj == si && j < i) {
                    before += sj;
                }
            }
            if before < threshold * total || i == 0 || i == causal - 1 {
                kept = 1.0;
            }
        }
        keep[(base + i) as usize] = kept;
        i += threads;
    }
}

/// Host side of the XAttention kernels.
pub mod host {
    use super::*;
    use burn::tensor::{DType, Shape};
    use burn_cubecl::{
        kernel::into_contiguous, ops::numeric::empty_device_contiguous_dtype, tensor::CubeTensor,
        CubeRuntime,
    };

    use crate::{KernelError, XAttentionBlocks};

    fn arg_err(argument: &'static str, message: String) -> KernelError {
        KernelError::Argument { argument, message }
    }

    /// Checks an XAttention scoring call (`q [b, hq, nq, d]`, `k [b, hkv, nk, d]`) on a device
    /// with `smem_max` bytes of shared memory per cube.
    pub fn check_xattention(
        q: &[usize],
        k: &[usize],
        dtype: DType,
        block: usize,
        stride: usize,
        smem_max: usize,
    ) -> Result<XAttentionBlocks, KernelError> {
        let dims = crate::check_call(q, k, k, dtype, &crate::AttentionSpec::causal(q[3]))?;
        if stride == 0 || !block.is_multiple_of(stride) {
            return Err(arg_err(
                "stride",
                format!("{stride} does not divide block {block}"),
            ));
        }
        let groups = block / stride;
        if !groups.is_power_of_two() || groups > MAX_GROUPS as usize {
            return Err(arg_err(
                "block",
                format!("block / stride = {groups} must be a power of two up to {MAX_GROUPS}"),
            ));
        }
        let blocks = XAttentionBlocks::new(dims.nq, dims.nk, block, stride);
        let k_blocks = blocks.k_blocks;
        let smem =
            4 * (2 * groups * (dims.d + 1) + 2 * groups * groups + k_blocks.next_power_of_two());
        if smem > smem_max {
            return Err(arg_err("block", format!("{k_blocks} key blocks need {smem} B of shared memory, the device has {smem_max}")));
        }
        Ok(blocks)
    }

    /// Normalised block scores `[b, hq, q_blocks, k_blocks]` (f32), as
    /// `flux_attention::xattention::block_scores`.
    pub fn xattention_block_scores<R: CubeRuntime>(
        q: CubeTensor<R>,
        k: CubeTensor<R>,
        block: usize,
        stride: usize,
    ) -> Result<(CubeTensor<R>, XAttentionBlocks), KernelError> {
        let smem_max = q.client.properties().hardware.max_shared_memory_size;
        let blocks = check_xattention(
            q.meta.shape(),
            k.meta.shape(),
            q.dtype,
            block,
            stride,
            smem_max,
        )?;
        if k.dtype != q.dtype {
            return Err(KernelError::Tensor {
                tensor: "k",
                message: format!("is {:?}, q is {:?}", k.dtype, q.dtype),
            });
        }
        let (q, k) = (into_contiguous(q), into_contiguous(k));
        let [b, hq, _, d] = [
            q.meta.shape()[0],
            q.meta.shape()[1],
            q.meta.shape()[2],
            q.meta.shape()[3],
        ];
        let client = q.client.clone();
        let scores = empty_device_contiguous_dtype::<R>(
            client.clone(),
            q.device.clone(),
            Shape::new([b, hq, blocks.q_blocks, blocks.k_blocks]),
            DType::F32,
        );
        let groups = (block / stride) as u32;
        let dtype = q.dtype;
        unsafe {
            xattention_scores::launch_unchecked::<R>(
                &client,
                CubeCount::Static(blocks.q_blocks as u32, hq as u32, b as u32),
                CubeDim::new_1d(groups * groups),
                q.into_tensor_arg(),
                k.into_tensor_arg(),
                scores.clone().into_tensor_arg(),
                blocks.first_q_block as u32,
                1.0 / ((d as f32).sqrt() * stride as f32),
                d as u32,
                groups,
                stride as u32,
                blocks.k_blocks.next_power_of_two() as u32,
                dtype.into(),
            );
        }
        Ok((scores, blocks))
    }

    /// Keep flags (1.0 / 0.0, f32, the shape of `scores`) of the threshold selection.
    pub fn xattention_keep<R: CubeRuntime>(
        scores: CubeTensor<R>,
        blocks: XAttentionBlocks,
        threshold: f32,
    ) -> CubeTensor<R> {
        let client = scores.client.clone();
        let shape = scores.meta.shape().clone();
        let rows = shape[0] * shape[1] * shape[2];
        let keep = empty_device_contiguous_dtype::<R>(
            client.clone(),
            scores.device.clone(),
            shape,
            DType::F32,
        );
        unsafe {
            xattention_select::launch_unchecked::<R>(
                &client,
                CubeCount::Static(rows as u32, 1, 1),
                CubeDim::new_1d(128),
                scores.into_tensor_arg(),
                keep.clone().into_tensor_arg(),
                blocks.first_q_block as u32,
                threshold,
            );
        }
        keep
    }
}
