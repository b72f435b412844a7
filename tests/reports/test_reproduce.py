"""`safebench reproduce`: our numbers beside the paper's, from a given run directory."""

from __future__ import annotations

import math
import re

import pytest

from safebench.errors import UsageError
from safebench.reports.reproduce import load_reference, our_values, reproduce


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


def add_outcomes_against_sft(runs, run_dir, method: str, outcome_by_criterion: dict[str, float], n_prompts: int = 4):
    """Pairwise judgments of `method` against sft in both orders, recorded as the run's judge
    stage; the same mean outcome on every prompt (0.25: a tie in one order, a loss in the other)."""
    judgments = []
    for criterion, outcome in outcome_by_criterion.items():
        first = min(1.0, 2 * outcome)
        for order, order_outcome in (("AB", first), ("BA", 2 * outcome - first)):
            judgments += [{"method": method, "suite": "s", "prompt_id": f"p{i}", "protocol": "pairwise",
                           "criterion": criterion, "order_ab": order,
                           "value": runs.pairwise_answer(order, order_outcome)} for i in range(n_prompts)]
    runs.judge(run_dir, judgments)


def table_cells(text: str, method: str, criterion: str) -> list[str]:
    """The cells of the reproduce table's row for method x criterion (columns are 2+ spaces apart)."""
    line = next(l for l in text.splitlines() if l.startswith(f"{method} ") and f"  {criterion}  " in l)
    return re.split(r"\s{2,}", line.strip())


def test_judge_table_without_and_with_verdicts(runs, synthetic_run):
    text = reproduce("sacpo-table3", synthetic_run, n_boot=100)
    assert "arXiv 2404.11049" in text and "no judge verdicts in this run for: dpo-h" in text
    # dpo-h wins every helpfulness comparison and loses every harmlessness one.
    add_outcomes_against_sft(runs, synthetic_run, "dpo-h", {"helpfulness": 1.0, "harmlessness": 0.0})
    text = reproduce("sacpo-table3", synthetic_run, n_boot=100)
    assert table_cells(text, "dpo-h", "helpfulness")[3:] == ["79.20 %", "100.00 % [100.00 %, 100.00 %]",
                                                             "+20.80 pp", "no"]
    assert "no judge verdicts in this run for: dpo-s," in text and "dpo-h" not in text.split("no judge verdicts")[1]


def test_an_unrecorded_judge_stage_gets_the_reports_note(runs, synthetic_run):
    """A run dir from before `safebench judge` recorded its stage: verdicts in the database, none
    recorded in the manifest. The table shows none of them and says why, as the report does."""
    import json

    add_outcomes_against_sft(runs, synthetic_run, "dpo-h", {"helpfulness": 1.0, "harmlessness": 0.0})
    manifest_path = synthetic_run / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["stages"]["judge"]
    manifest_path.write_text(json.dumps(manifest))
    text = reproduce("sacpo-table3", synthetic_run, n_boot=100)
    assert "no judge verdicts in this run for: dpo-h" in text
    assert ("Judge: manifest.json records no judge stage, so the judgments in results.sqlite (judge stage(s) "
            f"judge-test) are not shown; `safebench judge {synthetic_run}` judges the run") in text
    assert "Judge:" not in reproduce("repo-safety", runs.make(synthetic_run.parent / "unjudged", runs.rows()), n_boot=100)


def test_the_baseline_wins_half_against_itself_by_definition(runs, synthetic_run):
    """SFT is never judged against itself: 0.5 with no interval, out of the interval check,
    still in the order comparison (paper: dpo-h 0.792 > SFT 0.5 > dpo-h 0.490 harmlessness)."""
    add_outcomes_against_sft(runs, synthetic_run, "dpo-h", {"helpfulness": 1.0, "harmlessness": 0.25})
    rows = our_values(load_reference("sacpo-table3"), synthetic_run, n_boot=100, seed=0)
    sft = [r for r in rows if r["method"] == "sft"]
    assert len(sft) == 2 and all(r["ours"]["value"] == 0.5 and r["inside"] is None for r in sft)
    assert all(math.isnan(r["ours"]["low"]) and math.isnan(r["ours"]["high"]) for r in sft)

    text = reproduce("sacpo-table3", synthetic_run, n_boot=100)
    for criterion in ("helpfulness", "harmlessness"):
        assert table_cells(text, "sft", criterion)[3:] == ["50.00 %", "50.00 % (by definition)", "+0.00 pp", "n/a"]
    assert "sft: the baseline's win rate against itself is 0.5 by definition" in text
    # Only the sft-vs-dpo-h pairs have values on both sides, one per criterion: both agree.
    assert "order: 2 of 2 pairs of methods are ordered as in the paper" in text
    assert "no judge verdicts in this run for: dpo-s," in text and "for: sft" not in text


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
