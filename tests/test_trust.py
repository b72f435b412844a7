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


def test_complete_is_written_after_the_report(tiny_run, tmp_path, monkeypatch):
    """Killed while the report is written, a rerun leaves a manifest that does not say complete."""
    from safebench import config as config_module, reports
    from safebench.pipeline import run_pipeline

    out = _copy(tiny_run, tmp_path)
    seen = []

    def killed_while_reporting(run_dirs, **options):
        seen.append(json.loads((out / "manifest.json").read_text())["status"])
        raise KeyboardInterrupt

    monkeypatch.setattr(reports, "write_reports", killed_while_reporting)
    config, recipes = config_module.resolve("tiny", ["sft"], [])
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config, recipes, out, quiet=True)
    assert seen == ["running"]
    assert json.loads((out / "manifest.json").read_text())["status"] == "running"


@pytest.mark.slow
def test_a_judge_that_fails_every_request_fails_the_run_and_the_judge_command(tiny_run, tmp_path):
    """A judge endpoint where nothing listens: the run writes its report with the error count,
    is not complete and exits 2 with one line; `safebench judge` exits 2 as well."""
    out = _copy(tiny_run, tmp_path)
    dead = "http://127.0.0.1:9/v1"  # the discard port: nothing answers there
    judge = {"base_url": dead, "model": "m", "max_retries": 0, "protocols": ["harmful_verdict"], "repeats": 1,
             "cache_path": str(tmp_path / "cache.sqlite")}
    result = run_cli(*RUN_SFT, "--out", str(out), "--set", f"judge={json.dumps(judge)}")
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("safebench: error:") and "the judge failed 1536 of 1536 judgment(s)" in last
    assert json.loads((out / "manifest.json").read_text())["status"] == "incomplete"
    for report in ("report.md", "report.html"):
        assert "the judge failed 1536 of 1536 judgment(s)" in (out / report).read_text()
    assert "| incomplete |" in (out / "report.md").read_text()

    again = run_cli("judge", str(out), "--no-progress", *(f"--set={k}={v}" for k, v in judge.items()
                                                          if not isinstance(v, list)),
                    "--set=protocols=[harmful_verdict]")
    assert again.returncode == 2, again.stderr[-2000:]
    assert "the judge failed 1536 of 1536 judgment(s)" in again.stderr


def _zero_fill(path: Path) -> None:
    path.write_bytes(bytes(path.stat().st_size))


def _truncate(fraction: float):
    def damage(path: Path) -> None:
        with open(path, "r+b") as handle:
            handle.truncate(int(path.stat().st_size * fraction))
    return damage


DAMAGE = {  # what is damaged, how, and the line the rerun must print
    "zero-filled checkpoint": ("stages/sft-*/model/model.safetensors", _zero_fill,
                               "model/model.safetensors differs from its recorded sha256"),
    "deleted checkpoint": ("stages/sft-*/model/model.safetensors", Path.unlink, "model/model.safetensors is missing"),
    "database truncated to 0 bytes": ("results.sqlite", _truncate(0), "results.sqlite holds 0 of its"),
    "database truncated to half": ("results.sqlite", _truncate(0.5), "[redo] results.sqlite: "),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_outputs_are_found_and_redone(tiny_run, tmp_path, case):
    """`safebench verify` finds the damage (exit 1); the rerun redoes what it touched, says why in
    one line, and ends with the numbers of the undamaged run."""
    pattern, damage, said = DAMAGE[case]
    out = _copy(tiny_run, tmp_path)
    assert run_cli("verify", str(out)).returncode == 0
    (target,) = out.glob(pattern)
    damage(target)
    found = run_cli("verify", str(out))
    assert found.returncode == 1 and "MISMATCH" in found.stdout, found.stdout + found.stderr
    result = run_cli(*RUN_SFT, "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    redo = [line for line in result.stderr.splitlines() if line.startswith("[redo]")]
    assert redo and any(said in line for line in redo), result.stderr[-2000:]
    assert (out / "summary.md").read_text() == (tiny_run / "summary.md").read_text()
    assert run_cli("verify", str(out)).returncode == 0


@pytest.mark.slow
def test_judge_verdicts_lost_with_the_database_are_judged_again(tiny_run, tmp_path):
    out = _copy(tiny_run, tmp_path)
    judge = ("--set", 'judge={"endpoint": "tiny-oracle", "protocols": ["harmful_verdict"], "repeats": 1, '
                      f'"cache_path": "{tmp_path / "cache.sqlite"}"}}')
    first = run_cli(*RUN_SFT, "--out", str(out), *judge)
    assert first.returncode == 0, first.stderr[-2000:]
    (out / "results.sqlite").write_bytes(b"")
    again = run_cli(*RUN_SFT, "--out", str(out), *judge)
    assert again.returncode == 0, again.stderr[-2000:]
    assert any(line.startswith("[redo] judge") and "judge_judgments rows" in line for line in again.stderr.splitlines())
    assert json.loads((out / "manifest.json").read_text())["judge"]["counts"]["scored"] == 1536


@pytest.mark.slow
def test_sigkill_after_every_stage_then_rerun_gives_the_same_numbers(tiny_run, tmp_path):
    """A run killed with SIGKILL as soon as each stage records itself done, restarted each time,
    ends complete, verified, and with the summary of the uninterrupted run."""
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "safebench.cli", *RUN_SFT, "--out", str(out)]
    done: set[Path] = set()
    kills = 0
    while True:
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while process.poll() is None and not set(out.glob("stages/*/DONE.json")) - done:
            time.sleep(0.02)
        if process.poll() is not None:
            break
        process.kill()
        process.wait()
        kills += 1
        done = set(out.glob("stages/*/DONE.json"))
        assert json.loads((out / "manifest.json").read_text())["status"] == "running"
    assert process.returncode == 0 and kills >= 10          # data, base, sft, 2 score models, 3 x (generate, score)
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"
    assert (out / "summary.md").read_text() == (tiny_run / "summary.md").read_text()
    assert run_cli("verify", str(out)).returncode == 0
