#!/usr/bin/env bash
# One command on a CUDA machine: flux's kernels (correctness suite in f32/f16/bf16, then timings),
# PyTorch on the same shapes, optionally flux on wgpu (Vulkan), then the tables of RESULTS.md.
#
#   BIN=path/to/attention_kernels benches/kernel-bench.sh [OUT_DIR]
#
# Build the binary with
#   CUDARC_CUDA_VERSION=13000 cargo build --release -p flux-benches --features cuda,wgpu --bin attention_kernels
# Environment: LENGTHS (default 4096,16384,32768,65536,131072), WGPU=1 to add wgpu (f32) at
# WGPU_LENGTHS (default 4096,16384). Any "panicked" on stderr fails the run: burn reports
# device-side failures there while the caller goes on (platform.md).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/attention_kernels}
OUT_DIR=${1:-bench-out}
LENGTHS=${LENGTHS:-4096,16384,32768,65536,131072}
mkdir -p "$OUT_DIR"
: > "$OUT_DIR/stderr.log"

fail_on_panic() {
  if grep -q "panicked" "$OUT_DIR/stderr.log"; then
    echo "kernel-bench: a device operation panicked:" >&2
    grep -m5 -A3 "panicked" "$OUT_DIR/stderr.log" >&2
    exit 1
  fi
}

"$BIN" --backend cuda --lengths "$LENGTHS" --json "$OUT_DIR/flux-cuda.jsonl" 2>>"$OUT_DIR/stderr.log" | tee "$OUT_DIR/flux-cuda.log"
fail_on_panic
if [ "${WGPU:-0}" = 1 ]; then
  "$BIN" --backend wgpu --dtype f32 --check-dtypes f32 --burn-up-to 0 \
    --lengths "${WGPU_LENGTHS:-4096,16384}" --json "$OUT_DIR/flux-wgpu.jsonl" 2>>"$OUT_DIR/stderr.log" | tee "$OUT_DIR/flux-wgpu.log"
  fail_on_panic
fi
PYTHONUNBUFFERED=1 python3 benches/torch_attention.py --lengths "$LENGTHS" --json "$OUT_DIR/torch.jsonl" 2>>"$OUT_DIR/stderr.log" | tee "$OUT_DIR/torch.log"
python3 benches/kernel_table.py "$OUT_DIR"/*.jsonl | tee "$OUT_DIR/tables.md"
