"""Seeds as an axis: `--seeds` parsing, the layout of a set of seeds, stages shared between
seeds, and one end-to-end `safebench run --seeds 0,1`."""

from __future__ import annotations

import json

import pytest

from safebench import cli, seeds
from safebench.config import RunConfig, parse_seeds
from safebench.errors import UsageError
from tests.helpers import copy_run, run_cli


def test_seeds_are_distinct_integers_in_the_order_given():
    assert parse_seeds("0,1,2") == [0, 1, 2]
    assert parse_seeds(" 3, 1 ") == [3, 1]
    for text, message in (("0,a", "'a' is not a seed"), ("-1", "'-1' is not a seed"), ("", "'' is not a seed"),
                          ("1,1", "seed 1 is given twice")):
        with pytest.raises(UsageError, match=message):
            parse_seeds(text)


def test_seeds_and_set_seed_together_is_one_line_exit_2(capsys, tmp_path):
    code = cli.main(["run", "--preset", "tiny", "--methods", "sft", "--seeds", "0,1", "--set", "seed=2",
                     "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err == "safebench: error: --seeds '0,1' and --set 'seed=2' both set the seed; use one of them\n"
    assert not (tmp_path / "run").exists()


def test_one_directory_holds_one_run_or_a_set_of_seeds(tmp_path):
    (tmp_path / "single").mkdir()
    (tmp_path / "single" / "manifest.json").write_text("{}")
    with pytest.raises(UsageError, match="holds a run without --seeds"):
        seeds.refuse_mixed(tmp_path / "single", seeded=True)
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / seeds.SEEDS_FILE).write_text("{}")
    with pytest.raises(UsageError, match="holds a set of seeds"):
        seeds.refuse_mixed(tmp_path / "set", seeded=False)
    with pytest.raises(UsageError, match="seeds.json: field 'format'"):
        seeds.replicates(tmp_path / "set")


def test_a_stage_done_in_another_seed_is_linked_not_rebuilt(tmp_path):
    from safebench.pipeline import Pipeline
    from safebench.store import RunStore

    other = tmp_path / "seed-0"
    done = RunStore.stage_dir_in(other, "base", "k1") / "model"
    done.mkdir(parents=True)
    (done / "weights.bin").write_bytes(b"w" * 64)
    (done.parent / "DONE.json").write_text(json.dumps({"name": "base", "key": "k1"}))
    pipeline = Pipeline(RunConfig(preset="tiny", methods=["sft"]), {}, tmp_path / "seed-1", quiet=True,
                        log=lambda message: None, shared_runs=[other])
    try:
        built = []
        key, directory = pipeline.stage("base", {"unused": 1}, lambda d: built.append(d))  # other key: built
        assert built == [directory]
        pipeline.stage_key = lambda name, material: "k1"
        key, directory = pipeline.stage("base", {}, lambda d: built.append(d))
    finally:
        pipeline.store.close()
    assert len(built) == 1 and pipeline.skipped == ["base"]  # the second was linked and reused
    linked = directory / "model" / "weights.bin"
    assert linked.samefile(done / "weights.bin") and (directory / "DONE.json").exists()


@pytest.mark.slow
def test_run_with_two_seeds(tiny_run, tmp_path):
    """`safebench run --methods sft --preset tiny --seeds 0,1`: seed 0 is `tiny_run` (the same
    settings), copied in and reused; seed 1 is trained. Then report, check and score read the set."""
    out = tmp_path / "set"
    copy_run(tiny_run, out / "seed-0")
    result = run_cli("run", "--methods", "sft", "--preset", "tiny", "--quiet", "--seeds", "0,1", "--out", str(out),
                     check=True)
    assert json.loads((out / seeds.SEEDS_FILE).read_text())["runs"] == {"0": "seed-0", "1": "seed-1"}
    assert json.loads((out / "seed-1" / "manifest.json").read_text())["config"]["seed"] == 1
    assert "[run ] data" not in result.stderr.split("[seed] 1")[0]  # seed 0 reused whole
    summary = (out / "summary.md").read_text()
    assert summary == result.stdout.split("run directory:")[0].rstrip("\n") + "\n"
    rows = [line.split("|")[1:4] for line in summary.splitlines() if line.startswith("| sft")]
    assert [[c.strip() for c in r] for r in rows[:3]] == [["sft", "tiny-harmful", "mean of 2"],
                                                          ["sft", "tiny-harmful", "0"], ["sft", "tiny-harmful", "1"]]
    metrics = json.loads((out / "metrics.json").read_text())
    harmful = next(r for r in metrics["summary"] if r["suite"] == "tiny-harmful")
    per_seed = [r for r in metrics["per_seed"] if r["suite"] == "tiny-harmful"]
    assert harmful["interval"] == "t over seeds" and harmful["n_seeds"] == 2
    assert harmful["safety_rate"] == pytest.approx(sum(r["safety_rate"] for r in per_seed) / 2)
    assert "## Per seed" in (out / "report.md").read_text() and (out / "report.html").exists()
    baseline = tmp_path / "baseline.json"
    run_cli("check", str(out), "--baseline", str(baseline), "--update-baseline", "--reason", "two seeds", check=True)
    assert {e["tolerance"]["kind"] for e in json.loads(baseline.read_text())["metrics"]} == {"seeds"}
    assert run_cli("check", str(out), "--baseline", str(baseline)).returncode == 0
    rescored = run_cli("score", str(out), "--quiet", check=True)
    assert "mean of 2" in rescored.stdout
