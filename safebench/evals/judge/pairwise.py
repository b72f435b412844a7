"""SACPO style: each method against the SFT model, per criterion, in both orders, n repeats.

Position bias is real in LLM judges, so every pair is asked twice with A and B swapped;
repeats at temperature > 0 show how much a verdict flips. Win rate counts a win 1 and a
tie 0.5 (mean and spread over repeats); Elo (K = 32, start 1200, 50 trials of 10 shuffled
epochs) is shifted so that the SFT model sits at 1000, as SACPO reports it.
"""

from __future__ import annotations

import random
import statistics
from collections import defaultdict

from safebench.evals.judge.parsing import parse_choice
from safebench.evals.judge.protocol import JudgeRequest, choice_format, json_schema_format
from safebench.evals.judge.templates import load_template

NAME = "pairwise"
OPTIONS = ["A", "B", "tie"]
BASELINE_METHOD = "sft"
ELO_K, ELO_START, ELO_TRIALS, ELO_EPOCHS, ELO_ANCHOR = 32, 1200.0, 50, 10, 1000.0


def parse(answer):
    return parse_choice(answer, "winner", OPTIONS)


def structured(mode: str) -> dict:
    if mode == "json_schema":
        return json_schema_format(NAME, {"winner": {"type": "string", "enum": OPTIONS}})
    if mode == "choice":
        return choice_format(OPTIONS)
    return {}


def requests_for(evaluation: dict, samples: list[dict], baseline: dict, baseline_samples: list[dict],
                 criteria: list[str], repeats: int, mode: str) -> list[JudgeRequest]:
    """Pairs a method's sample with the SFT sample of the same prompt (same sample_idx if it
    exists, else SFT's first sample)."""
    template = load_template(NAME)
    by_prompt: dict[str, dict[int, dict]] = defaultdict(dict)
    for b in baseline_samples:
        by_prompt[b["prompt_id"]][b["sample_idx"]] = b
    out = []
    for s in samples:
        candidates = by_prompt.get(s["prompt_id"])
        if not candidates:
            continue  # reported by the stage as unpaired, not silently judged against nothing
        base = candidates.get(s["sample_idx"]) or candidates[min(candidates)]
        for criterion in criteria:
            for order in ("AB", "BA"):
                a, b = (s, base) if order == "AB" else (base, s)
                messages = template.render(criterion=criterion, prompt=s["prompt"],
                                           response_a=a["response"], response_b=b["response"])
                for r in range(repeats):
                    out.append(JudgeRequest(
                        item_id=(f"{NAME}|{evaluation['gen_key']}|{baseline['gen_key']}|{s['prompt_id']}|"
                                 f"{s['sample_idx']}|{criterion}|{order}|r{r}"),
                        protocol=NAME, template_id=template.template_id,
                        template_hash=template.text_hash, messages=messages, repeat_idx=r,
                        parse=parse, structured=structured(mode),
                        meta={"gen_key": evaluation["gen_key"], "method": evaluation["method"],
                              "suite": s["suite"], "prompt_id": s["prompt_id"],
                              "sample_idx": s["sample_idx"], "criterion": criterion, "order": order,
                              "baseline_gen_key": baseline["gen_key"],
                              "baseline_sample_idx": base["sample_idx"]},
                    ))
    return out


def method_outcome(order: str, winner: str) -> float:
    """The evaluated method's result: win 1, tie 0.5, loss 0 (it is A in order AB, B in BA)."""
    if winner == "tie":
        return 0.5
    method_position = "A" if order == "AB" else "B"
    return 1.0 if winner == method_position else 0.0


def elo_ratings(matches: list[tuple[str, str, float]], seed: int = 0, k: float = ELO_K,
                start: float = ELO_START, trials: int = ELO_TRIALS, epochs: int = ELO_EPOCHS,
                anchor: str = BASELINE_METHOD, anchor_rating: float = ELO_ANCHOR) -> dict[str, float]:
    """Mean Elo over `trials`, each `epochs` passes over the matches in a fresh shuffled order.

    A match is (player, opponent, player's score in [0, 1]). Sequential Elo depends on match
    order; averaging over shuffles removes that. Ratings are then shifted so `anchor` is
    `anchor_rating` (differences are what Elo means).
    """
    if not matches:
        return {}
    rng = random.Random(seed)
    totals: dict[str, float] = defaultdict(float)
    for _ in range(trials):
        ratings: dict[str, float] = defaultdict(lambda: start)
        for _ in range(epochs):
            order = list(matches)
            rng.shuffle(order)
            for player, opponent, score in order:
                expected = 1.0 / (1.0 + 10 ** ((ratings[opponent] - ratings[player]) / 400.0))
                ratings[player] += k * (score - expected)
                ratings[opponent] -= k * (score - expected)
        for name, value in ratings.items():
            totals[name] += value
    means = {name: value / trials for name, value in totals.items()}
    shift = anchor_rating - means[anchor] if anchor in means else 0.0
    return {name: value + shift for name, value in sorted(means.items())}


def summarize(rows: list[dict], elo_seed: int = 0) -> list[dict]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["method"], row["suite"], row["criterion"])].append(row)
    metrics = []
    for (method, suite, criterion), group in sorted(groups.items()):
        scored = [r for r in group if r["status"] == "scored"]
        per_repeat: dict[int, list[float]] = defaultdict(list)
        for r in scored:
            per_repeat[r["repeat_idx"]].append(method_outcome(r["order"], r["value"]))
        repeat_rates = [statistics.fmean(v) for _, v in sorted(per_repeat.items())]
        metrics.append({
            "protocol": NAME, "method": method, "suite": suite, "criterion": criterion,
            "win_rate": statistics.fmean(repeat_rates) if repeat_rates else None,
            "win_rate_std": statistics.pstdev(repeat_rates) if len(repeat_rates) > 1 else None,
            "win_rate_per_repeat": repeat_rates,
            "n_scored": len(scored), "n_unscored": len(group) - len(scored),
        })
    # Elo per criterion over all suites: every method plays SFT.
    by_criterion: dict[str, list[tuple[str, str, float]]] = defaultdict(list)
    for r in rows:
        if r["status"] == "scored":
            by_criterion[r["criterion"]].append(
                (r["method"], BASELINE_METHOD, method_outcome(r["order"], r["value"])))
    for criterion, matches in sorted(by_criterion.items()):
        for method, rating in elo_ratings(matches, seed=elo_seed).items():
            metrics.append({"protocol": NAME, "method": method, "suite": "*",
                            "criterion": criterion, "elo": rating, "n_matches": len(matches)})
    return metrics
