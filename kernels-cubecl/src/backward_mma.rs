//! Attention's backward pass on register-level MMA (`mma.sync.m16n8k16`, f16 / bf16 in, f32
//! accumulate), FlashAttention-2 style: the forward saved each query row's log-sum-exp, so the
//! probabilities are recomputed tile by tile and nothing N x N is stored.
//!
//! With `S = scale Q K^T`, `P = exp(S - lse)`, `D = rowsum(dO * O)` (from [`attention_delta`]):
//! - [`attention_dq_mma`], one cube per tile of GQA-stacked query rows (as the forward), walks
//!   the key tiles the rows see: `S`, `P`, `dP = dO V^T`, `dS = P (dP - D)` stay in registers
//!   and `dQ += dS K` accumulates there;
//! - [`attention_dkdv_mma`], one cube per tile of 64 keys of one KV head, walks the stacked
//!   query rows (every head of the group) that see its keys: `S^T = K Q^T`, `P^T`,
//!   `dV += P^T dO`, `dP^T = V dO^T`, `dS^T = P^T (dP^T - D)`, `dK += dS^T Q`, so the group's
//!   heads are summed in registers and no atomics are needed.
//!
//! Each kernel double-buffers the tiles it walks (K / V, or Q / dO) with `cp.async` and two
//! barriers, as the forward does. Two kernels recompute `S` and `dP` twice (seven matrix products against the forward's two,
//! where one kernel with atomic `dQ` needs five) in exchange for no atomics and a deterministic
//! result. The register layouts and `ldmatrix` addressing are the forward's
//! (`prefill_mma.rs`): an accumulator tile of 16 x 8 holds rows `g`, `g + 8` and columns `2t`,
//! `2t + 1` in two `f32x2` (`g = lane / 4`, `t = lane % 4`).

// The #[cube] macro type-checks the body with placeholder constants for the topology
// built-ins, which trips this lint.
#![allow(arithmetic_overflow)]

use cubecl::cmma::{MatrixIdent, MmaDefinition};
use cubecl::prelude::barrier::{copy_async_checked, Barrier};
use cubecl::prelude::*;

use crate::prefill_mma::{
    b_operand, load_tile_async, zero_acc, Pair, CHUNK, KEYS, PLANE_SIZE, WARP_ROWS,
};
use crate::prefill_portable::NEG;
use crate::visibility::{
    position, sees, tile_at, tile_fully_visible, tile_range, MaskParams, MetaOffsets, RULE_WINDOW,
};

/// Query rows per step of the key-tile kernel (four score tiles of eight columns).
pub const Q_STEP: u32 = 32;
/// Log-sum-exp of a padding row: its probabilities come out 0.
const NO_ROW: f32 = 1.0e30;

/// Shared memory in bytes of [`attention_dq_mma`] with `rows` stacked rows per cube: Q, dO,
/// two K and two V tiles, two barriers.
pub fn dq_shared_bytes(rows: usize, head_dim: usize) -> usize {
    let row = (head_dim / CHUNK as usize + 1) * 16;
    (2 * rows + 4 * KEYS as usize) * row + 32
}

/// Shared memory in bytes of [`attention_dkdv_mma`]: K, V, two steps of Q, dO and row
/// statistics, two barriers.
pub fn dkdv_shared_bytes(head_dim: usize) -> usize {
    let row = (head_dim / CHUNK as usize + 1) * 16;
    (2 * KEYS as usize + 4 * Q_STEP as usize) * row + 4 * Q_STEP as usize * 4 + 32
}

/// `D[row] = sum_c dO[row, c] * O[row, c]` in f32, one thread per row of `[b, hq, nq, d]`.
#[cube(launch_unchecked)]
pub fn attention_delta<F: Float>(
    out: &Tensor<F>,
    d_out: &Tensor<F>,
    delta: &mut Array<f32>,
    #[comptime] head_dim: u32,
    #[define(F)] _dtype: StorageType,
) {
    let row = ABSOLUTE_POS;
    if row < delta.len() {
        let base = row * head_dim as usize;
        let mut sum = 0.0f32.runtime();
        for c in 0..head_dim as usize {
            sum += f32::cast_from(out[base + c]) * f32::cast_from(d_out[base + c]);
        }
        delta[row] = sum;
    }
}

