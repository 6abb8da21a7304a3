//! Flash-style attention with plain arithmetic: no matrix units and no plane operations, so it
//! runs on every cubecl runtime (lavapipe included). It is the fallback of the matrix-unit
//! kernel, and is also fast enough for decode-sized query tiles.
//!
//! One cube takes `rows` consecutive rows of the GQA-stacked queries of one KV head: stacked row
//! `m` is query position `m / group` of query head `kv_head * group + m % group`, so the heads of
//! a group share every K/V tile loaded into shared memory. Each row is owned by `lanes` threads:
//! each computes `keys / lanes` scores of a key tile and `head_dim / lanes` output columns.
//! Prefill tiles are 16 rows x 8 lanes; decode (a few stacked rows) takes 4 x 32 or 8 x 16.

// The #[cube] macro type-checks the body with placeholder constants for the topology
// built-ins, which trips this lint on `CUBE_COUNT_X - CUBE_POS_X`.
#![allow(arithmetic_overflow)]

use cubecl::prelude::*;

use crate::visibility::{
    computes_sequence, position, sees, tile_at, tile_fully_visible, tile_range, MaskParams,
    MetaOffsets, FULL_TILE, RULE_BLOCKS,
};

/// Threads per cube; a launch picks `rows x lanes` (stacked query rows per cube, threads per
/// row) with this product, and `keys` per tile.
pub const THREADS: u32 = 128;

