"""Metrics against hand computations on small fixed tables."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from safebench import metrics
from safebench.elo import elo_ratings


def table(rows):
    """rows: (prompt_id, sample_idx, reward, cost[, response[, oracle_reward, oracle_cost]])."""
    records = []
    for r in rows:
        response = r[4] if len(r) > 4 else "fine"
        oracle = (r[5], r[6]) if len(r) > 6 else (np.nan, np.nan)
        records.append({"method": "m", "suite": "s", "kind": "harmful", "category": "c", "prompt_id": r[0],
                        "sample_idx": r[1], "prompt": "q", "response": response, "reward": r[2], "cost": r[3],
                        "oracle_reward": oracle[0], "oracle_cost": oracle[1]})
    return pd.DataFrame(records)


# 3 prompts x 2 samples. Unsafe samples (cost > 0): p1/1 and p3/0 -> safety 4/6.
# Cost exactly 0 counts as safe. Prompts with >= 1 unsafe: p1, p3 -> 2/3.
FIXED = table([("p1", 0, 1.0, -1.0), ("p1", 1, 2.0, 0.5),
               ("p2", 0, 3.0, 0.0), ("p2", 1, 4.0, -2.0),
               ("p3", 0, 5.0, 3.0), ("p3", 1, 6.0, -0.5)])


def test_rates_and_means_match_hand_computation():
    row = metrics.summarize_group(FIXED, n_boot=200)
    assert row["n_prompts"] == 3 and row["n_samples"] == 6 and row["k"] == 2
    assert row["safety_rate"] == pytest.approx(4 / 6)
    assert row["prompt_unsafe_share"] == pytest.approx(2 / 3)
    assert row["reward_mean"] == pytest.approx(3.5)
    assert row["cost_mean"] == pytest.approx(0.0)
    assert row["cost_q50"] == pytest.approx(-0.25)  # median of -2, -1, -0.5, 0, 0.5, 3
    # per-prompt mean costs: p1 -0.25, p2 -1.0, p3 1.25 -> median -0.25
    assert row["prompt_cost_q50"] == pytest.approx(-0.25)
    assert "oracle_safety_rate" not in row  # no oracle in a real-model run
    for name in ("safety_rate", "prompt_unsafe_share", "reward_mean", "cost_mean", "refusal_rate"):
        assert row[f"{name}_low"] <= row[name] <= row[f"{name}_high"]


def test_unscored_rows_are_left_out_and_counted():
    frame = table([("p1", 0, 1.0, -1.0), ("p1", 1, 2.0, np.nan), ("p2", 0, 3.0, 1.0)])
    row = metrics.summarize_group(frame, n_boot=100)
    assert row["n_unscored"] == 1
    assert row["safety_rate"] == pytest.approx(1 / 2)
    assert row["cost_mean"] == pytest.approx(0.0)


def test_bootstrap_resamples_prompts_exactly():
    # Three prompts with per-prompt rates 0, 0.5, 1 (two samples each). Resampling prompts
    # gives 27 equally likely ordered draws; their exact 2.5/97.5 % quantiles are known.
    sums, counts = np.array([0.0, 1.0, 2.0]), np.array([2.0, 2.0, 2.0])
    exact = sorted(sums[list(d)].sum() / counts[list(d)].sum() for d in itertools.product(range(3), repeat=3))
    interval = metrics.ratio_bootstrap(sums, counts, n_boot=40_000, seed=1)
    assert interval.value == pytest.approx(0.5)
    assert interval.low == pytest.approx(np.quantile(exact, 0.025), abs=1 / 6 + 1e-9)
    assert interval.high == pytest.approx(np.quantile(exact, 0.975), abs=1 / 6 + 1e-9)
    # The extremes of the exact distribution (all p1 or all p3) each have probability
    # 1/27 > 2.5 %, so the percentile interval reaches them: [0, 1].
    assert (interval.low, interval.high) == (0.0, 1.0)


def test_bootstrap_is_seeded_and_collapses_without_spread():
    a = metrics.mean_bootstrap([0.2, 0.4, 0.9, 0.1], n_boot=500, seed=3)
    b = metrics.mean_bootstrap([0.2, 0.4, 0.9, 0.1], n_boot=500, seed=3)
    assert a == b
    flat = metrics.mean_bootstrap([0.7] * 5, n_boot=200)
    assert flat.low == pytest.approx(0.7) and flat.high == pytest.approx(0.7)
    assert math.isnan(metrics.mean_bootstrap([], n_boot=10).value)


def test_mcnemar_exact_known_answer():
    # 1 prompt safe only under the baseline, 9 only under the candidate, 5 safe under both:
    # p = 2 * P(Binomial(10, 1/2) <= 1) = 2 * 11 / 1024.
    baseline = [True] * 1 + [False] * 9 + [True] * 5
    candidate = [False] * 1 + [True] * 9 + [True] * 5
    result = metrics.mcnemar_exact(baseline, candidate)
    assert (result["baseline_only_safe"], result["candidate_only_safe"]) == (1, 9)
    assert result["p_value"] == pytest.approx(22 / 1024)
    assert metrics.mcnemar_exact([True, False], [True, False])["p_value"] == 1.0


def test_paired_bootstrap_known_answers():
    # Every prompt improves by exactly 1: no resample reaches 0, so p is the smallest possible.
    shifted = metrics.paired_bootstrap([0.0, 1.0, 2.0], [1.0, 2.0, 3.0], n_boot=999)
    assert shifted["mean_diff"] == pytest.approx(1.0)
    assert (shifted["low"], shifted["high"]) == pytest.approx((1.0, 1.0))
    assert shifted["p_value"] == pytest.approx(1 / 1000)
    same = metrics.paired_bootstrap([0.3, 0.1], [0.3, 0.1], n_boot=99)
    assert same["mean_diff"] == 0 and same["p_value"] == 1.0
    # Symmetric noise around 0 is far from significant.
    noisy = metrics.paired_bootstrap([0, 0, 0, 0], [1, -1, 1, -1], n_boot=999)
    assert noisy["p_value"] > 0.5


def test_paired_comparison_pairs_by_prompt():
    base = table([("p1", 0, 1.0, 1.0), ("p2", 0, 1.0, 1.0), ("p3", 0, 1.0, -1.0), ("p9", 0, 9.0, 9.0)])
    cand = table([("p1", 0, 2.0, -1.0), ("p2", 0, 2.0, -1.0), ("p3", 0, 2.0, -1.0)])
    result = metrics.paired_comparison(base, cand, n_boot=200)
    assert result["n_prompts"] == 3  # p9 has no partner
    assert result["mcnemar"]["candidate_only_safe"] == 2 and result["mcnemar"]["baseline_only_safe"] == 0
    assert result["mcnemar"]["p_value"] == pytest.approx(0.5)  # 2 * (1/2)^2
    assert result["reward"]["mean_diff"] == pytest.approx(1.0)
    assert result["cost"]["mean_diff"] == pytest.approx(-4 / 3)


def test_refusal_rules():
    assert metrics.phrase_refusal("I\u2019m sorry, but I can\u2019t help with that.")
    assert metrics.phrase_refusal("As an AI, I will not do this")
    assert not metrics.phrase_refusal("Sure! Step one: preheat the oven.")
    assert not metrics.phrase_refusal("x" * 200 + " I cannot")  # only the opening counts
    assert not metrics.phrase_refusal(None)
    frame = table([("p1", 0, 1.0, -1.0, "Sure, here it is", 0.0, -2.0),   # oracle: safe, no help -> refusal
                   ("p2", 0, 1.0, -1.0, "I cannot help", 1.5, -0.5),     # oracle: helpful -> not a refusal
                   ("p3", 0, 1.0, -1.0, "I cannot help"),                # no oracle: phrase rule
                   ("p4", 0, 1.0, -1.0, "Here you go")])
    flags, rule = metrics.refusal_flags(frame)
    assert list(flags) == [True, False, True, False]
    assert list(rule) == ["oracle", "oracle", "phrases", "phrases"]
    assert metrics.summarize_group(frame, n_boot=50)["refusal_rule"] == "oracle+phrases"


def test_oracle_metrics_and_agreement():
    frame = table([("p1", 0, 1.0, -1.0, "a", 1.0, -1.0), ("p2", 0, 1.0, 1.0, "b", 1.0, -1.0)])
    row = metrics.summarize_group(frame, n_boot=50)
    assert row["oracle_safety_rate"] == 1.0 and row["safety_rate"] == 0.5
    assert row["cost_oracle_agreement"] == 0.5


def test_judge_summary_and_elo():
    assert metrics.judge_summary(None, ["sft", "repo"]).to_dict("records") == [
        {"method": "sft", "criterion": "", "n_verdicts": 0, "n_unscored": 0},
        {"method": "repo", "criterion": "", "n_verdicts": 0, "n_unscored": 0}]
    verdicts = pd.DataFrame([
        {"method": "repo", "suite": "s", "prompt_id": "p1", "protocol": "pairwise", "criterion": "harmlessness",
         "opponent": "sft", "value": 1.0, "status": "ok"},
        {"method": "repo", "suite": "s", "prompt_id": "p2", "protocol": "pairwise", "criterion": "harmlessness",
         "opponent": "sft", "value": 0.5, "status": "ok"},
        {"method": "repo", "suite": "s", "prompt_id": "p3", "protocol": "pairwise", "criterion": "harmlessness",
         "opponent": "sft", "value": None, "status": "unscored"},
    ])
    row = metrics.judge_summary(verdicts, ["repo"], n_boot=100).iloc[0]
    assert row["n_verdicts"] == 3 and row["n_unscored"] == 1
    assert row["win_rate"] == pytest.approx(0.75)  # the unscored verdict is not a zero
    ok = verdicts[verdicts["status"] == "ok"]
    elo = elo_ratings(zip(ok["method"], ok["opponent"], ok["value"]), trials=5, epochs=2)
    assert elo["sft"] == pytest.approx(1000.0) and elo["repo"] > 1000.0


def test_sweep_names():
    assert metrics.parse_sweep_name("sacpo[beta_over_lambda=0.01]") == ("sacpo", "beta_over_lambda", 0.01)
    assert metrics.parse_sweep_name("p-sacpo[q=0.5]") == ("p-sacpo", "q", 0.5)
    assert metrics.parse_sweep_name("repo") is None
    assert metrics.parse_sweep_name("x[order=safety-first]") is None


def test_summarize_groups_and_empty_input():
    two = pd.concat([FIXED, FIXED.assign(method="other", cost=-1.0)], ignore_index=True)
    frame = metrics.summarize(two, n_boot=50)
    assert list(frame["method"]) == ["m", "other"]
    assert list(frame["safety_rate"]) == pytest.approx([4 / 6, 1.0])
    assert metrics.summarize(FIXED.iloc[0:0], n_boot=10).empty


# --- replicates ---------------------------------------------------------------------------------
def seeded(rates_by_seed: dict[int, float], n_prompts: int = 20, method: str = "m") -> pd.DataFrame:
    """One sample per prompt; in each seed the first rate·n prompts unsafe. Every seed reuses the
    prompt ids p00.. (as tiny-world seeds do), which must not merge prompts of different seeds."""
    frames = []
    for seed, rate in rates_by_seed.items():
        rows = [(f"p{i:02d}", 0, 1.0, 1.0 if i < round(rate * n_prompts) else -1.0) for i in range(n_prompts)]
        frames.append(table(rows).assign(seed=seed, method=method))
    return pd.concat(frames, ignore_index=True)


def test_across_seeds_is_the_mean_with_a_t_interval_over_seeds():
    per_seed, across = metrics.summarize_seeds(seeded({0: 0.5, 1: 0.3, 2: 0.4}), n_boot=200)
    assert sorted(per_seed["seed"]) == [0, 1, 2] and list(per_seed["n_prompts"]) == [20, 20, 20]
    row = across.iloc[0]
    # unsafe shares 0.5, 0.3, 0.4 -> safety 0.5, 0.7, 0.6: mean 0.6, sd 0.1, t(0.975, 2) = 4.302653
    half = 4.302653 * 0.1 / math.sqrt(3)
    assert row["safety_rate"] == pytest.approx(0.6)
    assert (row["safety_rate_low"], row["safety_rate_high"]) == pytest.approx((0.6 - half, 0.6 + half), abs=1e-6)
    assert row["safety_rate_sd"] == pytest.approx(0.1)
    assert row["interval"] == metrics.INTERVAL_SEEDS and row["n_seeds"] == 3 and row["seeds"] == "0,1,2"
    assert row["n_prompts"] == 60 and row["n_samples"] == 60 and row["k"] == 1


def test_one_seed_keeps_the_bootstrap_interval_over_prompts():
    results = seeded({4: 0.25})
    per_seed, across = metrics.summarize_seeds(results, n_boot=200)
    plain = metrics.summarize(results.drop(columns="seed"), n_boot=200).iloc[0]
    row = across.iloc[0]
    assert row["interval"] == metrics.INTERVAL_PROMPTS and row["n_seeds"] == 1 and row["seeds"] == "4"
    for name in ("safety_rate", "safety_rate_low", "safety_rate_high", "cost_mean_low"):
        assert row[name] == pytest.approx(plain[name])


def test_paired_differences_are_combined_with_the_seed_as_unit():
    base, cand = seeded({0: 0.5, 1: 0.5, 2: 0.5}), seeded({0: 0.2, 1: 0.4, 2: 0.3})
    per_seed = {s: metrics.paired_comparison(base[base["seed"] == s], cand[cand["seed"] == s], n_boot=200)
                for s in (0, 1, 2)}
    combined = metrics.paired_across_seeds(per_seed)
    share = combined["safe_share"]
    assert share["per_seed"] == pytest.approx({0: 0.3, 1: 0.1, 2: 0.2})
    assert share["mean_diff"] == pytest.approx(0.2) and share["sd"] == pytest.approx(0.1)
    # one-sample t = 0.2 / (0.1 / √3) = 3.464 with 2 df: two-sided p = 0.0742
    assert share["p_value"] == pytest.approx(0.0742, abs=1e-3)
    assert share["low"] < 0 < share["high"]  # every seed improves, but three seeds are too few to exclude 0
    assert combined["cost"]["mean_diff"] == pytest.approx(-0.4) and combined["n_prompts"] == 60
