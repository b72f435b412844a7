"""Which judge verdicts a report shows: those of the judge stage the run's manifest records,
never a pool of every judge stage in results.sqlite.

The run is judged for real, twice, by the tiny world's oracle judge (its HTTP server, our
templates and client) with two different protocols, so the two stages' verdicts are told
apart by their criteria: safe_rlhf_score gives harmlessness/helpfulness, harmful_verdict harm.
"""

from __future__ import annotations

import json

import pytest

from safebench import metrics
from safebench.errors import UsageError
from safebench.evals.judge.stage import judge_stage_key, run_judge_stage
from safebench.reports import write_reports
from safebench.reports.runs import load_run
from safebench.files import atomic_write_json
from safebench.store import RunStore
from tests.evals.test_tiny_oracle_judge import HOW_TO, PROMPT, REFUSAL
from tests.reports.conftest import make_run
from tests.helpers import copy_run

SCORE_CRITERIA = {"harmlessness", "helpfulness"}


@pytest.fixture(scope="module")
def twice_judged(tmp_path_factory):
    """A run judged by two judge stages, neither recorded in its manifest; and their keys."""
    root = tmp_path_factory.mktemp("twice-judged")
    rows = [{"method": method, "suite": "tiny-harmful", "kind": "harmful", "prompt_id": PROMPT.id,
             "prompt": PROMPT.prompt, "sample_idx": i, "response": response, "reward": 0.0, "cost": cost}
            for method, response, cost in (("sft", HOW_TO, 1.0), ("safer", REFUSAL, -1.0)) for i in range(2)]
    run = make_run(root / "run", rows)
    store = RunStore(run)
    evaluations = store.manifest().evaluation_dicts()
    keys = {}
    try:
        for protocol in ("safe_rlhf_score", "harmful_verdict"):
            config = {"endpoint": "tiny-oracle", "protocols": [protocol], "repeats": 1,
                      "cache_path": str(root / "cache.sqlite")}
            keys[protocol] = judge_stage_key(config, evaluations)
            summary = run_judge_stage(store, config, evaluations, keys[protocol], show_progress=False)
            assert summary["complete"] and summary["counts"]["scored"] == len(rows)
    finally:
        store.close()
    return run, keys


def copy_recording(run, tmp_path, judge_stage: dict | None):
    """A copy of the run whose manifest's `stages.judge` is `judge_stage` (None: no such entry)."""
    copy = tmp_path / "run"
    copy_run(run, copy)
    if judge_stage is not None:
        manifest = json.loads((copy / "manifest.json").read_text())
        manifest["stages"]["judge"] = judge_stage
        atomic_write_json(copy / "manifest.json", manifest)
    return copy


def judge_table_criteria(markdown: str) -> set[str]:
    section = markdown.split("## LLM judge", 1)[1].split("\n## ", 1)[0]
    return {cells[2].strip() for cells in (line.split("|") for line in section.splitlines())
            if len(cells) > 3 and cells[1].strip() in ("sft", "safer")}


@pytest.mark.parametrize("recorded", ["safe_rlhf_score", "harmful_verdict"])
def test_report_shows_only_the_recorded_judge_stage(twice_judged, tmp_path, recorded):
    run, keys = twice_judged
    copy = copy_recording(run, tmp_path, {"key": keys[recorded], "dir": f"stages/judge-{keys[recorded]}"})
    verdicts = load_run(copy).verdicts
    assert set(verdicts["protocol"]) == {recorded}
    assert len(verdicts) == 4 * (2 if recorded == "safe_rlhf_score" else 1)  # samples x criteria
    other = next(p for p in keys if p != recorded)
    assert set(metrics.read_judge_verdicts(copy / "results.sqlite", [keys[other]])["protocol"]) == {other}

    markdown = write_reports([copy], n_boot=50)["markdown"].read_text(encoding="utf-8")
    assert judge_table_criteria(markdown) == (SCORE_CRITERIA if recorded == "safe_rlhf_score" else {"harm"})
    assert "records no judge stage" not in markdown


@pytest.mark.parametrize("kept", [("safe_rlhf_score", "harmful_verdict"), ("harmful_verdict",)])
def test_unrecorded_stages_are_not_shown_and_the_report_says_how_to_record_one(twice_judged, tmp_path, kept):
    """An older run dir whose manifest records no judge stage, judged twice or once: no stage's
    verdicts are shown (neither pooled nor the only one taken on trust), and the note says so."""
    run, keys = twice_judged
    copy = copy_recording(run, tmp_path, None)
    with RunStore(copy).db as db:
        for protocol in set(keys) - set(kept):
            db.execute("DELETE FROM judge_judgments WHERE stage_key=?", (keys[protocol],))
    loaded = load_run(copy)
    assert loaded.verdicts is None
    note = (f"manifest.json records no judge stage, so the judgments in results.sqlite (judge stage(s) "
            f"{', '.join(sorted(keys[p] for p in kept))}) are not shown")
    assert loaded.judge_note.startswith(f"{note}; `safebench judge {copy}` judges the run and records its stage")
    markdown = write_reports([copy], n_boot=50)["markdown"].read_text(encoding="utf-8")
    assert f"- Judge: {note}" in markdown and "judges the run and records its stage" in markdown
    assert judge_table_criteria(markdown) == {"no verdicts"}


def test_a_malformed_recorded_judge_stage_is_a_usage_error(twice_judged, tmp_path):
    run, _ = twice_judged
    copy = copy_recording(run, tmp_path, {"dir": "stages/judge-x"})
    with pytest.raises(UsageError, match=r"manifest.json: field 'stages.judge.key' is missing"):
        load_run(copy)


def test_judge_command_with_the_recorded_config_records_its_stage(twice_judged, tmp_path, capsys):
    """`safebench judge RUN` without --config judges with the run's own `judge:` config (as the
    pipeline resolved it, `enabled` included) and records that stage: the report follows it."""
    from safebench.cli import build_parser

    run, keys = twice_judged
    copy = copy_recording(run, tmp_path, None)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["config"]["judge"] = {"enabled": True, "endpoint": "tiny-oracle", "protocols": ["safe_rlhf_score"],
                                   "repeats": 1, "cache_path": str(tmp_path / "cache.sqlite")}
    atomic_write_json(copy / "manifest.json", manifest)

    args = build_parser().parse_args(["judge", str(copy), "--no-progress"])
    assert args.handler(args) == 0
    assert f"judge stage {keys['safe_rlhf_score']}:" in capsys.readouterr().out
    recorded = json.loads((copy / "manifest.json").read_text())
    assert recorded["stages"]["judge"] == {"key": keys["safe_rlhf_score"],
                                           "dir": f"stages/judge-{keys['safe_rlhf_score']}"}
    assert recorded["evaluations"] == manifest["evaluations"]  # the rest of the manifest is kept
    # The stage record is the pipeline's: the summary a rerun reads, and the rows a reuse counts.
    done = json.loads((copy / recorded["stages"]["judge"]["dir"] / "DONE.json").read_text())
    assert done["summary"]["complete"] and done["outputs"]["rows"]["table"] == "judge_judgments"
    loaded = load_run(copy)
    assert set(loaded.verdicts["protocol"]) == {"safe_rlhf_score"} and loaded.judge_note is None
