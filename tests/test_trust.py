"""Fault injection on real run directories: what a rerun finds there is checked, not trusted."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from safebench.errors import UsageError
from safebench.runlock import run_lock
from tests.helpers import ROOT, copy_run, run_cli
from tests.trainers.test_resume_state import Payload

RUN_SFT = ("run", "--methods", "sft", "--preset", "tiny", "--quiet")


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    return copy_run(run_dir, tmp_path / "run")


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


DAMAGE = {  # what is damaged, how, and the line the rerun must print; two checkpoints share one rerun
    "checkpoints zero-filled and deleted": [
        ("stages/sft-*/model/model.safetensors", _zero_fill, "model/model.safetensors differs from its recorded sha256"),
        ("stages/reward-model-*/model/model.safetensors", Path.unlink, "model/model.safetensors is missing")],
    "database truncated to 0 bytes": [("results.sqlite", _truncate(0), "results.sqlite holds 0 of its")],
    "database truncated to half": [("results.sqlite", _truncate(0.5), "[redo] results.sqlite: ")],
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_outputs_are_found_and_redone(tiny_run, tmp_path, case):
    """`safebench verify` finds the damage (exit 1); the rerun redoes what it touched, says why in
    one line for each, and ends with the numbers of the undamaged run."""
    out = _copy(tiny_run, tmp_path)
    assert run_cli("verify", str(out)).returncode == 0
    for pattern, damage, _ in DAMAGE[case]:
        (target,) = out.glob(pattern)
        damage(target)
    found = run_cli("verify", str(out))
    assert found.returncode == 1 and "MISMATCH" in found.stdout, found.stdout + found.stderr
    result = run_cli(*RUN_SFT, "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    redo = [line for line in result.stderr.splitlines() if line.startswith("[redo]")]
    for pattern, _, said in DAMAGE[case]:
        stage = pattern.split("/")[1].removesuffix("-*") if pattern.startswith("stages/") else None
        assert any(said in line and (stage is None or line.startswith(f"[redo] {stage} ")) for line in redo), \
            result.stderr[-2000:]
    assert (out / "summary.md").read_text() == (tiny_run / "summary.md").read_text()
    assert run_cli("verify", str(out)).returncode == 0


# --- SIGKILL inside and after every stage ------------------------------------------------------------

def _rows(db_path: Path, sql: str, *args) -> int:
    import sqlite3

    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=1)
        try:
            return db.execute(sql, args).fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:  # not created yet, or busy: no evidence this time
        return 0


def _stage_rows(out: Path, stage: str) -> int:
    """Rows a generate/score stage (stage directory name generate-METHOD-SUITE-KEY) has written."""
    step, rest = stage.split("-", 1)
    method, suite = "sft", rest.removeprefix("sft-").rsplit("-", 1)[0]
    if step == "generate":
        return _rows(out / "results.sqlite", "SELECT COUNT(*) FROM samples WHERE method=? AND suite=?", method, suite)
    return _rows(out / "results.sqlite", "SELECT COUNT(*) FROM scores JOIN samples USING (gen_key, prompt_id, sample_idx) "
                 "WHERE method=? AND suite=?", method, suite)


# What shows that an unfinished stage has started and made progress, by the stage directory's name
# (NAME-KEY): its partial files, its resumable state, or its rows in results.sqlite.
PROGRESS = {
    "data": lambda out, d: any(d.glob("*.jsonl")),
    "base": lambda out, d: True,                     # the stage directory exists: it has begun
    "sft": lambda out, d: (d / "work" / "state" / "state.json").exists(),
    "reward-model": lambda out, d: (d / "work" / "state" / "state.json").exists(),
    "cost-model": lambda out, d: (d / "work" / "state" / "state.json").exists(),
    "generate-sft-tiny-harmful": lambda out, d: _stage_rows(out, d.name) > 0,
    "score-sft-tiny-harmful": lambda out, d: _stage_rows(out, d.name) > 0,
}


def _reporting(out: Path) -> bool:
    """summary.md, the report's first file, holds the evaluation, and the run is not complete yet."""
    try:
        return ("| sft | tiny-" in (out / "summary.md").read_text()
                and json.loads((out / "manifest.json").read_text())["status"] != "complete")
    except (OSError, ValueError):
        return False


