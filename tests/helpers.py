"""Helpers shared by tests: the project root and the real CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: Path | None = None, check: bool = False, env: dict | None = None,
            unset: tuple[str, ...] = (), timeout: float = 600) -> subprocess.CompletedProcess:
    """The real console entry point in a subprocess, as a user would run it; `env` adds to this
    process's environment, `unset` names variables to leave out of it."""
    full_env = {k: v for k, v in {**os.environ, **(env or {})}.items() if k not in unset}
    result = subprocess.run([sys.executable, "-m", "safebench.cli", *args], cwd=cwd or ROOT,
                            capture_output=True, text=True, env=full_env, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"safebench {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result

# The name under which tests/evals/conftest.py serves the tiny SFT policy (vLLM's OpenAI server).
TINY_SERVED_MODEL = "tiny-sft"
