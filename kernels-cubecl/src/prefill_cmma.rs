//! Flash-style attention on the matrix units (cmma: CUDA wmma, f16 / bf16 in, f32 accumulate).
//!
//! One cube of 4 planes takes 64 GQA-stacked query rows (16 per plane, same layout as the
//! portable kernel) and walks 64-key tiles: `S = Q K^T` and `O += P V` on the matrix units, the
//! softmax on plain threads (2 per row, exchanging with `plane_shuffle_xor`), through shared
//! memory since wmma fragments have no element layout.
//!
//! The output accumulators stay in fragments: the running maximum a row subtracts is only raised
//! when a tile's maximum exceeds it by more than `RESCALE_GAP` (then the cube spills O through
//! shared memory once to rescale it). Until then probabilities are at most `e^RESCALE_GAP`,
//! which f16 and bf16 hold; the final division uses the same stale maximum, so the result is
//! exact.

// The #[cube] macro type-checks the body with placeholder constants for the topology
// built-ins, which trips this lint on `CUBE_COUNT_X - CUBE_POS_X`.
#![allow(arithmetic_overflow)]

use cubecl::cmma;
use cubecl::prelude::*;

use crate::prefill_portable::NEG;
use crate::visibility::{
    computes_sequence, position, sees, tile_at, tile_fully_visible, tile_range, MaskParams,
    MetaOffsets, FULL_TILE, RULE_BLOCKS,
};