/// `count` zeroed accumulator tiles.
#[cube]
fn zero_tiles(#[comptime] count: u32) -> Sequence<Array<Pair<f32>>> {
    let mut tiles = Sequence::<Array<Pair<f32>>>::new();
    #[unroll]
    for _ in 0..count {
        tiles.push(zero_acc());
    }
    tiles
}

/// `acc[m * n_tiles + j] += A[a_row0 + 16 m .., :] . B[b_row0 + 8 j .., :]^T` over the head dimension:
/// A and B rows stored `[row][chunk]` in shared memory with `ld` chunks per row (B rows are
/// the N dimension, so K or Q stored row-major is the column-major B operand).
#[cube]
#[allow(clippy::too_many_arguments)]
fn acc_a_bt<F: Float, N: Size>(
    a_s: &SharedMemory<Vector<F, N>>,
    a_row0: u32,
    b_s: &SharedMemory<Vector<F, N>>,
    b_row0: u32,
    acc: &mut Sequence<Array<Pair<f32>>>,
    lane: u32,
    #[comptime] m_tiles: u32,
    #[comptime] n_tiles: u32,
    #[comptime] head_dim: u32,
    #[comptime] ld: u32,
) {
    let def = MmaDefinition::<F, F, f32>::new(16usize, 8usize, 16usize);
    #[unroll]
    for kc2 in 0..comptime!(head_dim / 32) {
        let mut a = Sequence::<Array<Pair<F>>>::new();
        #[unroll]
        for m in 0..m_tiles {
            #[unroll]
            for half in 0..2u32 {
                let row = a_row0 + 16 * m + lane % 16;
                let at = (row * ld + 4 * kc2 + 2 * half + lane / 16) as usize;
                a.push(def.load_matrix::<Vector<F, N>, Const<2>>(
                    &a_s.slice(at, at + 1usize),
                    MatrixIdent::A,
                    4usize,
                    false,
                ));
            }
        }
        #[unroll]
        for j in 0..n_tiles {
            let at = ((b_row0 + 8 * j + lane % 8) * ld + 4 * kc2 + lane / 8) as usize;
            let regs = def.load_matrix::<Vector<F, N>, Const<2>>(
                &b_s.slice(at, at + 1usize),
                MatrixIdent::B,
                4usize,
                false,
            );
            let b0 = b_operand(&regs, 0usize);
            let b1 = b_operand(&regs, 1usize);
            #[unroll]
            for m in 0..m_tiles {
                let tile = acc.index_mut((m * n_tiles + j) as usize);
                def.execute_inplace(a.index((2 * m) as usize), &b0, tile);
                def.execute_inplace(a.index((2 * m + 1) as usize), &b1, tile);
            }
        }
    }
}

/// `out[m * o_tiles + n] += P_m . B[:, 8 n ..]`: `P_m` is `p`'s accumulator tiles
/// `m * p_tiles ..` (16 rows x `8 p_tiles` columns) cast to `F` as the A operand, and B is
/// stored `[k row][chunk]` from row `b_row0` (its rows are P's columns), read by
/// `ldmatrix.trans`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn acc_p_b<F: Float, N: Size>(
    p: &Sequence<Array<Pair<f32>>>,
    b_s: &SharedMemory<Vector<F, N>>,
    b_row0: u32,
    out: &mut Sequence<Array<Pair<f32>>>,
    lane: u32,
    #[comptime] m_tiles: u32,
    #[comptime] p_tiles: u32,
    #[comptime] head_dim: u32,
    #[comptime] ld: u32,
) {
    let def = MmaDefinition::<F, F, f32>::new(16usize, 8usize, 16usize);
    let o_tiles = comptime!(head_dim / 8);
    #[unroll]
    for kk in 0..comptime!(p_tiles / 2) {
        let mut pa = Sequence::<Array<Pair<F>>>::new();
        #[unroll]
        for m in 0..m_tiles {
            let lo = p.index((m * p_tiles + 2 * kk) as usize);
            let hi = p.index((m * p_tiles + 2 * kk + 1) as usize);
            let mut a = Array::<Pair<F>>::new(4usize);
            a[0usize] = Pair::<F>::cast_from(lo[0usize]);
            a[1usize] = Pair::<F>::cast_from(lo[1usize]);
            a[2usize] = Pair::<F>::cast_from(hi[0usize]);
            a[3usize] = Pair::<F>::cast_from(hi[1usize]);
            pa.push(a);
        }
        #[unroll]
        for n2 in 0..comptime!(head_dim / 16) {
            let at = ((b_row0 + 16 * kk + lane % 16) * ld + 2 * n2 + lane / 16) as usize;
            let regs = def.load_matrix::<Vector<F, N>, Const<2>>(
                &b_s.slice(at, at + 1usize),
                MatrixIdent::B,
                4usize,
                true,
            );
            let b0 = b_operand(&regs, 0usize);
            let b1 = b_operand(&regs, 1usize);
            #[unroll]
            for m in 0..m_tiles {
                let a = pa.index(m as usize);
                def.execute_inplace(a, &b0, out.index_mut((m * o_tiles + 2 * n2) as usize));
                def.execute_inplace(a, &b1, out.index_mut((m * o_tiles + 2 * n2 + 1) as usize));
            }
        }
    }
}

