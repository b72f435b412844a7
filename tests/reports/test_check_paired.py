"""The paired release gate: a candidate evaluation against the last release's, prompt by prompt."""

from __future__ import annotations

import argparse
import json

import pytest

from safebench.errors import CheckFailed, UsageError
from safebench.reports import cli, paired
from safebench.reports.check import run_check


def parse(argv):
    parser = argparse.ArgumentParser(prog="safebench")
    cli.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def release_rows(runs, model: str, unsafe: float, seed: int = 0) -> list[dict]:
    return runs.rows(seed, methods=(model,), n_prompts=60, k=1, unsafe_share={model: unsafe})


def flipped(rows: list[dict], prompts: set[str]) -> list[dict]:
    """The same answers, with the harmful suite's cost sign flipped on `prompts` (safe <-> unsafe)."""
    return [dict(r, cost=-r["cost"], oracle_cost=-r["oracle_cost"])
            if r["suite"] == "tiny-harmful" and r["prompt_id"] in prompts else r for r in rows]


def test_a_release_that_got_less_safe_fails_with_one_line_per_moved_metric(runs, tmp_path):
    baseline = runs.make(tmp_path / "v1", release_rows(runs, "v1", 0.1))
    candidate = runs.make(tmp_path / "v2", release_rows(runs, "v2", 0.7, seed=1))
    with pytest.raises(CheckFailed) as failure:
        run_check(candidate, baseline)
    lines = str(failure.value).splitlines()
    assert lines[0].startswith("worse than the baseline beyond noise (")
    moved = [l for l in lines if l.startswith(("REGRESSED", "improved"))]
    safe = next(l for l in moved if "/ tiny-harmful / safe:" in l)
    assert safe.startswith("REGRESSED v2 vs v1 / tiny-harmful / safe:") and "on 60 prompts (McNemar" in safe
    assert any("/ tiny-harmful / cost:" in l for l in moved)
    # nothing changed on the benign suite but the draw: no line for it
    assert not any("tiny-benign / cost" in l for l in moved)


def test_a_release_within_noise_passes_and_a_baseline_file_gives_the_same_decision(runs, tmp_path, capsys):
    rows = release_rows(runs, "release", 0.4)
    baseline = runs.make(tmp_path / "r1", rows)
    # three prompts now unsafe, one now safe: McNemar p = 0.625, not beyond noise
    safe_before = sorted(r["prompt_id"] for r in rows if r["suite"] == "tiny-harmful" and r["cost"] <= 0)
    unsafe_before = sorted(r["prompt_id"] for r in rows if r["suite"] == "tiny-harmful" and r["cost"] > 0)
    candidate = runs.make(tmp_path / "r2", flipped(rows, {*safe_before[:3], unsafe_before[0]}))
    args = parse(["check", str(candidate), "--baseline", str(baseline)])
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert "REGRESSED" not in out and out.strip().endswith("ok: nothing got worse beyond noise")
    assert "0 worse, 0 better beyond noise" in out

    path = tmp_path / "baselines" / "release.json"
    args = parse(["check", str(baseline), "--baseline", str(path), "--update-baseline", "--paired",
                  "--reason", "release 1.0"])
    assert args.handler(args) == 0
    data = json.loads(path.read_text())
    assert data["format"] == paired.PAIRED_FORMAT and len(data["prompts"]) == 120
    assert data["history"][0]["reason"] == "release 1.0"
    assert "ok: nothing got worse" in run_check(candidate, path)
    worse = runs.make(tmp_path / "r3", flipped(rows, set(safe_before[:20])))
    with pytest.raises(CheckFailed, match="release/tiny-harmful/safe"):
        run_check(worse, path)


def test_an_improvement_beyond_noise_passes_and_is_said(runs, tmp_path):
    rows = release_rows(runs, "m", 0.6)
    baseline = runs.make(tmp_path / "a", rows)
    unsafe_before = {r["prompt_id"] for r in rows if r["suite"] == "tiny-harmful" and r["cost"] > 0}
    out = run_check(runs.make(tmp_path / "b", flipped(rows, unsafe_before)), baseline)
    assert any(l.startswith("improved  m / tiny-harmful / safe:") for l in out.splitlines())


def test_prompts_must_be_the_same(runs, tmp_path):
    rows = release_rows(runs, "m", 0.3)
    baseline = runs.make(tmp_path / "a", rows)
    changed = [dict(r, prompt="something else") if r["prompt_id"] == "h003" else r for r in rows]
    with pytest.raises(UsageError, match="suite 'tiny-harmful': prompt 'h003' differs between"):
        run_check(runs.make(tmp_path / "b", changed), baseline)


def test_holm_rejects_step_down():
    assert paired.holm([0.001, 0.04, 0.012, 0.3], 0.05) == [True, False, True, False]
    assert paired.holm([0.02, 0.02], 0.05) == [True, True]
