#!/bin/bash
# Call 7: second part of the gzipped GGUF; the bf16 parity test against transformers bf16 (issue 13
# item 1), whose reference (smollm2-bf16.json) call 3 made and the tree now holds.
set -u
cd "$(dirname "$0")/../.."
M=/tmp/models/smollm2-135m-instruct; G=$M/SmolLM2-135M-Instruct.Q4_1.gguf; mkdir -p $M
cat /tmp/smol.gguf.gz.part .bin/k7/gb | gunzip -c > $G
echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  $G" | sha256sum -c || exit 1
gunzip -c .bin/k7/gpu_bf16.gz > /tmp/gpu_bf16 && chmod +x /tmp/gpu_bf16
mkdir -p /work && ln -sfn "$PWD" /work/main
FLUX_MODELS_DIR=/tmp/models timeout 120 /tmp/gpu_bf16 --nocapture > $OUT/gpu_bf16.out 2>&1
echo "gpu_bf16 exit $?"; tail -16 $OUT/gpu_bf16.out