/// Starts `cp.async` copies of `count` GQA-stacked query rows `gm0 ..` of `src`
/// (`[b, hq, nq, d]`; row `gm` is query `gm / group` of head `kvh * group + gm % group`) into a
/// padded shared tile from row `at0`, zero-filled past `q_len`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn load_rows_async<F: Float, N: Size>(
    src: &Tensor<Vector<F, N>>,
    tile: &mut SharedMemory<Vector<F, N>>,
    at0: u32,
    b: u32,
    kvh: u32,
    gm0: u32,
    q_len: u32,
    t: u32,
    #[comptime] count: u32,
    #[comptime] group: u32,
    #[comptime] dvec: u32,
    #[comptime] ld: u32,
    #[comptime] threads: u32,
) {
    let hq = src.shape(1) as u32;
    let nq = src.shape(2) as u32;
    #[unroll]
    for step in 0..comptime!(count * dvec / threads) {
        let idx = t + step * threads;
        let gm = gm0 + idx / dvec;
        let i = gm / group;
        let h = kvh * group + gm % group;
        let inside = i < q_len;
        let from = select(
            inside,
            (((b * hq + h) * nq + i) * dvec + idx % dvec) as usize,
            0usize,
        );
        let len = select(inside, 1usize, 0usize);
        let at = ((at0 + idx / dvec) * ld + idx % dvec) as usize;
        copy_async_checked(
            &src.slice(from, from + len),
            &mut tile.slice_mut(at, at + 1usize),
            CHUNK,
        );
    }
}

/// Stores the log-sum-exp and `D` of stacked rows `gm0 .. gm0 + Q_STEP` at `at0 ..` (plain
/// stores by the first `Q_STEP` threads; padding rows get [`NO_ROW`] and 0).
#[cube]
#[allow(clippy::too_many_arguments)]
fn load_row_stats(
    lse: &Array<f32>,
    delta: &Array<f32>,
    lse_s: &mut SharedMemory<f32>,
    delta_s: &mut SharedMemory<f32>,
    at0: u32,
    b: u32,
    kvh: u32,
    gm0: u32,
    hq: u32,
    nq: u32,
    q_len: u32,
    t: u32,
    #[comptime] group: u32,
) {
    if t < Q_STEP {
        let gm = gm0 + t;
        let i = gm / group;
        let h = kvh * group + gm % group;
        let at = select(i < q_len, ((b * hq + h) * nq + i) as usize, 0usize);
        lse_s[(at0 + t) as usize] = select(i < q_len, lse[at], NO_ROW);
        delta_s[(at0 + t) as usize] = select(i < q_len, delta[at], 0.0f32);
    }
}

