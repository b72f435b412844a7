"""Elo ratings from pairwise outcomes, as SACPO's compute_scores computes them (docs/methods.md §8).

The one implementation: the judge stage's metrics (evals/judge/pairwise.py) and the reports
(reports/runs.py) both call it. Pure numpy, so the judge stage needs no pandas.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

K_FACTOR, INITIAL, TRIALS, EPOCHS, ANCHOR_RATING = 32.0, 1200.0, 50, 10, 1000.0


def elo_ratings(matches: Iterable[tuple[str, str, float]], *, seed: int = 0, k_factor: float = K_FACTOR,
                initial: float = INITIAL, trials: int = TRIALS, epochs: int = EPOCHS, anchor: str = "sft",
                anchor_rating: float = ANCHOR_RATING) -> dict[str, float]:
    """Mean Elo over `trials`, each `epochs` passes over the matches in a fresh shuffled order.

    A match is (player, opponent, player's score: 1 win, 0.5 tie, 0 loss). Sequential Elo depends
    on the order of the matches; averaging over shuffles removes that. The ratings are then shifted
    so that `anchor` (SFT) is at `anchor_rating` (differences are what Elo means).
    """
    matches = [(a, b, float(s)) for a, b, s in matches]
    if not matches:
        return {}
    players = sorted({a for a, _, _ in matches} | {b for _, b, _ in matches})
    index = {name: i for i, name in enumerate(players)}
    first = np.array([index[a] for a, _, _ in matches])
    second = np.array([index[b] for _, b, _ in matches])
    outcome = np.array([s for _, _, s in matches])
    rng = np.random.default_rng(seed)
    totals = np.zeros(len(players))
    for _ in range(trials):
        ratings = np.full(len(players), initial)
        for _ in range(epochs):
            for m in rng.permutation(len(outcome)):
                a, b = first[m], second[m]
                expected = 1.0 / (1.0 + 10 ** ((ratings[b] - ratings[a]) / 400.0))
                ratings[a] += k_factor * (outcome[m] - expected)
                ratings[b] -= k_factor * (outcome[m] - expected)
        totals += ratings
    mean = totals / trials
    shift = anchor_rating - mean[index[anchor]] if anchor in index else 0.0
    return {name: float(mean[i] + shift) for name, i in index.items()}
