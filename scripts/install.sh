#!/usr/bin/env bash
# Install safebench into the active Python environment.
#
#   bash scripts/install.sh            # what `safebench run` needs
#   bash scripts/install.sh --test     # + test tools, the vLLM engine and Chromium (for the HTML report test)
#
# torch: TORCH_SPEC defaults to the CPU build pinned for machines without a GPU
# (torch==2.13.0). On a CUDA machine set TORCH_SPEC=torch (pip then takes the CUDA build)
# and use scripts/install-vllm.sh --gpu for vLLM.
set -euo pipefail

PYTHON="${PYTHON:-python}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
TEST=0
case "${1:-}" in
  --test) TEST=1 ;;
  "") ;;
  *) echo "usage: $0 [--test]" >&2; exit 2 ;;
esac

"$PYTHON" -m pip install --upgrade --quiet pip
# torch first and pinned, so that nothing below pulls a multi-GB CUDA build on a CPU machine.
"$PYTHON" -m pip install --quiet "$TORCH_SPEC"
if [[ "$TEST" == 1 ]]; then
  "$PYTHON" -m pip install --quiet -e "$ROOT[test,gguf]"
  PYTHON="$PYTHON" bash "$ROOT/scripts/install-vllm.sh"
  if ! command -v chromium >/dev/null 2>&1; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
      echo "install Chromium (Debian: apt-get install chromium) for the HTML report browser test" >&2
      exit 1
    fi
  fi
else
  "$PYTHON" -m pip install --quiet -e "$ROOT"
fi
echo "safebench installed: $("$PYTHON" -m safebench.cli --version)"
