//! Host side of the fused attention: checks, kernel choice, tables, launch.

use burn::tensor::{DType, Shape};
use burn_cubecl::{
    kernel::into_contiguous, ops::numeric::empty_device_contiguous_dtype, tensor::CubeTensor,
    CubeRuntime,
};
use cubecl::prelude::*;

use cubecl::features::{MmaConfig, Plane};

use crate::{
    prefill_cmma::{self, flash_attention_cmma},
    prefill_mma::{self, flash_attention_mma},
    prefill_portable::{self, combine_splits, flash_attention_portable},
    spec::{AttentionSpec, BlockSelection, Visibility},
    visibility::{
        MaskParamsLaunch, MetaOffsetsLaunch, FULL_TILE, NO_ROUTE, RULE_BLOCKS, RULE_CAUSAL,
        RULE_WINDOW,
    },
    KernelError,
};

/// Cubes from which a matrix-unit kernel fills the device without splitting the keys.
const MATRIX_MIN_CUBES: usize = 128;

/// Split-KV aims at this many cubes when a call has few query tiles.
const SPLIT_TARGET_CUBES: usize = 1024;

/// Shapes of one call, checked by [`check_call`].
#[derive(Debug, Clone, PartialEq)]
pub struct CallDims {
    pub b: usize,
    pub hq: usize,
    pub nq: usize,
    pub hkv: usize,
    pub nk: usize,
    pub d: usize,
    pub q_lens: Vec<u32>,
    pub kv_lens: Vec<u32>,
}

#[allow(missing_docs)]
impl CallDims {
    /// Query heads per KV head.
    pub fn group(&self) -> usize {
        self.hq / self.hkv
    }
}

/// Which kernel family serves a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelChoice {
    /// Plain arithmetic, shared memory only: every runtime.
    Portable,
    /// Matrix units (cmma), f16 / bf16, head_dim 64 or 128, 32-lane planes.
    Cmma,
    /// Register-level MMA (`mma.sync` m16n8k16 with `ldmatrix`, CUDA sm_80+), f16 / bf16,
    /// head_dim 64 or 128: scores and probabilities stay in registers.
    Mma,
}

pub(crate) fn tensor_err(tensor: &'static str, message: String) -> KernelError {
    KernelError::Tensor { tensor, message }
}

pub(crate) fn arg_err(argument: &'static str, message: String) -> KernelError {
    KernelError::Argument { argument, message }
}

/// Checks the shapes, dtype and spec of a call before anything is launched.
pub fn check_call(
    q: &[usize],
    k: &[usize],
    v: &[usize],
    dtype: DType,
    spec: &AttentionSpec,
) -> Result<CallDims, KernelError> {
    let shape = |s: &[usize], name: &'static str| -> Result<[usize; 4], KernelError> {
        match s {
            &[a, b, c, d] => Ok([a, b, c, d]),
            _ => Err(tensor_err(
                name,
                format!("must have 4 dims, has shape {s:?}"),
            )),
        }
    };
    let [b, hq, nq, d] = shape(q, "q")?;
    let [kb, hkv, nk, kd] = shape(k, "k")?;
    let vs = shape(v, "v")?;
    if kb != b || kd != d || hkv == 0 || hq % hkv != 0 {
        return Err(tensor_err(
            "k",
            format!("must be [{b}, a divisor of {hq}, n, {d}], is [{kb}, {hkv}, {nk}, {kd}]"),
        ));
    }
    if vs != [kb, hkv, nk, kd] {
        return Err(tensor_err(
            "v",
            format!("must have the shape of k, has {vs:?}"),
        ));
    }
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
        return Err(tensor_err(
            "q",
            format!("dtype {dtype:?} is not f32, f16 or bf16"),
        ));
    }
    if b == 0 || nq == 0 || nk == 0 {
        return Err(tensor_err(
            "q",
            format!(
                "is empty: q {:?}, k {:?}",
                [b, hq, nq, d],
                [kb, hkv, nk, kd]
            ),
        ));
    }
    if d % 8 != 0 || d > 256 {
        return Err(tensor_err(
            "q",
            format!("head_dim {d} is not a multiple of 8 up to 256"),
        ));
    }
    if (b * hq * nq * d).max(b * hkv * nk * d) >= u32::MAX as usize {
        return Err(tensor_err("q", "has 2^32 elements or more".into()));
    }
    let lens = |given: &Option<Vec<usize>>,
                all: usize,
                name: &'static str|
     -> Result<Vec<u32>, KernelError> {
        match given {
            None => Ok(vec![all as u32; b]),
            Some(l) if l.len() != b => Err(arg_err(
                name,
                format!("has {} entries for a batch of {b}", l.len()),
            )),
            Some(l) => match l.iter().find(|&&x| x > all) {
                Some(x) => Err(arg_err(
                    name,
                    format!("entry {x} exceeds the tensor's {all} rows"),
                )),
                None => Ok(l.iter().map(|&x| x as u32).collect()),
            },
        }
    };
    let q_lens = lens(&spec.q_lens, nq, "q_lens")?;
    let kv_lens = lens(&spec.kv_lens, nk, "kv_lens")?;
    if let Some(i) = (0..b).find(|&i| q_lens[i] > kv_lens[i]) {
        return Err(arg_err(
            "q_lens",
            format!(
                "sequence {i} has {} queries but only {} keys",
                q_lens[i], kv_lens[i]
            ),
        ));
    }
    match &spec.visibility {
        Visibility::Window { window: 0, .. } => {
            return Err(arg_err("window", "must be at least 1".into()))
        }
        Visibility::Blocks(t) => check_table(t, b, hq, nk + spec.layout.dropped)?,
        _ => {}
    }
    if !(spec.scale.is_finite() && spec.scale > 0.0) {
        return Err(arg_err(
            "scale",
            format!("{} is not a positive finite number", spec.scale),
        ));
    }
    Ok(CallDims {
        b,
        hq,
        nq,
        hkv,
        nk,
        d,
        q_lens,
        kv_lens,
    })
}

