"""`safebench reproduce`: our numbers beside the paper's, from a given run directory."""

from __future__ import annotations

import sqlite3

import pytest

from safebench.errors import UsageError
from safebench.reports.reproduce import load_reference, reproduce


def test_repo_table_beside_our_run(synthetic_run, tmp_path):
    text = reproduce("repo-safety", synthetic_run, out=tmp_path / "repo.txt", n_boot=200)
    assert "arXiv 2410.19933" in text
    assert "NOTE: preset 'tiny' is not the paper's scale" in text and "direction and order" in text
    sft = next(l for l in text.splitlines() if l.startswith("sft "))
    repo = next(l for l in text.splitlines() if l.startswith("repo "))
    assert "43.99 %" in sft and "96.08 %" in repo
    # Fixture: sft 60.0 % safe on tiny-harmful -> 60.00 - 43.99 = +16.01 pp.
    assert "60.00 %" in sft and "+16.01 pp" in sft
    assert "order: 1 of 1 pairs of methods are ordered as in the paper" in text
    assert (tmp_path / "repo.txt").read_text() == text


def test_order_disagreement_is_reported(runs, tmp_path):
    run = runs.make(tmp_path / "run", runs.rows(n_prompts=20, k=1, unsafe_share={"sft": 0.1, "repo": 0.9}))
    text = reproduce("repo-safety", run, n_boot=100)
    assert "order: 0 of 1 pairs" in text and "differing: SFT (Alpaca-7B) vs RePO" in text


def test_judge_table_without_and_with_verdicts(synthetic_run):
    text = reproduce("sacpo-table3", synthetic_run, n_boot=100)
    assert "arXiv 2404.11049" in text and "no judge verdicts in this run for: dpo-h" in text
    with sqlite3.connect(synthetic_run / "results.sqlite") as db:
        db.execute("CREATE TABLE judge_verdicts (method TEXT, suite TEXT, prompt_id TEXT, protocol TEXT, "
                   "criterion TEXT, opponent TEXT, value REAL, status TEXT)")
        db.executemany("INSERT INTO judge_verdicts VALUES (?,?,?,?,?,?,?,?)",
                       [("sft", "s", f"p{i}", "pairwise", "harmlessness", "sft", 0.5, "ok") for i in range(4)])
    text = reproduce("sacpo-table3", synthetic_run, n_boot=100)
    line = next(l for l in text.splitlines() if l.startswith("sft ") and "harmlessness" in l)
    assert "50.00 %  50.00 % [50.00 %, 50.00 %]  +0.00 pp" in line and line.rstrip().endswith("yes")


def test_unknown_table_lists_the_available_ones():
    with pytest.raises(UsageError, match="available: repo-safety, sacpo-table3"):
        load_reference("nope")


@pytest.mark.parametrize("name", ["repo-safety", "sacpo-table3"])
def test_reference_run_block_trains_every_row_in_one_run(name):
    """The table's `run:` block resolves (variants, needs and overrides included) to a run whose
    methods are exactly the rows' methods, under the names the rows use."""
    from safebench import config as config_module

    reference = load_reference(name)
    run = reference["run"]
    config, recipes = config_module.resolve(run["preset"], run["methods"], run.get("overrides", []),
                                            methods_source=f"{name}: run.methods")
    rows = list(dict.fromkeys(row["method"] for row in reference["rows"]))
    assert config.methods == rows
    assert set(rows) <= set(recipes)
    for method in rows:  # every merge builds on a stage the same run trains and evaluates
        assert set(recipes[method].needs) <= set(config.methods)
