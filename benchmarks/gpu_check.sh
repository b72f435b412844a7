#!/bin/bash
# Issue 17's GPU check, for a lent GPU machine (DEVELOPERS.md, "GPU checks"): run as the last call,
# after the vLLM bundle's parts are unpacked (benchmarks/gpu/run_on_device.sh puts the site in
# /tmp/site), from the repository root:   bash benchmarks/gpu_check.sh
# 1. the dry run's PPO memory against CUDA's peak (one PPO-Lag iteration at smol's shape, bf16);
# 2. the paper preset on stand-ins (scripts/build_offline_hub.py) through its launch file
#    (trainers/launch/paper.yaml, FSDP2): every training stage launched with --num-processes 1 on
#    the GPU (NCCL; one GPU, so one process: the engine's sharding, gathering and saving code on
#    CUDA), PPO-Lag rolling out with vLLM when it imports (the gathered actor pushed each
#    iteration); then CI's two-process rehearsal and resume test on CPU processes (gloo);
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
timeout 60 python3 scripts/build_offline_hub.py "$OUT/hf" --rows 16 2>&1 | tail -2 | tee -a "$OUT/log.txt"
# PPO's rollouts from vLLM, the sharded actor's gathered weights pushed into it each iteration
python3 -c "import vllm" 2>/dev/null && VLLM_SET="--set trainers.ppo-lag.rollout_backend=vllm"
SETS=$(python3 -c "from tests.test_offline_paper import OVERRIDES; print(' '.join('--set ' + o for o in OVERRIDES))")
# shellcheck disable=SC2086  # one word per --set and value
HF_HOME="$OUT/hf" timeout 300 python3 -m safebench.cli run --preset paper --methods sft,ppo-lag,sacpo --quiet \
    --out "$OUT/paper-gpu" --num-processes 1 $SETS ${VLLM_SET:-} 2>&1 | tail -8 | tee -a "$OUT/log.txt"
timeout 60 python3 -c "
import json, sys; from pathlib import Path; from transformers import AutoModelForCausalLM
run = Path(sys.argv[1]); manifest = json.loads((run / 'manifest.json').read_text())
for method, record in manifest['methods'].items():
    AutoModelForCausalLM.from_pretrained(run / record['checkpoint']); print(method, 'loads with from_pretrained')
" "$OUT/paper-gpu" 2>&1 | tail -4 | tee -a "$OUT/log.txt"
CUDA_VISIBLE_DEVICES= timeout 180 python3 -m pytest -q -x -p no:cacheprovider tests/test_offline_paper.py \
    tests/trainers/test_engine.py 2>&1 | tail -5 | tee -a "$OUT/log.txt"
if python3 -c "import vllm" 2>/dev/null; then
  timeout 300 python3 benchmarks/generation.py --gpu --models "${MODELS:-smol-135m,tiny}" \
      --out "$OUT/generation-gpu.json" --cache /tmp/bench-models 2>&1 | tail -20 | tee -a "$OUT/log.txt"
else
  echo "vllm does not import: generation benchmark skipped" | tee -a "$OUT/log.txt"
fi
