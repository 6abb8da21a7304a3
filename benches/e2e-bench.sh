#!/usr/bin/env bash
# flux's e2e beside HF transformers on one GPU, for the models and lengths of issue 13's
# comparison, with random weights (the speed does not depend on them); one table per model.
# The small models run their trained routers (on random weights their choices mean nothing, but
# their cost and the routed-against-forced check are real); the 8B shape fresh routers.
#
#   BIN=target/release/e2e OUT=results benches/e2e-bench.sh
#
# BIN: the e2e binary (built with --features cuda); OUT: where the JSON rows, the raw outputs
# and table.md go; MODELS: a subset of "smollm2 qwen25 llama8b" (default: all three);
# LONG=1 adds 64K and 128K for the 8B shape (minutes per row).
set -u
BIN=${BIN:-target/release/e2e}
OUT=${OUT:-benches/results/e2e-$(date +%Y%m%d-%H%M)}
MODELS=${MODELS:-"smollm2 qwen25 llama8b"}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
# Each step's peak device memory: nvidia-smi sampled every 200 ms while it runs (the whole GPU,
# which runs nothing else there; for flux this includes cubecl's pooled reservations).
step() {
  local name=$1; shift; local s=$(date +%s) sampler=
  if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$OUT/$name.mem" 2> /dev/null &
    sampler=$!
  fi
  "$@" > "$OUT/$name.txt" 2>&1; local rc=$?
  [ -n "$sampler" ] && kill "$sampler" 2> /dev/null
  local peak=$( [ -s "$OUT/$name.mem" ] && sort -n "$OUT/$name.mem" | tail -1 )
  echo "$name rc=$rc $(( $(date +%s) - s )) s, peak device memory ${peak:-?} MiB"
}
for m in $MODELS; do
  case $m in
    smollm2) cfg=$HERE/configs/smollm2-135m.json; lens=1024,4096,8064; plans=all-full,all-sparse
      routers="--router $HERE/../routers/smollm2-135m-instruct/routers.safetensors";;
    qwen25) cfg=$HERE/configs/qwen2.5-0.5b.json; lens=4096,16384,32000; plans=all-full,all-sparse,fraction:0.9
      routers="--router $HERE/../routers/qwen2.5-coder-0.5b-instruct/routers.safetensors";;
    llama8b) cfg=llama-3.1-8b; lens=4096,32768${LONG:+,65536,131072}; plans=all-full,fraction:0.9
      routers=--random-routers;;
    *) echo "unknown model $m"; exit 2;;
  esac
  tcfg=$cfg; [ "$m" = llama8b ] && tcfg=$HERE/../flux-models/configs/llama-3.1-8b.json
  step "$m-flux" "$BIN" --backend cuda --config "$cfg" --random-weights --name "$m" --prompt-tokens $lens \
    --plans $plans $routers --decode-tokens 32 --repeats 3 --json "$OUT/rows.jsonl"
  step "$m-torch" python3 "$HERE/torch_e2e.py" --config "$tcfg" --name "$m" --prompt-tokens $lens \
    --decode-tokens 32 --repeats 3 --json "$OUT/rows.jsonl"
done
python3 "$HERE/e2e_table.py" "$OUT/rows.jsonl" | tee "$OUT/table.md"
