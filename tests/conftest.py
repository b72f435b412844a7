"""Shared fixtures. `tiny_run`: one real `safebench run --methods sft --preset tiny`, reused by
every test that needs trained tiny checkpoints or a scored run directory."""

from __future__ import annotations

import os
from pathlib import Path

# The tiny models are far too small for intra-op threads to pay off, and OpenMP threads
# spinning on a busy 2-core machine slow every process down many times over: one thread
# per process, for this process and the safebench subprocesses the tests start.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

from tests.helpers import copy_run, run_cli


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A complete tiny run (SFT, reward and cost models, generation, scores, reports)."""
    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    run_cli("run", "--methods", "sft", "--preset", "tiny", "--quiet", "--out", str(run_dir), check=True)
    return run_dir


@pytest.fixture(scope="session")
def tiny_rerun(tiny_run, tmp_path_factory):
    """The same `safebench run` again, on a copy of `tiny_run` (every stage is reused), without the
    thread setting this session exports, so that the CLI chooses torch's thread count itself:
    the copy and the command's result (stdout, stderr)."""
    from safebench import threads

    run_dir = copy_run(tiny_run, tmp_path_factory.mktemp("tiny-rerun") / "run")
    result = run_cli("run", "--methods", "sft", "--preset", "tiny", "--quiet", "--out", str(run_dir), check=True,
                     unset=threads.USER_THREAD_VARIABLES)
    return run_dir, result


@pytest.fixture(scope="session")
def tiny_checkpoints(tiny_run) -> dict[str, Path]:
    """Paths of the tiny run's SFT policy and its reward and cost models."""
    import json

    manifest = json.loads((tiny_run / "manifest.json").read_text())
    stages = manifest["stages"]
    return {
        "policy": tiny_run / manifest["methods"]["sft"]["checkpoint"],
        "reward": tiny_run / stages["reward-model"]["dir"] / "model",
        "cost": tiny_run / stages["cost-model"]["dir"] / "model",
        "data": tiny_run / stages["data"]["dir"],
    }
