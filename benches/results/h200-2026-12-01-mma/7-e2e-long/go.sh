#!/usr/bin/env bash
# 8B shape at 64K and 128K after the MMA attention and RoPE kernels, transformers beside it.
set -u
gunzip -c .bin/e2e7/e2e.gz > /tmp/e2e && chmod +x /tmp/e2e
cfg=flux-models/configs/llama-3.1-8b.json
s=$(date +%s)
timeout 330 /tmp/e2e --backend cuda --config llama-3.1-8b --random-weights --name llama8b --prompt-tokens 65536,131072 \
  --plans all-full,fraction:0.9 --random-routers --decode-tokens 16 --repeats 1 --warmup-tokens 4096 --json $OUT/rows.jsonl > $OUT/flux.txt 2>&1
echo "flux rc=$? $(( $(date +%s) - s )) s"; s=$(date +%s)
timeout 200 python3 benches/torch_e2e.py --config $cfg --name llama8b --prompt-tokens 65536,131072 \
  --decode-tokens 16 --repeats 1 --json $OUT/rows.jsonl > $OUT/torch.txt 2>&1
echo "torch rc=$? $(( $(date +%s) - s )) s"
python3 benches/e2e_table.py $OUT/rows.jsonl | tee $OUT/table.md
tail -5 $OUT/flux.txt
