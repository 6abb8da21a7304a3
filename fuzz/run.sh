#!/usr/bin/env bash
# The long libFuzzer runs of every target (nightly toolchain + cargo-fuzz), one target at a time,
# as recorded in benches/RESULTS.md ("Fuzzing the loaders"). New corpus entries go to
# fuzz/runs/<target>/ (not committed), crashes to fuzz/artifacts/<target>/, logs to fuzz/runs/logs/.
#
#   fuzz/run.sh [RUNS [SECONDS [TARGET...]]]     # defaults: 1000000 runs or 1800 s, every target
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-1000000}
secs=${2:-1800}
shift $(( $# < 2 ? $# : 2 ))
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(dequant config gguf task_file router safetensors safetensors_index chat_template gguf_tokenizer)
fuzz=(cargo +nightly fuzz run --debug-assertions --features libfuzzer --target-dir fuzz/target)
mkdir -p fuzz/runs/logs
cargo +nightly fuzz build --debug-assertions --features libfuzzer --target-dir fuzz/target
for t in "${targets[@]}"; do
  mkdir -p "fuzz/runs/$t"
  start=$(date +%s)
  rc=0
  "${fuzz[@]}" "$t" "fuzz/runs/$t" "fuzz/corpus/$t" -- -runs="$runs" -max_total_time="$secs" \
    -rss_limit_mb=2048 -malloc_limit_mb=512 -timeout=10 -print_final_stats=1 \
    >"fuzz/runs/logs/$t.log" 2>&1 || rc=$?
  echo "$t: exit $rc, $(( $(date +%s) - start )) s, $(grep -E '^#[0-9]+' "fuzz/runs/logs/$t.log" | tail -1)"
done
