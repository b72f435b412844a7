"""Report figures, drawn with matplotlib's object API on the Agg canvas (no display, no
global pyplot state, so reports can be drawn from any thread or process)."""

from __future__ import annotations

import base64
import io
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from safebench import metrics

# Curve names of interest and the names trainers may use for them; matched as substrings.
CURVE_GROUPS = (
    ("reward", ("reward",)),
    ("cost", ("cost",)),
    ("lambda", ("lambda", "lagrange", "multiplier", "λ")),
    ("KL", ("kl",)),
)
# The PPO core's update diagnostics (safebench/trainers/ppo.py), each group a panel of its own;
# matched by exact name, and kept out of the panels above ("approx_kl" is no KL to the reference).
DIAGNOSTIC_GROUPS = (
    ("PPO update", ("approx_kl", "clip_fraction")),
    ("entropy", ("entropy",)),
    ("explained variance", ("reward_explained_variance", "cost_explained_variance")),
)
MAX_SCATTER_POINTS = 4000


@dataclass
class ReportFigure:
    name: str      # file stem, e.g. "scatter-tiny-harmful"
    title: str
    caption: str
    png: bytes

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    # No Software/date metadata: the same data gives byte-identical figures.
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "x"


def _series_label(run: str, method: str, several_runs: bool) -> str:
    return f"{run}/{method}" if several_runs else method


def scatter_per_suite(results: pd.DataFrame, several_runs: bool) -> list[ReportFigure]:
    figures = []
    scored = results[results["cost"].notna() & results["reward"].notna()]
    for suite, rows in scored.groupby("suite", sort=True):
        fig = Figure(figsize=(6.4, 4.2))
        ax = fig.add_subplot()
        for (run, method), group in rows.groupby(["run", "method"], sort=True):
            if len(group) > MAX_SCATTER_POINTS:  # keep files small; a fixed seed keeps them stable
                group = group.sample(MAX_SCATTER_POINTS, random_state=0)
            ax.scatter(group["cost"], group["reward"], s=10, alpha=0.5,
                       label=_series_label(run, method, several_runs))
        ax.axvline(metrics.SAFE_COST_MAX, color="black", linewidth=0.8, linestyle="--")
        ax.set_xlabel("cost (> 0 is unsafe)")
        ax.set_ylabel("reward")
        ax.set_title(f"Reward vs cost: {suite}")
        ax.legend(fontsize=7, loc="best")
        figures.append(ReportFigure(f"scatter-{_slug(suite)}", f"Reward vs cost on {suite}",
                                    "One point per response; the dashed line is the safe/unsafe boundary.",
                                    _png(fig)))
    return figures


