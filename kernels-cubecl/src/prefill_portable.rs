//! Flash-style attention with plain arithmetic: no matrix units and no plane operations, so it
//! runs on every cubecl runtime (lavapipe included). It is the fallback of the matrix-unit
//! kernel, and is also fast enough for decode-sized query tiles.
//!
//! One cube takes `ROWS` consecutive rows of the GQA-stacked queries of one KV head: stacked row
//! `m` is query position `m / group` of query head `kv_head * group + m % group`, so the heads of
//! a group share every K/V tile loaded into shared memory. Each row is owned by `LANES` threads:
//! each computes `KEYS / LANES` scores of a key tile and `head_dim / LANES` output columns.

// The #[cube] macro type-checks the body with placeholder constants for the topology
// built-ins, which trips this lint on `CUBE_COUNT_X - CUBE_POS_X`.
#![allow(arithmetic_overflow)]

use cubecl::prelude::*;

use crate::visibility::{
    position, sees, tile_at, tile_fully_visible, tile_range, MaskParams, RULE_BLOCKS,
};

/// Stacked query rows per cube.
pub const ROWS: u32 = 16;
/// Keys per tile.
pub const KEYS: u32 = 32;
/// Threads per query row.
pub const LANES: u32 = 8;
/// Threads per cube.
pub const THREADS: u32 = ROWS * LANES;

