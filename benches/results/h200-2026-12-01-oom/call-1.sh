#!/bin/bash
# Device call 1 (2026-12-01): out-of-memory errors, then padded-batch prefill timings.
cd "$(dirname "$0")/../.."
gunzip -c .bin/c1/e2e.gz > /tmp/e2e && chmod +x /tmp/e2e
nvidia-smi --query-gpu=name,memory.used,memory.total,driver_version --format=csv | tee $OUT/gpu.txt
python3 - <<'PY'
import json
c = json.load(open("benches/configs/smollm2-135m.json"))
c["max_position_embeddings"] = 1 << 30
json.dump(c, open("/tmp/huge-context.json", "w"))
PY
for steps in 9000000 300000000; do
  /tmp/e2e --backend cuda --config /tmp/huge-context.json --random-weights --prompt-tokens 1024 \
    --decode-tokens $steps --repeats 1 >$OUT/oom-$steps.out 2>$OUT/oom-$steps.err
  echo "exit code $?" >>$OUT/oom-$steps.err
  tail -3 $OUT/oom-$steps.err
done
/tmp/e2e --backend cuda --config benches/configs/smollm2-135m.json --random-weights \
  --prompt-tokens 1024,4096 --batch 4 --plans all-full,all-sparse --decode-tokens 32 >$OUT/batch-smollm2.out 2>&1
tail -12 $OUT/batch-smollm2.out
/tmp/e2e --backend cuda --config llama-3.1-8b --random-weights --prompt-tokens 4096,16384 --batch 4 \
  --plans all-full,fraction:0.9 --decode-tokens 16 >$OUT/batch-8b.out 2>&1
tail -12 $OUT/batch-8b.out