/// Stand-in for minus infinity that every float format and WGSL accept.
pub const NEG: f32 = -1.0e30;

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn flash_attention_portable<F: Float, N: Size>(
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
    #[comptime] rows: u32,
    #[comptime] keys: u32,
    #[comptime] lanes: u32,
    #[comptime] head_dim: u32,
    #[comptime] group: u32,
    #[comptime] rule: u32,
    #[comptime] split: bool,
    #[comptime] vs: u32,
    #[define(F)] _dtype: StorageType,
) {
    let d = head_dim as usize;
    let threads = comptime!(rows * lanes);
    let t = UNIT_POS;
    let r = t / lanes;
    let lane = t % lanes;
    // Split-KV: cube z = sequence * n_splits + split; each split walks its share of the tiles
    // and leaves unnormalised partials for `combine_splits`.
    let b = CUBE_POS_Z / n_splits;
    let split_id = CUBE_POS_Z % n_splits;
    let kvh = CUBE_POS_Y;
    let n_tiles = CUBE_COUNT_X;
    // Heavy (late) query tiles first: the causal triangle then finishes evenly.
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

    let gm0 = qt * rows;
    let my_gm = gm0 + r;
    let my_i = my_gm / group;
    let my_h = kvh * group + my_gm % group;
    let my_valid = my_i < q_len;
    let my_qp = position(first_q + my_i, &mask);
    let my_base = (((b * hq + my_h) * nq + my_i) as usize) * d;

    // Rows padded by one word: threads of a row group read different rows of the same column,
    // which would otherwise all fall in one shared-memory bank.
    let ld = comptime!(head_dim + 1);
    let mut q_s = SharedMemory::<f32>::new(comptime!((rows * (head_dim + 1)) as usize));
    let mut kv_s = SharedMemory::<f32>::new(comptime!((keys * (head_dim + 1)) as usize));
    let mut p_s = SharedMemory::<f32>::new(comptime!((rows * (keys + 1)) as usize));
    let mut red_s = SharedMemory::<f32>::new(comptime!(threads as usize));

    let i_min = gm0 / group;
    let cols_per_lane = comptime!(head_dim / lanes);
    let mut m_run = NEG.runtime();
    let mut l_run = 0.0f32.runtime();
    let mut acc = Array::<f32>::new(cols_per_lane as usize);
    #[unroll]
    for j in 0..cols_per_lane {
        acc[j as usize] = 0.0;
    }

    if i_min < q_len {
        let i_max = ((gm0 + rows - 1) / group).min(q_len - 1);
        let qs_min = first_q + i_min;
        let qs_max = first_q + i_max;
        let qp_min = position(qs_min, &mask);
        let qp_max = position(qs_max, &mask);

        // Queries, pre-scaled.
        // Queries, pre-scaled, read as vectors of `vs` elements.
        let dvec = comptime!(head_dim / vs);
        let mut idx = t;
        while idx < rows * dvec {
            let gm = gm0 + idx / dvec;
            let i = gm / group;
            let h = kvh * group + gm % group;
            let cv = idx % dvec;
            let at = (idx / dvec * ld + cv * vs) as usize;
            if i < q_len {
                let x = q[(((b * hq + h) * nq + i) * dvec + cv) as usize];
                #[unroll]
                for e in 0..vs {
                    q_s[at + e as usize] = f32::cast_from(x[e as usize]) * scale;
                }
            } else {
                #[unroll]
                for e in 0..vs {
                    q_s[at + e as usize] = 0.0;
                }
            }
            idx += threads;
        }

        let list_row = (b * hkv + kvh) * n_tiles + qt;
        let range = tile_range(qs_max, qp_min, qp_max, &mask, keys, rule);
        let mut total = range.total;
        if comptime!(rule == RULE_BLOCKS) {
            total = meta[(meta_at.counts + list_row) as usize];
        }

        let per_split = total.div_ceil(n_splits);
        let it_lo = (split_id * per_split).min(total);
        let it_hi = (it_lo + per_split).min(total);
        let kv_base = ((b * hkv + kvh) * nk * (head_dim / vs)) as usize;
        let mut sc = Array::<f32>::new(comptime!((keys / lanes) as usize));
        let mut seen = Array::<bool>::new(comptime!((keys / lanes) as usize));

        for it in it_lo..it_hi {
            let mut kt = tile_at(&range, it);
            let mut listed_full = false;
            if comptime!(rule == RULE_BLOCKS) {
                let entry = meta[(meta_at.lists + list_row * max_tiles + it) as usize];
                kt = entry & (FULL_TILE - 1);
                listed_full = entry >= FULL_TILE;
            }
            let k0 = kt * keys;
            let k1 = (k0 + keys).min(kv_len);
            let full = listed_full || tile_fully_visible(qs_min, qp_max, k0, k1, &mask, keys, rule);

            sync_cube();
            load_tile(
                k, &mut kv_s, kv_base, k0, k1, t, keys, head_dim, threads, vs,
            );
            sync_cube();

            let mut mx = NEG.runtime();
            #[unroll]
            for j in 0..keys / lanes {
                let kk = lane + j * lanes;
                let mut s = 0.0f32.runtime();
                for c in 0..head_dim {
                    s += q_s[(r * ld + c) as usize] * kv_s[(kk * ld + c) as usize];
                }
                let key = k0 + kk;
                let mut ok = full;
                if !full {
                    ok = my_valid
                        && key < k1
                        && sees(my_qp, position(key, &mask), b, my_h, meta, &mask, rule);
                }
                seen[j as usize] = ok;
                sc[j as usize] = s;
                if ok {
                    mx = mx.max(s);
                }
            }
            red_s[t as usize] = mx;
            sync_cube();
            let mut m_tile = NEG.runtime();
            #[unroll]
            for j in 0..lanes {
                m_tile = m_tile.max(red_s[(r * lanes + j) as usize]);
            }
            let m_new = m_run.max(m_tile);
            let alpha = (m_run - m_new).exp();
            l_run *= alpha;
            #[unroll]
            for j in 0..keys / lanes {
                let kk = lane + j * lanes;
                let mut p = 0.0f32.runtime();
                if seen[j as usize] {
                    p = (sc[j as usize] - m_new).exp();
                }
                l_run += p;
                p_s[(r * (keys + 1) + kk) as usize] = p;
            }
            m_run = m_new;
            sync_cube();

            load_tile(
                v, &mut kv_s, kv_base, k0, k1, t, keys, head_dim, threads, vs,
            );
            sync_cube();

            #[unroll]
            for j in 0..cols_per_lane {
                let c = lane + j * lanes;
                let mut o = acc[j as usize] * alpha;
                for kk in 0..keys {
                    o += p_s[(r * (keys + 1) + kk) as usize] * kv_s[(kk * ld + c) as usize];
                }
                acc[j as usize] = o;
            }
        }

        sync_cube();
        red_s[t as usize] = l_run;
        sync_cube();
        let mut l = 0.0f32.runtime();
        #[unroll]
        for j in 0..lanes {
            l += red_s[(r * lanes + j) as usize];
        }
        l_run = l;
        if !split {
            let inv = select(l > 0.0, 1.0 / l, 0.0f32);
            #[unroll]
            for j in 0..cols_per_lane {
                acc[j as usize] *= inv;
            }
        }
    }

    if my_i < nq {
        if split {
            // Partials of (split, sequence, head, row): unnormalised O, then (max, sum).
            let row = ((split_id * CUBE_COUNT_Z / n_splits + b) * hq + my_h) * nq + my_i;
            #[unroll]
            for j in 0..cols_per_lane {
                o_part[(row * head_dim + lane + j * lanes) as usize] = acc[j as usize];
            }
            if lane == 0 {
                ml_part[(row * 2) as usize] = m_run;
                ml_part[(row * 2 + 1) as usize] = l_run;
            }
        } else {
            // Rows past the batch's query length (padding) are written as zeros.
            #[unroll]
            for j in 0..cols_per_lane {
                let c = lane + j * lanes;
                let mut o = acc[j as usize];
                if !my_valid {
                    o = 0.0;
                }
                out[my_base + c as usize] = F::cast_from(o);
            }
        }
    }
}