/// `dQ` of one tile of `16 m_tiles planes` stacked query rows (see the module doc).
#[cube(
    launch_unchecked,
    fast_math = FastMath::ReducedPrecision | FastMath::NotNaN | FastMath::NotInf
)]
#[allow(clippy::too_many_arguments)]
pub fn attention_dq_mma<F: Float, N: Size>(
    q: &Tensor<Vector<F, N>>,
    k: &Tensor<Vector<F, N>>,
    v: &Tensor<Vector<F, N>>,
    d_out: &Tensor<Vector<F, N>>,
    lse: &Array<f32>,
    delta: &Array<f32>,
    dq: &mut Tensor<F>,
    meta: &Array<u32>,
    meta_at: MetaOffsets,
    mask: MaskParams,
    scale: f32,
    #[comptime] head_dim: u32,
    #[comptime] group: u32,
    #[comptime] rule: u32,
    #[comptime] planes: u32,
    #[comptime] m_tiles: u32,
    #[define(F)] _dtype: StorageType,
) {
    let dvec = comptime!(head_dim / CHUNK);
    let ld = comptime!(head_dim / CHUNK + 1);
    let warp_rows = comptime!(WARP_ROWS * m_tiles);
    let rows = comptime!(WARP_ROWS * m_tiles * planes);
    let threads = comptime!(PLANE_SIZE * planes);
    let s_tiles = comptime!(KEYS / 8);
    let o_tiles = comptime!(head_dim / 8);
    let t = UNIT_POS;
    let warp = UNIT_POS_Y;
    let lane = UNIT_POS_X;
    let quad_t = lane % 4;
    let b = CUBE_POS_Z;
    let kvh = CUBE_POS_Y;
    // Heaviest query tiles (most keys) first.
    let qt = CUBE_COUNT_X - (CUBE_POS_X + 1);

    let hq = q.shape(1) as u32;
    let nq = q.shape(2) as u32;
    let hkv = k.shape(1) as u32;
    let nk = k.shape(2) as u32;
    let q_len = meta[(meta_at.q_lens + b) as usize];
    let kv_len = meta[(meta_at.kv_lens + b) as usize];
    let first_q = kv_len - q_len;

    let gm0 = qt * rows;
    let lane_row0 = gm0 + warp * warp_rows + lane / 4;
    let i_min = gm0 / group;

    let mut q_s =
        SharedMemory::<Vector<F, N>>::new_aligned(comptime!((rows * ld) as usize), 16usize);
    let mut do_s =
        SharedMemory::<Vector<F, N>>::new_aligned(comptime!((rows * ld) as usize), 16usize);
    // K and V tiles double-buffered: tile `it` sits at row `KEYS * (it % 2)`.
    let mut k_s =
        SharedMemory::<Vector<F, N>>::new_aligned(comptime!((2 * KEYS * ld) as usize), 16usize);
    let mut v_s =
        SharedMemory::<Vector<F, N>>::new_aligned(comptime!((2 * KEYS * ld) as usize), 16usize);

    let mut dq_acc = zero_tiles(comptime!(m_tiles * o_tiles));
    // This lane's rows' log-sum-exp and D (row r: MMA tile r / 2, half r % 2).
    let mut lse_r = Array::<f32>::new(comptime!((2 * m_tiles) as usize));
    let mut delta_r = Array::<f32>::new(comptime!((2 * m_tiles) as usize));
    #[unroll]
    for r in 0..comptime!(2 * m_tiles) {
        let row = lane_row0 + 16 * (r / 2) + 8 * (r % 2);
        let i = row / group;
        let h = kvh * group + row % group;
        let at = select(i < q_len, ((b * hq + h) * nq + i) as usize, 0usize);
        lse_r[r as usize] = select(i < q_len, lse[at], NO_ROW);
        delta_r[r as usize] = select(i < q_len, delta[at], 0.0f32);
    }

    if i_min < q_len {
        let i_max = ((gm0 + rows - 1) / group).min(q_len - 1);
        let qs_min = first_q + i_min;
        let qs_max = first_q + i_max;
        let qp_min = position(qs_min, &mask);
        let qp_max = position(qs_max, &mask);
        // Q and dO arrive with the first K / V tile, on the first barrier.
        let bar0 = Barrier::shared(threads, t == 0);
        let bar1 = Barrier::shared(threads, t == 0);
        load_rows_async(
            q, &mut q_s, 0u32, b, kvh, gm0, q_len, t, rows, group, dvec, ld, threads,
        );
        load_rows_async(
            d_out, &mut do_s, 0u32, b, kvh, gm0, q_len, t, rows, group, dvec, ld, threads,
        );

        let range = tile_range(qs_max, qp_min, qp_max, &mask, KEYS, rule);
        let kv_base = ((b * hkv + kvh) * nk * dvec) as usize;
        if range.total > 0 {
            let k0 = tile_at(&range, 0u32) * KEYS;
            load_tile_async(k, &mut k_s, 0u32, kv_base, k0, kv_len, t, dvec, ld, threads);
            load_tile_async(v, &mut v_s, 0u32, kv_base, k0, kv_len, t, dvec, ld, threads);
        }
        bar0.commit_copy_async();
        let _ = bar0.arrive();
        for it in 0..range.total {
            let kt = tile_at(&range, it);
            let k0 = kt * KEYS;
            let k1 = (k0 + KEYS).min(kv_len);
            let full = tile_fully_visible(qs_min, qp_max, k0, k1, &mask, KEYS, rule);
            // Tile `it` has landed in buffer `it % 2`; every warp is past tile `it - 1`, so
            // the other buffer takes tile `it + 1` while this one is computed.
            let cur = it % 2;
            let parity = (it / 2) % 2;
            if cur == 0 {
                bar0.wait_parity(parity);
            } else {
                bar1.wait_parity(parity);
            }
            sync_cube();
            if it + 1 < range.total {
                let next = tile_at(&range, it + 1) * KEYS;
                let at = KEYS * (1 - cur);
                load_tile_async(k, &mut k_s, at, kv_base, next, kv_len, t, dvec, ld, threads);
                load_tile_async(v, &mut v_s, at, kv_base, next, kv_len, t, dvec, ld, threads);
                if cur == 0 {
                    bar1.commit_copy_async();
                    let _ = bar1.arrive();
                } else {
                    bar0.commit_copy_async();
                    let _ = bar0.arrive();
                }
            }
            let kv_row = KEYS * cur;

            // S = Q K^T, then P = exp(scale S - lse) with hidden keys at 0.
            let mut s = zero_tiles(comptime!(m_tiles * s_tiles));
            acc_a_bt(
                &q_s,
                warp * warp_rows,
                &k_s,
                kv_row,
                &mut s,
                lane,
                m_tiles,
                s_tiles,
                head_dim,
                ld,
            );
            #[unroll]
            for m in 0..m_tiles {
                #[unroll]
                for half in 0..2u32 {
                    let row = lane_row0 + 16 * m + 8 * half;
                    let i = row / group;
                    let h = kvh * group + row % group;
                    let qp = position(first_q + i, &mask);
                    let l = lse_r[(2 * m + half) as usize];
                    #[unroll]
                    for j in 0..s_tiles {
                        let tile = s.index_mut((m * s_tiles + j) as usize);
                        let key0 = k0 + 8 * j + 2 * quad_t;
                        let mut r = tile[half as usize];
                        #[unroll]
                        for e in 0..2u32 {
                            let key = key0 + e;
                            let shown = full
                                || (i < q_len
                                    && key < k1
                                    && sees(qp, position(key, &mask), b, h, meta, &mask, rule));
                            // Hidden scores may exceed the row's log-sum-exp: never exponentiated.
                            r[e as usize] = select(shown, r[e as usize] * scale - l, NEG).exp();
                        }
                        tile[half as usize] = r;
                    }
                }
            }

            // dP = dO V^T, then dS = P (dP - D) in dP's registers.
            let mut dp = zero_tiles(comptime!(m_tiles * s_tiles));
            acc_a_bt(
                &do_s,
                warp * warp_rows,
                &v_s,
                kv_row,
                &mut dp,
                lane,
                m_tiles,
                s_tiles,
                head_dim,
                ld,
            );
            #[unroll]
            for m in 0..m_tiles {
                #[unroll]
                for half in 0..2u32 {
                    let dd = Pair::<f32>::new(delta_r[(2 * m + half) as usize]);
                    #[unroll]
                    for j in 0..s_tiles {
                        let p = s.index((m * s_tiles + j) as usize)[half as usize];
                        let tile = dp.index_mut((m * s_tiles + j) as usize);
                        tile[half as usize] = p * (tile[half as usize] - dd);
                    }
                }
            }

            // dQ += dS K (K stored [key][d]: the row-major B, read transposed).
            acc_p_b(
                &dp,
                &k_s,
                kv_row,
                &mut dq_acc,
                lane,
                m_tiles,
                s_tiles,
                head_dim,
                ld,
            );
        }
        if range.total == 0 {
            // Q and dO still land before the cube ends.
            bar0.wait_parity(0u32);
        }
    }

    #[unroll]
    for m in 0..m_tiles {
        #[unroll]
        for half in 0..2u32 {
            let row = lane_row0 + 16 * m + 8 * half;
            let i = row / group;
            let h = kvh * group + row % group;
            if i < nq {
                let base = (((b * hq + h) * nq + i) * head_dim + 2 * quad_t) as usize;
                #[unroll]
                for n in 0..o_tiles {
                    let x = dq_acc.index((m * o_tiles + n) as usize)[half as usize];
                    let col = (8 * n) as usize;
                    dq[base + col] = F::cast_from(x[0usize] * scale);
                    dq[base + col + 1usize] = F::cast_from(x[1usize] * scale);
                }
            }
        }
    }
}

