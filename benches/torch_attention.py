#!/usr/bin/env python3
"""PyTorch attention on the shapes of benches/src/bin/attention_kernels.rs, for comparison.

Prints one JSON object per measurement (same keys as the Rust harness). Every timed output is
checked against a float64 computation of sampled rows; any failure exits non-zero.
"""
import argparse
import json
import math
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

p = argparse.ArgumentParser()
p.add_argument("--lengths", default="4096,16384,32768,65536,131072")
p.add_argument("--heads", type=int, default=32)
p.add_argument("--kv-heads", type=int, default=8)
p.add_argument("--head-dim", type=int, default=128)
p.add_argument("--sink", type=int, default=128)
p.add_argument("--window", type=int, default=2048)
p.add_argument("--backward-up-to", type=int, default=32768)
p.add_argument("--json", default=None)
args = p.parse_args()

dev = "cuda"
torch.manual_seed(0)
rows = []


def median_ms(fn, warmup=2, budget_ms=1000.0):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    once = start.elapsed_time(end)
    reps = max(1, min(200, int(budget_ms / 5 / max(once, 1e-3))))
    times = []
    for _ in range(5 if once < budget_ms else 3):
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / reps)
    times.sort()
    return times[len(times) // 2]


def check(q, k, v, out, samples, sees):
    """Relative error of sampled rows against float64 attention; q [1,hq,nq,d], k/v [1,hkv,n,d]."""
    hq, nq, d = q.shape[1], q.shape[2], q.shape[3]
    hkv, n = k.shape[1], k.shape[2]
    num = den = 0.0
    for h, i in samples:
        kh = h // (hq // hkv)
        pos = n - nq + i
        keys = torch.tensor([j for j in range(n) if sees(pos, j)], device=q.device)
        s = (k[0, kh, keys].double() @ q[0, h, i].double()) / math.sqrt(d)
        w = torch.softmax(s, 0)
        want = w @ v[0, kh, keys].double()
        got = out[0, h, i].double()
        if not torch.isfinite(got).all():
            sys.exit(f"non-finite output in row ({h}, {i})")
        num += ((got - want) ** 2).sum().item()
        den += (want ** 2).sum().item()
    return math.sqrt(num / max(den, 1e-30))


def record(impl, op, n, ms, flops=0.0, nbytes=0.0, err=0.0):
    row = dict(impl=impl, op=op, n=n, ms=round(ms, 4), tflops=round(flops / ms / 1e9, 2),
               gbs=round(nbytes / ms / 1e6, 1), rel_err=float(f"{err:.2e}"), backend="torch",
               dtype="BF16")
    print(json.dumps(row), flush=True)
    rows.append(row)


hq, hkv, d, sink, window = args.heads, args.kv_heads, args.head_dim, args.sink, args.window
group = hq // hkv
try:
    from torch.nn.attention.flex_attention import flex_attention, create_block_mask
    flex = torch.compile(flex_attention, dynamic=False)
except Exception as e:  # noqa: BLE001
    flex = None
    print(f"flex_attention unavailable: {e}", file=sys.stderr)

for n in [int(x) for x in args.lengths.split(",")]:
    q = torch.rand(1, hq, n, d, device=dev, dtype=torch.bfloat16) * 2 - 1
    k = torch.rand(1, hkv, n, d, device=dev, dtype=torch.bfloat16) * 2 - 1
    v = torch.rand(1, hkv, n, d, device=dev, dtype=torch.bfloat16) * 2 - 1
    samples = [(0, 0), (hq - 1, n - 1), (hq // 2 + 1, n // 2), (3, n - 1 - n // 7)]
    causal_pairs = n * (n + 1) / 2
    window_pairs = sum(min(i + 1, window) + min(sink, max(0, i + 1 - window)) for i in range(n))
    per_pair = 4.0 * hq * d
    causal = lambda p_, j: j <= p_
    win = lambda p_, j: j <= p_ and (j < sink or p_ - j < window)

    for name, backend in [("sdpa_flash", SDPBackend.FLASH_ATTENTION), ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION)]:
        try:
            with sdpa_kernel(backend):
                fn = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
                ms = median_ms(fn)
                out = fn()
        except Exception as e:  # noqa: BLE001
            print(f"{name} at {n}: {type(e).__name__}: {str(e)[:200]}", file=sys.stderr)
            continue
        err = check(q, k, v, out, samples, causal)
        if err > 2e-2:
            sys.exit(f"{name} at {n}: relative error {err}")
        record(name, "prefill_full", n, ms, per_pair * causal_pairs, 0, err)

    if flex is not None:
        def sw_mask(b, h, qi, kj):
            return (kj <= qi) & ((kj < sink) | (qi - kj < window))

        try:
            bm = create_block_mask(sw_mask, None, None, n, n, device=dev)
            fn = lambda: flex(q, k, v, block_mask=bm, enable_gqa=True)
            ms = median_ms(fn)
            out = fn()
            err = check(q, k, v, out, samples, win)
            if err > 2e-2:
                sys.exit(f"flex streaming at {n}: relative error {err}")
            record("flex", "prefill_streaming", n, ms, per_pair * window_pairs, 0, err)
        except Exception as e:  # noqa: BLE001
            print(f"flex streaming at {n}: {type(e).__name__}: {str(e)[:200]}", file=sys.stderr)

    # Backward (given the forward's graph): FLOPs 2.5x the forward's, as flux counts them. The
    # gradients are checked against the math backend in float32 up to 8K tokens.
    if n <= args.backward_up_to:
        d_out = torch.rand_like(q) * 2 - 1

        def grads_of(attend):
            qg, kg, vg = [t.detach().requires_grad_() for t in (q, k, v)]
            out = attend(qg, kg, vg)
            return lambda: torch.autograd.grad(out, (qg, kg, vg), d_out, retain_graph=True)

        def check_grads(got, mask):
            if n > 8192:
                return 0.0
            qg, kg, vg = [t.detach().float().requires_grad_() for t in (q, k, v)]
            with sdpa_kernel(SDPBackend.MATH):
                out = F.scaled_dot_product_attention(qg, kg, vg, attn_mask=mask, enable_gqa=True)
            want = torch.autograd.grad(out, (qg, kg, vg), d_out.float())
            return max(((g.float() - w).norm() / w.norm()).item() for g, w in zip(got, want))

        causal_mask = torch.ones(n, n, dtype=torch.bool, device=dev).tril() if n <= 8192 else None
        try:
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                fn = grads_of(lambda a, b_, c: F.scaled_dot_product_attention(a, b_, c, is_causal=True, enable_gqa=True))
                ms = median_ms(fn)
                err = check_grads(fn(), causal_mask)
            if err > 2e-2:
                sys.exit(f"flash backward at {n}: relative error {err}")
            record("sdpa_flash", "backward_full", n, ms, 2.5 * per_pair * causal_pairs, 0, err)
        except Exception as e:  # noqa: BLE001
            print(f"flash backward at {n}: {type(e).__name__}: {str(e)[:200]}", file=sys.stderr)
        if flex is not None:
            try:
                fn = grads_of(lambda a, b_, c: flex(a, b_, c, block_mask=bm, enable_gqa=True))
                ms = median_ms(fn)
                wmask = None
                if n <= 8192:
                    i = torch.arange(n, device=dev)
                    wmask = (i[None, :] <= i[:, None]) & ((i[None, :] < sink) | (i[:, None] - i[None, :] < window))
                err = check_grads(fn(), wmask)
                if err > 2e-2:
                    sys.exit(f"flex backward at {n}: relative error {err}")
                record("flex", "backward_streaming", n, ms, 2.5 * per_pair * window_pairs, 0, err)
            except Exception as e:  # noqa: BLE001
                print(f"flex backward at {n}: {type(e).__name__}: {str(e)[:200]}", file=sys.stderr)
        del d_out
        torch.cuda.empty_cache()

    # Decode: the last query over the full cache, and over a pre-gathered sink + window cache.
    qd = q[:, :, n - 1:n]
    fn = lambda: F.scaled_dot_product_attention(qd, k, v, enable_gqa=True)
    ms = median_ms(fn)
    err = check(qd, k, v, fn(), [(0, 0), (hq - 1, 0), (hq // 2, 0)], causal)
    if err > 2e-2:
        sys.exit(f"decode at {n}: relative error {err}")
    record("sdpa", "decode_full", n, ms, 0, 2.0 * hkv * n * d * 2, err)
    idx = torch.cat([torch.arange(min(sink, n)), torch.arange(max(sink, n - window), n)]).to(dev)
    ks, vs = k[:, :, idx].contiguous(), v[:, :, idx].contiguous()
    fn = lambda: F.scaled_dot_product_attention(qd, ks, vs, enable_gqa=True)
    ms = median_ms(fn)
    err = check(qd, ks, vs, fn(), [(0, 0), (hq - 1, 0)], causal)
    if err > 2e-2:
        sys.exit(f"decode streaming at {n}: relative error {err}")
    record("sdpa_gathered", "decode_streaming", n, ms, 0, 2.0 * hkv * idx.numel() * d * 2, err)
    del q, k, v
    torch.cuda.empty_cache()

if args.json:
    with open(args.json, "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