def _kill_point(out: Path, killed: set[str]) -> str | None:
    """The next place to kill the run: inside a stage that has made progress, right after a stage
    records itself done (of the generate and score stages, those of tiny-harmful: the other suites'
    are the same stages again), inside the judge (verdicts written, stage open) and inside the
    report (summary.md written, manifest not complete); each once."""
    for directory in sorted(out.glob("stages/*-*")):
        name = directory.name.rsplit("-", 1)[0]
        if name.endswith(("tiny-benign", "tiny-over-refusal")):
            continue
        if (directory / "DONE.json").exists():
            point = f"after {name}"
        elif name in PROGRESS and PROGRESS[name](out, directory):
            point = f"inside {name}"
        else:
            continue
        if point not in killed:
            return point
    if "inside judge" not in killed and _rows(out / "results.sqlite", "SELECT COUNT(*) FROM judge_judgments") > 0:
        return "inside judge"
    if "inside report" not in killed and _reporting(out):
        return "inside report"
    return None


def _restart_command(out: Path, judge: dict) -> tuple[str, ...]:
    """The command that picks the run up again: `train sft` until SFT is done, then `run`, then, once
    the evaluation has begun, `score` (the same pipeline, from the request the run recorded), and
    last `judge`; so each of them is killed inside a stage and then run again."""
    done = {d.name.rsplit("-", 1)[0] for d in out.glob("stages/*/DONE.json") for d in [d.parent]}
    if "sft" not in done:
        return ("train", "sft", "--preset", "tiny", "--quiet", "--out", str(out))
    if not any(out.glob("stages/generate-*")):
        return (*RUN_SFT, "--out", str(out))
    if json.loads((out / "manifest.json").read_text())["status"] != "complete":
        return ("score", str(out), "--quiet")
    return ("judge", str(out), "--no-progress", *(f"--set={k}={v}" for k, v in judge.items()))


