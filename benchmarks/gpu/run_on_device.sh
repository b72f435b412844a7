#!/bin/bash
# On the lent GPU machine: gather the bundle's parts (see build_vllm_bundle.sh), unpack the
# site to /tmp/site and run the GPU generation benchmark. Each earlier call copies its part with
#   mkdir -p /tmp/stash && cp .gpu/pK/* /tmp/stash/
# and the last call (carrying the last part, which holds this script) runs
#   bash .gpu/pN/run_on_device.sh
# Results: $OUT/generation-gpu.json and $OUT/log.txt.
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 TOKENIZERS_PARALLELISM=false
# The bundle leaves FlashInfer out; vLLM's sampler would import it unless told not to.
export VLLM_USE_FLASHINFER_SAMPLER=0
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p /tmp/stash && cp "$HERE"/* /tmp/stash/
if [ ! -d /tmp/site/vllm ]; then
  cat /tmp/stash/site.part.* > /tmp/site.tar.zst
  echo "sha256 $(sha256sum /tmp/site.tar.zst | cut -d' ' -f1) want $(cat /tmp/stash/site.sha256)"
  python3 - <<'PY'
import glob, sys, tarfile, zipfile
zipfile.ZipFile(glob.glob("/tmp/stash/zstandard-*.whl")[0]).extractall("/tmp/zstd")
sys.path.insert(0, "/tmp/zstd")
import zstandard
with open("/tmp/site.tar.zst", "rb") as fh, zstandard.ZstdDecompressor().stream_reader(fh) as reader:
    tarfile.open(fileobj=reader, mode="r|").extractall("/tmp/site")
PY
fi
export PYTHONPATH=/tmp/site:$PWD
python3 -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
timeout "${BENCH_TIMEOUT:-420}" python3 benchmarks/generation.py --gpu --models "${MODELS:-smol-135m,tiny}" \
    --out "$OUT/generation-gpu.json" --cache /tmp/bench-models 2>&1 | tee "$OUT/log.txt"