fn check_table(
    t: &BlockSelection,
    b: usize,
    hq: usize,
    positions: usize,
) -> Result<(), KernelError> {
    if t.block == 0 {
        return Err(arg_err("block", "must be at least 1".into()));
    }
    if t.heads != hq {
        return Err(arg_err(
            "heads",
            format!("table has {} heads, q has {hq}", t.heads),
        ));
    }
    if t.keep.len() != b * t.heads * t.q_blocks * t.k_blocks {
        return Err(arg_err(
            "keep",
            format!(
                "has {} entries, expected {b} x {} x {} x {}",
                t.keep.len(),
                t.heads,
                t.q_blocks,
                t.k_blocks
            ),
        ));
    }
    if t.k_blocks < positions.div_ceil(t.block) {
        return Err(arg_err(
            "k_blocks",
            format!("{} blocks do not cover {positions} positions", t.k_blocks),
        ));
    }
    Ok(())
}

pub(crate) fn u32_array<R: CubeRuntime>(
    client: &ComputeClient<R>,
    data: &[u32],
) -> (cubecl::server::Handle, usize) {
    let data = if data.is_empty() { &[0u32][..] } else { data };
    let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
    (client.create_from_slice(&bytes), data.len())
}

/// Per (sequence, kv head, query tile): the key tiles the blocks rule visits, as a padded list
/// and a count. Tiles are of `rows` stacked query rows and `keys` keys. An entry carries
/// [`FULL_TILE`] when every query of the tile sees every key of it.
pub(crate) fn tile_lists(
    t: &BlockSelection,
    dims: &CallDims,
    spec: &AttentionSpec,
    rows: usize,
    keys: usize,
) -> (Vec<u32>, Vec<u32>, usize) {
    let g = dims.group();
    let q_tiles = (g * dims.nq).div_ceil(rows);
    let k_tiles = dims.nk.div_ceil(keys);
    let layout = spec.layout;
    let mut lists: Vec<Vec<u32>> = Vec::with_capacity(dims.b * dims.hkv * q_tiles);
    let (mut any, mut all) = (vec![false; k_tiles], vec![true; k_tiles]);
    for b in 0..dims.b {
        let (q_len, kv_len) = (dims.q_lens[b] as usize, dims.kv_lens[b] as usize);
        for kvh in 0..dims.hkv {
            for qt in 0..q_tiles {
                any.iter_mut().for_each(|x| *x = false);
                all.iter_mut().for_each(|x| *x = true);
                // The distinct (head, query block) pairs of the tile's rows, with the last
                // stored query index of each.
                let mut pairs: Vec<(usize, usize, usize)> = Vec::new();
                let mut qs_min = usize::MAX;
                for gm in qt * rows..((qt + 1) * rows).min(g * dims.nq) {
                    let (i, h) = (gm / g, kvh * g + gm % g);
                    if i >= q_len {
                        continue;
                    }
                    let qs = kv_len - q_len + i;
                    qs_min = qs_min.min(qs);
                    let qb = layout.position(qs) / t.block;
                    match pairs.iter_mut().find(|p| p.0 == h && p.1 == qb) {
                        Some(p) => p.2 = p.2.max(qs),
                        None => pairs.push((h, qb, qs)),
                    }
                }
                for &(h, qb, qs_max) in &pairs {
                    let in_table = qb >= t.first_q_block && qb < t.first_q_block + t.q_blocks;
                    let row = ((b * t.heads + h) * t.q_blocks + qb.saturating_sub(t.first_q_block))
                        * t.k_blocks;
                    for kb in 0..t.k_blocks.min(qb + 1) {
                        let kept = in_table && t.keep[row + kb];
                        let from = layout.stored_index(kb * t.block);
                        let to = layout
                            .stored_index((kb + 1) * t.block)
                            .min(qs_max + 1)
                            .min(kv_len);
                        if from >= to {
                            continue;
                        }
                        for kt in from / keys..=(to - 1) / keys {
                            any[kt] |= kept;
                            all[kt] &= kept;
                        }
                    }
                    // Tiles this pair never reaches (past its causal end) are not whole for it.
                    let reach = (qs_max / keys + 1).min(k_tiles);
                    all[reach..].iter_mut().for_each(|x| *x = false);
                }
                lists.push(
                    (0..k_tiles)
                        .filter(|&kt| any[kt])
                        .map(|kt| {
                            let whole = all[kt]
                                && (kt + 1) * keys <= kv_len
                                && (kt + 1) * keys <= qs_min + 1;
                            kt as u32 | if whole { FULL_TILE } else { 0 }
                        })
                        .collect(),
                );
            }
        }
    }
    let max = lists.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let mut flat = vec![0u32; lists.len() * max];
    for (i, l) in lists.iter().enumerate() {
        flat[i * max..i * max + l.len()].copy_from_slice(l);
    }
    let counts = lists.iter().map(|l| l.len() as u32).collect();
    (flat, counts, max)
}

