#!/usr/bin/env bash
# MMA kernel: correctness (bf16, f16), then prefill timings beside the cmma kernel and torch.
set -u
gunzip -c .bin/mma1/ak.gz > /tmp/ak && chmod +x /tmp/ak
export CUBECL_DEBUG_LOG=$OUT/kernels.log
timeout 240 /tmp/ak --check-dtypes bf16,f16 --check-only > $OUT/check.log 2>&1; echo "check rc $?" >> $OUT/check.log
tail -30 $OUT/check.log
unset CUBECL_DEBUG_LOG
grep -q "rc 0" $OUT/check.log || { grep -m1 -B2 -A30 "error" $OUT/kernels.log | head -80; exit 1; }
L=4096,16384,32768
for cfg in "mma4:" "mma8:FLUX_MMA_WARPS=8" "cmma:FLUX_NO_MMA=1"; do
  name=${cfg%%:*}; envs=${cfg#*:}
  echo "== $name"
  env $envs timeout 120 /tmp/ak --check-dtypes "" --lengths $L --burn-up-to 0 --xattention-up-to 0 --seconds 0.5 --json $OUT/$name.jsonl 2>&1 | grep -v "^{" | tail -5
  grep prefill $OUT/$name.jsonl | python3 -c "import sys,json; [print(r['op'],r['n'],r['ms'],r['tflops'],r['rel_err']) for r in map(json.loads,sys.stdin)]"
done
echo "== torch"
timeout 120 python3 benches/torch_attention.py --lengths $L --json $OUT/torch.jsonl 2>&1 | tail -12
gzip -f $OUT/kernels.log
