"""A generation stage killed midway resumes with only the prompts not yet done, and ends
with exactly the rows an uninterrupted run writes (sampling, so the seeds must line up)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from safebench.cli import main
from tests.evals.backend_helpers import count_rows, samples
from tests.helpers import ROOT

SETTINGS = ["--suite", "tiny-harmful", "--limit", "48", "--backend", "hf", "--quiet",
            "--set", "generation.temperature=1.0", "--set", "generation.k=2", "--set", "generation.batch_size=4",
            "--set", "generation.max_new_tokens=24"]
TOTAL = 48 * 2


@pytest.mark.slow
def test_killed_generation_resumes(tiny_checkpoints, tmp_path, capsys):
    policy = str(tiny_checkpoints["policy"])
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    process = subprocess.Popen([sys.executable, "-m", "safebench.cli", "generate", "--model", policy,
                                "--out", str(killed), *SETTINGS], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while count_rows(killed) < 8 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done_before = count_rows(killed)
    assert 0 < done_before < TOTAL, f"the kill did not land midway ({done_before} of {TOTAL} rows)"
    before = samples(killed)

    assert main(["generate", "--model", policy, "--out", str(killed), *SETTINGS]) == 0
    out = capsys.readouterr().out
    assert f"{TOTAL - done_before} sample(s) generated, {done_before} reused" in out
    after = samples(killed)
    assert all(after[key] == row for key, row in before.items())   # finished rows were not redone

    assert main(["generate", "--model", policy, "--out", str(whole), *SETTINGS]) == 0
    reference = samples(whole)
    assert len(reference) == len(after) == TOTAL
    assert after == reference
    assert len({row["response"] for row in reference.values()}) > TOTAL // 4   # sampled, not constant