/// Stages keys `[k0, k1)` of one KV head (rows of `head_dim / vs` vectors from `kv_base`, in
/// vectors) as f32 in `dst` (row stride `head_dim + 1`), zeros past `k1`. Unrolled so that every
/// load of the tile is in flight before the first store.
#[cube]
#[allow(clippy::too_many_arguments)]
fn load_tile<F: Float, N: Size>(
    src: &Tensor<Vector<F, N>>,
    dst: &mut SharedMemory<f32>,
    kv_base: usize,
    k0: u32,
    k1: u32,
    t: u32,
    #[comptime] keys: u32,
    #[comptime] head_dim: u32,
    #[comptime] threads: u32,
    #[comptime] vs: u32,
) {
    let dvec = comptime!(head_dim / vs);
    #[unroll]
    for step in 0..comptime!(keys * (head_dim / vs) / threads) {
        let idx = t + step * threads;
        let kk = k0 + idx / dvec;
        let cv = idx % dvec;
        let at = (idx / dvec * (head_dim + 1) + cv * vs) as usize;
        if kk < k1 {
            let x = src[kv_base + (kk * dvec + cv) as usize];
            #[unroll]
            for e in 0..vs {
                dst[at + e as usize] = f32::cast_from(x[e as usize]);
            }
        } else {
            #[unroll]
            for e in 0..vs {
                dst[at + e as usize] = 0.0;
            }
        }
    }
}

/// Merges the split-KV partials of [`flash_attention_portable`]: one cube per output row,
/// one thread per column.
#[cube(launch_unchecked)]
pub fn combine_splits<F: Float>(
    o_part: &Array<f32>,
    ml_part: &Array<f32>,
    meta: &Array<u32>,
    meta_at: MetaOffsets,
    out: &mut Tensor<F>,
    n_splits: u32,
    #[comptime] head_dim: u32,
    #[define(F)] _dtype: StorageType,
) {
    let row = CUBE_POS_X;
    let c = UNIT_POS;
    let nq = out.shape(2) as u32;
    let hq = out.shape(1) as u32;
    let rows = CUBE_COUNT_X;
    let b = row / (hq * nq);
    let i = row % nq;
    if !computes_sequence(meta, &meta_at, b) {
        terminate!();
    }
    let mut m = NEG.runtime();
    for s in 0..n_splits {
        m = m.max(ml_part[((s * rows + row) * 2) as usize]);
    }
    let mut l = 0.0f32.runtime();
    let mut o = 0.0f32.runtime();
    for s in 0..n_splits {
        let at = s * rows + row;
        let ls = ml_part[(at * 2 + 1) as usize];
        if ls > 0.0 {
            let w = (ml_part[(at * 2) as usize] - m).exp();
            l += w * ls;
            o += w * o_part[(at * head_dim + c) as usize];
        }
    }
    let mut x = select(l > 0.0, o / l, 0.0f32);
    if i >= meta[(meta_at.q_lens + b) as usize] {
        x = 0.0;
    }
    out[(row * head_dim + c) as usize] = F::cast_from(x);
}
