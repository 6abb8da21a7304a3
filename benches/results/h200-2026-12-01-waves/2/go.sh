#!/bin/bash
# Call 2: second GGUF chunk; split-KV decode in whole waves against the old 1024-cube target
# (issue 12 item 3), correctness first.
set -u
cd "$(dirname "$0")/../.."
cat .bin/k2/ggb >> /tmp/models/gg.part; ls -la /tmp/models/gg.part
gunzip -c .bin/k2/ak.gz > /tmp/ak && chmod +x /tmp/ak
timeout 150 /tmp/ak --check-dtypes bf16,f16 --check-only > $OUT/check.out 2>&1
echo "check exit $?"; grep -E "nq=[123] |all cases|FAIL|rror" $OUT/check.out | head -20
for c in default 1024 1320 1980 330; do
  if [ $c = default ]; then unset FLUX_SPLIT_CUBES; else export FLUX_SPLIT_CUBES=$c; fi
  timeout 100 /tmp/ak --check-dtypes "" --lengths 4096,32768,65536,131072 --decode-only --seconds 0.3 --json $OUT/decode-$c.jsonl > $OUT/decode-$c.out 2>&1
  echo "cubes $c exit $?"
  python3 -c "
import json
for r in map(json.loads, open('$OUT/decode-$c.jsonl')):
  if r['op'].startswith('decode'): print('$c', r['op'], r['n'], round(r['ms']*1000,1), 'us', round(r['gbs'],0), 'GB/s', r['rel_err'])"
done