/// Stand-in for minus infinity that every float format and WGSL accept.
pub const NEG: f32 = -1.0e30;

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn flash_attention_portable<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    out: &mut Tensor<F>,
    o_part: &mut Array<f32>,
    ml_part: &mut Array<f32>,
    q_lens: &Array<u32>,
    kv_lens: &Array<u32>,
    tile_lists: &Array<u32>,
    tile_counts: &Array<u32>,
    keep: &Array<u32>,
    mask: MaskParams,
    scale: f32,
    max_tiles: u32,
    n_splits: u32,
    #[comptime] head_dim: u32,
    #[comptime] group: u32,
    #[comptime] rule: u32,
    #[comptime] split: bool,
    #[define(F)] _dtype: StorageType,
) {
    let d = head_dim as usize;
    let t = UNIT_POS;
    let r = t / LANES;
    let lane = t % LANES;
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
    let q_len = q_lens[b as usize];
    let kv_len = kv_lens[b as usize];
    let first_q = kv_len - q_len;

    let gm0 = qt * ROWS;
    let my_gm = gm0 + r;
    let my_i = my_gm / group;
    let my_h = kvh * group + my_gm % group;
    let my_valid = my_i < q_len;
    let my_qp = position(first_q + my_i, &mask);
    let my_base = (((b * hq + my_h) * nq + my_i) as usize) * d;

    let mut q_s = SharedMemory::<f32>::new(comptime!((ROWS * head_dim) as usize));
    let mut kv_s = SharedMemory::<f32>::new(comptime!((KEYS * head_dim) as usize));
    let mut p_s = SharedMemory::<f32>::new(comptime!((ROWS * KEYS) as usize));
    let mut red_s = SharedMemory::<f32>::new(comptime!(THREADS as usize));

    let i_min = gm0 / group;
    let cols_per_lane = comptime!(head_dim / LANES);
    let mut m_run = NEG.runtime();
    let mut l_run = 0.0f32.runtime();
    let mut acc = Array::<f32>::new(cols_per_lane as usize);
    #[unroll]
    for j in 0..cols_per_lane {
        acc[j as usize] = 0.0;
    }

    if i_min < q_len {
        let i_max = ((gm0 + ROWS - 1) / group).min(q_len - 1);
        let qs_min = first_q + i_min;
        let qs_max = first_q + i_max;
        let qp_min = position(qs_min, &mask);
        let qp_max = position(qs_max, &mask);

        // Queries, pre-scaled.
        let mut idx = t;
        while idx < ROWS * head_dim {
            let gm = gm0 + idx / head_dim;
            let i = gm / group;
            let h = kvh * group + gm % group;
            let c = idx % head_dim;
            let mut x = 0.0f32.runtime();
            if i < q_len {
                x = f32::cast_from(q[(((b * hq + h) * nq + i) * head_dim + c) as usize]) * scale;
            }
            q_s[idx as usize] = x;
            idx += THREADS;
        }

        let list_row = (b * hkv + kvh) * n_tiles + qt;
        let range = tile_range(qs_max, qp_min, qp_max, &mask, KEYS, rule);
        let mut total = range.total;
        if comptime!(rule == RULE_BLOCKS) {
            total = tile_counts[list_row as usize];
        }

        let per_split = total.div_ceil(n_splits);
        let it_lo = (split_id * per_split).min(total);
        let it_hi = (it_lo + per_split).min(total);
        let kv_base = ((b * hkv + kvh) * nk) as usize * d;
        let mut sc = Array::<f32>::new(comptime!((KEYS / LANES) as usize));
        let mut seen = Array::<bool>::new(comptime!((KEYS / LANES) as usize));

        for it in it_lo..it_hi {
            let mut kt = tile_at(&range, it);
            if comptime!(rule == RULE_BLOCKS) {
                kt = tile_lists[(list_row * max_tiles + it) as usize];
            }
            let k0 = kt * KEYS;
            let k1 = (k0 + KEYS).min(kv_len);
            let full = tile_fully_visible(qs_min, qp_max, k0, k1, &mask, KEYS, rule);

            sync_cube();
            let mut idx = t;
            while idx < KEYS * head_dim {
                let kk = k0 + idx / head_dim;
                let mut x = 0.0f32.runtime();
                if kk < k1 {
                    x = f32::cast_from(k[kv_base + (kk * head_dim + idx % head_dim) as usize]);
                }
                kv_s[idx as usize] = x;
                idx += THREADS;
            }
            sync_cube();

            let mut mx = NEG.runtime();
            #[unroll]
            for j in 0..KEYS / LANES {
                let kk = lane + j * LANES;
                let mut s = 0.0f32.runtime();
                for c in 0..head_dim {
                    s += q_s[(r * head_dim + c) as usize] * kv_s[(kk * head_dim + c) as usize];
                }
                let key = k0 + kk;
                let mut ok = full;
                if !full {
                    ok = my_valid
                        && key < k1
                        && sees(my_qp, position(key, &mask), b, my_h, keep, &mask, rule);
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
            for j in 0..LANES {
                m_tile = m_tile.max(red_s[(r * LANES + j) as usize]);
            }
            let m_new = m_run.max(m_tile);
            let alpha = (m_run - m_new).exp();
            l_run *= alpha;
            #[unroll]
            for j in 0..KEYS / LANES {
                let kk = lane + j * LANES;
                let mut p = 0.0f32.runtime();
                if seen[j as usize] {
                    p = (sc[j as usize] - m_new).exp();
                }
                l_run += p;
                p_s[(r * KEYS + kk) as usize] = p;
            }
            m_run = m_new;
            sync_cube();

            let mut idx = t;
            while idx < KEYS * head_dim {
                let kk = k0 + idx / head_dim;
                let mut x = 0.0f32.runtime();
                if kk < k1 {
                    x = f32::cast_from(v[kv_base + (kk * head_dim + idx % head_dim) as usize]);
                }
                kv_s[idx as usize] = x;
                idx += THREADS;
            }
            sync_cube();

            #[unroll]
            for j in 0..cols_per_lane {
                let c = lane + j * LANES;
                let mut o = acc[j as usize] * alpha;
                for kk in 0..KEYS {
                    o += p_s[(r * KEYS + kk) as usize] * kv_s[(kk * head_dim + c) as usize];
                }
                acc[j as usize] = o;
            }
        }

        sync_cube();
        red_s[t as usize] = l_run;
        sync_cube();
        let mut l = 0.0f32.runtime();
        #[unroll]
        for j in 0..LANES {
            l += red_s[(r * LANES + j) as usize];
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
                o_part[(row * head_dim + lane + j * LANES) as usize] = acc[j as usize];
            }
            if lane == 0 {
                ml_part[(row * 2) as usize] = m_run;
                ml_part[(row * 2 + 1) as usize] = l_run;
            }
        } else {
            // Rows past the batch's query length (padding) are written as zeros.
            #[unroll]
            for j in 0..cols_per_lane {
                let c = lane + j * LANES;
                let mut o = acc[j as usize];
                if !my_valid {
                    o = 0.0;
                }
                out[my_base + c as usize] = F::cast_from(o);
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
    q_lens: &Array<u32>,
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
    if i >= q_lens[b as usize] {
        x = 0.0;
    }
    out[(row * head_dim + c) as usize] = F::cast_from(x);
}
