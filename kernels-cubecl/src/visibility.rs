//! Which keys a query sees, evaluated inside the kernels, and which key tiles a query tile visits.
//!
//! Positions and stored indices differ once a cache has evicted keys: stored index `s` is
//! position `s` before `kept_sink` and `s + dropped` after it (as `flux_attention::KeyLayout`).

use cubecl::prelude::*;

/// Marks a tile-list entry whose key tile every query of the query tile sees whole (no mask);
/// the low bits hold the tile index.
pub const FULL_TILE: u32 = 1 << 31;

/// Every earlier key.
pub const RULE_CAUSAL: u32 = 0;
/// Sink + window, with a dense range of query positions (triangle).
pub const RULE_WINDOW: u32 = 1;
/// Kept (query block, key block) pairs from a block-index table (XAttention).
pub const RULE_BLOCKS: u32 = 2;

/// Key-visibility parameters shared by every kernel (runtime values, one set per launch).
#[derive(CubeType, CubeLaunch, Clone, Copy)]
pub struct MaskParams {
    /// Leading positions every query sees (window rule).
    pub sink: u32,
    /// Recent positions, the query's own included (window rule).
    pub window: u32,
    /// First query position that attends densely (window rule).
    pub dense_start: u32,
    /// One past the last dense query position.
    pub dense_end: u32,
    /// Stored keys before the eviction gap.
    pub kept_sink: u32,
    /// Positions evicted after them.
    pub dropped: u32,
    /// Block size of the block-index table (blocks rule).
    pub sel_block: u32,
    /// Sequence block index of the table's first query block.
    pub sel_first_q_block: u32,
    /// Query blocks in the table.
    pub sel_q_blocks: u32,
    /// Key blocks in the table.
    pub sel_k_blocks: u32,
    /// Query heads in the table.
    pub sel_heads: u32,
    /// Where the keep flags start in the call's metadata array.
    pub keep_at: u32,
}

/// Where each table starts in the one `u32` metadata array of a launch (one upload per call).
#[derive(CubeType, CubeLaunch, Clone, Copy)]
pub struct MetaOffsets {
    /// Query rows per sequence.
    pub q_lens: u32,
    /// Stored keys per sequence.
    pub kv_lens: u32,
    /// Key tiles per query tile (blocks rule).
    pub counts: u32,
    /// Key tile lists (blocks rule).
    pub lists: u32,
    /// Per-sequence route flags of a routed call (non-zero: full attention), or [`NO_ROUTE`].
    pub route: u32,
    /// In a routed call, which sequences this launch computes: 1, those whose flag is set
    /// (full attention); 0, the others.
    pub route_full: u32,
}

/// [`MetaOffsets::route`] of a call that is not routed.
pub const NO_ROUTE: u32 = u32::MAX;

/// Whether this launch computes sequence `b`. A routed call is two launches over the same
/// output, the causal rule for the sequences routed to full attention and the sparse rule for
/// the others, each reading the flags on the device; a cube of the other launch's sequences
/// exits at once (uniform over the cube).
#[cube]
pub fn computes_sequence(meta: &Array<u32>, meta_at: &MetaOffsets, b: u32) -> bool {
    let mut here = true;
    if meta_at.route != NO_ROUTE {
        let full = select(meta[(meta_at.route + b) as usize] != 0, 1u32, 0u32);
        here = full == meta_at.route_full;
    }
    here
}

/// Sequence position of stored key index `s`.
#[cube]
pub fn position(s: u32, p: &MaskParams) -> u32 {
    select(s < p.kept_sink, s, s + p.dropped)
}

/// Stored index of the first key at position `>= pos`.
#[cube]
pub fn stored_index(pos: u32, p: &MaskParams) -> u32 {
    let mut s = pos;
    if pos > p.kept_sink {
        s = select(pos <= p.kept_sink + p.dropped, p.kept_sink, pos - p.dropped);
    }
    s
}

