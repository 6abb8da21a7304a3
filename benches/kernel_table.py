#!/usr/bin/env python3
"""Merges the JSON lines of attention_kernels and torch_attention.py into RESULTS.md tables."""
import json
import sys

rows = [json.loads(l) for path in sys.argv[1:] for l in open(path) if l.strip()]
ns = sorted({r["n"] for r in rows})


def get(impl, op, n, backend=None):
    for r in rows:
        if r["impl"] == impl and r["op"] == op and r["n"] == n and (backend is None or r["backend"] == backend):
            return r
    return None


def cell(r, key):
    if r is None:
        return "-"
    return f"{r['ms']:.3f} ms ({r[key]:.0f})" if key == "tflops" else f"{r['ms'] * 1000:.1f} us ({r[key] / 1000:.2f} TB/s)"


def ratio(a, b):
    return f"{b['ms'] / a['ms']:.2f}x" if a and b else "-"


print("Full causal prefill, median ms (TFLOP/s, causal FLOPs)\n")
print("| N | flux cuda | flux wgpu | torch SDPA flash | torch SDPA cuDNN | burn 0.21 attention | flux cuda vs flash | vs cuDNN |")
print("|---|---|---|---|---|---|---|---|")
for n in ns:
    f = get("flux", "prefill_full", n, "cuda")
    w = get("flux", "prefill_full", n, "wgpu")
    fl, cu, bu = get("sdpa_flash", "prefill_full", n), get("sdpa_cudnn", "prefill_full", n), get("burn", "prefill_full", n, "cuda")
    wrong = get("burn_wrong", "prefill_full", n, "cuda")
    print(f"| {n} | {cell(f, 'tflops')} | {cell(w, 'tflops')} | {cell(fl, 'tflops')} | {cell(cu, 'tflops')} | {cell(bu, 'tflops') if not wrong else f"wrong output (rel err {wrong['rel_err']:.0e})"} | {ratio(f, fl)} | {ratio(f, cu)} |")

print("\nSink 128 + window 2048 prefill, median ms (TFLOP/s over the visible pairs)\n")
print("| N | flux cuda | flux wgpu | torch flex_attention | flux cuda vs flex |")
print("|---|---|---|---|---|")
for n in ns:
    f, w, x = get("flux", "prefill_streaming", n, "cuda"), get("flux", "prefill_streaming", n, "wgpu"), get("flex", "prefill_streaming", n)
    print(f"| {n} | {cell(f, 'tflops')} | {cell(w, 'tflops')} | {cell(x, 'tflops')} | {ratio(f, x)} |")

print("\nBackward (dQ, dK, dV from the forward's output and log-sum-exps), median ms (TFLOP/s, 2.5x the forward's FLOPs)\n")
print("| N | flux cuda, full | torch SDPA flash | flux vs flash | flux cuda, sink + window | torch flex_attention | flux vs flex |")
print("|---|---|---|---|---|---|---|")
for n in ns:
    f, fl = get("flux", "backward_full", n, "cuda"), get("sdpa_flash", "backward_full", n)
    s_, x = get("flux", "backward_streaming", n, "cuda"), get("flex", "backward_streaming", n)
    if f or fl:
        print(f"| {n} | {cell(f, 'tflops')} | {cell(fl, 'tflops')} | {ratio(f, fl)} | {cell(s_, 'tflops')} | {cell(x, 'tflops')} | {ratio(s_, x)} |")

print("\nDecode, one query per sequence, median us (effective TB/s of K and V read)\n")
print("| N | flux cuda full | flux wgpu full | torch SDPA full | flux cuda sink+window | torch SDPA on a gathered sink+window cache |")
print("|---|---|---|---|---|---|")
for n in ns:
    print(f"| {n} | {cell(get('flux', 'decode_full', n, 'cuda'), 'gbs')} | {cell(get('flux', 'decode_full', n, 'wgpu'), 'gbs')} | "
          f"{cell(get('sdpa', 'decode_full', n), 'gbs')} | {cell(get('flux', 'decode_streaming', n, 'cuda'), 'gbs')} | "
          f"{cell(get('sdpa_gathered', 'decode_streaming', n), 'gbs')} |")

print("\nXAttention (block 128, stride 16, threshold 0.9) on random inputs: device scoring + selection, then block-sparse prefill\n")
print("| N | backend | scoring + selection | block-sparse prefill (kept share of causal blocks) | full prefill (same run) |")
print("|---|---|---|---|---|")
for n in ns:
    for backend in ("cuda", "wgpu"):
        sel = get("flux", "xattention_select", n, backend)
        pre = next((r for r in rows if r["op"].startswith("prefill_xattention") and r["n"] == n and r["backend"] == backend), None)
        if sel is None or pre is None:
            continue
        density = pre["op"].rsplit("_", 1)[1]
        print(f"| {n} | {backend} | {sel['ms']:.3f} ms | {pre['ms']:.3f} ms ({density}) | {cell(get('flux', 'prefill_full', n, backend), 'tflops')} |")
