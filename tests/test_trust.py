"""Fault injection on real run directories: what a rerun finds there is checked, not trusted."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from safebench.errors import UsageError
from safebench.runlock import run_lock
from tests.helpers import ROOT, run_cli
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


def _holder_pid(lock: Path) -> int | None:
    try:
        return json.loads(lock.read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


@pytest.mark.slow
def test_a_second_command_on_a_busy_run_directory_exits_2_naming_the_first(tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "safebench.cli", *RUN_SFT, "--out", str(out)], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while not (_holder_pid(out / ".lock") == first.pid and (out / "manifest.json").exists()):
            assert first.poll() is None and time.time() < deadline, "the first run never took the lock"
            time.sleep(0.05)
        for command in (RUN_SFT + ("--out", str(out)), ("score", str(out)), ("judge", str(out))):
            second = run_cli(*command)
            assert second.returncode == 2, (command, second.stderr[-2000:])
            (line,) = second.stderr.strip().splitlines()
            assert f"pid {first.pid}" in line and "in use by another safebench process" in line
        assert first.poll() is None                       # the second command changed nothing under it
    finally:
        first.kill()
        first.wait()
    # killed with SIGKILL, it released nothing itself: the lock is taken over
    with run_lock(out):
        assert _holder_pid(out / ".lock") == os.getpid()


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from safebench.runlock import run_lock; "
                               "lock = run_lock(Path(sys.argv[1])); lock.__enter__(); print('held', flush=True); "
                               "time.sleep(600)", str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UsageError, match=f"pid {holder.pid}"):
            with run_lock(tmp_path):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with run_lock(tmp_path):
        assert _holder_pid(tmp_path / ".lock") == os.getpid()


def _alive(pid: int) -> bool:
    """Running, not a zombie (a container's init may never reap an orphan)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"


def test_a_judge_server_dies_with_its_parent_killed_by_sigkill(tmp_path):
    """The tiny-oracle judge server runs in its own session; its parent killed with SIGKILL (no
    cleanup at all) still takes it down."""
    parent = subprocess.Popen(
        [sys.executable, "-c", "import time; from safebench.evals.judge.tiny_oracle_judge import "
         "serving_tiny_oracle_judge as s\nwith s() as server:\n    print(server.process.pid, flush=True)\n"
         "    time.sleep(600)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        server_pid = int(parent.stdout.readline())
        assert _alive(server_pid)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.time() + 60
    while _alive(server_pid) and time.time() < deadline:
        time.sleep(0.05)
    try:
        assert not _alive(server_pid), "the judge server outlived its killed parent"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server_pid, signal.SIGKILL)
