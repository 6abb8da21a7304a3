//! Flash attention on register-level MMA (`mma.sync.m16n8k16`, f16 / bf16 in, f32 accumulate),
//! FlashAttention-2 style: `S`, the online softmax and `P` never leave registers.
//!
//! One cube of `planes` warps takes `16 * m_tiles * planes` GQA-stacked query rows (the same
//! stacking as the other kernels; each warp owns `m_tiles` MMA tiles of 16 rows, 2 for prefill so
//! that every K / V fragment feeds four MMAs) and walks 64-key tiles in the same tile schedules
//! (causal, sink + window, triangle, block lists). K and V tiles arrive by `cp.async` in shared
//! memory whose rows are padded by one 16-byte chunk, so the eight row addresses of an
//! `ldmatrix` hit eight different bank groups; Q fragments are reloaded from shared memory each
//! tile (registers go to S and O). Decode-sized calls run one warp per cube and split the keys
//! over cubes, leaving partials for `combine_splits`. With `write_lse` (unsplit calls only) the
//! kernel also leaves each row's log-sum-exp in `ml_part`, for the backward pass.
//!
//! Register layout (PTX `m16n8k16`; `g = lane / 4`, `t = lane % 4`): an accumulator tile of 16
//! rows x 8 columns holds rows `g` and `g + 8`, columns `2t, 2t + 1`, in two `f32x2`. A row is
//! spread over the four lanes of a quad, so row maxima and sums take two `xor` shuffles. The A
//! operand of `P V` for keys `16 kk .. 16 kk + 15` is the pair of score tiles `2 kk, 2 kk + 1`,
//! register for register: `P` is repacked with casts only.

// The #[cube] macro type-checks the body with placeholder constants for the topology
// built-ins, which trips this lint on `CUBE_COUNT_X - CUBE_POS_X`.
#![allow(arithmetic_overflow)]

use cubecl::cmma::{MatrixIdent, MmaDefinition};
use cubecl::prelude::barrier::{copy_async_checked, Barrier};
use cubecl::prelude::*;

use crate::prefill_portable::NEG;
use crate::visibility::{
    computes_sequence, position, sees, tile_at, tile_fully_visible, tile_range, MaskParams,
    MetaOffsets, TileRange, FULL_TILE, RULE_BLOCKS,
};

/// Keys per tile.
pub const KEYS: u32 = 64;
/// Query rows per warp (the MMA's M).
pub const WARP_ROWS: u32 = 16;
/// Lanes per plane the kernel is written for (CUDA warps).
pub const PLANE_SIZE: u32 = 32;
/// Elements per 16-byte chunk (f16 / bf16): the unit of every load and of `ldmatrix` rows.
pub const CHUNK: u32 = 8;
/// Scores at or below this are hidden keys (they hold `NEG`).
const HIDDEN: f32 = -1.0e29;

/// Two adjacent 16-bit elements, or two f32 accumulators: one MMA register.
pub(crate) type Pair<E> = Vector<E, Const<2>>;

/// Shared memory in bytes for a cube of `rows` stacked query rows and head dimension
/// `head_dim` (16-bit elements): Q, K and V tiles with rows padded by one chunk, and the two
/// barriers.
pub fn shared_bytes(rows: usize, head_dim: usize) -> usize {
    let row = (head_dim / CHUNK as usize + 1) * 16;
    (rows + 2 * KEYS as usize) * row + 32
}

/// A zeroed accumulator tile (16 x 8, f32).
#[cube]
pub(crate) fn zero_acc() -> Array<Pair<f32>> {
    let mut acc = Array::<Pair<f32>>::new(2usize);
    acc[0usize] = Pair::<f32>::new(0.0f32);
    acc[1usize] = Pair::<f32>::new(0.0f32);
    acc
}

/// Registers `2 half` and `2 half + 1` of an `ldmatrix.x4` result: one B operand.
#[cube]
pub(crate) fn b_operand<F: Float>(
    regs: &Array<Pair<F>>,
    #[comptime] half: usize,
) -> Array<Pair<F>> {
    let mut b = Array::<Pair<F>>::new(2usize);
    b[0usize] = regs[2 * half];
    b[1usize] = regs[2 * half + 1];
    b
}

/// Key tile visited at step `it`: from the tile range, or the query tile's list (blocks rule).
#[cube]
fn tile_index(
    meta: &Array<u32>,
    meta_at: &MetaOffsets,
    range: &TileRange,
    list_row: u32,
    max_tiles: u32,
    it: u32,
    #[comptime] rule: u32,
) -> u32 {
    let mut kt = tile_at(range, it);
    if comptime!(rule == RULE_BLOCKS) {
        kt = meta[(meta_at.lists + list_row * max_tiles + it) as usize] & (FULL_TILE - 1);
    }
    kt
}

