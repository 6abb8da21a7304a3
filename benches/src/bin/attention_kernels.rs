//! Fused attention kernels on a GPU: a correctness suite in every float dtype, then timings of
//! full and sink + window attention, prefill, backward and decode, beside burn 0.21's own
//! `attention`.
//!
//! `benches/kernel-bench.sh` runs this and `benches/torch_attention.py` on the same shapes and
//! prints one table; RESULTS.md keeps the figures. Every timed output is checked against a float64
//! computation of sampled rows, and the program exits non-zero on any error.

use std::path::PathBuf;

use anyhow::{bail, ensure, Context, Result};
use burn::tensor::{
    backend::Backend, module::attention as burn_attention, ops::AttentionModuleOptions, DType,
    Distribution, Tensor, TensorData,
};
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime};
use clap::Parser;

#[path = "../attention_backward.rs"]
mod attention_backward;
#[path = "../timing.rs"]
mod timing;
use flux_attention::{reference, AttentionSpec, BlockSelection, KeyLayout, Visibility};
use rand::{rngs::StdRng, Rng, SeedableRng};
use timing::time;

#[derive(Parser, Debug)]
#[command(about = "Correctness and speed of flux's fused attention kernels on a GPU")]
struct Args {
    /// `cuda` or `wgpu` (each needs its cargo feature).
    #[arg(long, default_value = "cuda")]
    backend: String,
    /// Dtype of the timed runs: bf16, f16 or f32.
    #[arg(long, default_value = "bf16")]
    dtype: String,
    /// Sequence lengths of the timed runs.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "4096,16384,32768,65536,131072"
    )]
    lengths: Vec<usize>,
    #[arg(long, default_value_t = 32)]
    heads: usize,
    #[arg(long, default_value_t = 8)]
    kv_heads: usize,
    #[arg(long, default_value_t = 128)]
    head_dim: usize,
    #[arg(long, default_value_t = 128)]
    sink: usize,
    #[arg(long, default_value_t = 2048)]
    window: usize,
    /// burn's own attention is timed up to this length (it fails from 32K on: platform.md).
    #[arg(long, default_value_t = 16384)]
    burn_up_to: usize,
    /// Dtypes of the correctness suite (empty: skip it).
    #[arg(long, value_delimiter = ',', default_value = "f32,f16,bf16")]
    check_dtypes: Vec<String>,
    /// XAttention block and stride (scoring, selection and block-sparse prefill are timed up
    /// to --xattention-up-to tokens).
    #[arg(long, default_value_t = 128)]
    xattention_block: usize,
    #[arg(long, default_value_t = 16)]
    xattention_stride: usize,
    #[arg(long, default_value_t = 0.9)]
    xattention_threshold: f64,
    #[arg(long, default_value_t = 32768)]
    xattention_up_to: usize,
    /// The backward kernels are timed up to this length (0: not at all).
    #[arg(long, default_value_t = 32768)]
    backward_up_to: usize,
    /// Skip the timings (correctness suite only).
    #[arg(long)]
    check_only: bool,
    /// Time decode only (no prefill, backward, burn or XAttention rows).
    #[arg(long)]
    decode_only: bool,
    /// Seconds spent per timed measurement (after warm-up).
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    /// Where to write one JSON object per measurement.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn parse_dtype(s: &str) -> Result<DType> {
    Ok(match s {
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        "f32" => DType::F32,
        other => bail!("--dtype: unknown `{other}` (bf16, f16, f32)"),
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    match args.backend.as_str() {
        #[cfg(feature = "cuda")]
        "cuda" => run::<cubecl::cuda::CudaRuntime, u8>(&args, Default::default()),
        #[cfg(feature = "wgpu")]
        "wgpu" => run::<burn::backend::wgpu::WgpuRuntime, u32>(&args, Default::default()),
        other => bail!("--backend `{other}` is not in this build (features: cuda, wgpu)"),
    }
}

type Gpu<R, BT> = CubeBackend<R, f32, i32, BT>;
type Cpu = burn::backend::NdArray<f32>;

fn run<R: CubeRuntime, BT: BoolElement>(args: &Args, device: R::Device) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(2026);
    for name in args.check_dtypes.iter().filter(|s| !s.is_empty()) {
        let dtype = parse_dtype(name)?;
        check_suite::<R, BT>(&device, dtype, &mut rng)?;
        if dtype != DType::F32 {
            attention_backward::check_suite::<R, BT>(&device, dtype)?;
        }
    }
    if args.check_only {
        return Ok(());
    }
    let dtype = parse_dtype(&args.dtype)?;
    let mut rows = Vec::new();
    for &n in &args.lengths {
        bench_length::<R, BT>(args, &device, dtype, n, &mut rows)?;
    }
    if let Some(path) = &args.json {
        let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Correctness

struct Case {
    b: usize,
    hq: usize,
    hkv: usize,
    nq: usize,
    nk: usize,
    d: usize,
    visibility: Visibility,
    layout: KeyLayout,
    padded: bool,
}

fn cases(rng: &mut StdRng) -> Vec<Case> {
    let w = |sink, window, dense| Visibility::Window {
        sink,
        window,
        dense,
    };
    let none = KeyLayout::default();
    let c = |b, hq, hkv, nq, nk, d, visibility, padded| Case {
        b,
        hq,
        hkv,
        nq,
        nk,
        d,
        visibility,
        layout: none,
        padded,
    };
    let mut v = vec![
        // Causal prefill: odd lengths, GQA 1 / 4 / 7, head_dim 64 / 128, batch 1 / 3.
        c(1, 32, 8, 1000, 1000, 128, Visibility::Causal, false),
        c(3, 7, 1, 333, 333, 64, Visibility::Causal, true),
        c(1, 4, 4, 517, 517, 128, Visibility::Causal, false),
        c(3, 28, 4, 259, 259, 128, Visibility::Causal, true),
        c(1, 8, 2, 77, 1201, 64, Visibility::Causal, false),
        // Streaming and triangle.
        c(1, 32, 8, 1500, 1500, 128, w(16, 300, 0..0), false),
        c(3, 7, 1, 700, 700, 64, w(5, 129, 0..0), true),
        c(1, 16, 4, 900, 900, 128, w(8, 200, 800..900), false),
        // Decode: 1 and 3 queries per sequence, full and sink + window.
        c(1, 32, 8, 1, 3001, 128, Visibility::Causal, false),
        c(3, 28, 4, 3, 999, 128, Visibility::Causal, true),
        c(1, 7, 1, 1, 2000, 64, w(4, 256, 0..0), false),
    ];
    v.push(Case {
        layout: KeyLayout {
            kept_sink: 16,
            dropped: 500,
        },
        ..c(1, 32, 8, 2, 400, 128, w(16, 300, 0..0), false)
    });
    for (hq, hkv, n, d, block) in [
        (32usize, 8usize, 800usize, 128usize, 64usize),
        (7, 1, 333, 64, 32),
    ] {
        let blocks = n.div_ceil(block);
        let keep = (0..hq * blocks * blocks)
            .map(|i| i % blocks == 0 || rng.random_bool(0.3))
            .collect();
        let sel = BlockSelection {
            block,
            first_q_block: 0,
            q_blocks: blocks,
            k_blocks: blocks,
            heads: hq,
            keep,
        };
        v.push(c(1, hq, hkv, n, n, d, Visibility::Blocks(sel), false));
    }
    v
}

fn random_vec(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn to_f32<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().expect("f32 data")
}

fn check_suite<R: CubeRuntime, BT: BoolElement>(
    device: &R::Device,
    dtype: DType,
    rng: &mut StdRng,
) -> Result<()> {
    let tol = if dtype == DType::F32 { 1e-4 } else { 1e-2 };
    let mut worst = 0f64;
    for case in cases(rng) {
        let (qs, ks) = (
            [case.b, case.hq, case.nq, case.d],
            [case.b, case.hkv, case.nk, case.d],
        );
        let make = |data: Vec<f32>, s: [usize; 4]| {
            Tensor::<Gpu<R, BT>, 4>::from_data(TensorData::new(data, s), device).cast(dtype)
        };
        let q = make(random_vec(rng, qs.iter().product()), qs);
        let k = make(random_vec(rng, ks.iter().product()), ks);
        let v = make(random_vec(rng, ks.iter().product()), ks);
        // What the device holds, in f32: the reference sees the same rounded inputs.
        let (qh, kh, vh) = (to_f32(q.clone()), to_f32(k.clone()), to_f32(v.clone()));
        let (q_lens, kv_lens): (Vec<usize>, Vec<usize>) = (0..case.b)
            .map(|i| {
                if !case.padded || i == 0 {
                    (case.nq, case.nk)
                } else {
                    let kl = rng.random_range(case.nk / 2..=case.nk);
                    (
                        case.nq
                            .min(kl)
                            .saturating_sub(rng.random_range(0..3))
                            .max(1),
                        kl,
                    )
                }
            })
            .unzip();
        let mut spec = AttentionSpec::new(case.visibility.clone(), case.d);
        spec.layout = case.layout;
        spec.q_lens = Some(q_lens.clone());
        spec.kv_lens = Some(kv_lens.clone());
        let out = Tensor::<Gpu<R, BT>, 4>::full(qs, f32::NAN, (device, dtype));
        let prim = |t: Tensor<Gpu<R, BT>, 4>| t.into_primitive().tensor();
        let kernel = kernels_cubecl::fused_attention_into(
            prim(q),
            prim(k),
            prim(v),
            prim(out.clone()),
            &spec,
        )
        .context("fused attention refused a valid call")?;
        let got = to_f32(out);
        let mut err = 0f64;
        for bi in 0..case.b {
            let (ql, kl) = (q_lens[bi], kv_lens[bi]);
            let rows = |x: &[f32], h: usize, n: usize, from: usize, count: usize| -> Vec<f32> {
                (0..h)
                    .flat_map(|hi| {
                        x[((bi * h + hi) * n + from) * case.d..][..count * case.d].to_vec()
                    })
                    .collect()
            };
            for hi in 0..case.hq {
                for i in ql..case.nq {
                    let row = &got[((bi * case.hq + hi) * case.nq + i) * case.d..][..case.d];
                    ensure!(
                        row.iter().all(|&x| x == 0.0),
                        "{dtype:?} {kernel:?}: padding row {i} not zero"
                    );
                }
            }
            let visibility = match &case.visibility {
                Visibility::Blocks(s) => {
                    let per = s.heads * s.q_blocks * s.k_blocks;
                    Visibility::Blocks(BlockSelection {
                        keep: s.keep[bi * per..(bi + 1) * per].to_vec(),
                        ..s.clone()
                    })
                }
                o => o.clone(),
            };
            let cpu = |x: Vec<f32>, s: [usize; 4]| {
                Tensor::<Cpu, 4>::from_data(TensorData::new(x, s), &Default::default())
            };
            let want = to_f32(reference::masked_attention(
                cpu(rows(&qh, case.hq, case.nq, 0, ql), [1, case.hq, ql, case.d]),
                cpu(
                    rows(&kh, case.hkv, case.nk, 0, kl),
                    [1, case.hkv, kl, case.d],
                ),
                cpu(
                    rows(&vh, case.hkv, case.nk, 0, kl),
                    [1, case.hkv, kl, case.d],
                ),
                case.layout,
                &visibility,
            ));
            let have = rows(&got, case.hq, case.nq, 0, ql);
            let (mut num, mut den) = (0f64, 0f64);
            for (a, b) in have.iter().zip(&want) {
                ensure!(
                    a.is_finite(),
                    "{dtype:?} {kernel:?}: non-finite output {a} (b={bi})"
                );
                num += ((a - b) as f64).powi(2);
                den += (*b as f64).powi(2);
            }
            err = err.max((num / den.max(1e-30)).sqrt());
        }
        println!(
            "check {dtype:?} {kernel:?} b={} hq={} hkv={} nq={} nk={} d={} {}: rel err {err:.2e}",
            case.b,
            case.hq,
            case.hkv,
            case.nq,
            case.nk,
            case.d,
            mode_name(&case.visibility)
        );
        ensure!(
            err < tol,
            "{dtype:?} {kernel:?}: relative error {err:e} over {tol:e}"
        );
        worst = worst.max(err);
    }
    println!("check {dtype:?}: all cases pass, worst relative error {worst:.2e} (limit {tol:e})");
    check_xattention::<R, BT>(device, dtype, rng)
}

/// XAttention's block scores and selection against the reference on the same rounded inputs.
fn check_xattention<R: CubeRuntime, BT: BoolElement>(
    device: &R::Device,
    dtype: DType,
    rng: &mut StdRng,
) -> Result<()> {
    for (b, hq, hkv, nq, nk, d, block, stride) in [
        (
            1usize, 32usize, 8usize, 1000usize, 1000usize, 128usize, 128usize, 16usize,
        ),
        (3, 7, 1, 300, 517, 64, 64, 8),
    ] {
        let (qs, ks) = ([b, hq, nq, d], [b, hkv, nk, d]);
        let make = |data: Vec<f32>, s: [usize; 4]| {
            Tensor::<Gpu<R, BT>, 4>::from_data(TensorData::new(data, s), device).cast(dtype)
        };
        let q = make(random_vec(rng, qs.iter().product()), qs);
        let k = make(random_vec(rng, ks.iter().product()), ks);
        let cpu = |x: Vec<f32>, s: [usize; 4]| {
            Tensor::<Cpu, 4>::from_data(TensorData::new(x, s), &Default::default())
        };
        let want = flux_attention::xattention::block_scores(
            &cpu(to_f32(q.clone()), qs),
            &cpu(to_f32(k.clone()), ks),
            block,
            stride,
        );
        let selection = flux_attention::xattention::select_blocks(&want, 0.9);
        let prim = |t: Tensor<Gpu<R, BT>, 4>| t.into_primitive().tensor();
        let (scores, blocks) =
            kernels_cubecl::xattention_block_scores(prim(q), prim(k), block, stride)?;
        let keep = kernels_cubecl::xattention_keep(scores.clone(), blocks, 0.9);
        let read = |t| {
            to_f32(Tensor::<Gpu<R, BT>, 4>::from_primitive(
                burn::tensor::TensorPrimitive::Float(t),
            ))
        };
        let (got, kept) = (read(scores), read(keep));
        let err = got
            .iter()
            .zip(&want.scores)
            .map(|(a, w)| (*a as f64 - w).abs())
            .fold(0f64, f64::max);
        let differ = kept
            .iter()
            .zip(&selection.keep)
            .filter(|(a, w)| (**a == 1.0) != **w)
            .count();
        let share = differ as f64 / kept.len() as f64;
        println!("check {dtype:?} xattention b={b} hq={hq} nq={nq} nk={nk} block={block} stride={stride}: max score error {err:.2e}, selection differs in {differ} of {} flags", kept.len());
        ensure!(err < 1e-4, "xattention scores: error {err:e}");
        // Flags can only flip where a block's rank or the threshold is a rounding away.
        ensure!(
            share < 0.005,
            "xattention selection differs in {differ} flags"
        );
    }
    Ok(())
}

fn mode_name(v: &Visibility) -> String {
    match v {
        Visibility::Causal => "causal".into(),
        Visibility::Window {
            sink,
            window,
            dense,
        } if dense.is_empty() => format!("streaming {sink}+{window}"),
        Visibility::Window {
            sink,
            window,
            dense,
        } => format!("triangle {sink}+{window} dense {dense:?}"),
        Visibility::Blocks(s) => format!("blocks {} density {:.2}", s.block, s.density()),
    }
}

// ------------------------------------------------------------------------------------------
// Timings

/// Relative error of sampled output rows against float64 attention over the same (rounded)
/// inputs; `kv_of(h)` is the K/V head of query head `h`, `sees(query_pos, key_pos)`.
#[allow(clippy::too_many_arguments)]
fn sampled_error<B: Backend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    out: &Tensor<B, 4>,
    samples: &[(usize, usize)],
    kv_of: impl Fn(usize) -> usize,
    sees: impl Fn(usize, usize) -> bool,
) -> Result<f64> {
    let [_, _, nq, d] = q.dims();
    let nk = k.dims()[2];
    let row = |t: &Tensor<B, 4>, h: usize, i: usize| {
        to_f32(t.clone().slice([0..1, h..h + 1, i..i + 1, 0..d]))
    };
    let (mut num, mut den) = (0f64, 0f64);
    for &(h, i) in samples {
        let qr = row(q, h, i);
        let kh = to_f32(k.clone().slice([0..1, kv_of(h)..kv_of(h) + 1, 0..nk, 0..d]));
        let vh = to_f32(v.clone().slice([0..1, kv_of(h)..kv_of(h) + 1, 0..nk, 0..d]));
        let pos = nk - nq + i;
        let scale = 1.0 / (d as f64).sqrt();
        let keys: Vec<usize> = (0..nk).filter(|&j| sees(pos, j)).collect();
        let s: Vec<f64> = keys
            .iter()
            .map(|&j| {
                (0..d)
                    .map(|c| qr[c] as f64 * kh[j * d + c] as f64)
                    .sum::<f64>()
                    * scale
            })
            .collect();
        let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
        let l: f64 = w.iter().sum();
        let got = row(out, h, i);
        for c in 0..d {
            let want: f64 = keys
                .iter()
                .zip(&w)
                .map(|(&j, wj)| wj * vh[j * d + c] as f64)
                .sum::<f64>()
                / l;
            ensure!(got[c].is_finite(), "output row ({h}, {i}) holds {}", got[c]);
            num += (got[c] as f64 - want).powi(2);
            den += want * want;
        }
    }
    Ok((num / den.max(1e-30)).sqrt())
}

fn bench_length<R: CubeRuntime, BT: BoolElement>(
    args: &Args,
    device: &R::Device,
    dtype: DType,
    n: usize,
    rows: &mut Vec<String>,
) -> Result<()> {
    type B<R, BT> = Gpu<R, BT>;
    let (hq, hkv, d) = (args.heads, args.kv_heads, args.head_dim);
    let dist = Distribution::Uniform(-1.0, 1.0);
    let q = Tensor::<B<R, BT>, 4>::random([1, hq, n, d], dist, (device, dtype));
    let k = Tensor::<B<R, BT>, 4>::random([1, hkv, n, d], dist, (device, dtype));
    let v = Tensor::<B<R, BT>, 4>::random([1, hkv, n, d], dist, (device, dtype));
    ensure!(
        q.dtype() == dtype,
        "q is {:?}, asked for {dtype:?}",
        q.dtype()
    );
    let group = hq / hkv;
    let samples = [
        (0, 0),
        (hq - 1, n - 1),
        (hq / 2 + 1, n / 2),
        (3.min(hq - 1), n - 1 - n / 7),
    ];
    let (sink, window) = (args.sink, args.window);
    let streaming = Visibility::Window {
        sink,
        window,
        dense: 0..0,
    };
    let window_sees = move |p: usize, j: usize| j <= p && (j < sink || p - j < window);
    let elem = if dtype == DType::F32 { 4.0 } else { 2.0 };

    let fused = |q: &Tensor<B<R, BT>, 4>, visibility: &Visibility| {
        let spec = AttentionSpec::new(visibility.clone(), d);
        let prim = |t: &Tensor<B<R, BT>, 4>| t.clone().into_primitive().tensor();
        let out = kernels_cubecl::fused_attention(prim(q), prim(&k), prim(&v), &spec)
            .expect("valid call");
        Tensor::<B<R, BT>, 4>::from_primitive(burn::tensor::TensorPrimitive::Float(out))
    };
    let record = |rows: &mut Vec<String>,
                  op: &str,
                  impl_: &str,
                  secs: f64,
                  flops: f64,
                  bytes: f64,
                  err: f64| {
        let line = format!(
            "{{\"impl\":\"{impl_}\",\"op\":\"{op}\",\"n\":{n},\"ms\":{:.4},\"tflops\":{:.2},\"gbs\":{:.1},\"rel_err\":{err:.2e},\"backend\":\"{}\",\"dtype\":\"{dtype:?}\"}}",
            secs * 1e3,
            flops / secs / 1e12,
            bytes / secs / 1e9,
            args.backend
        );
        println!("{line}");
        rows.push(line);
    };

    // Causal pairs (i, j <= i), and those a sink + window query sees.
    let causal_pairs = (n * (n + 1) / 2) as f64;
    let window_pairs: f64 = (0..n)
        .map(|i| ((i + 1).min(window) + sink.min((i + 1).saturating_sub(window))) as f64)
        .sum();
    let per_pair = 4.0 * (hq * d) as f64;

    let prefill_rows = if args.decode_only {
        vec![]
    } else {
        vec![
            ("prefill_full", Visibility::Causal, causal_pairs),
            ("prefill_streaming", streaming.clone(), window_pairs),
        ]
    };
    for (op, vis, pairs) in prefill_rows {
        let mut out = None;
        let secs = time::<B<R, BT>>(device, args.seconds, || out = Some(fused(&q, &vis)));
        let out = out.expect("ran");
        let err = match &vis {
            Visibility::Causal => {
                sampled_error(&q, &k, &v, &out, &samples, |h| h / group, |p, j| j <= p)?
            }
            _ => sampled_error(&q, &k, &v, &out, &samples, |h| h / group, window_sees)?,
        };
        ensure!(err < 2e-2, "{op} at {n}: relative error {err:e}");
        record(rows, op, "flux", secs, per_pair * pairs, 0.0, err);
    }

    // Backward (given the forward's output and log-sum-exps): FLOPs counted as 2.5x the
    // forward's (five matrix products), as FlashAttention and torch count them.
    if n <= args.backward_up_to && !args.decode_only {
        for (op, vis, pairs) in [
            ("backward_full", Visibility::Causal, causal_pairs),
            ("backward_streaming", streaming.clone(), window_pairs),
        ] {
            if let Some((secs, err)) =
                attention_backward::time_backward::<R, BT>(device, &q, &k, &v, &vis, args.seconds)?
            {
                record(rows, op, "flux", secs, 2.5 * per_pair * pairs, 0.0, err);
            }
        }
    }

    // Decode: the last position's query over the whole cache.
    let qd = q.clone().slice([0..1, 0..hq, n - 1..n, 0..d]);
    for (op, vis, keys) in [
        ("decode_full", Visibility::Causal, n),
        (
            "decode_streaming",
            streaming.clone(),
            (sink + window).min(n),
        ),
    ] {
        let mut out = None;
        let secs = time::<B<R, BT>>(device, args.seconds, || out = Some(fused(&qd, &vis)));
        let out = out.expect("ran");
        let samples = [(0, 0), (hq - 1, 0), (hq / 2, 0)];
        let err = match &vis {
            Visibility::Causal => {
                sampled_error(&qd, &k, &v, &out, &samples, |h| h / group, |p, j| j <= p)?
            }
            _ => sampled_error(&qd, &k, &v, &out, &samples, |h| h / group, window_sees)?,
        };
        ensure!(err < 2e-2, "{op} at {n}: relative error {err:e}");
        let bytes = 2.0 * (hkv * keys * d) as f64 * elem;
        record(rows, op, "flux", secs, 0.0, bytes, err);
    }

    // XAttention: block scoring + selection on the device, then block-sparse prefill.
    if n <= args.xattention_up_to && !args.decode_only {
        let (block, stride, thr) = (
            args.xattention_block,
            args.xattention_stride,
            args.xattention_threshold,
        );
        let prim = |t: &Tensor<B<R, BT>, 4>| t.clone().into_primitive().tensor();
        let mut keep = None;
        let mut blocks = None;
        let secs = time::<B<R, BT>>(device, args.seconds, || {
            let (scores, bl) =
                kernels_cubecl::xattention_block_scores(prim(&q), prim(&k), block, stride)
                    .expect("valid");
            keep = Some(kernels_cubecl::xattention_keep(scores, bl, thr as f32));
            blocks = Some(bl);
        });
        let blocks = blocks.expect("ran");
        let flags = to_f32(Tensor::<B<R, BT>, 4>::from_primitive(
            burn::tensor::TensorPrimitive::Float(keep.expect("ran")),
        ));
        ensure!(
            flags.iter().all(|&x| x == 0.0 || x == 1.0),
            "xattention keep flags are not 0/1"
        );
        let selection = BlockSelection {
            block,
            first_q_block: blocks.first_q_block,
            q_blocks: blocks.q_blocks,
            k_blocks: blocks.k_blocks,
            heads: hq,
            keep: flags.iter().map(|&x| x == 1.0).collect(),
        };
        // Estimate cost: every causal (query group, key group) pair, stride x d MACs, twice.
        let groups = (n / stride) as f64;
        let est_flops = 2.0 * 2.0 * (groups * (groups + 1.0) / 2.0) * (stride * d * hq) as f64;
        record(rows, "xattention_select", "flux", secs, est_flops, 0.0, 0.0);
        let density = selection.density();
        let sel = selection.clone();
        let vis = Visibility::Blocks(selection);
        let mut out = None;
        let secs = time::<B<R, BT>>(device, args.seconds, || out = Some(fused(&q, &vis)));
        let out = out.expect("ran");
        let err = samples
            .iter()
            .map(|&(h, i)| {
                sampled_error(
                    &q,
                    &k,
                    &v,
                    &out,
                    &[(h, i)],
                    |h| h / group,
                    |p, j| j <= p && sel.keeps(0, h, p / block, j / block),
                )
            })
            .collect::<Result<Vec<f64>>>()?
            .into_iter()
            .fold(0f64, f64::max);
        ensure!(
            err < 2e-2,
            "block-sparse prefill at {n}: relative error {err:e}"
        );
        record(
            rows,
            &format!("prefill_xattention_density_{density:.2}"),
            "flux",
            secs,
            per_pair * causal_pairs * density,
            0.0,
            err,
        );
    }

    // burn 0.21's fused attention (K/V repeated to every query head: it has no GQA).
    if n <= args.burn_up_to && !args.decode_only {
        let (kr, vr) = (
            k.clone().repeat_dim(1, group),
            v.clone().repeat_dim(1, group),
        );
        let opts = AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: true,
        };
        let mut out = None;
        let secs = time::<B<R, BT>>(device, args.seconds, || {
            out = Some(burn_attention(
                q.clone(),
                kr.clone(),
                vr.clone(),
                None,
                None,
                opts,
            ))
        });
        let out = out.expect("ran");
        // repeat_dim tiles the heads: query head h reads K/V head h % hkv.
        let err = sampled_error(&q, &kr, &vr, &out, &samples, |h| h, |p, j| j <= p)?;
        // burn's result is reported, not trusted: a wrong output is recorded as such.
        let impl_ = if err < 2e-2 { "burn" } else { "burn_wrong" };
        if err >= 2e-2 {
            eprintln!("burn attention at {n}: WRONG OUTPUT, relative error {err:e}");
        }
        record(
            rows,
            "prefill_full",
            impl_,
            secs,
            per_pair * causal_pairs,
            0.0,
            err,
        );
    }
    Ok(())
}
