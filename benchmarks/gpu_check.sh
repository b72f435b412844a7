#!/bin/bash
# Issue 17's GPU check, for a lent GPU machine (DEVELOPERS.md, "GPU checks"): run as the last call,
# after the vLLM bundle's parts are unpacked (benchmarks/gpu/run_on_device.sh puts the site in
# /tmp/site), from the repository root:   bash benchmarks/gpu_check.sh
# 1. the dry run's PPO memory against CUDA's peak (one PPO-Lag iteration at smol's shape, bf16);
# 2. the paper preset's loading code on stand-ins (scripts/build_offline_hub.py), PPO on the GPU;
# 3. the pending generation benchmark (vLLM >= 5x HF at batch 32), if vLLM imports.
# Results under $OUT (plan_memory_gpu.json, log.txt, generation-gpu.json). Not yet run on a GPU.
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 TOKENIZERS_PARALLELISM=false
export VLLM_USE_FLASHINFER_SAMPLER=0
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
[ -d /tmp/site ] && export PYTHONPATH=/tmp/site:$PWD || export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader | tee "$OUT/log.txt"
timeout 240 python3 benchmarks/plan_memory.py --gpu --cases smol-ppo-lag,tiny-ppo-lag \
    --out "$OUT/plan_memory_gpu.json" 2>&1 | tee -a "$OUT/log.txt"
timeout 180 python3 -m pytest -q -x -p no:cacheprovider tests/test_offline_paper.py 2>&1 | tail -5 | tee -a "$OUT/log.txt"
if python3 -c "import vllm" 2>/dev/null; then
  timeout 300 python3 benchmarks/generation.py --gpu --models "${MODELS:-smol-135m,tiny}" \
      --out "$OUT/generation-gpu.json" --cache /tmp/bench-models 2>&1 | tail -20 | tee -a "$OUT/log.txt"
else
  echo "vllm does not import: generation benchmark skipped" | tee -a "$OUT/log.txt"
fi
