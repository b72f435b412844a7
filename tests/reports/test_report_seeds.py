"""The report, metrics.json and summary.md of a set of seeds (built by hand, no training)."""

from __future__ import annotations

import json

import pytest

from safebench import summary
from safebench.reports import write_reports


def test_report_of_a_set_of_seeds_shows_each_seed_and_the_mean(runs, tmp_path):
    shares = {0: 0.1, 1: 0.2, 2: 0.3}
    out = runs.seed_set(tmp_path / "set", {s: runs.rows(seed=s, unsafe_share={"sft": 0.5, "repo": share})
                                           for s, share in shares.items()})
    write_reports([out], n_boot=200)
    data = json.loads((out / "metrics.json").read_text())
    per_seed = {r["seed"]: r for r in data["per_seed"] if (r["method"], r["suite"]) == ("repo", "tiny-harmful")}
    mean = next(r for r in data["summary"] if (r["method"], r["suite"]) == ("repo", "tiny-harmful"))
    values = [per_seed[s]["safety_rate"] for s in shares]
    assert mean["interval"] == "t over seeds" and mean["seeds"] == "0,1,2"
    assert mean["safety_rate"] == pytest.approx(sum(values) / 3)
    assert mean["safety_rate_low"] < min(values) <= max(values) < mean["safety_rate_high"]
    across = next(c for c in data["paired_across_seeds"] if (c["suite"], c["candidate"]) == ("tiny-harmful", "repo"))
    assert across["n_seeds"] == 3 and sorted(across["safe_share"]["per_seed"]) == ["0", "1", "2"]
    assert {c["seed"] for c in data["paired"] if c["candidate"] == "repo"} == {0, 1, 2}
    report = (out / "report.md").read_text()
    assert "## Per seed" in report and "## Paired tests across seeds" in report
    assert "Seeds 0, 1, 2: each seed is a replicate" in report

    text = summary.write_seeds_summary(out, n_boot=200)
    repo = [line.split("|")[3].strip() for line in text.splitlines() if line.startswith("| repo | tiny-harmful")]
    assert repo == ["mean of 3", "0", "1", "2"]


def test_report_of_one_run_says_its_interval_is_over_prompts(runs, synthetic_run):
    write_reports([synthetic_run], n_boot=200)
    data = json.loads((synthetic_run / "metrics.json").read_text())
    assert {r["interval"] for r in data["summary"]} == {"bootstrap over prompts"}
    assert data["paired_across_seeds"] == []
    report = (synthetic_run / "report.md").read_text()
    assert "One seed (0): intervals are 95 % percentile bootstrap intervals over prompts" in report
    assert "## Per seed" not in report
