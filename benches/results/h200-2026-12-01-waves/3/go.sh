#!/bin/bash
# Call 3: last GGUF chunk; bf16 SmolLM2 against transformers bf16 (issue 13 item 1); eval with
# triangle and xattention as the sparse mode, and the short-math suite (issue 11).
set -u
cd "$(dirname "$0")/../.."
M=/tmp/models/smollm2-135m-instruct; G=$M/SmolLM2-135M-Instruct.Q4_1.gguf
cat /tmp/models/gg.part .bin/k3/ggc > $G
echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  $G" | sha256sum -c || exit 1
for b in eval gpu_bf16; do gunzip -c .bin/k3/$b.gz > /tmp/$b && chmod +x /tmp/$b; done
gunzip -c .bin/k3/all.jsonl.gz > /tmp/all.jsonl; gunzip -c .bin/k3/math.jsonl.gz > /tmp/math.jsonl
sha256sum /tmp/all.jsonl /tmp/math.jsonl
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .bin/k3/*.whl && export PYTHONPATH=/tmp/site
timeout 150 python3 scripts/make-reference.py --bf16 $G flux-models/tests/fixtures/reference/smollm2-bf16.json 2>&1 | grep -v Warning | tail -6
cp flux-models/tests/fixtures/reference/smollm2-bf16.json $OUT/
mkdir -p /work && ln -sfn "$PWD" /work/main
FLUX_MODELS_DIR=/tmp/models timeout 120 /tmp/gpu_bf16 --nocapture > $OUT/gpu_bf16.out 2>&1
echo "gpu_bf16 exit $?"; tail -14 $OUT/gpu_bf16.out
mkdir -p /tmp/ev
R=.bin/k3/bf16-800.safetensors
for mode in triangle xattention; do
  timeout 150 /tmp/eval --backend cuda --model $G --tasks /tmp/all.jsonl --plan all-sparse \
    --router $R --sparse-mode $mode --window 1024 --out /tmp/ev/$mode >/tmp/ev/$mode.log 2>&1
  echo "eval $mode: exit $?"; grep -E "^\| (mean|task)" /tmp/ev/$mode.log | head -4
done
timeout 200 /tmp/eval --backend cuda --model $G --tasks /tmp/math.jsonl --samples 12 --plan all-full --plan all-sparse \
  --router $R --window 1024 --out /tmp/ev/math >/tmp/ev/math.log 2>&1
echo "eval math: exit $?"; grep -E "^\|" /tmp/ev/math.log | head -8
tar czf $OUT/eval.tar.gz -C /tmp/ev .
