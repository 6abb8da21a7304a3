#!/usr/bin/env bash
# On the GPU machine (benches/RESULTS.md says how it was used): trains routers with the
# binaries carried in .bin/ (gzip'd) on router data, then writes the router file and its
# manifest into $OUT, with the training log, the GPU memory trace, the step log and run.json
# in one archive, logs-NAME.tgz.
#
#   scripts/device-train.sh MODEL DATA_DIR NAME [train_router flags...]
#
# The run folder lives in /tmp/run-NAME, which survives between calls while the machine is
# warm: calling again with the same NAME and `--resume` continues a run that outlasted one call.
set -euo pipefail
model="$1" data="$2" name="$3"
shift 3
out="${OUT:-/tmp/out}"
mkdir -p "$out" /tmp/flux-bin
for b in train_router router_report; do
  src="${FLUX_BIN_DIR:-.bin/exe}/$b.gz"
  if [ -f "$src" ]; then gunzip -c "$src" > "/tmp/flux-bin/$b"; chmod +x "/tmp/flux-bin/$b"; fi
done
nvidia-smi --query-gpu=index,memory.used --format=csv,noheader,nounits -lms 500 > "$out/mem-$name.csv" &
mem=$!
run="/tmp/run-$name"
# A failed or timed-out run (FLUX_TRAIN_TIMEOUT seconds) still leaves its logs in $OUT.
limit="${FLUX_TRAIN_TIMEOUT:-590}"
status=0
set +e
if printf '%s\n' "$@" | grep -q -- '--resume'; then
  timeout "$limit" /tmp/flux-bin/train_router --backend cuda --model "$model" --data "$data" \
    --out "$out/$name.safetensors" --quiet "$@" 2>&1 | tee -a "$out/train-$name.log"
  status=${PIPESTATUS[0]}
else
  timeout "$limit" /tmp/flux-bin/train_router --backend cuda --model "$model" --data "$data" \
    --out "$out/$name.safetensors" --run-dir "$run" --quiet "$@" 2>&1 | tee "$out/train-$name.log"
  status=${PIPESTATUS[0]}
fi
set -e
kill $mem || true
cp "$run/metrics.jsonl" "$out/metrics-$name.jsonl" 2>/dev/null || true
cp "$run/run.json" "$out/run-$name.json" 2>/dev/null || true
# Peak memory per GPU (index, MiB).
sort -t, -k1,1n -k2,2n "$out/mem-$name.csv" | awk -F', ' '{peak[$1]=$2} END {for (g in peak) print "peak GPU " g " memory MiB: " peak[g]}'
# A call brings back about eight files of at most about 10 MB each: the logs travel as one
# archive, beside the router file and its manifest.
( cd "$out" && tar czf "logs-$name.tgz" "train-$name.log" "mem-$name.csv" "metrics-$name.jsonl" "run-$name.json" 2>/dev/null \
    && rm -f "train-$name.log" "mem-$name.csv" "metrics-$name.jsonl" "run-$name.json" ) || true
exit "$status"
