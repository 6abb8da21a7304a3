#!/bin/bash
# Call 8: full and sink + window decode (whole-wave split-KV) beside torch in the same call.
set -u
cd "$(dirname "$0")/../.."
gunzip -c .bin/k8/ak.gz > /tmp/ak && chmod +x /tmp/ak
L=16384,32768,65536,131072
timeout 120 /tmp/ak --check-dtypes "" --lengths $L --decode-only --seconds 0.5 --json $OUT/flux.jsonl > $OUT/flux.out 2>&1
echo "flux exit $?"
PYTHONUNBUFFERED=1 timeout 300 python3 benches/torch_attention.py --lengths $L --backward-up-to 0 --json $OUT/torch.jsonl > $OUT/torch.out 2>&1
echo "torch exit $?"
python3 - <<PY
import json
for f in ["$OUT/flux.jsonl", "$OUT/torch.jsonl"]:
    for r in map(json.loads, open(f)):
        if "decode" in r["op"]:
            print(r.get("impl"), r["op"], r["n"], round(r["ms"]*1000, 1), "us", r.get("gbs"))
PY