def safety_rates(summary: pd.DataFrame, several_runs: bool) -> ReportFigure | None:
    if summary.empty or "safety_rate" not in summary or summary["safety_rate"].isna().all():
        return None
    rows = summary[summary["safety_rate"].notna()].sort_values(["suite", "run", "method"])
    labels = [f"{_series_label(r.run, r.method, several_runs)} | {r.suite}" for r in rows.itertuples()]
    values = rows["safety_rate"].to_numpy(dtype=float) * 100
    low = values - rows["safety_rate_low"].to_numpy(dtype=float) * 100
    high = rows["safety_rate_high"].to_numpy(dtype=float) * 100 - values
    fig = Figure(figsize=(6.4, max(2.0, 0.35 * len(rows) + 1)))
    ax = fig.add_subplot()
    positions = np.arange(len(rows))
    ax.barh(positions, values, xerr=np.vstack([low, high]), capsize=3, color="#4c9a6a")
    ax.set_yticks(positions, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("safety rate (%), 95 % bootstrap interval over prompts")
    return ReportFigure("safety-rates", "Safety rate per method and suite",
                        "Bars: share of responses with cost ≤ 0; whiskers: 95 % interval.", _png(fig))


def prompt_cost_distributions(results: pd.DataFrame, several_runs: bool) -> list[ReportFigure]:
    figures = []
    scored = results[results["cost"].notna()]
    for suite, rows in scored.groupby("suite", sort=True):
        # a prompt is one seed's prompt: seeds of a set of seeds may reuse prompt ids
        per_prompt = rows.groupby(["run", "method", "seed", "prompt_id"])["cost"].mean()
        groups = [(label, values.to_numpy()) for label, values in per_prompt.groupby(level=["run", "method"])]
        if not groups:
            continue
        fig = Figure(figsize=(6.4, 3.8))
        ax = fig.add_subplot()
        ax.boxplot([values for _, values in groups], showmeans=True)
        ax.set_xticks(range(1, len(groups) + 1),
                      [_series_label(run, method, several_runs) for (run, method), _ in groups],
                      rotation=30, ha="right", fontsize=7)
        ax.axhline(metrics.SAFE_COST_MAX, color="black", linewidth=0.8, linestyle="--")
        ax.set_ylabel("per-prompt mean cost")
        ax.set_title(f"Per-prompt mean cost: {suite}")
        figures.append(ReportFigure(f"prompt-cost-{_slug(suite)}", f"Per-prompt mean cost on {suite}",
                                    "Each box is one method's prompts; above the dashed line a prompt is unsafe "
                                    "on average.", _png(fig)))
    return figures


def sweep_frontier(summary: pd.DataFrame, several_runs: bool) -> ReportFigure | None:
    """Helpfulness-harmlessness frontier: methods named like `sacpo[beta_over_lambda=0.01]`
    are variants of one sweep, joined in the order of their parameter."""
    if summary.empty or "safety_rate" not in summary:
        return None
    rows = summary[summary["safety_rate"].notna() & summary["reward_mean"].notna()]
    rows = rows[~rows["kind"].isin(metrics.OVER_REFUSAL_KINDS)]
    sweeps = rows.assign(parsed=rows["method"].map(metrics.parse_sweep_name))
    if not sweeps["parsed"].notna().any():
        return None
    # Pool each method's harmful suites, weighting every suite by its number of samples.
    pooled = rows.assign(w=rows["n_samples"]).groupby(["run", "method"]).apply(
        lambda g: pd.Series({"safety": np.average(g["safety_rate"], weights=g["w"]),
                             "reward": np.average(g["reward_mean"], weights=g["w"])}),
        include_groups=False).reset_index()
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot()
    pooled["parsed"] = pooled["method"].map(metrics.parse_sweep_name)
    swept = pooled[pooled["parsed"].notna()]
    for (run, base, param), group in swept.groupby(
            [swept["run"], swept["parsed"].map(lambda p: p[0]), swept["parsed"].map(lambda p: p[1])]):
        group = group.assign(value=group["parsed"].map(lambda p: p[2])).sort_values("value")
        ax.plot(group["safety"] * 100, group["reward"], marker="o",
                label=_series_label(run, f"{base}[{param}]", several_runs))
        for r in group.itertuples():
            ax.annotate(f"{r.value:g}", (r.safety * 100, r.reward), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    for r in pooled[pooled["parsed"].isna()].itertuples():
        ax.scatter([r.safety * 100], [r.reward], marker="s", label=_series_label(r.run, r.method, several_runs))
    ax.set_xlabel("safety rate (%) on harmful suites")
    ax.set_ylabel("mean reward")
    ax.set_title("Helpfulness-harmlessness frontier")
    ax.legend(fontsize=7, loc="best")
    return ReportFigure("frontier", "Helpfulness-harmlessness frontier of sweeps",
                        "Sweep variants joined in the order of their parameter (labels); squares: other methods.",
                        _png(fig))


def curve_panels(names: list[str]) -> list[tuple[str, list[str]]]:
    """(title, curve names) of each panel of the training-curves figure."""
    diagnostics = {n for _, group in DIAGNOSTIC_GROUPS for n in group}
    panels = []
    for title, needles in CURVE_GROUPS:
        chosen = [n for n in names if n not in diagnostics and any(needle in n.lower() for needle in needles)]
        if chosen:
            panels.append((title, chosen))
    for title, group in DIAGNOSTIC_GROUPS:
        chosen = [n for n in names if n in group]
        if chosen:
            panels.append((title, chosen))
    return panels or [(n, [n]) for n in names[:4]]  # unknown names: the first few as they are


def training_curves(curves: pd.DataFrame, several_runs: bool) -> ReportFigure | None:
    if curves.empty:
        return None
    panels = curve_panels(sorted(curves["name"].astype(str).unique()))
    fig = Figure(figsize=(6.4, 2.6 * len(panels)))
    for i, (title, chosen) in enumerate(panels, start=1):
        ax = fig.add_subplot(len(panels), 1, i)
        several_seeds = curves["seed"].nunique() > 1
        for (run, method, seed, name), group in curves[curves["name"].isin(chosen)].groupby(
                ["run", "method", "seed", "name"], sort=True):
            group = group.sort_values("step")
            label = _series_label(run, method, several_runs) + (f" seed {seed}" if several_seeds else "")
            ax.plot(group["step"], group["value"], label=f"{label}: {name}")
        ax.set_ylabel(title)
        ax.legend(fontsize=6, loc="best")
    fig.axes[-1].set_xlabel("step")
    return ReportFigure("training-curves", "Training curves", "Reward, cost, multiplier and KL as logged by "
                        "the trainers; for PPO also the update diagnostics (approx. KL to the sampling "
                        "policy, clip fraction, entropy, critics' explained variance).", _png(fig))


def all_figures(model) -> list[ReportFigure]:
    several = model.several_runs
    figures: list[ReportFigure] = []
    single = [safety_rates(model.summary, several), sweep_frontier(model.summary, several)]
    figures += [f for f in single[:1] if f is not None]
    figures += scatter_per_suite(model.results, several)
    figures += prompt_cost_distributions(model.results, several)
    figures += [f for f in single[1:] if f is not None]
    curves = training_curves(model.curves, several)
    if curves is not None:
        figures.append(curves)
    return figures
