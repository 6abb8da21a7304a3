#!/usr/bin/env bash
# flux e2e beside transformers after the register-level MMA attention kernel (Qwen2.5 and 8B shapes).
set -u
gunzip -c .bin/e2e5/e2e.gz > /tmp/e2e && chmod +x /tmp/e2e
BIN=/tmp/e2e OUT=$OUT MODELS="llama8b qwen25" timeout 570 bash benches/e2e-bench.sh