/// Starts the `cp.async` copies of keys (or values) `k0 .. k0 + KEYS` into a padded tile from
/// its row `at0`; rows at or past `kv_len` are zero-filled (hidden keys then meet zero values,
/// not garbage).
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn load_tile_async<F: Float, N: Size>(
    src: &Tensor<Vector<F, N>>,
    tile: &mut SharedMemory<Vector<F, N>>,
    at0: u32,
    kv_base: usize,
    k0: u32,
    kv_len: u32,
    t: u32,
    #[comptime] dvec: u32,
    #[comptime] ld: u32,
    #[comptime] threads: u32,
) {
    #[unroll]
    for step in 0..comptime!(KEYS * dvec / threads) {
        let idx = t + step * threads;
        let key = k0 + idx / dvec;
        let inside = key < kv_len;
        // An outside row reads nothing (length 0) from a valid address and writes zeros.
        let from = select(inside, kv_base + (key * dvec + idx % dvec) as usize, 0usize);
        let len = select(inside, 1usize, 0usize);
        let at = ((at0 + idx / dvec) * ld + idx % dvec) as usize;
        copy_async_checked(
            &src.slice(from, from + len),
            &mut tile.slice_mut(at, at + 1usize),
            CHUNK,
        );
    }
}

#[cube(
    launch_unchecked,
    fast_math = FastMath::ReducedPrecision | FastMath::NotNaN | FastMath::NotInf
)]
#[allow(clippy::too_many_arguments)]
pub fn flash_attention_mma<F: Float, N: Size>(
    q: &Tensor<Vector<F, N>>,
    k: &Tensor<Vector<F, N>>,
    v: &Tensor<Vector<F, N>>,
    out: &mut Tensor<F>,
    o_part: &mut Array<f32>,
    ml_part: &mut Array<f32>,
    meta: &Array<u32>,
    meta_at: MetaOffsets,
    mask: MaskParams,
    scale: f32,
    max_tiles: u32,
    n_splits: u32,
    #[comptime] head_dim: u32,
    #[comptime] group: u32,
    #[comptime] rule: u32,
    #[comptime] planes: u32,
    #[comptime] m_tiles: u32,
    #[comptime] split: bool,
    #[comptime] write_lse: bool,
    #[define(F)] _dtype: StorageType,
) {
    // `N` is 8 elements (16 bytes): one chunk per vector.
    let dvec = comptime!(head_dim / CHUNK);
    // Padded row stride of the tiles in shared memory, in chunks.
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
    // Split-KV (decode, short prompts): cube z = sequence * n_splits + split; each split walks
    // its share of the tiles and leaves unnormalised partials for `combine_splits`.
    let b = CUBE_POS_Z / n_splits;
    let split_id = CUBE_POS_Z % n_splits;
    let kvh = CUBE_POS_Y;
    let n_tiles = CUBE_COUNT_X;
    // Heaviest query tiles (most keys) first.
    let qt = n_tiles - (CUBE_POS_X + 1);

    let hq = q.shape(1) as u32;
    let nq = q.shape(2) as u32;
    let hkv = k.shape(1) as u32;
    let nk = k.shape(2) as u32;
    let q_len = meta[(meta_at.q_lens + b) as usize];
    let kv_len = meta[(meta_at.kv_lens + b) as usize];
    if !computes_sequence(meta, &meta_at, b) {
        terminate!();
    }
    let first_q = kv_len - q_len;

    // This lane's rows: `g` and `g + 8` of each of its warp's 16-row MMA tiles; row `r` of the
    // state arrays is MMA tile `r / 2`, half `r % 2`.
    let gm0 = qt * rows;
    let lane_row0 = gm0 + warp * warp_rows + lane / 4;
    let i_min = gm0 / group;

    let mut q_s =
        SharedMemory::<Vector<F, N>>::new_aligned(comptime!((rows * ld) as usize), 16usize);
    let mut k_s =
        SharedMemory::<Vector<F, N>>::new_aligned(comptime!((KEYS * ld) as usize), 16usize);
    let mut v_s =
        SharedMemory::<Vector<F, N>>::new_aligned(comptime!((KEYS * ld) as usize), 16usize);

    let def = MmaDefinition::<F, F, f32>::new(16usize, 8usize, 16usize);

    // O: per MMA tile m, head_dim / 8 accumulator tiles (columns 8n .. 8n + 7), at m * o_tiles + n.
    let mut o_acc = Sequence::<Array<Pair<f32>>>::new();
    #[unroll]
    for _ in 0..comptime!(m_tiles * head_dim / 8) {
        o_acc.push(zero_acc());
    }
    // Running maximum (raw score units) and per-lane partial sums of each row.
    let mut m_run = Array::<f32>::new(comptime!((2 * m_tiles) as usize));
    let mut l_run = Array::<f32>::new(comptime!((2 * m_tiles) as usize));
    #[unroll]
    for r in 0..comptime!(2 * m_tiles) {
        m_run[r as usize] = NEG;
        l_run[r as usize] = 0.0f32;
    }

    // Whole tile of padding rows: nothing to compute (uniform over the cube).
    if i_min < q_len {
        let i_max = ((gm0 + rows - 1) / group).min(q_len - 1);
        let qs_min = first_q + i_min;
        let qs_max = first_q + i_max;
        let qp_min = position(qs_min, &mask);
        let qp_max = position(qs_max, &mask);

        let zero = Vector::<F, N>::new(F::new(0.0));
        #[unroll]
        for step in 0..comptime!(rows * dvec / threads) {
            let idx = t + step * threads;
            let gm = gm0 + idx / dvec;
            let i = gm / group;
            let h = kvh * group + gm % group;
            let mut x = zero;
            if i < q_len {
                x = q[(((b * hq + h) * nq + i) * dvec + idx % dvec) as usize];
            }
            q_s[(idx / dvec * ld + idx % dvec) as usize] = x;
        }
        sync_cube();

        let list_row = (b * hkv + kvh) * n_tiles + qt;
        let range = tile_range(qs_max, qp_min, qp_max, &mask, KEYS, rule);
        let mut total = range.total;
        if comptime!(rule == RULE_BLOCKS) {
            total = meta[(meta_at.counts + list_row) as usize];
        }
        let per_split = total.div_ceil(n_splits);
        let it_lo = (split_id * per_split).min(total);
        let it_hi = (it_lo + per_split).min(total);
        let kv_base = ((b * hkv + kvh) * nk * dvec) as usize;

        // K and V tiles arrive by `cp.async`, each tracked by its own barrier, FlashAttention-2's
        // order: V of this tile loads while S is computed, K of the next tile while softmax
        // and P V run. Each barrier completes once per tile, so tile `it` waits on parity
        // `it % 2`.
        let bar_k = Barrier::shared(threads, t == 0);
        let bar_v = Barrier::shared(threads, t == 0);
        if it_lo < it_hi {
            let kt = tile_index(meta, &meta_at, &range, list_row, max_tiles, it_lo, rule);
            load_tile_async(
                k,
                &mut k_s,
                0u32,
                kv_base,
                kt * KEYS,
                kv_len,
                t,
                dvec,
                ld,
                threads,
            );
            bar_k.commit_copy_async();
            let _ = bar_k.arrive();
        }

        for it in it_lo..it_hi {
            let kt = tile_index(meta, &meta_at, &range, list_row, max_tiles, it, rule);
            let mut listed_full = false;
            if comptime!(rule == RULE_BLOCKS) {
                listed_full =
                    meta[(meta_at.lists + list_row * max_tiles + it) as usize] >= FULL_TILE;
            }
            let k0 = kt * KEYS;
            let k1 = (k0 + KEYS).min(kv_len);
            let full = listed_full || tile_fully_visible(qs_min, qp_max, k0, k1, &mask, KEYS, rule);
            let parity = (it - it_lo) % 2;

            // K(it) has landed; every warp is past P V of the previous tile, so V may be
            // overwritten.
            bar_k.wait_parity(parity);
            sync_cube();
            load_tile_async(v, &mut v_s, 0u32, kv_base, k0, kv_len, t, dvec, ld, threads);
            bar_v.commit_copy_async();
            let _ = bar_v.arrive();

            // S = Q K^T: score tile m * s_tiles + j holds MMA tile m's rows and keys 8j .. 8j + 7.
            // One `ldmatrix.x4` of K (no transpose: K stored [key][d] is the column-major B)
            // gives the B operands of chunks kc, kc + 1 and serves every MMA tile of the warp;
            // Q fragments come from shared memory (`ldmatrix.x4`: rows 0-7 / 8-15 of chunks
            // 2kc / 2kc + 1).
            let mut s = Sequence::<Array<Pair<f32>>>::new();
            #[unroll]
            for _ in 0..comptime!(m_tiles * KEYS / 8) {
                s.push(zero_acc());
            }
            #[unroll]
            for kc2 in 0..comptime!(head_dim / 32) {
                let mut qa = Sequence::<Array<Pair<F>>>::new();
                #[unroll]
                for m in 0..m_tiles {
                    #[unroll]
                    for half in 0..2u32 {
                        let row = warp * warp_rows + 16 * m + lane % 16;
                        let at = (row * ld + 4 * kc2 + 2 * half + lane / 16) as usize;
                        qa.push(def.load_matrix::<Vector<F, N>, Const<2>>(
                            &q_s.slice(at, at + 1usize),
                            MatrixIdent::A,
                            4usize,
                            false,
                        ));
                    }
                }
                #[unroll]
                for j in 0..s_tiles {
                    let at = ((8 * j + lane % 8) * ld + 4 * kc2 + lane / 8) as usize;
                    let regs = def.load_matrix::<Vector<F, N>, Const<2>>(
                        &k_s.slice(at, at + 1usize),
                        MatrixIdent::B,
                        4usize,
                        false,
                    );
                    let b0 = b_operand(&regs, 0usize);
                    let b1 = b_operand(&regs, 1usize);
                    #[unroll]
                    for m in 0..m_tiles {
                        let acc = s.index_mut((m * s_tiles + j) as usize);
                        def.execute_inplace(qa.index((2 * m) as usize), &b0, acc);
                        def.execute_inplace(qa.index((2 * m + 1) as usize), &b1, acc);
                    }
                }
            }

            // Hidden keys get NEG, which no visible score reaches.
            if !full {
                #[unroll]
                for m in 0..m_tiles {
                    #[unroll]
                    for half in 0..2u32 {
                        let row = lane_row0 + 16 * m + 8 * half;
                        let i = row / group;
                        let h = kvh * group + row % group;
                        let valid = i < q_len;
                        let qp = position(first_q + i, &mask);
                        #[unroll]
                        for j in 0..s_tiles {
                            let tile = s.index_mut((m * s_tiles + j) as usize);
                            let key0 = k0 + 8 * j + 2 * quad_t;
                            let mut r = tile[half as usize];
                            #[unroll]
                            for e in 0..2u32 {
                                let key = key0 + e;
                                if !(valid
                                    && key < k1
                                    && sees(qp, position(key, &mask), b, h, meta, &mask, rule))
                                {
                                    r[e as usize] = NEG;
                                }
                            }
                            tile[half as usize] = r;
                        }
                    }
                }
            }

            // Online softmax per row: tile maxima over the quad, then probabilities, sums and
            // the rescale of O.
            #[unroll]
            for m in 0..m_tiles {
                #[unroll]
                for half in 0..2u32 {
                    let ri = (2 * m + half) as usize;
                    let m_old = m_run[ri];
                    let mut mx = m_old;
                    #[unroll]
                    for j in 0..s_tiles {
                        let r = s.index((m * s_tiles + j) as usize)[half as usize];
                        mx = mx.max(r[0usize].max(r[1usize]));
                    }
                    mx = mx.max(plane_shuffle_xor(mx, 1u32));
                    mx = mx.max(plane_shuffle_xor(mx, 2u32));
                    let alpha = ((m_old - mx) * scale).exp();
                    m_run[ri] = mx;
                    // A row that has seen no key yet subtracts 0: its NEG scores give exp(-huge) = 0.
                    let base = select(mx > HIDDEN, mx, 0.0f32) * scale;
                    let mut sum = 0.0f32.runtime();
                    #[unroll]
                    for j in 0..s_tiles {
                        let tile = s.index_mut((m * s_tiles + j) as usize);
                        let mut r = tile[half as usize];
                        r[0usize] = (r[0usize] * scale - base).exp();
                        r[1usize] = (r[1usize] * scale - base).exp();
                        sum += r[0usize] + r[1usize];
                        tile[half as usize] = r;
                    }
                    l_run[ri] = l_run[ri] * alpha + sum;
                    let factor = Pair::<f32>::new(alpha);
                    #[unroll]
                    for n in 0..o_tiles {
                        let o = o_acc.index_mut((m * o_tiles + n) as usize);
                        o[half as usize] = o[half as usize] * factor;
                    }
                }
            }

            // V(it) has landed; every warp is past S of this tile, so K may be overwritten by
            // the next tile's.
            bar_v.wait_parity(parity);
            sync_cube();
            if it + 1 < it_hi {
                let next = tile_index(meta, &meta_at, &range, list_row, max_tiles, it + 1, rule);
                load_tile_async(
                    k,
                    &mut k_s,
                    0u32,
                    kv_base,
                    next * KEYS,
                    kv_len,
                    t,
                    dvec,
                    ld,
                    threads,
                );
                bar_k.commit_copy_async();
                let _ = bar_k.arrive();
            }

            // O += P V: P for keys 16kk .. 16kk + 15 is score tiles 2kk, 2kk + 1 cast to F.
            // `ldmatrix.x4.trans` of V rows 16kk .. gives the B operands of columns 8n, 8n + 8
            // for every MMA tile of the warp.
            #[unroll]
            for kk in 0..comptime!(KEYS / 16) {
                let mut pa = Sequence::<Array<Pair<F>>>::new();
                #[unroll]
                for m in 0..m_tiles {
                    let lo = s.index((m * s_tiles + 2 * kk) as usize);
                    let hi = s.index((m * s_tiles + 2 * kk + 1) as usize);
                    let mut p = Array::<Pair<F>>::new(4usize);
                    p[0usize] = Pair::<F>::cast_from(lo[0usize]);
                    p[1usize] = Pair::<F>::cast_from(lo[1usize]);
                    p[2usize] = Pair::<F>::cast_from(hi[0usize]);
                    p[3usize] = Pair::<F>::cast_from(hi[1usize]);
                    pa.push(p);
                }
                #[unroll]
                for n2 in 0..comptime!(head_dim / 16) {
                    let at = ((16 * kk + lane % 16) * ld + 2 * n2 + lane / 16) as usize;
                    let regs = def.load_matrix::<Vector<F, N>, Const<2>>(
                        &v_s.slice(at, at + 1usize),
                        MatrixIdent::B,
                        4usize,
                        true,
                    );
                    let b0 = b_operand(&regs, 0usize);
                    let b1 = b_operand(&regs, 1usize);
                    #[unroll]
                    for m in 0..m_tiles {
                        let pm = pa.index(m as usize);
                        def.execute_inplace(
                            pm,
                            &b0,
                            o_acc.index_mut((m * o_tiles + 2 * n2) as usize),
                        );
                        def.execute_inplace(
                            pm,
                            &b1,
                            o_acc.index_mut((m * o_tiles + 2 * n2 + 1) as usize),
                        );
                    }
                }
            }
        }
    }

    // Row sums over the quad, then O / l. Padding rows (past the query length) are zeros.
    #[unroll]
    for m in 0..m_tiles {
        #[unroll]
        for half in 0..2u32 {
            let ri = (2 * m + half) as usize;
            let row = lane_row0 + 16 * m + 8 * half;
            let i = row / group;
            let h = kvh * group + row % group;
            let mut l = l_run[ri];
            l += plane_shuffle_xor(l, 1u32);
            l += plane_shuffle_xor(l, 2u32);
            if i < nq {
                if split {
                    // Partials of (split, sequence, head, row): unnormalised O, then the
                    // maximum (scaled, as the combine expects) and the sum.
                    let prow = ((split_id * (CUBE_COUNT_Z / n_splits) + b) * hq + h) * nq + i;
                    let base = (prow * head_dim + 2 * quad_t) as usize;
                    #[unroll]
                    for n in 0..o_tiles {
                        let o = o_acc.index((m * o_tiles + n) as usize)[half as usize];
                        let col = (8 * n) as usize;
                        o_part[base + col] = o[0usize];
                        o_part[base + col + 1usize] = o[1usize];
                    }
                    if quad_t == 0 {
                        ml_part[(prow * 2) as usize] = m_run[ri] * scale;
                        ml_part[(prow * 2 + 1) as usize] = l;
                    }
                } else {
                    if write_lse && quad_t == 0 && i < q_len {
                        // Log-sum-exp of the scaled scores, for the backward pass.
                        ml_part[((b * hq + h) * nq + i) as usize] = m_run[ri] * scale + l.ln();
                    }
                    let inv = select(i < q_len && l > 0.0, 1.0 / l, 0.0f32);
                    let base = (((b * hq + h) * nq + i) * head_dim + 2 * quad_t) as usize;
                    #[unroll]
                    for n in 0..o_tiles {
                        let o = o_acc.index((m * o_tiles + n) as usize)[half as usize];
                        let col = (8 * n) as usize;
                        out[base + col] = F::cast_from(o[0usize] * inv);
                        out[base + col + 1usize] = F::cast_from(o[1usize] * inv);
                    }
                }
            }
        }
    }
}
