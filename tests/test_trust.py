"""Fault injection on real run directories: what a rerun finds there is checked, not trusted."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tests.helpers import run_cli
from tests.trainers.test_resume_state import Payload

RUN_SFT = ("run", "--methods", "sft", "--preset", "tiny", "--quiet")


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


@pytest.mark.slow
def test_a_resumed_run_does_not_execute_a_planted_pickle(tiny_run, tmp_path):
    """SFT left unfinished with a `torch.save` payload where its resume state lives: the rerun
    trains SFT from the start, runs nothing from the file, and ends like the uninterrupted run."""
    out = _copy(tiny_run, tmp_path)
    marker = tmp_path / "payload-ran"
    (sft_dir,) = out.glob("stages/sft-*")
    (sft_dir / "DONE.json").unlink()
    state_dir = sft_dir / "work" / "state"
    state_dir.mkdir(parents=True, exist_ok=True)
    for name in ("state.pt", "tensors.safetensors"):
        torch.save({"model": Payload(marker), "step": 1}, state_dir / name)
    (state_dir / "state.json").write_text('{"value": 1}')
    result = run_cli(*RUN_SFT, "--out", str(out))
    assert not marker.exists()
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[run ] sft" in result.stderr and "starting this stage over" in result.stderr
    assert (out / "summary.md").read_text() == (tiny_run / "summary.md").read_text()
