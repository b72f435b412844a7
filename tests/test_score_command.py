"""`safebench score RUN [--set ...]` resolves the run's config from the request the run
recorded (preset, methods, --set) with its own --set on top, so a run made with non-default
settings is scored under those settings, not the preset's."""

from __future__ import annotations

import json

import pytest

from tests.helpers import copy_run, run_cli

RUN_SETTINGS = ["--set", "generation.k=1", "--set", "suites=[tiny-benign]"]


def manifest(run_dir) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def evaluations(run_dir) -> list[tuple]:
    return sorted((e["method"], e["suite"], e["gen_key"], e["score_key"]) for e in manifest(run_dir)["evaluations"])


@pytest.mark.slow
def test_score_keeps_the_runs_settings(tiny_run, tmp_path):
    run_dir = copy_run(tiny_run, tmp_path / "run")
    # Trained stages come from tiny_run; only the k=1 tiny-benign samples are new.
    run_cli("run", "--methods", "sft", "--preset", "tiny", "--quiet", "--out", str(run_dir), *RUN_SETTINGS, check=True)
    made = evaluations(run_dir)
    assert manifest(run_dir)["request"]["overrides"] == ["generation.k=1", "suites=[tiny-benign]"]

    result = run_cli("score", str(run_dir), "--quiet", check=True)
    config = manifest(run_dir)["config"]
    assert (config["generation"]["k"], config["suites"]) == (1, ["tiny-benign"])
    assert evaluations(run_dir) == made
    assert "[run ]" not in result.stderr   # everything was scored already

    # A manifest from before requests were recorded: rebuilt from its resolved config.
    old = manifest(run_dir)
    del old["request"]
    (run_dir / "manifest.json").write_text(json.dumps(old))
    result = run_cli("score", str(run_dir), "--quiet", check=True)
    assert manifest(run_dir)["config"]["generation"]["k"] == 1 and evaluations(run_dir) == made
    assert "[run ]" not in result.stderr

    # score's own --set goes on top of the run's: k changes, the suite stays the run's.
    run_cli("score", str(run_dir), "--quiet", "--set", "generation.k=2", check=True)
    config = manifest(run_dir)["config"]
    assert (config["generation"]["k"], config["suites"]) == (2, ["tiny-benign"])
    assert manifest(run_dir)["request"]["overrides"][-1] == "generation.k=2"


def test_score_needs_a_run_directory(tmp_path):
    typo = tmp_path / "runs" / "typo"
    result = run_cli("score", str(typo))
    assert result.returncode == 2
    assert result.stderr.strip() == f"safebench: error: {typo}: not a safebench run directory (no manifest.json)"
    assert not typo.exists()   # a mistyped path is not left behind as an empty run database