/// Fused GQA attention of `q` over `k`, `v` under `spec`, on any cubecl runtime.
///
/// Shapes: `q [b, hq, nq, d]`, `k`, `v` `[b, hkv, nk, d]` with `hq % hkv == 0`, f32 / f16 /
/// bf16, `d` a multiple of 8 up to 256. Returns `[b, hq, nq, d]` in the dtype of `q`. K and V
/// are read once per KV head: the query heads of a group share every loaded tile.
pub fn fused_attention<R: CubeRuntime>(
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    spec: &AttentionSpec,
) -> Result<CubeTensor<R>, KernelError> {
    let out = empty_device_contiguous_dtype::<R>(
        q.client.clone(),
        q.device.clone(),
        q.meta.shape().clone(),
        q.dtype,
    );
    fused_attention_into(q, k, v, out.clone(), spec)?;
    Ok(out)
}

/// Fused attention whose choice between full and sink + window attention is read on the
/// device: sequence `i` runs full causal attention where `full[i]` is non-zero, `spec`'s
/// window rule otherwise. `full` is `[b]` in any float dtype (a router's decision, still on the
/// device), so the host never waits for it. `spec` must hold a [`Visibility::Window`] rule.
pub fn fused_attention_routed<R: CubeRuntime>(
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    full: CubeTensor<R>,
    spec: &AttentionSpec,
) -> Result<CubeTensor<R>, KernelError> {
    check_route(&full, q.meta.shape()[0], spec)?;
    let (dims, choice) = prepare_call(&q, &[(&k, "k"), (&v, "v")], spec)?;
    let out = empty_device_contiguous_dtype::<R>(
        q.client.clone(),
        q.device.clone(),
        q.meta.shape().clone(),
        q.dtype,
    );
    // Two launches into one output, each computing the sequences its flag value selects: full
    // attention under the causal rule, as fast as an unrouted call (the window rule with every
    // query dense costs a few percent more), and the sparse rule for the rest.
    let (q, k, v) = (into_contiguous(q), into_contiguous(k), into_contiguous(v));
    let causal = AttentionSpec {
        visibility: Visibility::Causal,
        ..spec.clone()
    };
    for (spec, full_here) in [(&causal, true), (spec, false)] {
        let route = Some((&full, full_here));
        let (q, k, v) = (q.clone(), k.clone(), v.clone());
        launch_kernel(q, k, v, out.clone(), route, spec, &dims, choice, None);
    }
    Ok(out)
}

