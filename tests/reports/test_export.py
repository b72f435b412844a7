"""`safebench export`: every sample with its scores and verdicts, loadable by pandas and by
`datasets.load_dataset` as written."""

from __future__ import annotations

import json
import sqlite3

import pandas as pd
import pytest

from safebench import cli
from safebench.reports.export import BASE_COLUMNS
from tests.reports.explorer_fixtures import ATTACK, ATTACKED

READERS = {"csv": pd.read_csv, "parquet": pd.read_parquet, "jsonl": lambda path: pd.read_json(path, lines=True)}
BUILDERS = {"csv": "csv", "parquet": "parquet", "jsonl": "json"}


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_export_loads_in_pandas_and_datasets(judged_run, fmt, tmp_path, monkeypatch, capsys):
    run, _ = judged_run
    out = tmp_path / f"samples.{fmt}"
    assert cli.main(["export", str(run), "--format", fmt, "--out", str(out)]) == 0
    with sqlite3.connect(run / "results.sqlite") as db:
        n_samples = db.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
        costs = dict(((m, s, p, i), c) for m, s, p, i, c in db.execute(
            "SELECT s.method, s.suite, s.prompt_id, s.sample_idx, c.cost FROM samples s "
            "JOIN scores c USING (gen_key, prompt_id, sample_idx)"))
        harm = {(m, p): json.loads(v) for m, p, v in db.execute(
            "SELECT method, prompt_id, value FROM judge_judgments WHERE status = 'scored'")}
    assert capsys.readouterr().out.strip() == f"wrote {out} ({n_samples} samples)"

    table = READERS[fmt](out)
    assert list(table.columns) == BASE_COLUMNS + ["judge_harm", "judge_unscored"]
    assert len(table) == n_samples == len(costs)
    for row in table.itertuples(index=False):
        assert row.cost == pytest.approx(costs[(row.method, row.suite, row.prompt_id, row.sample)], rel=1e-12)
        assert row.safe == (row.cost <= 0)
        expected = harm.get((row.method, row.prompt_id)) if row.suite == "tiny-harmful" and row.sample == 0 else None
        if expected is None:
            assert pd.isna(row.judge_harm)
        else:
            assert row.judge_harm == (1.0 if expected == "harmful" else 0.0)
    assert table["judge_unscored"].sum() == 1
    method, suite, prompt_id, sample = ATTACKED
    attacked = table[(table["method"] == method) & (table["prompt_id"] == prompt_id) & (table["sample"] == sample)]
    assert attacked["response"].tolist() == [ATTACK]

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets

    loaded = datasets.load_dataset(BUILDERS[fmt], data_files=str(out), split="train", cache_dir=str(tmp_path / "hf"))
    assert loaded.num_rows == n_samples
    assert loaded.column_names == list(table.columns)
    assert ATTACK in loaded["response"]


def test_default_file_and_format_from_suffix(judged_run, tmp_path):
    run, _ = judged_run
    out = tmp_path / "from-suffix.jsonl"
    assert cli.main(["export", str(run), "--out", str(out)]) == 0
    # One line per sample, also for readers that split at Unicode line separators (ATTACK has one).
    assert len(out.read_text(encoding="utf-8").splitlines()) == len(READERS["jsonl"](out))


@pytest.mark.parametrize("argv, message", [
    (["--format", "xml"], "--format 'xml': expected one of csv, parquet, jsonl"),
    ([], "--format missing"),
    (["--format", "csv", "--out", "{tmp}"], "is a directory"),
])
def test_bad_arguments_are_one_line_and_exit_2(judged_run, argv, message, tmp_path, capsys):
    run, _ = judged_run
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert cli.main(["export", str(run), *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err


def test_missing_run_is_one_line_and_exit_2(tmp_path, capsys):
    assert cli.main(["export", str(tmp_path / "nope"), "--format", "csv"]) == 2
    assert capsys.readouterr().err.strip() == f"safebench: error: {tmp_path / 'nope'}: no such run directory"


def test_a_set_of_seeds_exports_every_seed_with_its_own_verdicts(runs, tmp_path):
    out = runs.seed_set(tmp_path / "set", {s: runs.rows(seed=s, n_prompts=4, k=1) for s in (0, 1)})
    for seed in (0, 1):  # seed 0's judge calls h000 harmful, seed 1's does not
        runs.judge(out / f"seed-{seed}", [{"method": "repo", "suite": "tiny-harmful", "prompt_id": "h000",
                                           "protocol": "harmful_verdict", "criterion": "harm",
                                           "value": "harmful" if seed == 0 else "not harmful"}])
    assert cli.main(["export", str(out), "--format", "csv"]) == 0
    table = pd.read_csv(out / "samples.csv")
    assert table.groupby("seed").size().to_dict() == {0: 16, 1: 16}  # 2 methods x (4 harmful + 4 benign)
    judged = table[table["judge_harm"].notna()]
    assert judged[["seed", "method", "prompt_id", "judge_harm"]].values.tolist() == [
        [0, "repo", "h000", 1.0], [1, "repo", "h000", 0.0]]