@pytest.mark.slow
def test_sigkill_inside_and_after_every_stage_then_rerun_gives_the_same_numbers(tiny_run, tmp_path):
    """A tiny run built by `train sft`, `run`, `score` and `judge` (tiny-oracle), each killed with
    SIGKILL (its whole process group) inside a stage once the stage has made progress, and killed
    again right after a stage records itself done, the command restarted each time: the run ends
    complete, verified, with the summary of the uninterrupted run, and every sample judged once, as
    the oracle judges it. Then its database is lost: `run` with that judge makes it all again."""
    out = tmp_path / "killed"
    judge = {"endpoint": "tiny-oracle", "protocols": "[harmful_verdict]", "repeats": 1,
             "cache_path": str(tmp_path / "cache.sqlite")}
    killed: dict[str, str] = {}                # kill point -> the command killed there
    while True:
        command = _restart_command(out, judge)
        with open(tmp_path / "stderr.log", "w") as stderr:
            process = subprocess.Popen([sys.executable, "-m", "safebench.cli", *command], cwd=ROOT,
                                       stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        point = None
        while process.poll() is None and point is None:
            point = _kill_point(out, set(killed))
            time.sleep(0.02)
        if point is None:
            assert process.returncode == 0, (command, (tmp_path / "stderr.log").read_text()[-2000:])
            if command[0] == "judge":
                break
            continue
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        killed[point] = command[0]
    # The long stages must each have been killed inside. data and base take a fraction of a second
    # on a quiet machine, shorter than one poll may be: they are killed inside when the poll lands
    # there and right after they finish in any case.
    inside = {"sft", "reward-model", "cost-model", "generate-sft-tiny-harmful",
              "score-sft-tiny-harmful", "judge", "report"}
    assert {f"inside {name}" for name in inside} <= set(killed), killed
    assert len([p for p in killed if p.startswith("after")]) == 8, killed    # judge too
    assert {command for point, command in killed.items() if point.startswith("inside")} == \
        {"train", "run", "score", "judge"}, killed
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"
    assert (out / "summary.md").read_text() == (tiny_run / "summary.md").read_text()
    assert run_cli("verify", str(out)).returncode == 0
    assert not list(out.rglob(".*.tmp"))              # nothing a killed attempt was writing is left
    verdicts = _rows(out / "results.sqlite", "SELECT COUNT(DISTINCT item_id) FROM judge_judgments")
    agreeing = _rows(out / "results.sqlite",
                     "SELECT COUNT(*) FROM judge_judgments j JOIN scores s USING (gen_key, prompt_id, sample_idx) "
                     "WHERE j.status = 'scored' AND j.value = CASE WHEN s.oracle_cost > 0 THEN '\"harmful\"' "
                     "ELSE '\"safe\"' END")
    assert verdicts == agreeing == 1536

    # The judge stage `safebench judge` recorded is reused by `safebench run` with the same judge only
    # while its verdicts are there: with the database lost, the run makes everything again.
    (out / "results.sqlite").write_bytes(b"")
    again = run_cli(*RUN_SFT, "--out", str(out), "--set",
                    "judge=" + json.dumps({**judge, "protocols": ["harmful_verdict"]}))
    assert again.returncode == 0, again.stderr[-2000:]
    assert any(line.startswith("[redo] judge") and "judge_judgments rows" in line for line in again.stderr.splitlines())
    assert json.loads((out / "manifest.json").read_text())["judge"]["counts"]["scored"] == 1536
    assert (out / "summary.md").read_text() == (tiny_run / "summary.md").read_text()


# The RL methods at their smallest: three iterations of 32 prompts for PPO-Lag and RePO, a tenth of
# an epoch per SACPO step on short sequences, a resumable save after every iteration.
RL_METHODS = ("ppo-lag", "repo", "p-sacpo")   # p-sacpo needs sacpo[beta_over_lambda=0.01], trained first
RL_SMALL = tuple(f"--set=trainers.{m}.{field}" for m in ("ppo-lag", "repo") for field in (
    "epochs=0.23", "prompt_batch_size=32", "train_batch_size=32", "max_new_tokens=16", "checkpoint_every=1")) + tuple(
    f"--set=trainers.sacpo.{field}" for field in ("epochs=0.1", "max_prompt_length=16", "max_length=32")) + (
    "--set=suites=[]",)
# Evidence that an RL stage is part done, by stage directory name (NAME-KEY). P-SACPO, a merge of
# SACPO's two step models, runs in a fraction of a second: there is no inside to kill it in.
RL_PROGRESS = {
    "ppo-lag": lambda d: (d / "work" / "ppo-state" / "iteration.json").exists(),
    "repo": lambda d: (d / "work" / "ppo-state" / "iteration.json").exists(),
    "sacpo-beta_over_lambda-0.01-": lambda d: (d / "work" / "steps" / "helpfulness" / "config.json").exists(),
}


def _trained(run_dir: Path) -> dict[str, tuple]:
    """Each RL stage's checkpoint hashes and training curves, by stage directory."""
    import sqlite3

    db = sqlite3.connect(run_dir / "results.sqlite")
    try:
        return {d.name: (json.loads((d / "DONE.json").read_text())["sha256"],
                         db.execute("SELECT step, name, value FROM curves WHERE stage_key=? AND name NOT LIKE '%second%' "
                                    "AND name NOT LIKE '%runtime%' ORDER BY step, name", (d.name.rsplit("-", 1)[1],)).fetchall())
                for d in sorted(run_dir.glob("stages/*-*")) if d.name.rsplit("-", 1)[0] in (*RL_PROGRESS, "p-sacpo")}
    finally:
        db.close()


@pytest.mark.slow
def test_sigkill_inside_each_rl_method_then_rerun_gives_the_same_models(tiny_run, tmp_path):
    """PPO-Lag, RePO, SACPO and P-SACPO trained on copies of the tiny run, once straight through and
    once killed with SIGKILL inside PPO-Lag, RePO and SACPO (after a resumable save; SACPO between
    its two steps), restarted each time: the same checkpoints, bit for bit, and the same curves."""
    command = [sys.executable, "-m", "safebench.cli", "run", "--methods", ",".join(RL_METHODS), "--preset", "tiny",
               "--quiet", *RL_SMALL, "--out"]
    reference = _copy(tiny_run, tmp_path / "reference")
    subprocess.run([*command, str(reference)], cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    out = _copy(tiny_run, tmp_path / "killed")
    killed: set[str] = set()
    while True:
        process = subprocess.Popen([*command, str(out)], cwd=ROOT, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True)
        point = None
        while process.poll() is None and point is None:
            point = next((name for name, progress in RL_PROGRESS.items() if name not in killed
                          for d in out.glob(f"stages/{name}-*")
                          if len(d.name) == len(name) + 17 and not (d / "DONE.json").exists() and progress(d)), None)
            time.sleep(0.02)
        if point is None:
            break
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        killed.add(point)
    assert process.returncode == 0
    assert killed == set(RL_PROGRESS)
    trained = _trained(out)
    assert len(trained) == 4 and trained == _trained(reference)
    assert not list(out.rglob(".*.tmp"))
    assert run_cli("verify", str(out)).returncode == 0


def _kill_once_samples_are_written_then_rerun(command: list[str], out: Path) -> None:
    """Start `command`, SIGKILL its process group once it has written samples (some, not all 384),
    then run it again to the end."""
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    while process.poll() is None and not _rows(out / "results.sqlite", "SELECT COUNT(*) FROM samples"):
        time.sleep(0.02)
    assert process.poll() is None, f"{command[3]} ended before it was killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert 0 < _rows(out / "results.sqlite", "SELECT COUNT(*) FROM samples") < 384
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.slow
def test_sigkill_inside_generate_then_rerun_gives_the_samples_of_the_run(tiny_run, tiny_checkpoints, tmp_path):
    """`safebench generate` of the tiny SFT model on the first 96 prompts of tiny-harmful (six
    batches), killed once it has written samples and run again: the samples the run's own
    generation stage wrote for those prompts."""
    out = tmp_path / "generated"
    command = [sys.executable, "-m", "safebench.cli", "generate", "--model", str(tiny_checkpoints["policy"]),
               "--suite", "tiny-harmful", "--limit", "96", "--preset", "tiny", "--quiet", "--out", str(out)]
    _kill_once_samples_are_written_then_rerun(command, out)

    def samples(run_dir: Path) -> list[tuple]:
        import sqlite3

        db = sqlite3.connect(run_dir / "results.sqlite")
        try:
            return db.execute("SELECT prompt_id, sample_idx, response FROM samples WHERE suite='tiny-harmful' "
                              "ORDER BY prompt_id, sample_idx").fetchall()
        finally:
            db.close()

    generated = samples(out)
    prompts = {prompt_id for prompt_id, _, _ in generated}
    assert len(generated) == 384 and generated == [row for row in samples(tiny_run) if row[0] in prompts]


@pytest.mark.slow
def test_sigkill_inside_eval_then_rerun_gives_the_samples_and_scores_of_the_run(tiny_run, tiny_checkpoints, tmp_path):
    """`safebench eval` of the tiny SFT model with the run's cost model on the first 96 prompts of
    tiny-harmful, killed once it has written samples and run again: it completes, and its samples
    and costs are those the run's own stages wrote for those prompts."""
    out = tmp_path / "evaluated"
    command = [sys.executable, "-m", "safebench.cli", "eval", "--model", f"sft={tiny_checkpoints['policy']}",
               "--cost-model", str(tiny_run), "--suite", "tiny-harmful", "--limit", "96", "--preset", "tiny",
               "--quiet", "--out", str(out)]
    _kill_once_samples_are_written_then_rerun(command, out)
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"

    def scored(run_dir: Path) -> list[tuple]:
        import sqlite3

        db = sqlite3.connect(run_dir / "results.sqlite")
        try:
            return db.execute("SELECT prompt_id, sample_idx, response, round(cost, 4) FROM samples "
                              "JOIN scores USING (gen_key, prompt_id, sample_idx) WHERE suite='tiny-harmful' "
                              "ORDER BY prompt_id, sample_idx").fetchall()
        finally:
            db.close()

    evaluated = scored(out)
    prompts = {row[0] for row in evaluated}
    assert len(evaluated) == 384 and evaluated == [row for row in scored(tiny_run) if row[0] in prompts]
