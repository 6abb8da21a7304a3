#!/usr/bin/env bash
# MMA kernel for decode too (one warp per cube, split-KV): correctness, ptxas, timings, torch.
set -u
gunzip -c .bin/mma4/ak.gz > /tmp/ak && chmod +x /tmp/ak
export CUBECL_DEBUG_LOG=$OUT/kernels.log
timeout 240 /tmp/ak --check-dtypes bf16,f16 --check-only > $OUT/check.log 2>&1; echo "check rc $?" >> $OUT/check.log
grep -E "check|rc " $OUT/check.log | grep -v xattention | head -40
unset CUBECL_DEBUG_LOG
grep -q "rc 0" $OUT/check.log || { tail -20 $OUT/check.log; gzip -f $OUT/kernels.log; exit 1; }
python3 - $OUT/kernels.log $OUT <<'PY'
import re, subprocess, sys, os
text = open(sys.argv[1], errors="replace").read()
blocks = re.findall(r"\[START_KERNEL_COMPILATION\]\nname: (.*?)\n.*?cube_dim: CubeDim \{\n\s*x: (\d+),\n\s*y: (\d+).*?head_dim: (\d+),\n\s*group: (\d+),\n\s*rule: (\d+),.*?m_tiles: (\d+),\n\s*split: (\w+),\n\s*dtype: (.*?),\n.*?source:\n```\w*\n(.*?)\n```", text, re.S)
for i, (name, x, y, d, g, rule, mt, sp, dt, src) in enumerate(blocks):
    if "mma" not in name.lower() or "F16" in dt and "BF16" not in dt: continue
    src = src.replace("uint64 *mbar_ptr", "auto *mbar_ptr")
    cu = os.path.join(sys.argv[2], f"k{i}.cu"); open(cu, "w").write(src)
    r = subprocess.run(["nvcc", "-arch=sm_90a", "-cubin", "-O3", "-Xptxas", "-v", "-o", cu[:-3] + ".cubin", cu], capture_output=True, text=True)
    m = re.findall(r"Used \d+ registers|\d+ bytes spill stores, \d+ bytes spill loads|\d+ bytes stack frame", r.stderr)
    print(f"ptxas d={d} group={g} rule={rule} {dt} warps={y} m_tiles={mt} split={sp}: {m} rc={r.returncode}")
    if r.returncode: print(r.stderr[:800])
    os.remove(cu)
PY
L=4096,16384,32768,65536,131072
env timeout 200 /tmp/ak --check-dtypes "" --lengths $L --burn-up-to 0 --xattention-up-to 0 --seconds 0.5 --json $OUT/flux.jsonl 2>&1 | grep -v "^{" | tail -5
python3 -c "
import json
for r in map(json.loads, open('$OUT/flux.jsonl')): print(r['op'], r['n'], r['ms'], r['tflops'], r['gbs'], r['rel_err'])"
echo "== torch"
timeout 150 python3 benches/torch_attention.py --lengths 65536,131072 --json $OUT/torch.jsonl 2>&1 | grep -v "^{" | tail -3
python3 -c "
import json
for r in map(json.loads, open('$OUT/torch.jsonl')): print(r['impl'], r['op'], r['n'], r['ms'], r['tflops'], r['gbs'])"
gzip -f $OUT/kernels.log
