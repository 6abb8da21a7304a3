//! flux's linear layers on CUDA (cuBLASLt through `flux_attention::linear`): a correctness suite
//! against float64 on the host, then timings on Llama-3.1-8B's shapes beside burn 0.21's matmul.
//!
//! `benches/torch_linear.py` times `torch.nn.functional.linear` on the same shapes. The program
//! exits non-zero on any error; every timed output is also checked on sampled rows.

use std::path::PathBuf;

use anyhow::{bail, ensure, Context, Result};
use burn::tensor::{DType, Distribution, Tensor};
use clap::Parser;

#[path = "../timing.rs"]
mod timing;
use flux_attention::{linear, linear_reference, WeightLayout};

type B = burn::backend::Cuda;

#[derive(Parser, Debug)]
#[command(about = "Correctness and speed of flux's cuBLASLt linear layers on CUDA")]
struct Args {
    /// Token counts (M) of the timed products.
    #[arg(long, value_delimiter = ',', default_value = "1,16,4096,32768")]
    m: Vec<usize>,
    /// Dtype of the timed runs: bf16 or f16.
    #[arg(long, default_value = "bf16")]
    dtype: String,
    /// Seconds per timed measurement (after warm-up).
    #[arg(long, default_value_t = 0.3)]
    seconds: f64,
    /// Skip burn's matmul in the timings.
    #[arg(long)]
    no_burn: bool,
    /// Skip the timings (correctness suite only).
    #[arg(long)]
    check_only: bool,
    /// Where to write one JSON object per timing.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn parse_dtype(s: &str) -> Result<DType> {
    Ok(match s {
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        other => bail!("--dtype: `{other}` (bf16 or f16: cuBLASLt serves the half types)"),
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    let device = Default::default();
    for dtype in [DType::BF16, DType::F16, DType::F32] {
        check_suite(&device, dtype)?;
    }
    if args.check_only {
        return Ok(());
    }
    let dtype = parse_dtype(&args.dtype)?;
    let mut rows = Vec::new();
    println!("| M | layer (K -> N) | cuBLASLt ms | TFLOP/s | burn matmul ms | TFLOP/s |");
    println!("|---|---|---|---|---|---|");
    for &m in &args.m {
        for &(name, k, n) in LLAMA_8B {
            rows.push(bench(&args, &device, dtype, m, name, k, n)?);
        }
    }
    if let Some(path) = &args.json {
        let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Llama-3.1-8B's linear layers (fused q/k/v and gate/up as flux loads them), and its head.
const LLAMA_8B: &[(&str, usize, usize)] = &[
    ("q_proj / o_proj", 4096, 4096),
    ("k_proj / v_proj", 4096, 1024),
    ("qkv fused", 4096, 6144),
    ("gate_up fused", 4096, 28672),
    ("down_proj", 14336, 4096),
    ("lm_head", 4096, 128256),
];

// ------------------------------------------------------------------------------------------
// Correctness

struct Case {
    name: &'static str,
    m: usize,
    k: usize,
    n: usize,
    layout: WeightLayout,
    bias: bool,
    /// x is a column slice of a wider tensor (row stride > k, pointer offset).
    narrowed: bool,
    /// x is a transposed view (column-major).
    transposed: bool,
}

const CASES: &[Case] = &[
    Case {
        name: "router layer",
        m: 1,
        k: 64,
        n: 512,
        layout: WeightLayout::InOut,
        bias: true,
        narrowed: false,
        transposed: false,
    },
    Case {
        name: "decode row",
        m: 1,
        k: 4096,
        n: 4096,
        layout: WeightLayout::InOut,
        bias: false,
        narrowed: false,
        transposed: false,
    },
    Case {
        name: "bias (Qwen2 q/k/v)",
        m: 7,
        k: 896,
        n: 1152,
        layout: WeightLayout::InOut,
        bias: true,
        narrowed: false,
        transposed: false,
    },
    Case {
        name: "tied head [out, in]",
        m: 33,
        k: 576,
        n: 49152,
        layout: WeightLayout::OutIn,
        bias: false,
        narrowed: false,
        transposed: false,
    },
    Case {
        name: "pitched weight rows",
        m: 5,
        k: 896,
        n: 151936,
        layout: WeightLayout::InOut,
        bias: false,
        narrowed: false,
        transposed: false,
    },
    Case {
        name: "odd sizes",
        m: 67,
        k: 100,
        n: 72,
        layout: WeightLayout::InOut,
        bias: true,
        narrowed: false,
        transposed: false,
    },
    Case {
        name: "narrowed x",
        m: 40,
        k: 256,
        n: 384,
        layout: WeightLayout::InOut,
        bias: false,
        narrowed: true,
        transposed: false,
    },
    Case {
        name: "transposed x",
        m: 24,
        k: 128,
        n: 200,
        layout: WeightLayout::OutIn,
        bias: true,
        narrowed: false,
        transposed: true,
    },
    Case {
        name: "prefill",
        m: 2048,
        k: 2048,
        n: 5632,
        layout: WeightLayout::InOut,
        bias: false,
        narrowed: false,
        transposed: false,
    },
];

fn host(t: &Tensor<B, 2>) -> Result<Vec<f32>> {
    t.clone()
        .cast(DType::F32)
        .into_data()
        .to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("{e:?}"))
}

/// Relative Frobenius error of rows `rows` of `got [m, n]` against float64 products of the same
/// (rounded) inputs.
fn error_vs_f64(
    x: &Tensor<B, 2>,
    w: &Tensor<B, 2>,
    bias: Option<&Tensor<B, 1>>,
    layout: WeightLayout,
    got: &Tensor<B, 2>,
    rows: &[usize],
) -> Result<f64> {
    let [m, k] = x.dims();
    let (xs, ws, ys) = (host(x)?, host(w)?, host(got)?);
    let bs = match bias {
        Some(b) => host(&b.clone().unsqueeze())?,
        None => Vec::new(),
    };
    let n = got.dims()[1];
    ensure!(got.dims() == [m, n], "output shape {:?}", got.dims());
    let (mut num, mut den) = (0f64, 0f64);
    for &r in rows {
        for c in 0..n {
            let mut want = bs.get(c).map_or(0.0, |&b| b as f64);
            for i in 0..k {
                let wv = match layout {
                    WeightLayout::InOut => ws[i * n + c],
                    WeightLayout::OutIn => ws[c * k + i],
                };
                want += xs[r * k + i] as f64 * wv as f64;
            }
            let g = ys[r * n + c] as f64;
            ensure!(g.is_finite(), "non-finite output at ({r}, {c})");
            num += (g - want).powi(2);
            den += want * want;
        }
    }
    Ok((num / den.max(1e-30)).sqrt())
}

fn sample_rows(m: usize) -> Vec<usize> {
    if m <= 16 {
        (0..m).collect()
    } else {
        vec![0, 1, m / 3, m / 2, m - 2, m - 1]
    }
}

fn check_suite(device: &burn::backend::cuda::CudaDevice, dtype: DType) -> Result<()> {
    let dist = Distribution::Uniform(-1.0, 1.0);
    // bf16 keeps 8 bits of mantissa: outputs are rounded once, ~2e-3 relative.
    let tolerance = match dtype {
        DType::BF16 => 1e-2,
        DType::F16 => 2e-3,
        _ => 1e-5,
    };
    for case in CASES {
        let &Case {
            name,
            m,
            k,
            n,
            layout,
            bias,
            narrowed,
            transposed,
        } = case;
        let w_shape = match layout {
            WeightLayout::InOut => [k, n],
            WeightLayout::OutIn => [n, k],
        };
        let w =
            Tensor::<B, 2>::random(w_shape, dist, (device, dtype)).div_scalar((k as f64).sqrt());
        let b = bias.then(|| Tensor::<B, 1>::random([n], dist, (device, dtype)));
        let x = if narrowed {
            Tensor::<B, 2>::random([m, k + 24], dist, (device, dtype)).slice([0..m, 8..8 + k])
        } else if transposed {
            Tensor::<B, 2>::random([k, m], dist, (device, dtype)).transpose()
        } else {
            Tensor::<B, 2>::random([m, k], dist, (device, dtype))
        };
        // A chain with no host read in between: the product must see `x + 0.5` and the next
        // kernel its output (ordering on cubecl's stream).
        let shifted = x.clone().add_scalar(0.5);
        let y = linear(shifted.clone(), w.clone(), b.clone(), layout).mul_scalar(2.0);
        let rows = sample_rows(m);
        let err = error_vs_f64(
            &shifted,
            &w,
            b.as_ref(),
            layout,
            &y.clone().div_scalar(2.0),
            &rows,
        )?;
        let burn = linear_reference(shifted, w, b, layout).mul_scalar(2.0);
        let (yh, bh) = (host(&y)?, host(&burn)?);
        let (mut num, mut den) = (0f64, 0f64);
        for (a, r) in yh.iter().zip(&bh) {
            num += (*a as f64 - *r as f64).powi(2);
            den += (*r as f64).powi(2);
        }
        let vs_burn = (num / den.max(1e-30)).sqrt();
        println!(
            "check {dtype:?} {name:<22} [{m}, {k}] x {layout:?} -> {n}: error vs f64 {err:.2e}, vs burn matmul {vs_burn:.2e}"
        );
        // burn's f32 matmul runs in TF32 on recent NVIDIA GPUs (~1e-3): it is the looser one.
        let burn_tolerance = if dtype == DType::F32 {
            2e-3
        } else {
            2.0 * tolerance
        };
        ensure!(
            err < tolerance && vs_burn < burn_tolerance,
            "{name} ({dtype:?}): error {err:.2e} vs f64, {vs_burn:.2e} vs burn, tolerance {tolerance:.0e}"
        );
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Timings

fn bench(
    args: &Args,
    device: &burn::backend::cuda::CudaDevice,
    dtype: DType,
    m: usize,
    name: &str,
    k: usize,
    n: usize,
) -> Result<String> {
    let dist = Distribution::Uniform(-1.0, 1.0);
    let x = Tensor::<B, 2>::random([m, k], dist, (device, dtype));
    let w = Tensor::<B, 2>::random([k, n], dist, (device, dtype)).div_scalar((k as f64).sqrt());
    let flops = 2.0 * (m * k * n) as f64;
    let lt = timing::time::<B>(device, args.seconds, || {
        let _ = linear(x.clone(), w.clone(), None, WeightLayout::InOut);
    });
    // The timed path's output, checked on sampled rows.
    let y = linear(x.clone(), w.clone(), None, WeightLayout::InOut);
    let rows: Vec<usize> = sample_rows(m).into_iter().take(3).collect();
    let xr = Tensor::cat(
        rows.iter()
            .map(|&r| x.clone().slice([r..r + 1, 0..k]))
            .collect(),
        0,
    );
    let yr = Tensor::cat(
        rows.iter()
            .map(|&r| y.clone().slice([r..r + 1, 0..n]))
            .collect(),
        0,
    );
    let all: Vec<usize> = (0..rows.len()).collect();
    let err = error_vs_f64(&xr, &w, None, WeightLayout::InOut, &yr, &all)?;
    ensure!(err < 1e-2, "{name} M={m}: error {err:.2e} against f64");
    let burn = if args.no_burn {
        None
    } else {
        Some(timing::time::<B>(device, args.seconds, || {
            let _ = linear_reference(x.clone(), w.clone(), None, WeightLayout::InOut);
        }))
    };
    let fmt = |s: Option<f64>| match s {
        Some(s) => (
            format!("{:.4}", s * 1e3),
            format!("{:.0}", flops / s / 1e12),
        ),
        None => ("-".into(), "-".into()),
    };
    let ((lt_ms, lt_tf), (b_ms, b_tf)) = (fmt(Some(lt)), fmt(burn));
    println!("| {m} | {name} ({k} -> {n}) | {lt_ms} | {lt_tf} | {b_ms} | {b_tf} |");
    Ok(format!(
        "{{\"impl\": \"flux-cublaslt\", \"dtype\": \"{dtype:?}\", \"m\": {m}, \"k\": {k}, \"n\": {n}, \"layer\": \"{name}\", \"ms\": {}, \"burn_ms\": {}, \"error_vs_f64\": {err:e}}}",
        lt * 1e3,
        burn.map_or("null".into(), |s| format!("{}", s * 1e3))
    ))
}
