#!/usr/bin/env bash
# flux e2e beside transformers after the RoPE kernel (SmolLM2 and 8B shapes), with peak memory.
set -u
gunzip -c .bin/e2e6/e2e.gz > /tmp/e2e && chmod +x /tmp/e2e
BIN=/tmp/e2e OUT=$OUT MODELS="smollm2 llama8b" timeout 570 bash benches/e2e-bench.sh
rm -f $OUT/*.mem