/// Whether the query at position `qp` of sequence `b`, query head `h`, sees the key at `kp`.
#[cube]
pub fn sees(
    qp: u32,
    kp: u32,
    b: u32,
    h: u32,
    keep: &Array<u32>,
    p: &MaskParams,
    #[comptime] rule: u32,
) -> bool {
    let mut ok = kp <= qp;
    if comptime!(rule == RULE_WINDOW) {
        // `qp - kp` wraps on the device when kp > qp; `ok` is false then anyway.
        let near = qp - kp < p.window;
        let dense = qp >= p.dense_start && qp < p.dense_end;
        ok = ok && (kp < p.sink || near || dense);
    }
    if comptime!(rule == RULE_BLOCKS) {
        let qb = qp / p.sel_block;
        let kb = kp / p.sel_block;
        let in_table = qb >= p.sel_first_q_block
            && qb < p.sel_first_q_block + p.sel_q_blocks
            && kb < p.sel_k_blocks;
        let row = (b * p.sel_heads + h) * p.sel_q_blocks + (qb - p.sel_first_q_block);
        let idx = select(in_table, row * p.sel_k_blocks + kb, 0u32);
        ok = ok && in_table && keep[(p.keep_at + idx) as usize] != 0;
    }
    ok
}

/// The key tiles a query tile visits: tiles `[0, first_end)`, then `[second_start,
/// second_start + total - first_end)`, or, for the blocks rule, the tile list of the query tile.
#[derive(CubeType, Clone, Copy)]
pub struct TileRange {
    /// One past the last tile of the first run.
    pub first_end: u32,
    /// First tile of the second run.
    pub second_start: u32,
    /// Tiles visited in all.
    pub total: u32,
}

/// Tile range of a query tile whose queries are stored indices `[qs_min, qs_max]` (positions
/// `[qp_min, qp_max]`), with tiles of `tile` keys, for the causal and window rules. The blocks
/// rule reads its count from the tile list instead (`total` is set by the caller).
#[cube]
pub fn tile_range(
    qs_max: u32,
    qp_min: u32,
    qp_max: u32,
    p: &MaskParams,
    #[comptime] tile: u32,
    #[comptime] rule: u32,
) -> TileRange {
    let causal_end = qs_max / tile + 1;
    let mut first_end = causal_end;
    let mut second_start = causal_end;
    if comptime!(rule == RULE_WINDOW) {
        let dense = qp_max >= p.dense_start && qp_min < p.dense_end;
        if !dense {
            let sink_keys = stored_index(p.sink.min(qp_max + 1), p);
            let sink_tiles = sink_keys.div_ceil(tile);
            let first_pos = select(qp_min + 1 > p.window, qp_min + 1 - p.window, 0u32);
            let window_tile = stored_index(first_pos, p) / tile;
            if window_tile > sink_tiles {
                first_end = sink_tiles;
                second_start = window_tile;
            }
        }
    }
    TileRange {
        first_end,
        second_start,
        total: first_end + (causal_end - second_start),
    }
}

/// Key tile visited at step `it` of a [`TileRange`].
#[cube]
pub fn tile_at(range: &TileRange, it: u32) -> u32 {
    select(
        it < range.first_end,
        it,
        range.second_start + (it - range.first_end),
    )
}

/// Whether every (query, key) pair of a tile pair is visible, so the mask can be skipped:
/// queries at stored `[qs_min, ..]`, positions `[qp_min, qp_max]`, keys stored `[k0, k1)` all
/// valid (`k1 - k0 == tile`).
#[cube]
pub fn tile_fully_visible(
    qs_min: u32,
    qp_max: u32,
    k0: u32,
    k1: u32,
    p: &MaskParams,
    #[comptime] tile: u32,
    #[comptime] rule: u32,
) -> bool {
    let mut full = k1 - k0 == tile && k1 <= qs_min + 1;
    if comptime!(rule == RULE_WINDOW) {
        let last = position(k1 - 1, p);
        let first = position(k0, p);
        let dense = position(qs_min, p) >= p.dense_start && qp_max < p.dense_end;
        full = full && (dense || last < p.sink || qp_max - first < p.window);
    }
    if comptime!(rule == RULE_BLOCKS) {
        full = false;
    }
    full
}