/// `dK`, `dV` of one tile of 64 keys of one KV head (see the module doc).
#[cube(
    launch_unchecked,
    fast_math = FastMath::ReducedPrecision | FastMath::NotNaN | FastMath::NotInf
)]
#[allow(clippy::too_many_arguments)]
pub fn attention_dkdv_mma<F: Float, N: Size>(
    q: &Tensor<Vector<F, N>>,
    k: &Tensor<Vector<F, N>>,
    v: &Tensor<Vector<F, N>>,
    d_out: &Tensor<Vector<F, N>>,
    lse: &Array<f32>,
    delta: &Array<f32>,
    dk: &mut Tensor<F>,
    dv: &mut Tensor<F>,
    meta: &Array<u32>,
    meta_at: MetaOffsets,
    mask: MaskParams,
    scale: f32,
    #[comptime] head_dim: u32,
    #[comptime] group: u32,
    #[comptime] rule: u32,
    #[define(F)] _dtype: StorageType,
) {
    let dvec = comptime!(head_dim / CHUNK);
    let ld = comptime!(head_dim / CHUNK + 1);
    let planes = comptime!(KEYS / WARP_ROWS);
    let threads = comptime!(PLANE_SIZE * planes);
    let c_tiles = comptime!(Q_STEP / 8);
    let o_tiles = comptime!(head_dim / 8);
    let t = UNIT_POS;
    let warp = UNIT_POS_Y;
    let lane = UNIT_POS_X;
    let quad_t = lane % 4;
    let b = CUBE_POS_Z;
    let kvh = CUBE_POS_Y;
    let k0 = CUBE_POS_X * KEYS;

    let hq = q.shape(1) as u32;
    let nq = q.shape(2) as u32;
    let hkv = k.shape(1) as u32;
    let nk = k.shape(2) as u32;
    let q_len = meta[(meta_at.q_lens + b) as usize];
    let kv_len = meta[(meta_at.kv_lens + b) as usize];
    let first_q = kv_len - q_len;

    let mut k_s =
        SharedMemory::<Vector<F, N>>::new_aligned(comptime!((KEYS * ld) as usize), 16usize);
    let mut v_s =
        SharedMemory::<Vector<F, N>>::new_aligned(comptime!((KEYS * ld) as usize), 16usize);
    // Q, dO and the row statistics double-buffered: step `j` of the walk at `Q_STEP * (j % 2)`.
    let mut q_s =
        SharedMemory::<Vector<F, N>>::new_aligned(comptime!((2 * Q_STEP * ld) as usize), 16usize);
    let mut do_s =
        SharedMemory::<Vector<F, N>>::new_aligned(comptime!((2 * Q_STEP * ld) as usize), 16usize);
    let mut lse_s = SharedMemory::<f32>::new(comptime!((2 * Q_STEP) as usize));
    let mut delta_s = SharedMemory::<f32>::new(comptime!((2 * Q_STEP) as usize));

    let mut dk_acc = zero_tiles(o_tiles);
    let mut dv_acc = zero_tiles(o_tiles);
    // This lane's keys: `g` and `g + 8` of its warp's 16.
    let lane_key0 = k0 + warp * WARP_ROWS + lane / 4;

    if k0 < kv_len {
        let kv_base = ((b * hkv + kvh) * nk * dvec) as usize;
        // K and V arrive with the first step's rows, on the first barrier.
        load_tile_async(k, &mut k_s, 0u32, kv_base, k0, kv_len, t, dvec, ld, threads);
        load_tile_async(v, &mut v_s, 0u32, kv_base, k0, kv_len, t, dvec, ld, threads);
        let k1 = (k0 + KEYS).min(kv_len);
        let kp0 = position(k0, &mask);
        let kp1 = position(k1 - 1, &mask);

        // Stacked rows that may see these keys: queries at positions >= kp0 and, for a window
        // rule whose keys are past the sink and with no dense queries, before kp1 + window.
        let i_lo = select(kp0 > first_q, kp0 - first_q, 0u32).min(q_len);
        let mut i_end = q_len;
        if comptime!(rule == RULE_WINDOW) {
            let banded = kp0 >= mask.sink && mask.dense_start >= mask.dense_end;
            let band_end = kp1 + mask.window;
            if banded && band_end < first_q + q_len {
                i_end = select(band_end > first_q, band_end - first_q, 0u32);
            }
        }
        let gm_lo = i_lo * group;
        let gm_end = i_end * group;
        let step_lo = gm_lo / Q_STEP;
        let step_end = gm_end.div_ceil(Q_STEP);
        let bar0 = Barrier::shared(threads, t == 0);
        let bar1 = Barrier::shared(threads, t == 0);
        if step_lo < step_end {
            let gm0 = step_lo * Q_STEP;
            load_rows_async(
                q, &mut q_s, 0u32, b, kvh, gm0, q_len, t, Q_STEP, group, dvec, ld, threads,
            );
            load_rows_async(
                d_out, &mut do_s, 0u32, b, kvh, gm0, q_len, t, Q_STEP, group, dvec, ld, threads,
            );
            load_row_stats(
                lse,
                delta,
                &mut lse_s,
                &mut delta_s,
                0u32,
                b,
                kvh,
                gm0,
                hq,
                nq,
                q_len,
                t,
                group,
            );
        }
        bar0.commit_copy_async();
        let _ = bar0.arrive();
        for st in step_lo..step_end {
            let gm0 = st * Q_STEP;
            let qi_min = gm0 / group;
            let qi_max = ((gm0 + Q_STEP - 1) / group).min(q_len - 1);
            let qp_min = position(first_q + qi_min, &mask);
            let qp_max = position(first_q + qi_max, &mask);
            // Skip a step no query of which sees these keys (triangles' middle); skip the mask
            // where every query sees every key.
            let mut seen = true;
            if comptime!(rule == RULE_WINDOW) {
                let in_band = kp0 < mask.sink || qp_min < kp1 + mask.window;
                let in_dense = qp_max >= mask.dense_start && qp_min < mask.dense_end;
                seen = in_band || in_dense;
            }
            let full = gm0 + Q_STEP <= q_len * group
                && tile_fully_visible(first_q + qi_min, qp_max, k0, k1, &mask, KEYS, rule);

            // Step `st` has landed in buffer `j % 2`; every warp is past step `st - 1`, so the
            // other buffer takes step `st + 1` while this one is computed.
            let walked = st - step_lo;
            let cur = walked % 2;
            let parity = (walked / 2) % 2;
            if cur == 0 {
                bar0.wait_parity(parity);
            } else {
                bar1.wait_parity(parity);
            }
            sync_cube();
            if st + 1 < step_end {
                let next = gm0 + Q_STEP;
                let at = Q_STEP * (1 - cur);
                load_rows_async(
                    q, &mut q_s, at, b, kvh, next, q_len, t, Q_STEP, group, dvec, ld, threads,
                );
                load_rows_async(
                    d_out, &mut do_s, at, b, kvh, next, q_len, t, Q_STEP, group, dvec, ld, threads,
                );
                load_row_stats(
                    lse,
                    delta,
                    &mut lse_s,
                    &mut delta_s,
                    at,
                    b,
                    kvh,
                    next,
                    hq,
                    nq,
                    q_len,
                    t,
                    group,
                );
                if cur == 0 {
                    bar1.commit_copy_async();
                    let _ = bar1.arrive();
                } else {
                    bar0.commit_copy_async();
                    let _ = bar0.arrive();
                }
            }
            let row0 = Q_STEP * cur;
            if seen {
                // S^T = K Q^T (keys are the rows), then P^T = exp(scale S^T - lse[column]).
                let mut s = zero_tiles(c_tiles);
                acc_a_bt(
                    &k_s,
                    warp * WARP_ROWS,
                    &q_s,
                    row0,
                    &mut s,
                    lane,
                    1u32,
                    c_tiles,
                    head_dim,
                    ld,
                );
                #[unroll]
                for half in 0..2u32 {
                    let key = lane_key0 + 8 * half;
                    let kp = position(key, &mask);
                    #[unroll]
                    for j in 0..c_tiles {
                        let tile = s.index_mut(j as usize);
                        let mut r = tile[half as usize];
                        #[unroll]
                        for e in 0..2u32 {
                            let c = 8 * j + 2 * quad_t + e;
                            let gm = gm0 + c;
                            let i = gm / group;
                            let h = kvh * group + gm % group;
                            let mut x = r[e as usize] * scale - lse_s[(row0 + c) as usize];
                            if !full {
                                let qp = position(first_q + i, &mask);
                                let shown =
                                    i < q_len && key < k1 && sees(qp, kp, b, h, meta, &mask, rule);
                                x = select(shown, x, NEG);
                            }
                            r[e as usize] = x.exp();
                        }
                        tile[half as usize] = r;
                    }
                }

                // dV += P^T dO (dO stored [row][d]: the row-major B, read transposed).
                acc_p_b(
                    &s,
                    &do_s,
                    row0,
                    &mut dv_acc,
                    lane,
                    1u32,
                    c_tiles,
                    head_dim,
                    ld,
                );

                // dP^T = V dO^T, then dS^T = P^T (dP^T - D[column]) in dP^T's registers.
                let mut dp = zero_tiles(c_tiles);
                acc_a_bt(
                    &v_s,
                    warp * WARP_ROWS,
                    &do_s,
                    row0,
                    &mut dp,
                    lane,
                    1u32,
                    c_tiles,
                    head_dim,
                    ld,
                );
                #[unroll]
                for half in 0..2u32 {
                    #[unroll]
                    for j in 0..c_tiles {
                        let c = 8 * j + 2 * quad_t;
                        let mut dd = Pair::<f32>::new(0.0f32);
                        dd[0usize] = delta_s[(row0 + c) as usize];
                        dd[1usize] = delta_s[(row0 + c + 1) as usize];
                        let p = s.index(j as usize)[half as usize];
                        let tile = dp.index_mut(j as usize);
                        tile[half as usize] = p * (tile[half as usize] - dd);
                    }
                }

                // dK += dS^T Q.
                acc_p_b(
                    &dp,
                    &q_s,
                    row0,
                    &mut dk_acc,
                    lane,
                    1u32,
                    c_tiles,
                    head_dim,
                    ld,
                );
            }
        }
        if step_lo == step_end {
            // No query sees these keys: their copies still land before the cube ends.
            bar0.wait_parity(0u32);
        }
    }

    #[unroll]
    for half in 0..2u32 {
        let key = lane_key0 + 8 * half;
        if key < nk {
            let base = (((b * hkv + kvh) * nk + key) * head_dim + 2 * quad_t) as usize;
            #[unroll]
            for n in 0..o_tiles {
                let gk = dk_acc.index(n as usize)[half as usize];
                let gv = dv_acc.index(n as usize)[half as usize];
                let col = (8 * n) as usize;
                dk[base + col] = F::cast_from(gk[0usize] * scale);
                dk[base + col + 1usize] = F::cast_from(gk[1usize] * scale);
                dv[base + col] = F::cast_from(gv[0usize]);
                dv[base + col + 1usize] = F::cast_from(gv[1usize]);
            }
        }
    }
}