/// A routed call's flags are `[b]` floats and its rule is sink + window.
fn check_route<R: CubeRuntime>(
    full: &CubeTensor<R>,
    b: usize,
    spec: &AttentionSpec,
) -> Result<(), KernelError> {
    if full.meta.shape().as_slice() != [b] {
        return Err(tensor_err(
            "full",
            format!(
                "must hold one flag per sequence, [{b}], has shape {:?}",
                full.meta.shape()
            ),
        ));
    }
    if !matches!(
        full.dtype,
        DType::F32 | DType::F16 | DType::BF16 | DType::F64
    ) {
        return Err(tensor_err(
            "full",
            format!("dtype {:?} is not a float type", full.dtype),
        ));
    }
    if !matches!(spec.visibility, Visibility::Window { .. }) {
        return Err(arg_err(
            "visibility",
            "a routed call chooses between full and a sink + window rule".into(),
        ));
    }
    Ok(())
}

/// Writes route flags (non-zero float: full) into a launch's metadata array at `at`.
#[cube(launch_unchecked)]
fn store_route<F: Float>(
    full: &Tensor<F>,
    meta: &mut Array<u32>,
    at: u32,
    #[define(F)] _dtype: StorageType,
) {
    let i = ABSOLUTE_POS;
    if i < full.len() {
        meta[at as usize + i] = select(full[i] != F::new(0.0), 1u32, 0u32);
    }
}

/// [`fused_attention`] into a given contiguous output of `q`'s shape and dtype (tests poison it
/// first, so that an element no kernel writes shows).
pub fn fused_attention_into<R: CubeRuntime>(
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    out: CubeTensor<R>,
    spec: &AttentionSpec,
) -> Result<KernelChoice, KernelError> {
    if out.meta.shape() != q.meta.shape() || !out.is_contiguous() {
        return Err(tensor_err(
            "out",
            format!("must be contiguous with q's shape {:?}", q.meta.shape()),
        ));
    }
    let (dims, choice) = prepare_call(&q, &[(&k, "k"), (&v, "v"), (&out, "out")], spec)?;
    launch_kernel(q, k, v, out, None, spec, &dims, choice, None);
    Ok(choice)
}

