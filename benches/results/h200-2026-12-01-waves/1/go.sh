#!/bin/bash
# Call 1: first GGUF chunk; padded-batch timings on CUDA; the same e2e on wgpu (Vulkan) and
# ndarray (the host's 16 cores), SmolLM2 shape (issue 13 items 3 and 7).
set -u
cd "$(dirname "$0")/../.."
mkdir -p /tmp/models/smollm2-135m-instruct
cat .bin/k1/gga > /tmp/models/gg.part
gunzip -c .bin/k1/e2e.gz > /tmp/e2e && chmod +x /tmp/e2e
nvidia-smi --query-gpu=name,memory.used,memory.total,driver_version --format=csv | tee $OUT/gpu.txt
S=benches/configs/smollm2-135m.json
timeout 150 /tmp/e2e --backend cuda --config $S --random-weights \
  --prompt-tokens 1024,4096 --batch 4 --plans all-full,all-sparse --decode-tokens 32 >$OUT/batch-smollm2.out 2>&1
echo "smollm2 batch exit $?"; grep -E "^\|" $OUT/batch-smollm2.out | head -20
timeout 200 /tmp/e2e --backend cuda --config llama-3.1-8b --random-weights --prompt-tokens 4096,16384 --batch 4 \
  --plans all-full,fraction:0.9 --decode-tokens 16 >$OUT/batch-8b.out 2>&1
echo "8b batch exit $?"; grep -E "^\|" $OUT/batch-8b.out | head -20
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
timeout 120 /tmp/e2e --backend wgpu --config $S --random-weights --prompt-tokens 1024,4096 \
  --plans all-full,all-sparse --decode-tokens 16 >$OUT/wgpu-smollm2.out 2>&1
echo "wgpu exit $?"; grep -iE "adapter|dtype|^\|" $OUT/wgpu-smollm2.out | head -20
timeout 100 /tmp/e2e --backend ndarray --config $S --random-weights --prompt-tokens 1024,4096 \
  --plans all-full,all-sparse --decode-tokens 8 --repeats 1 >$OUT/ndarray-smollm2.out 2>&1
echo "ndarray exit $?"; grep -E "^\|" $OUT/ndarray-smollm2.out | head -20
nproc > $OUT/nproc.txt; lscpu | grep "Model name" >> $OUT/nproc.txt
