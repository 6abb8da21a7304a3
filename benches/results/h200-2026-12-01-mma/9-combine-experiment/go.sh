#!/usr/bin/env bash
# Combine with staged split maxima and eight loads in flight: decode check and timings.
set -u
gunzip -c .bin/dec9/ak.gz > /tmp/ak && chmod +x /tmp/ak
timeout 100 /tmp/ak --check-dtypes bf16 --check-only 2>&1 | grep -E "nq=[123] |all cases"
timeout 120 /tmp/ak --check-dtypes "" --lengths 4096,32768,131072 --burn-up-to 0 --xattention-up-to 0 --seconds 0.3 --json $OUT/flux.jsonl > /dev/null 2>&1
python3 -c "
import json
for r in map(json.loads, open('$OUT/flux.jsonl')): print(r['op'], r['n'], r['ms'], r['tflops'], r['gbs'], r['rel_err'])"
