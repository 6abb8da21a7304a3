"""torch.nn.functional.linear (cuBLAS) on the shapes of `linear_bench`: Llama-3.1-8B's linear
layers at M tokens, bf16, median of timed batches of back-to-back calls.

    python3 benches/torch_linear.py --m 1,16,4096,32768 --json out.jsonl
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

LLAMA_8B = [
    ("q_proj / o_proj", 4096, 4096),
    ("k_proj / v_proj", 4096, 1024),
    ("qkv fused", 4096, 6144),
    ("gate_up fused", 4096, 28672),
    ("down_proj", 14336, 4096),
    ("lm_head", 4096, 128256),
]


def per_call(fn, budget):
    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    once = time.perf_counter() - t
    reps = max(1, min(500, int(budget / 5 / max(once, 1e-6))))
    out = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
        out.append((time.perf_counter() - t) / reps)
    return statistics.median(out)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--m", default="1,16,4096,32768")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "f16"])
    p.add_argument("--seconds", type=float, default=0.3)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    print(f"# torch {torch.__version__}, {torch.cuda.get_device_name()}, {args.dtype}")
    print("| M | layer (K -> N) | F.linear ms | TFLOP/s |")
    print("|---|---|---|---|")
    rows = []
    for m in (int(v) for v in args.m.split(",")):
        for name, k, n in LLAMA_8B:
            x = torch.empty(m, k, device="cuda", dtype=dtype).uniform_(-1, 1)
            w = torch.empty(n, k, device="cuda", dtype=dtype).uniform_(-1, 1) / k**0.5
            s = per_call(lambda: F.linear(x, w), args.seconds)
            tflops = 2 * m * k * n / s / 1e12
            print(f"| {m} | {name} ({k} -> {n}) | {s * 1e3:.4f} | {tflops:.0f} |", flush=True)
            rows.append({"impl": "torch-linear", "dtype": args.dtype, "m": m, "k": k, "n": n,
                         "layer": name, "ms": s * 1e3})
            del x, w
    if args.json:
        with open(args.json, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)


if __name__ == "__main__":
    main()
