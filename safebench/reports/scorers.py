"""How well the run's learned score models order held-out pairs: the "Scorers, measured" section.

The reward- and cost-model stages log their held-out figures at their last step
(safebench/trainers/score_model.py, `heldout_metrics`): pair accuracy over `heldout_pairs` pairs,
the cost model's sign accuracy over both responses of each pair, and per kind of held-out prompt
`heldout_<kind>_accuracy` over `heldout_<kind>_pairs`. Each becomes a figure with its 95 % Wilson
interval; an interval that reaches 0.5, the chance level of ordering a pair, is flagged, since
method differences measured by such a scorer are not evidence.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from safebench.config import SCORE_MODEL_STAGES

CHANCE = 0.5
NEAR_CHANCE = "near chance: do not compare methods on it"
NOT_MEASURED = ("not measured (no held-out pairs: set data.heldout_fraction, or the tiny world holds out "
                "its evaluation prompts)")
PRETRAINED = "not measured (a pretrained score model: this run trained none and held out no pairs for it)"


@dataclass(frozen=True)
class ScorerFigure:
    """One held-out figure of one score model of one seed; `value` is None when not measured."""
    run: str
    seed: int
    scorer: str               # reward-model | cost-model
    measure: str              # "pair accuracy", "sign accuracy" or "pair accuracy, KIND"
    value: float | None
    low: float | None         # 95 % Wilson interval
    high: float | None
    n: int                    # the pairs (or, for sign accuracy, the responses) behind the figure
    unit: str                 # "pairs" | "responses"
    note: str                 # the near-chance warning, or why nothing was measured


def wilson(share: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion `share` observed over `n` trials (z = 1.96: 95 %)."""
    denominator = 1 + z * z / n
    centre = (share + z * z / (2 * n)) / denominator
    half = z / denominator * (share * (1 - share) / n + z * z / (4 * n * n)) ** 0.5
    return max(0.0, centre - half), min(1.0, centre + half)


def heldout_points(db: sqlite3.Connection, manifest: dict) -> dict[str, dict[str, float]]:
    """Score-model stage -> its heldout_* metrics at the last step that logged them. A stage the
    manifest records is read under its key only (an earlier stage's curves may share the database)."""
    out = {}
    for stage in SCORE_MODEL_STAGES:
        record = (manifest.get("stages") or {}).get(stage) or {}
        query = "SELECT step, name, value FROM curves WHERE method = ? AND name LIKE 'heldout\\_%' ESCAPE '\\'"
        params: tuple = (stage,)
        if record.get("key"):
            query, params = query + " AND stage_key = ?", (stage, record["key"])
        rows = db.execute(query, params).fetchall()
        if rows:
            last = max(step for step, _, _ in rows)
            out[stage] = {name: value for step, name, value in rows if step == last}
    return out


def _figure(run: str, seed: int, scorer: str, measure: str, share: float, n: int, unit: str) -> ScorerFigure:
    low, high = wilson(share, n)
    return ScorerFigure(run, seed, scorer, measure, share, low, high, n, unit, NEAR_CHANCE if low <= CHANCE else "")


def scorer_figures(run: str, seed: int, manifest: dict, points: dict[str, dict[str, float]]) -> list[ScorerFigure]:
    """The figures of one seed's score models (`points` as `heldout_points` reads them)."""
    out = []
    for scorer in SCORE_MODEL_STAGES:
        metrics = points.get(scorer, {})
        pairs = int(round(metrics.get("heldout_pairs", 0)))
        if not pairs or "heldout_accuracy" not in metrics:
            pretrained = ((manifest.get("stages") or {}).get(scorer) or {}).get("pretrained")
            out.append(ScorerFigure(run, seed, scorer, "", None, None, None, 0, "pairs",
                                    PRETRAINED if pretrained else NOT_MEASURED))
            continue
        out.append(_figure(run, seed, scorer, "pair accuracy", metrics["heldout_accuracy"], pairs, "pairs"))
        if "heldout_sign_accuracy" in metrics:
            # both responses of every pair are scored against their labelled side of 0
            out.append(_figure(run, seed, scorer, "sign accuracy", metrics["heldout_sign_accuracy"], 2 * pairs,
                               "responses"))
        kinds = sorted(name.removeprefix("heldout_").removesuffix("_pairs") for name in metrics
                       if name.endswith("_pairs") and name != "heldout_pairs")
        for kind in kinds:
            kind_pairs = int(round(metrics[f"heldout_{kind}_pairs"]))
            if kind_pairs and f"heldout_{kind}_accuracy" in metrics:
                out.append(_figure(run, seed, scorer, f"pair accuracy, {kind}",
                                   metrics[f"heldout_{kind}_accuracy"], kind_pairs, "pairs"))
    return out
