"""The "Scorers, measured" section: held-out accuracy of the reward and cost models with 95 %
Wilson intervals, from the score-model stages' curves of a hand-built run (no training)."""

from __future__ import annotations

import json

import pytest

from safebench.reports import write_reports
from safebench.store import RunStore

# Held-out figures as score_model.heldout_metrics logs them, at the stage's last step (5).
# The cost model's pooled accuracy is the pair-weighted mean of its kinds: (21 + 3) / 40 = 0.6.
REWARD = {"heldout_accuracy": 0.9, "heldout_pairs": 100.0}
COST = {"heldout_accuracy": 0.6, "heldout_pairs": 40.0, "heldout_sign_accuracy": 0.95,
        "heldout_benign_accuracy": 0.7, "heldout_benign_pairs": 30.0,
        "heldout_red_team_accuracy": 0.3, "heldout_red_team_pairs": 10.0}


def scorer_curves(reward: dict = REWARD, cost: dict = COST) -> dict:
    # step 2 holds other figures than the last step: only the last one counts
    return {"reward-model": [{"step": 2, "loss": 0.5, "heldout_accuracy": 0.1, "heldout_pairs": 100.0},
                             {"step": 5, "loss": 0.2, **reward}],
            "cost-model": [{"step": 5, "loss": 0.3, **cost}]}


def section(md: str) -> list[str]:
    start = md.index("## Scorers, measured")
    return [line for line in md[start:].split("\n## ")[0].splitlines() if line.startswith("| ")]


def test_section_shows_accuracies_with_wilson_intervals_and_flags_near_chance(runs, tmp_path):
    run = runs.make(tmp_path / "run", runs.rows(n_prompts=4, k=1), scorers=scorer_curves())
    store = RunStore(run)  # an earlier reward-model stage's curves, not the one the manifest records
    store.log_curve("reward-model-old", "reward-model", 99, {"heldout_accuracy": 0.2, "heldout_pairs": 100.0})
    store.close()
    written = write_reports([run], n_boot=50)
    rows = section(written["markdown"].read_text(encoding="utf-8"))
    near = "near chance: do not compare methods on it"
    # Wilson by hand, z = 1.96: centre (p + z²/2n) / (1 + z²/n), half z/(1 + z²/n)·√(p(1-p)/n + z²/4n²).
    # 90/100: centre 0.919208 / 1.038416 = 0.88520, half 0.05957 -> [82.6, 94.5]
    assert "| reward-model | pair accuracy | 90.0 % [82.6, 94.5] | 100 pairs |  |" in rows
    # 24/40: centre 0.64802 / 1.09604 = 0.59124, half 0.14528 -> [44.6, 73.7], which holds 0.5
    assert f"| cost-model | pair accuracy | 60.0 % [44.6, 73.7] | 40 pairs | {near} |" in rows
    # sign accuracy over both responses of 40 pairs, 76/80: centre 0.92938, half 0.05101
    assert "| cost-model | sign accuracy | 95.0 % [87.8, 98.0] | 80 responses |  |" in rows
    # 21/30: centre 0.67730, half 0.15606 -> [52.1, 83.3], clear of 0.5
    assert "| cost-model | pair accuracy, benign | 70.0 % [52.1, 83.3] | 30 pairs |  |" in rows
    # 3/10: centre 0.35551, half 0.24772 -> [10.8, 60.3]
    assert f"| cost-model | pair accuracy, red\\_team | 30.0 % [10.8, 60.3] | 10 pairs | {near} |" in rows

    figures = json.loads(written["metrics"].read_text())["scorers"]
    sign = next(f for f in figures if f["measure"] == "sign accuracy")
    assert (sign["scorer"], sign["n"], sign["unit"]) == ("cost-model", 80, "responses")
    assert sign["low"] == pytest.approx(0.87838, abs=1e-5) and sign["high"] == pytest.approx(0.98039, abs=1e-5)
    html = written["html"].read_text(encoding="utf-8")
    assert "<h2>Scorers, measured</h2>" in html and html.count(near) == 2


def test_a_run_without_heldout_pairs_says_not_measured(runs, synthetic_run):
    written = write_reports([synthetic_run], n_boot=50)
    rows = section(written["markdown"].read_text(encoding="utf-8"))
    reason = ("not measured (no held-out pairs: set data.heldout\\_fraction, or the tiny world holds out its "
              "evaluation prompts)")
    assert rows[1:] == [f"| reward-model |  | n/a | 0 pairs | {reason} |",
                        f"| cost-model |  | n/a | 0 pairs | {reason} |"]
    figures = json.loads(written["metrics"].read_text())["scorers"]
    assert [(f["scorer"], f["value"]) for f in figures] == [("reward-model", None), ("cost-model", None)]


def test_a_set_of_seeds_has_a_row_per_seed(runs, tmp_path):
    weak = {**REWARD, "heldout_accuracy": 0.55}  # 55/100: [45.2, 64.4]
    out = runs.seed_set(tmp_path / "set", {s: runs.rows(seed=s, n_prompts=4, k=1) for s in (0, 1)},
                        per_seed={0: {"scorers": scorer_curves()}, 1: {"scorers": scorer_curves(reward=weak)}})
    rows = section(write_reports([out], n_boot=50)["markdown"].read_text(encoding="utf-8"))
    reward_rows = [r for r in rows if "| reward-model | pair accuracy |" in r]
    assert reward_rows == ["| 0 | reward-model | pair accuracy | 90.0 % [82.6, 94.5] | 100 pairs |  |",
                           "| 1 | reward-model | pair accuracy | 55.0 % [45.2, 64.4] | 100 pairs | "
                           "near chance: do not compare methods on it |"]