/// Stacked query rows per cube (16 per plane).
pub const ROWS: u32 = 64;
/// Keys per tile.
pub const KEYS: u32 = 64;
/// Planes per cube.
pub const PLANES: u32 = 4;
/// Lanes per plane the kernel is written for (CUDA warps).
pub const PLANE_SIZE: u32 = 32;
/// Threads per cube.
pub const THREADS: u32 = PLANES * PLANE_SIZE;
/// Row stride (f32 words) of the score buffer.
pub const LDS: u32 = KEYS + 4;
/// Row stride (elements) of the probability buffer.
pub const LDP: u32 = KEYS + 8;
/// Scores below this are hidden keys (they hold `NEG`).
const HIDDEN: f32 = -1.0e29;
/// How far (in natural-log units) a tile maximum may exceed a row's running maximum before O
/// is rescaled.
pub const RESCALE_GAP: f32 = 8.0;

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn flash_attention_cmma<F: Float, N: Size>(
    q: &Tensor<Vector<F, N>>,
    k: &Tensor<Vector<F, N>>,
    v: &Tensor<Vector<F, N>>,
    out: &mut Tensor<F>,
    meta: &Array<u32>,
    meta_at: MetaOffsets,
    mask: MaskParams,
    scale: f32,
    max_tiles: u32,
    #[comptime] head_dim: u32,
    #[comptime] group: u32,
    #[comptime] rule: u32,
    #[comptime] vs: u32,
    #[define(F)] _dtype: StorageType,
) {
    // `vs` is the width of `N` (elements per vector), as a comptime value for index arithmetic.
    let dvec = comptime!(head_dim / vs);
    let d_frags = comptime!(head_dim / 16);
    let t = UNIT_POS;
    let plane = UNIT_POS_Y;
    // Softmax ownership: lane l of plane p holds half `l / 16` of row `16 p + l % 16`; its
    // partner (the other half) is lane `l ^ 16`.
    let lane = UNIT_POS_X;
    let r = plane * 16 + lane % 16;
    let half = lane / 16;
    // Column order of the 32 owned columns, rotated per lane so that the 32 lanes of a plane hit
    // 32 different shared-memory banks (row strides padded below).
    let rot = lane % 16 + 16 * half;
    let ldv = comptime!(head_dim / vs + 1);
    let ldq = comptime!(head_dim + 8);
    let b = CUBE_POS_Z;
    let kvh = CUBE_POS_Y;
    let n_tiles = CUBE_COUNT_X;
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

    let gm0 = qt * ROWS;
    let my_gm = gm0 + r;
    let my_i = my_gm / group;
    let my_h = kvh * group + my_gm % group;
    let my_valid = my_i < q_len;
    let my_qp = position(first_q + my_i, &mask);
    let i_min = gm0 / group;

    // Row strides padded (Q/K/V by one vector, S by 4 words, P by 8 halves) against bank
    // conflicts; every fragment start stays 32-byte aligned.
    let mut q_s = SharedMemory::<Vector<F, N>>::new_aligned(
        comptime!((ROWS * (head_dim / vs + 1)) as usize),
        32usize,
    );
    let mut k_s = SharedMemory::<Vector<F, N>>::new_aligned(
        comptime!((KEYS * (head_dim / vs + 1)) as usize),
        32usize,
    );
    let mut v_s = SharedMemory::<Vector<F, N>>::new_aligned(
        comptime!((KEYS * (head_dim / vs + 1)) as usize),
        32usize,
    );
    let mut s_s = SharedMemory::<f32>::new_aligned(comptime!((ROWS * LDS) as usize), 32usize);
    let mut p_s = SharedMemory::<F>::new_aligned(comptime!((ROWS * LDP) as usize), 32usize);
    let mut flag_s = SharedMemory::<u32>::new(1usize);

    let mut o_acc = Sequence::<cmma::Matrix<f32>>::new();
    #[unroll]
    for _ in 0..d_frags {
        o_acc.push(cmma::Matrix::<f32>::from_value(
            cmma::MatrixIdent::Accumulator,
            16usize,
            16usize,
            16usize,
            cmma::MatrixLayout::Undefined,
            0.0f32,
        ));
    }
    let mut l_run = 0.0f32.runtime();

    // Whole tile of padding rows: nothing to compute (uniform over the cube).
    if i_min < q_len {
        let i_max = ((gm0 + ROWS - 1) / group).min(q_len - 1);
        let qs_min = first_q + i_min;
        let qs_max = first_q + i_max;
        let qp_min = position(qs_min, &mask);
        let qp_max = position(qs_max, &mask);

        let zero = Vector::<F, N>::new(F::new(0.0));
        let mut idx = t;
        while idx < ROWS * dvec {
            let gm = gm0 + idx / dvec;
            let i = gm / group;
            let h = kvh * group + gm % group;
            let mut x = zero;
            if i < q_len {
                x = q[(((b * hq + h) * nq + i) * dvec + idx % dvec) as usize];
            }
            q_s[(idx / dvec * ldv + idx % dvec) as usize] = x;
            idx += THREADS;
        }
        if t == 0 {
            flag_s[0] = 0u32;
        }
        sync_cube();

        let q_row0 = plane * 16 * ldv;
        let mut q_frag = Sequence::<cmma::Matrix<F>>::new();
        #[unroll]
        for kk in 0..d_frags {
            let start = q_row0 + kk * 16 / vs;
            let frag = unsafe {
                cmma::Matrix::<F>::uninitialized(
                    cmma::MatrixIdent::A,
                    16usize,
                    16usize,
                    16usize,
                    cmma::MatrixLayout::RowMajor,
                )
            };
            cmma::load(
                &frag,
                &q_s.slice(start as usize, (start + 16 * ldv) as usize),
                ldq,
            );
            q_frag.push(frag);
        }
        let b_frag = unsafe {
            cmma::Matrix::<F>::uninitialized(
                cmma::MatrixIdent::B,
                16usize,
                16usize,
                16usize,
                cmma::MatrixLayout::ColMajor,
            )
        };
        let v_frag = unsafe {
            cmma::Matrix::<F>::uninitialized(
                cmma::MatrixIdent::B,
                16usize,
                16usize,
                16usize,
                cmma::MatrixLayout::RowMajor,
            )
        };
        let p_frag = unsafe {
            cmma::Matrix::<F>::uninitialized(
                cmma::MatrixIdent::A,
                16usize,
                16usize,
                16usize,
                cmma::MatrixLayout::RowMajor,
            )
        };
        let s_acc = cmma::Matrix::<f32>::from_value(
            cmma::MatrixIdent::Accumulator,
            16usize,
            16usize,
            16usize,
            cmma::MatrixLayout::Undefined,
            0.0f32,
        );

        let list_row = (b * hkv + kvh) * n_tiles + qt;
        let range = tile_range(qs_max, qp_min, qp_max, &mask, KEYS, rule);
        let mut total = range.total;
        if comptime!(rule == RULE_BLOCKS) {
            total = meta[(meta_at.counts + list_row) as usize];
        }
        let kv_base = ((b * hkv + kvh) * nk * dvec) as usize;
        let mut m_run = NEG.runtime();
        let mut sc = Array::<f32>::new(comptime!((KEYS / 2) as usize));
        let s_row = (r * LDS + half * (KEYS / 2)) as usize;
        let p_row = (r * LDP + half * (KEYS / 2)) as usize;

        for it in 0..total {
            let mut kt = tile_at(&range, it);
            let mut listed_full = false;
            if comptime!(rule == RULE_BLOCKS) {
                let entry = meta[(meta_at.lists + list_row * max_tiles + it) as usize];
                kt = entry & (FULL_TILE - 1);
                listed_full = entry >= FULL_TILE;
            }
            let k0 = kt * KEYS;
            let k1 = (k0 + KEYS).min(kv_len);
            let full = listed_full || tile_fully_visible(qs_min, qp_max, k0, k1, &mask, KEYS, rule);

            sync_cube();
            // Unrolled so that every load of the tile is in flight before the first store.
            #[unroll]
            for step in 0..comptime!(KEYS * dvec / THREADS) {
                let idx = t + step * THREADS;
                let kk = k0 + idx / dvec;
                let mut kx = zero;
                let mut vx = zero;
                if kk < k1 {
                    let at = kv_base + (kk * dvec + idx % dvec) as usize;
                    kx = k[at];
                    vx = v[at];
                }
                let at = (idx / dvec * ldv + idx % dvec) as usize;
                k_s[at] = kx;
                v_s[at] = vx;
            }
            sync_cube();

            // S = Q K^T for this plane's 16 rows, 16 keys at a time.
            #[unroll]
            for j in 0..KEYS / 16 {
                cmma::fill(&s_acc, 0.0f32);
                #[unroll]
                for kk in 0..d_frags {
                    let start = (j * 16 * ldv + kk * 16 / vs) as usize;
                    cmma::load(&b_frag, &k_s.slice(start, start + (16 * ldv) as usize), ldq);
                    cmma::execute::<F, F, f32, f32>(
                        q_frag.index(kk as usize),
                        &b_frag,
                        &s_acc,
                        &s_acc,
                    );
                }
                let at = (plane * 16 * LDS + j * 16) as usize;
                cmma::store(
                    &mut s_s.slice_mut(at, at + (16 * LDS) as usize),
                    &s_acc,
                    LDS,
                    cmma::MatrixLayout::RowMajor,
                );
            }
            sync_cube();

            let mut mx = NEG.runtime();
            #[unroll]
            for c in 0..KEYS / 2 {
                let cc = (c + rot) % (KEYS / 2);
                let key = k0 + half * (KEYS / 2) + cc;
                let mut ok = full;
                if !full {
                    ok = my_valid
                        && key < k1
                        && sees(my_qp, position(key, &mask), b, my_h, meta, &mask, rule);
                }
                // Hidden keys carry NEG, which no visible score reaches.
                let s = select(ok, s_s[s_row + cc as usize] * scale, NEG);
                sc[c as usize] = s;
                mx = mx.max(s);
            }
            mx = mx.max(plane_shuffle_xor(mx, 16u32));
            let mut need = false;
            if m_run <= NEG {
                m_run = mx;
            } else if mx > m_run + RESCALE_GAP {
                need = true;
                flag_s[0] = 1u32;
            }
            sync_cube();
            let any = flag_s[0];
            sync_cube();
            if any != 0 {
                let mut alpha = 1.0f32.runtime();
                if need {
                    alpha = (m_run - mx).exp();
                    m_run = mx;
                    l_run *= alpha;
                }
                if t == 0 {
                    flag_s[0] = 0u32;
                }
                #[unroll]
                for chunk in 0..d_frags / 4 {
                    #[unroll]
                    for j in 0..4u32 {
                        let at = (plane * 16 * LDS + j * 16) as usize;
                        cmma::store(
                            &mut s_s.slice_mut(at, at + (16 * LDS) as usize),
                            o_acc.index((chunk * 4 + j) as usize),
                            LDS,
                            cmma::MatrixLayout::RowMajor,
                        );
                    }
                    sync_cube();
                    #[unroll]
                    for c in 0..KEYS / 2 {
                        let cc = (c + rot) % (KEYS / 2);
                        s_s[s_row + cc as usize] *= alpha;
                    }
                    sync_cube();
                    #[unroll]
                    for j in 0..4u32 {
                        let at = (plane * 16 * LDS + j * 16) as usize;
                        cmma::load_with_layout(
                            o_acc.index((chunk * 4 + j) as usize),
                            &s_s.slice(at, at + (16 * LDS) as usize),
                            LDS,
                            cmma::MatrixLayout::RowMajor,
                        );
                    }
                    sync_cube();
                }
            }
            #[unroll]
            for c in 0..KEYS / 2 {
                let cc = (c + rot) % (KEYS / 2);
                let s = sc[c as usize];
                let p = select(s > HIDDEN, (s - m_run).exp(), 0.0f32);
                l_run += p;
                p_s[p_row + cc as usize] = F::cast_from(p);
            }
            sync_cube();

            // O += P V.
            #[unroll]
            for kk in 0..KEYS / 16 {
                let pa = (plane * 16 * LDP + kk * 16) as usize;
                cmma::load(&p_frag, &p_s.slice(pa, pa + (16 * LDP) as usize), LDP);
                #[unroll]
                for dj in 0..d_frags {
                    let start = (kk * 16 * ldv + dj * 16 / vs) as usize;
                    cmma::load(&v_frag, &v_s.slice(start, start + (16 * ldv) as usize), ldq);
                    cmma::execute::<F, F, f32, f32>(
                        &p_frag,
                        &v_frag,
                        o_acc.index(dj as usize),
                        o_acc.index(dj as usize),
                    );
                }
            }
        }
    }

    let l = l_run + plane_shuffle_xor(l_run, 16u32);
    let s_row = (r * LDS + half * (KEYS / 2)) as usize;
    let inv = select(l > 0.0, 1.0 / l, 0.0f32);
    let my_base = (((b * hq + my_h) * nq + my_i) * head_dim) as usize;
    #[unroll]
    for chunk in 0..d_frags / 4 {
        sync_cube();
        #[unroll]
        for j in 0..4u32 {
            let at = (plane * 16 * LDS + j * 16) as usize;
            cmma::store(
                &mut s_s.slice_mut(at, at + (16 * LDS) as usize),
                o_acc.index((chunk * 4 + j) as usize),
                LDS,
                cmma::MatrixLayout::RowMajor,
            );
        }
        sync_cube();
        if my_i < nq {
            #[unroll]
            for c in 0..KEYS / 2 {
                let mut o = s_s[s_row + c as usize] * inv;
                if !my_valid {
                    o = 0.0;
                }
                out[my_base + (chunk * 64 + half * (KEYS / 2) + c) as usize] = F::cast_from(o);
            }
        }
    }
}
