#!/usr/bin/env bash
# Rewrite requirements/ci-lock.txt: the full dependency set of `scripts/install.sh --test`,
# resolved afresh (without the current lock) in a new venv, as `pip freeze --all` lists it.
#
#   bash scripts/refresh-lock.sh            # CPU machine, Python 3.11, Linux x86_64 (what CI uses)
#
# safebench itself is left out (install.sh installs it from the checkout), and torch's local
# build label (+cpu) is dropped: `torch==2.13.0` matches the CPU wheel and PyPI's alike.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCK="$ROOT/requirements/ci-lock.txt"
VENV="$(mktemp -d)/venv"
trap 'rm -rf "$(dirname "$VENV")"' EXIT

python3 -m venv "$VENV"
PYTHON="$VENV/bin/python" SAFEBENCH_LOCK=none bash "$ROOT/scripts/install.sh" --test
{
  echo "# The dependency set CI installs (scripts/install.sh, .ci/run use it as pip's -c constraints)."
  echo "# Made by scripts/refresh-lock.sh on $("$VENV/bin/python" -c 'import platform; print(f"Python {platform.python_version()}, {platform.system()} {platform.machine()}")'); do not edit by hand."
  "$VENV/bin/python" -m pip freeze --all --exclude safebench | sed -E 's/^(torch==[^+]+)\+.*/\1/'
} > "$LOCK.tmp"
mv "$LOCK.tmp" "$LOCK"
echo "wrote $LOCK ($(grep -vc '^#' "$LOCK") packages)"