/// Checks a call (`others`, named, in q's dtype; k and v first) and picks its kernel.
pub(crate) fn prepare_call<R: CubeRuntime>(
    q: &CubeTensor<R>,
    others: &[(&CubeTensor<R>, &'static str)],
    spec: &AttentionSpec,
) -> Result<(CallDims, KernelChoice), KernelError> {
    for &(t, name) in others {
        if t.dtype != q.dtype {
            return Err(tensor_err(
                name,
                format!("is {:?}, q is {:?}", t.dtype, q.dtype),
            ));
        }
    }
    let (k, v) = (others[0].0, others[1].0);
    let dims = check_call(
        q.meta.shape(),
        k.meta.shape(),
        v.meta.shape(),
        q.dtype,
        spec,
    )?;
    let choice = choose_kernel(&q.client, &dims, q.dtype)?;
    Ok((dims, choice))
}

/// The kernel that serves a checked call on this device, or why none can.
pub fn choose_kernel<R: CubeRuntime>(
    client: &ComputeClient<R>,
    dims: &CallDims,
    dtype: DType,
) -> Result<KernelChoice, KernelError> {
    // The MMA kernel serves every call (it splits the keys of calls with few cubes); the cmma
    // one only calls with enough query tiles, leaving decode and short prompts to the portable
    // kernel, which splits the keys over cubes.
    let cmma_cubes =
        (dims.group() * dims.nq).div_ceil(prefill_cmma::ROWS as usize) * dims.hkv * dims.b;
    let choice = if mma_usable(client, dims, dtype) {
        KernelChoice::Mma
    } else if cmma_cubes >= MATRIX_MIN_CUBES && cmma_usable(client, dims, dtype) {
        KernelChoice::Cmma
    } else {
        KernelChoice::Portable
    };
    let smem_max = client.properties().hardware.max_shared_memory_size;
    if choice.shape(dims, dtype.size(), smem_max).is_none() {
        return Err(tensor_err(
            "q",
            format!(
                "head_dim {} needs more shared memory than the device's {smem_max} B",
                dims.d
            ),
        ));
    }
    Ok(choice)
}

/// Whether the matrix-unit (cmma) kernel can serve the call; `FLUX_NO_CMMA` turns it off (to
/// measure the portable kernel where the matrix one would run).
fn cmma_usable<R: CubeRuntime>(client: &ComputeClient<R>, dims: &CallDims, dtype: DType) -> bool {
    static NO_CMMA: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    !switched_off(&NO_CMMA, "FLUX_NO_CMMA") && matrix_units_usable(client, dims, dtype, false)
}

/// Whether the register-level MMA kernel can serve the call; `FLUX_NO_MMA` turns it off (to
/// measure the cmma kernel in its place).
pub(crate) fn mma_usable<R: CubeRuntime>(
    client: &ComputeClient<R>,
    dims: &CallDims,
    dtype: DType,
) -> bool {
    static NO_MMA: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    !switched_off(&NO_MMA, "FLUX_NO_MMA") && matrix_units_usable(client, dims, dtype, true)
}

/// Whether the environment variable `name` is set (read once into `cell`).
pub(crate) fn switched_off(cell: &std::sync::OnceLock<bool>, name: &str) -> bool {
    *cell.get_or_init(|| std::env::var_os(name).is_some())
}

/// Whether a matrix-unit kernel can serve the call: 16-bit inputs, head_dim 64 or 128, plane
/// operations and 32-lane planes, and either the 16x16x16 f32-accumulating cmma shape (`mma`
/// false) or register-level MMA: the m16n8k16 `mma` shape, `ldmatrix` for the dtype and
/// `cp.async`.
fn matrix_units_usable<R: CubeRuntime>(
    client: &ComputeClient<R>,
    dims: &CallDims,
    dtype: DType,
    mma: bool,
) -> bool {
    let props = client.properties();
    let elem = match dtype {
        DType::F16 | DType::BF16 => StorageType::from(dtype),
        _ => return false,
    };
    let features = &props.features;
    let config = MmaConfig {
        a_type: elem,
        b_type: elem,
        cd_type: StorageType::from(DType::F32),
        m: 16,
        n: if mma { 8 } else { 16 },
        k: 16,
    };
    let units = if mma {
        features.matmul.mma.contains(&config)
            && features.matmul.ldmatrix.contains(&elem)
            && features.copy_async
    } else {
        features.matmul.cmma.contains(&config)
    };
    let hw = &props.hardware;
    units
        && matches!(dims.d, 64 | 128)
        && features.plane.contains(Plane::Ops)
        && hw.plane_size_min == prefill_mma::PLANE_SIZE
        && hw.plane_size_max == prefill_mma::PLANE_SIZE
}

/// Warps per cube of the MMA kernel and 16-row MMA tiles per warp. A call whose stacked query
/// rows fit one MMA tile (decode) takes one warp per cube, split over the keys; prefill takes
/// 4 warps of 2 tiles (128 rows). `FLUX_MMA_WARPS` (4 or 8) and `FLUX_MMA_TILES` (1 or 2)
/// override the prefill layout, for tuning.
fn mma_layout(dims: &CallDims) -> (usize, usize) {
    if dims.group() * dims.nq <= prefill_mma::WARP_ROWS as usize {
        return (1, 1);
    }
    static LAYOUT: std::sync::OnceLock<(usize, usize)> = std::sync::OnceLock::new();
    *LAYOUT.get_or_init(|| {
        let var = |name: &str, allowed: &[usize], default: usize| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|p| allowed.contains(p))
                .unwrap_or(default)
        };
        (
            var("FLUX_MMA_WARPS", &[4, 8], 4),
            var("FLUX_MMA_TILES", &[1, 2], 2),
        )
    })
}

/// Cubes a split-KV call of the MMA kernel aims at: one wave of the cubes the SMs keep resident
/// (shared memory bounds them), so that no SM idles through a partial last wave, and the fewer,
/// longer-lived cubes amortise each cube's start (Q load, first K tile). The generic target,
/// 1024 cubes of one warp, was 1.55 waves on the H200 (132 SMs, five per SM).
/// `FLUX_SPLIT_CUBES` overrides the target, for tuning; without an SM count the generic target
/// stands.
fn mma_split_cubes(sms: Option<u32>, smem_max: usize, smem_per_cube: usize) -> usize {
    static OVERRIDE: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let forced = *OVERRIDE.get_or_init(|| {
        std::env::var("FLUX_SPLIT_CUBES")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&c| c > 0)
    });
    match (forced, sms) {
        (Some(cubes), _) => cubes,
        // The driver keeps 1 KiB of each cube's shared memory for itself.
        (None, Some(sms)) if sms > 0 => {
            sms as usize * (smem_max / (smem_per_cube + 1024)).clamp(1, 32)
        }
        _ => SPLIT_TARGET_CUBES,
    }
}

