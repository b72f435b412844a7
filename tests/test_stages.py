"""The stage runner (safebench/stages.py) and the run record (safebench/manifest.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from safebench.config import DataConfig
from safebench.errors import UsageError
from safebench.manifest import Manifest, load_manifest
from safebench.stages import Stage, StageRunner, Unfinished, data_stage, judge_summary, stage_key
from safebench.store import RunStore

FIXTURES = Path(__file__).parent / "fixtures"
# manifest.json of `safebench run --methods sft --preset tiny` made with the code of commit 417acde
OLD_MANIFEST = FIXTURES / "manifest-417acde.json"


@pytest.fixture
def runner(tmp_path):
    store = RunStore(tmp_path / "run")
    logged: list[str] = []
    runner = StageRunner(store, Manifest(), log=logged.append)
    runner.logged = logged
    yield runner
    store.close()


def writing(text: str, builds: list):
    def build(directory: Path) -> dict:
        builds.append(directory)
        (directory / "out.txt").write_text(text)
        return {"note": text}
    return build


def test_a_done_stage_is_reused_and_recorded(runner):
    builds = []
    first = runner.run(Stage("thing", {"a": 1}, writing("x", builds)))
    second = runner.run(Stage("thing", {"a": 1}, writing("x", builds)))
    assert len(builds) == 1 and not first.reused and second.reused
    assert second.meta["note"] == "x" and "out.txt" in second.meta["outputs"]["files"]
    assert runner.executed == ["thing"] and runner.skipped == ["thing"]
    on_disk = load_manifest(runner.store.run_dir)
    assert on_disk.stages["thing"].key == first.key and on_disk.stages["thing"].dir == f"stages/thing-{first.key}"
    assert "thing" in on_disk.timings


def test_a_stage_with_damaged_output_is_built_again(runner):
    builds = []
    result = runner.run(Stage("thing", {"a": 1}, writing("x", builds)))
    (result.dir / "out.txt").write_text("damaged")
    again = runner.run(Stage("thing", {"a": 1}, writing("x", builds)))
    assert len(builds) == 2 and not again.reused and (again.dir / "out.txt").read_text() == "x"
    assert any(line.startswith("[redo] thing") and "out.txt differs" in line for line in runner.logged)


def test_a_stage_whose_rows_are_gone_is_built_again(runner):
    store = runner.store
    row = {"score_key": "s1", "gen_key": "g", "prompt_id": "p", "sample_idx": 0, "reward": 1.0, "cost": 0.0,
           "oracle_reward": None, "oracle_cost": None}
    builds = []

    def build(_directory: Path) -> dict:
        builds.append(1)
        store.insert_scores([row])
        return {}

    stage = Stage("score:x", {"a": 1}, build, rows=("scores", "score_key", "s1"))
    runner.run(stage)
    assert runner.run(stage).reused
    store.db.execute("DELETE FROM scores")
    assert not runner.run(stage).reused and len(builds) == 2


def test_an_unfinished_stage_stays_open_and_is_resumed(runner):
    calls = []

    def build(_directory: Path):
        calls.append(1)
        return Unfinished({"summary": {"left": 2}}, "2 left") if len(calls) == 1 else {"summary": {"left": 0}}

    first = runner.run(Stage("judge", {"j": 1}, build))
    assert not first.done and not runner.store.stage_done("judge", first.key)
    assert load_manifest(runner.store.run_dir).stages["judge"].key == first.key  # recorded while open
    second = runner.run(Stage("judge", {"j": 1}, build))
    assert second.done and second.meta["summary"] == {"left": 0} and len(calls) == 2


def test_a_stage_version_changes_the_key_and_version_1_keeps_the_old_keys():
    material = {"a": 1}
    assert Stage("s", material, print, version=2).key != Stage("s", material, print).key
    assert Stage("generate:m:x", material, print, kind="generate").key == stage_key("generate", material)
    # The data stage of the fixture run has the key the code of 417acde gave it.
    old = json.loads(OLD_MANIFEST.read_text())
    stage = data_stage(DataConfig.model_validate(old["config"]["data"]), old["config"]["seed"])
    assert stage.key == old["stages"]["data"]["key"]


def test_a_manifest_written_by_417acde_loads(tmp_path):
    shutil.copy(OLD_MANIFEST, tmp_path / "manifest.json")
    manifest = load_manifest(tmp_path)
    assert manifest.schema_version == 0 and manifest.status == "complete" and manifest.seed() == 0
    assert manifest.methods["sft"].checkpoint.startswith("stages/sft-")
    assert {ev.suite for ev in manifest.evaluations} == {"tiny-harmful", "tiny-benign", "tiny-over-refusal"}
    assert manifest.request is not None and manifest.request.preset == "tiny"
    # Nothing is lost when the record is written back.
    original = json.loads(OLD_MANIFEST.read_text())
    assert {k: v for k, v in manifest.dump().items() if k != "schema_version"} == original


def test_a_damaged_manifest_is_one_line(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"config": {}, "evaluations": [{"method": "m"}]}))
    with pytest.raises(UsageError, match=r"manifest.json: field 'evaluations\[0\].suite' is missing"):
        load_manifest(tmp_path)


def test_a_judge_stage_recorded_with_counts_only_reads_its_summary_from_the_database(runner):
    from safebench.evals.judge.stage import ensure_tables
    from safebench.stages import StageResult

    ensure_tables(runner.store.db)
    runner.store.db.execute("INSERT INTO judge_summaries VALUES (?, ?)", ("k", json.dumps({"complete": True})))
    result = StageResult("k", runner.store.stage_dir("judge", "k"), {"summary_counts": {"scored": 1}}, reused=True)
    assert judge_summary(runner.store, result) == {"complete": True}


def test_the_judge_section_is_typed_and_switched_in_one_place():
    from safebench.config import resolve
    from safebench.evals.judge.config import JudgeConfig

    block = '{"endpoint": "tiny-oracle", "protocols": ["harmful_verdict"], "repeats": 1}'
    config, _ = resolve("tiny", ["sft"], [f"judge={block}"])
    settings = config.judge_settings()
    assert type(settings) is JudgeConfig and settings.repeats == 1 and config.judge.enabled
    off, _ = resolve("tiny", ["sft"], [f"judge={block}", "judge.enabled=false"])
    assert off.judge_settings() is None and off.judge is not None
    with pytest.raises(UsageError, match=r"field 'judge.repeats' = 0"):
        resolve("tiny", ["sft"], ['judge={"endpoint": "tiny-oracle", "repeats": 0}'])
