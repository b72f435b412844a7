"""The CI gate: passes on an identical run, fails with a readable diff on a doctored one."""

from __future__ import annotations

import argparse
import json

import pytest

from safebench.errors import CheckFailed, UsageError
from safebench.reports import cli
from safebench.reports.check import run_check, update_baseline
from tests.helpers import copy_run


def parse(argv):
    parser = argparse.ArgumentParser(prog="safebench")
    cli.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


@pytest.fixture
def baseline(synthetic_run, tmp_path):
    path = tmp_path / "baselines" / "tiny.json"
    args = parse(["check", str(synthetic_run), "--baseline", str(path), "--update-baseline", "--reason", "first tiny run"])
    assert args.handler(args) == 0
    return path


def test_baseline_records_why_and_what(baseline, synthetic_run):
    data = json.loads(baseline.read_text())
    assert data["updated"]["reason"] == "first tiny run" and len(data["history"]) == 1
    assert data["updated"]["date"] and data["updated"]["git_commit"]
    keys = {(m["method"], m["suite"], m["metric"]) for m in data["metrics"]}
    assert ("repo", "tiny-harmful", "safety_rate") in keys
    assert ("sft", "tiny-benign", "refusal_rate") in keys       # over-refusal gated on benign suites
    assert ("sft", "tiny-harmful", "refusal_rate") not in keys  # refusing harmful prompts is fine


def test_identical_run_passes(baseline, synthetic_run, tmp_path, capsys):
    copy = tmp_path / "copy"
    copy_run(synthetic_run, copy)
    args = parse(["check", str(copy), "--baseline", str(baseline)])
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert "within tolerance" in out and "REGRESSED" not in out


def test_doctored_run_fails_with_a_readable_diff(runs, baseline, synthetic_run):
    runs.doctor(synthetic_run, "repo", 1.0)  # every repo response now unsafe by the cost model
    with pytest.raises(CheckFailed) as failure:
        run_check(synthetic_run, baseline)
    message = str(failure.value)
    assert message.startswith("safety regressed against the baseline")
    diff_lines = message.splitlines()[2:]  # after the summary and the "baseline: FILE" line
    line = next(l for l in diff_lines if "repo/tiny-harmful/safety_rate" in l)
    assert line.split()[0] == "REGRESSED" and "88.3 % [80.0 %, 95.0 %]" in line and ">= 80.0 % (interval)" in line
    assert line.rstrip().endswith("0.0 % [0.0 %, 0.0 %]")
    regressed = [l.split()[1] for l in diff_lines if l.startswith("REGRESSED")]
    assert regressed and all(name.startswith("repo/") for name in regressed)  # sft untouched


def test_absolute_tolerance_and_missing_metrics(baseline, synthetic_run):
    data = json.loads(baseline.read_text())
    entry = next(m for m in data["metrics"] if (m["method"], m["suite"], m["metric"]) ==
                 ("repo", "tiny-harmful", "safety_rate"))
    entry["tolerance"] = {"kind": "absolute", "max_worsening": 0.0}
    entry["value"] += 0.01  # the run is now 1 point below a zero-tolerance baseline
    data["metrics"].append(dict(entry, method="ppo-lag"))
    baseline.write_text(json.dumps(data))
    with pytest.raises(CheckFailed) as failure:
        run_check(synthetic_run, baseline)
    message = str(failure.value)
    assert message.startswith("safety regressed against the baseline (1 of") and "MISSING" in message
    assert "; 1 of 27 gated metrics missing in this run (not evaluated: ppo-lag/tiny-harmful)" in message
    # Updating keeps the hand-set tolerance and appends to the history.
    update_baseline(synthetic_run, baseline, "accept after review")
    updated = json.loads(baseline.read_text())
    kept = next(m for m in updated["metrics"] if (m["method"], m["suite"], m["metric"]) ==
                ("repo", "tiny-harmful", "safety_rate"))
    assert kept["tolerance"] == {"kind": "absolute", "max_worsening": 0.0}
    assert [h["reason"] for h in updated["history"]] == ["first tiny run", "accept after review"]
    run_check(synthetic_run, baseline)


def test_bad_input_names_file_field_and_value(runs, baseline, synthetic_run, tmp_path):
    with pytest.raises(UsageError, match="--reason"):
        update_baseline(synthetic_run, tmp_path / "new.json", None)
    data = json.loads(baseline.read_text())
    data["metrics"][2]["tolerance"] = {"kind": "roughly"}
    baseline.write_text(json.dumps(data))
    with pytest.raises(UsageError) as error:
        run_check(synthetic_run, baseline)
    assert str(error.value) == f"{baseline}: field 'metrics[2].tolerance.kind' = 'roughly', expected 'seeds', 'interval' or 'absolute'"
    with pytest.raises(UsageError, match="baseline file not found"):
        run_check(synthetic_run, tmp_path / "absent.json")
    running = runs.make(tmp_path / "running", runs.rows(n_prompts=3, k=1), status="running")
    with pytest.raises(UsageError, match="field 'status' = 'running'"):
        update_baseline(running, tmp_path / "x.json", "why")


def test_metrics_missing_in_the_run_are_not_called_a_regression(baseline, synthetic_run):
    data = json.loads(baseline.read_text())
    data["metrics"] += [dict(m, method="ppo-lag") for m in data["metrics"] if m["method"] == "repo"]
    baseline.write_text(json.dumps(data))
    with pytest.raises(CheckFailed) as failure:
        run_check(synthetic_run, baseline)
    summary = str(failure.value).splitlines()[0]
    assert summary.startswith("nothing regressed, but ") and "regressed against" not in summary
    assert "missing in this run (not evaluated: ppo-lag/" in summary


def test_a_metric_whose_scorer_is_near_chance_is_marked(runs, tmp_path):
    """The gate still gates a metric whose cost model is near chance on its suite's kind (red-team
    held-out pairs 3 of 10 here), but marks it and says why, as the report greys it."""
    from tests.reports.test_report_scorers import scorer_curves

    run = runs.make(tmp_path / "run", runs.rows(n_prompts=4, k=1), scorers=scorer_curves())
    path = tmp_path / "baseline.json"
    update_baseline(run, path, "near-chance cost model")
    diff = run_check(run, path)
    status = {line.split()[1]: line.split()[0] for line in diff.splitlines()
              if line.split() and line.split()[0].startswith(("ok", "improved", "REGRESSED"))}
    harmful = next(key for key in status if key.endswith("/safety_rate") and "harmful" in key)
    assert status[harmful] == "ok*"
    assert status[harmful.replace("/safety_rate", "/oracle_safety_rate")] == "ok"   # the oracle needs no scorer
    assert "* scorer not to be trusted here, so this pass or fail says little: cost-model near chance: " \
           "pair accuracy, red_team 30.0 % [10.8, 60.3] over 10 pairs, seed 0" in diff