/// Tile shape of a launch: stacked query rows per cube, keys per tile, threads per row.
#[derive(Debug, Clone, Copy)]
struct TileShape {
    rows: usize,
    keys: usize,
    lanes: usize,
    /// Elements per vector load of Q, K and V.
    vector: usize,
}

impl KernelChoice {
    /// The tile shape for a call, or `None` when even the smallest does not fit `smem_max`.
    fn shape(self, dims: &CallDims, elem_size: usize, smem_max: usize) -> Option<TileShape> {
        let d = dims.d;
        match self {
            KernelChoice::Cmma => {
                let (rows, keys) = (prefill_cmma::ROWS as usize, prefill_cmma::KEYS as usize);
                // Q, K, V tiles and P in 16 bits, S in f32 (padded strides).
                let (ld, ls, lp) = (d + 8, keys + 4, keys + 8);
                let smem = 2 * (rows * ld + 2 * keys * ld + rows * lp) + 4 * rows * ls + 64;
                (smem <= smem_max).then_some(TileShape {
                    rows,
                    keys,
                    lanes: 0,
                    vector: 8,
                })
            }
            KernelChoice::Mma => {
                let (planes, m_tiles) = mma_layout(dims);
                let rows = planes * m_tiles * prefill_mma::WARP_ROWS as usize;
                let smem = prefill_mma::shared_bytes(rows, d);
                (smem <= smem_max).then_some(TileShape {
                    rows,
                    keys: prefill_mma::KEYS as usize,
                    lanes: 0,
                    vector: prefill_mma::CHUNK as usize,
                })
            }
            KernelChoice::Portable => {
                // Decode-sized calls (few stacked rows) give each row more threads.
                let stacked = dims.group() * dims.nq;
                let threads = prefill_portable::THREADS as usize;
                [(4, 64), (8, 64), (16, 32)]
                    .into_iter()
                    .filter(|&(rows, _)| stacked <= rows || rows == 16)
                    .map(|(rows, keys)| TileShape {
                        rows,
                        keys,
                        lanes: threads / rows,
                        vector: 1,
                    })
                    .find(|t| {
                        let smem =
                            4 * ((t.rows + t.keys) * (d + 1) + t.rows * (t.keys + 1) + threads);
                        d.is_multiple_of(t.lanes)
                            && t.keys % t.lanes == 0
                            && (t.keys * d).is_multiple_of(threads)
                            && smem <= smem_max
                    })
                    .map(|mut t| {
                        // 16-byte vectors where the tile divides evenly, else scalars.
                        t.vector = [16 / elem_size, 4, 2, 1]
                            .into_iter()
                            .find(|&vs| {
                                d.is_multiple_of(vs) && (t.keys * d / vs).is_multiple_of(threads)
                            })
                            .unwrap_or(1);
                        t
                    })
            }
        }
    }
}

/// The kernels' rule number of a visibility.
pub(crate) fn rule_of(visibility: &Visibility) -> u32 {
    match visibility {
        Visibility::Causal => RULE_CAUSAL,
        Visibility::Window { .. } => RULE_WINDOW,
        Visibility::Blocks(_) => RULE_BLOCKS,
    }
}

