#!/bin/bash
# NOT RUN: prepared for call 4 of 2026-12-01, but no device was lent after call 1. Expects in
# .bin/c4: e2e.gz, eval.gz, gpu_bf16.gz (cargo test --release -p flux-models --features cuda
# --test gpu_bf16 --no-run), all.jsonl.gz (the eval suite of RESULTS, sha256 79340b4f...),
# bf16-800.safetensors, the gguf 0.19.0 wheel; and the SmolLM2 GGUF under /tmp/models (calls 2-3).
cd "$(dirname "$0")/../.."
M=/tmp/models/smollm2-135m-instruct; G=$M/SmolLM2-135M-Instruct.Q4_1.gguf
echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  $G" | sha256sum -c || exit 1
for b in e2e eval gpu_bf16; do gunzip -c .bin/c4/$b.gz > /tmp/$b && chmod +x /tmp/$b; done
gunzip -c .bin/c4/all.jsonl.gz > /tmp/all.jsonl; sha256sum /tmp/all.jsonl
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .bin/c4/*.whl && export PYTHONPATH=/tmp/site
python3 scripts/make-reference.py --bf16 $G flux-models/tests/fixtures/reference/smollm2-bf16.json 2>&1 | grep -v Warning | tail -6
cp flux-models/tests/fixtures/reference/smollm2-bf16.json $OUT/
mkdir -p /work && ln -sfn "$PWD" /work/main
FLUX_MODELS_DIR=/tmp/models /tmp/gpu_bf16 --nocapture 2>&1 | tee $OUT/gpu_bf16.out | tail -14
/tmp/e2e --backend cuda --config benches/configs/smollm2-135m.json --random-weights \
  --prompt-tokens 1024,4096 --batch 4 --plans all-full,all-sparse --decode-tokens 32 >$OUT/batch-smollm2.out 2>&1
grep -E "batch of|^\|" $OUT/batch-smollm2.out
/tmp/e2e --backend cuda --config llama-3.1-8b --random-weights --prompt-tokens 4096,16384 --batch 4 \
  --plans all-full,fraction:0.9 --decode-tokens 16 >$OUT/batch-8b.out 2>&1
grep -E "batch of|^\|" $OUT/batch-8b.out
mkdir -p /tmp/ev
for mode in triangle xattention; do
  /tmp/eval --backend cuda --model $G --tasks /tmp/all.jsonl --plan all-sparse \
    --router .bin/c4/bf16-800.safetensors --sparse-mode $mode --window 1024 --out /tmp/ev/$mode >/tmp/ev/$mode.log 2>&1
  echo "eval $mode: exit $?"; grep -E "^\| (mean|task)" /tmp/ev/$mode.log | head -4
done
tar czf $OUT/eval.tar.gz -C /tmp/ev .
