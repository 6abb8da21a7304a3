#!/usr/bin/env bash
# MMA kernel with cp.async K/V: correctness (bf16, f16), ptxas resources, prefill timings.
set -u
gunzip -c .bin/mma2/ak.gz > /tmp/ak && chmod +x /tmp/ak
export CUBECL_DEBUG_LOG=$OUT/kernels.log
timeout 240 /tmp/ak --check-dtypes bf16,f16 --check-only > $OUT/check.log 2>&1; echo "check rc $?" >> $OUT/check.log
grep -E "Mma|all cases|rc " $OUT/check.log | head -40
unset CUBECL_DEBUG_LOG
grep -q "rc 0" $OUT/check.log || { tail -20 $OUT/check.log; grep -m1 -B2 -A30 "error" $OUT/kernels.log | head -80; gzip -f $OUT/kernels.log; exit 1; }
python3 - $OUT/kernels.log $OUT <<'PY'
import re, subprocess, sys, os
text = open(sys.argv[1], errors="replace").read()
blocks = re.findall(r"\[START_KERNEL_COMPILATION\]\nname: (.*?)\n.*?cube_dim: CubeDim \{\n\s*x: (\d+),\n\s*y: (\d+).*?head_dim: (\d+),\n\s*group: (\d+),\n\s*rule: (\d+),.*?dtype: (.*?),\n.*?source:\n```\w*\n(.*?)\n```", text, re.S)
for i, (name, x, y, d, g, rule, dt, src) in enumerate(blocks):
    if "mma" not in name.lower(): continue
    cu = os.path.join(sys.argv[2], f"mma{i}.cu"); open(cu, "w").write(src)
    r = subprocess.run(["nvcc", "-arch=sm_90a", "-cubin", "-O3", "-Xptxas", "-v", "-o", cu[:-3] + ".cubin", cu], capture_output=True, text=True)
    m = re.findall(r"Used \d+ registers|\d+ bytes spill stores, \d+ bytes spill loads|\d+ bytes stack frame", r.stderr)
    print(f"ptxas d={d} group={g} rule={rule} {dt} planes={y}: {m} rc={r.returncode}")
PY
L=4096,16384,32768,131072
for cfg in "mma4:" "mma8:FLUX_MMA_WARPS=8"; do
  name=${cfg%%:*}; envs=${cfg#*:}
  echo "== $name"
  env $envs timeout 150 /tmp/ak --check-dtypes "" --lengths $L --burn-up-to 0 --xattention-up-to 0 --seconds 0.5 --json $OUT/$name.jsonl 2>&1 | grep -v "^{" | tail -5
  grep prefill $OUT/$name.jsonl | python3 -c "import sys,json; [print(r['op'],r['n'],r['ms'],r['tflops'],r['rel_err']) for r in map(json.loads,sys.stdin)]"
done
gzip -f $OUT/kernels.log