/// The visibility parameters of a call; `keep_at` is where its keep flags sit in the metadata.
pub(crate) fn mask_params<R: Runtime>(spec: &AttentionSpec, keep_at: u32) -> MaskParamsLaunch<R> {
    let sat = |x: usize| x.min(u32::MAX as usize) as u32;
    let (sink, window, dense) = match &spec.visibility {
        Visibility::Window {
            sink,
            window,
            dense,
        } => (*sink, *window, dense.clone()),
        Visibility::Causal | Visibility::Blocks(_) => (0, 1, 0..0),
    };
    let table = match &spec.visibility {
        Visibility::Blocks(t) => Some(t),
        _ => None,
    };
    MaskParamsLaunch::new(
        sat(sink),
        sat(window),
        sat(dense.start),
        sat(dense.end),
        sat(spec.layout.kept_sink),
        sat(spec.layout.dropped),
        table.map_or(1, |t| sat(t.block)),
        table.map_or(0, |t| sat(t.first_q_block)),
        table.map_or(0, |t| sat(t.q_blocks)),
        table.map_or(0, |t| sat(t.k_blocks)),
        table.map_or(0, |t| sat(t.heads)),
        keep_at,
    )
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn launch_kernel<R: CubeRuntime>(
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    out: CubeTensor<R>,
    route: Option<(&CubeTensor<R>, bool)>,
    spec: &AttentionSpec,
    dims: &CallDims,
    choice: KernelChoice,
    lse: Option<&CubeTensor<R>>,
) {
    let (q, k, v) = (into_contiguous(q), into_contiguous(k), into_contiguous(v));
    let client = q.client.clone();
    let dtype = q.dtype;
    let smem_max = client.properties().hardware.max_shared_memory_size;
    let shape = choice
        .shape(dims, q.dtype.size(), smem_max)
        .expect("checked by choose_kernel");
    let (rows, keys) = (shape.rows, shape.keys);
    let rule = rule_of(&spec.visibility);
    let (lists, counts, max_tiles, keep) = match &spec.visibility {
        Visibility::Blocks(t) => {
            let (l, c, m) = tile_lists(t, dims, spec, rows, keys);
            let keep: Vec<u32> = t.keep.iter().map(|&x| x as u32).collect();
            (l, c, m, keep)
        }
        _ => (vec![], vec![], 1, vec![]),
    };
    let q_tiles = (dims.group() * dims.nq).div_ceil(rows);
    // Every small table in one upload: q_lens, kv_lens, tile counts, tile lists, keep flags,
    // then room for the route flags, which a kernel copies in on the device.
    let b = dims.b as u32;
    let (counts_at, lists_at) = (2 * b, 2 * b + counts.len() as u32);
    let keep_at = lists_at + lists.len() as u32;
    let route_at = keep_at + keep.len() as u32;
    let route_room = vec![0u32; if route.is_some() { dims.b } else { 0 }];
    let meta_data: Vec<u32> = [
        &dims.q_lens[..],
        &dims.kv_lens,
        &counts,
        &lists,
        &keep,
        &route_room,
    ]
    .concat();
    let (meta, meta_n) = u32_array(&client, &meta_data);
    let route_offset = if route.is_some() { route_at } else { NO_ROUTE };
    if let Some((full, _)) = route {
        let full = into_contiguous(full.clone());
        let dtype = full.dtype;
        // SAFETY: one thread per flag, bounded by the flag count; `meta` has `b` words at
        // `route_at`.
        unsafe {
            store_route::launch_unchecked::<R>(
                &client,
                CubeCount::Static(dims.b.div_ceil(256) as u32, 1, 1),
                CubeDim::new_1d(256),
                full.into_tensor_arg(),
                ArrayArg::from_raw_parts(meta.clone(), meta_n),
                route_at,
                dtype.into(),
            )
        }
    }
    let route_full = route.is_some_and(|(_, full_here)| full_here) as u32;
    let meta_at = || MetaOffsetsLaunch::new(0, b, counts_at, lists_at, route_offset, route_full);
    let mask = mask_params(spec, keep_at);
    let cubes = q_tiles * dims.hkv * dims.b;
    // Few cubes: split the keys (decode, short prompts); never when the row log-sum-exps are
    // wanted (the MMA kernel leaves them only unsplit).
    let split_keys = lse.is_none()
        && match choice {
            KernelChoice::Portable => cubes < SPLIT_TARGET_CUBES,
            KernelChoice::Mma => cubes < MATRIX_MIN_CUBES,
            KernelChoice::Cmma => false,
        };
    let splits = if split_keys {
        let tiles = match &spec.visibility {
            Visibility::Window {
                sink,
                window,
                dense,
            } if dense.is_empty() => (sink + window) / keys + 2,
            _ => dims.nk.div_ceil(keys),
        };
        let target = match choice {
            KernelChoice::Mma => mma_split_cubes(
                client.properties().hardware.num_streaming_multiprocessors,
                smem_max,
                prefill_mma::shared_bytes(shape.rows, dims.d),
            ),
            _ => SPLIT_TARGET_CUBES,
        };
        (target / cubes).clamp(1, tiles.max(1))
    } else {
        1
    };
    let count = CubeCount::Static(q_tiles as u32, dims.hkv as u32, (dims.b * splits) as u32);
    let rows = dims.b * dims.hq * dims.nq;
    let part_len = |n: usize| if splits > 1 { splits * rows * n } else { 1 };
    let part = |n: usize| {
        empty_device_contiguous_dtype::<R>(
            client.clone(),
            q.device.clone(),
            Shape::new([part_len(n)]),
            DType::F32,
        )
    };
    let o_part = part(dims.d);
    let (ml_part, ml_len) = match lse {
        Some(lse) => (lse.clone(), rows),
        None => (part(2), part_len(2)),
    };
    let (meta_combine, out_combine) = (meta.clone(), out.clone());
    match choice {
        KernelChoice::Portable => unsafe {
            flash_attention_portable::launch_unchecked::<R>(
                &client,
                count,
                CubeDim::new_1d(prefill_portable::THREADS),
                shape.vector,
                q.into_tensor_arg(),
                k.into_tensor_arg(),
                v.into_tensor_arg(),
                out.into_tensor_arg(),
                ArrayArg::from_raw_parts(o_part.handle.clone(), part_len(dims.d)),
                ArrayArg::from_raw_parts(ml_part.handle.clone(), ml_len),
                ArrayArg::from_raw_parts(meta.clone(), meta_n),
                meta_at(),
                mask,
                spec.scale,
                max_tiles as u32,
                splits as u32,
                shape.rows as u32,
                shape.keys as u32,
                shape.lanes as u32,
                dims.d as u32,
                dims.group() as u32,
                rule,
                splits > 1,
                shape.vector as u32,
                dtype.into(),
            );
        },
        KernelChoice::Mma => unsafe {
            let (planes, m_tiles) = mma_layout(dims);
            flash_attention_mma::launch_unchecked::<R>(
                &client,
                count,
                CubeDim::new_2d(prefill_mma::PLANE_SIZE, planes as u32),
                shape.vector,
                q.into_tensor_arg(),
                k.into_tensor_arg(),
                v.into_tensor_arg(),
                out.into_tensor_arg(),
                ArrayArg::from_raw_parts(o_part.handle.clone(), part_len(dims.d)),
                ArrayArg::from_raw_parts(ml_part.handle.clone(), ml_len),
                ArrayArg::from_raw_parts(meta.clone(), meta_n),
                meta_at(),
                mask,
                spec.scale,
                max_tiles as u32,
                splits as u32,
                dims.d as u32,
                dims.group() as u32,
                rule,
                planes as u32,
                m_tiles as u32,
                splits > 1,
                lse.is_some(),
                dtype.into(),
            )
        },
        KernelChoice::Cmma => unsafe {
            // 16-byte vectors of 16-bit elements.
            flash_attention_cmma::launch_unchecked::<R>(
                &client,
                count,
                CubeDim::new_2d(prefill_cmma::PLANE_SIZE, prefill_cmma::PLANES),
                8,
                q.into_tensor_arg(),
                k.into_tensor_arg(),
                v.into_tensor_arg(),
                out.into_tensor_arg(),
                ArrayArg::from_raw_parts(meta, meta_n),
                meta_at(),
                mask,
                spec.scale,
                max_tiles as u32,
                dims.d as u32,
                dims.group() as u32,
                rule,
                8,
                dtype.into(),
            )
        },
    }
    if splits > 1 {
        // SAFETY: one cube per output row, one thread per column; the partials hold `splits`
        // rows of `d` and of 2 per output row.
        unsafe {
            combine_splits::launch_unchecked::<R>(
                &client,
                CubeCount::Static(rows as u32, 1, 1),
                CubeDim::new_1d(dims.d as u32),
                ArrayArg::from_raw_parts(o_part.handle, part_len(dims.d)),
                ArrayArg::from_raw_parts(ml_part.handle, ml_len),
                ArrayArg::from_raw_parts(meta_combine, meta_n),
                meta_at(),
                out_combine.into_tensor_arg(),
                splits as u32,
                dims.d as u32,
                dtype.into(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_kv_aims_at_one_wave_of_resident_cubes() {
        // H200: 132 SMs, 227 KiB of opt-in shared memory per cube; a decode cube of the MMA
        // kernel (16 rows, d 128) takes 39,200 B, so five stay resident per SM.
        let smem = prefill_mma::shared_bytes(16, 128);
        assert_eq!(smem, 39_200);
        assert_eq!(mma_split_cubes(Some(132), 232_448, smem), 660);
        // d 64: 20,768 B, ten per SM.
        assert_eq!(
            mma_split_cubes(Some(132), 232_448, prefill_mma::shared_bytes(16, 64)),
            1320
        );
        // At least one cube per SM, and the generic target without an SM count.
        assert_eq!(mma_split_cubes(Some(2), 1000, smem), 2);
        assert_eq!(mma_split_cubes(None, 232_448, smem), SPLIT_TARGET_CUBES);
    }
}
