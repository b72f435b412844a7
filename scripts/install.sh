#!/usr/bin/env bash
# Install safebench into the active Python environment.
#
#   bash scripts/install.sh            # what `safebench run` needs
#   bash scripts/install.sh --test     # + test tools, the vLLM engine and Chromium (for the HTML report test)
#
# torch: TORCH_SPEC defaults to the CPU build pinned for machines without a GPU
# (torch==2.13.0). On a CUDA machine set TORCH_SPEC=torch (pip then takes the CUDA build)
# and use scripts/install-vllm.sh --gpu for vLLM.
#
# Versions: every package is held to requirements/ci-lock.txt (pip's -c constraints), the set CI
# tested; scripts/refresh-lock.sh rewrites it. SAFEBENCH_LOCK=FILE uses another file,
# SAFEBENCH_LOCK=none resolves afresh (CUDA machines: the lock is the CPU set).
set -euo pipefail

PYTHON="${PYTHON:-python}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
SAFEBENCH_LOCK="${SAFEBENCH_LOCK:-$ROOT/requirements/ci-lock.txt}"
LOCK_ARGS=()
if [[ "$SAFEBENCH_LOCK" != none ]]; then
  [[ -f "$SAFEBENCH_LOCK" ]] || { echo "SAFEBENCH_LOCK=$SAFEBENCH_LOCK: no such file" >&2; exit 2; }
  LOCK_ARGS=(-c "$SAFEBENCH_LOCK")
fi
TEST=0
case "${1:-}" in
  --test) TEST=1 ;;
  "") ;;
  *) echo "usage: $0 [--test]" >&2; exit 2 ;;
esac

"$PYTHON" -m pip install --upgrade --quiet "${LOCK_ARGS[@]}" pip
# torch first and pinned, so that nothing below pulls a multi-GB CUDA build on a CPU machine.
"$PYTHON" -m pip install --quiet "${LOCK_ARGS[@]}" "$TORCH_SPEC"
if [[ "$TEST" == 1 ]]; then
  "$PYTHON" -m pip install --quiet "${LOCK_ARGS[@]}" -e "$ROOT[test,gguf]"
  PYTHON="$PYTHON" SAFEBENCH_LOCK="$SAFEBENCH_LOCK" bash "$ROOT/scripts/install-vllm.sh"
  if ! command -v chromium >/dev/null 2>&1; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
      echo "install Chromium (Debian: apt-get install chromium) for the HTML report browser test" >&2
      exit 1
    fi
  fi
else
  "$PYTHON" -m pip install --quiet "${LOCK_ARGS[@]}" -e "$ROOT"
fi
echo "safebench installed: $("$PYTHON" -m safebench.cli --version)"
