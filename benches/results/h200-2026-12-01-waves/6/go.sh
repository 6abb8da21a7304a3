#!/bin/bash
# Call 6: first part of the gzipped SmolLM2 GGUF; both fused residual adds (in-layer and across
# layers) against burn's adds and norms (FLUX_NO_FUSED_ADD_NORM=1), same binary, alternated.
set -u
cd "$(dirname "$0")/../.."
cat .bin/k6/ga > /tmp/smol.gguf.gz.part
gunzip -c .bin/k6/e2e.gz > /tmp/e2e && chmod +x /tmp/e2e
S=benches/configs/smollm2-135m.json
for round in 1 2 3; do
  for off in 0 1; do
    if [ $off = 1 ]; then export FLUX_NO_FUSED_ADD_NORM=1; else unset FLUX_NO_FUSED_ADD_NORM; fi
    timeout 90 /tmp/e2e --backend cuda --config $S --random-weights --prompt-tokens 1024,4096 --plans all-full \
      --decode-tokens 64 >$OUT/smollm2-off$off-r$round.out 2>&1
    echo "smollm2 off=$off round $round exit $?"; grep -E "^\| bench" $OUT/smollm2-off$off-r$round.out
  done
done
for round in 1 2; do
  for off in 0 1; do
    if [ $off = 1 ]; then export FLUX_NO_FUSED_ADD_NORM=1; else unset FLUX_NO_FUSED_ADD_NORM; fi
    timeout 150 /tmp/e2e --backend cuda --config llama-3.1-8b --random-weights --prompt-tokens 4096,32768 --plans all-full \
      --decode-tokens 32 >$OUT/8b-off$off-r$round.out 2>&1
    echo "8b off=$off round $round exit $?"; grep -E "^\| llama" $OUT/8b-off$off-r$round.out
  done
done
cd $OUT && tar czf smollm2.tar.gz smollm2-*.out && rm smollm2-*.out && tar czf 8b.tar.gz 8b-*.out && rm 8b-*.out
