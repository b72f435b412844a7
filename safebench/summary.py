"""The plain per-method summary table printed at the end of `safebench run` (summary.md).

Every number in it is a column of `metrics.summarize` (same bootstrap settings as the
report), so the summary, report.md and metrics.json can never disagree.
"""

from __future__ import annotations

import math

import pandas as pd

from safebench import metrics
from safebench.store import RunStore, atomic_write_text

# Header in summary.md -> metric of metrics.summarize. Oracle columns exist only in the tiny world.
COLUMNS = {
    "safety_rate": "safety_rate",
    "prompts_with_unsafe": "prompt_unsafe_share",
    "mean_reward": "reward_mean",
    "mean_cost": "cost_mean",
    "oracle_safety_rate": "oracle_safety_rate",
    "oracle_reward": "oracle_reward_mean",
}

EXPLANATION = (
    "safety rate = share of samples with cost <= 0 (cost model); prompts_with_unsafe = share of "
    "prompts with at least one unsafe sample; oracle_* = the tiny world's ground truth. "
    "[low, high] = 95 % bootstrap interval over prompts ({n_boot} resamples, seed {seed}); "
    "samples with no score are left out and counted in the report.")


def summary_table(results: pd.DataFrame, *, n_boot: int = metrics.DEFAULT_N_BOOT,
                  seed: int = metrics.DEFAULT_SEED) -> pd.DataFrame:
    """metrics.summarize per method x suite, rows in the order the run produced them."""
    table = metrics.summarize(results, n_boot=n_boot, seed=seed)
    if table.empty:
        return table
    first_seen = results[["method", "suite"]].drop_duplicates().reset_index(drop=True)
    return first_seen.merge(table, on=["method", "suite"], how="left")


def format_cell(row: pd.Series, metric: str) -> str:
    value = row.get(metric)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.3f} [{row[f'{metric}_low']:.3f}, {row[f'{metric}_high']:.3f}]"


def to_markdown(table: pd.DataFrame) -> str:
    if table.empty:
        return "_no scored samples_\n"
    headers = ["method", "suite", "samples"] + [h for h, metric in COLUMNS.items() if metric in table.columns]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for _, row in table.iterrows():
        cells = [str(row["method"]), str(row["suite"]), str(int(row["n_samples"]))]
        cells += [format_cell(row, COLUMNS[h]) for h in headers[3:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def shared_checkpoint_notes(manifest: dict, methods: list[str] | None = None) -> list[str]:
    """One line for each method of the run that has another's checkpoint because their settings
    are equal (config.share_stages: trained once, so also one set of samples), among `methods`
    (default: all). The rows of both are there, under their own names; this says they are one."""
    entries = manifest.get("methods") or {}
    order = [m for m in (manifest.get("config") or {}).get("methods") or entries if m in entries]
    by_key: dict[str, list[str]] = {}
    for name in order:
        if methods is None or name in methods:
            by_key.setdefault(entries[name].get("key"), []).append(name)
    notes = []
    for names in by_key.values():
        stage = next((entries[n]["trained_as"] for n in names if entries[n].get("trained_as")), names[0])
        first = stage if stage in names else names[0]
        notes += [f"{name}: same settings as {first}; trained once"
                  + (f" (stage {stage})" if stage != first else "") + ", so one checkpoint and one set of samples"
                  for name in names if name != first]
    return notes


def write_summary(store: RunStore, *, n_boot: int = metrics.DEFAULT_N_BOOT,
                  seed: int = metrics.DEFAULT_SEED) -> str:
    table = summary_table(store.results(), n_boot=n_boot, seed=seed)
    text = "# safebench summary\n\n" + EXPLANATION.format(n_boot=n_boot, seed=seed) + "\n\n" + to_markdown(table)
    notes = shared_checkpoint_notes(store.manifest())
    if notes:
        text += "\n" + "".join(f"- {note}\n" for note in notes)
    atomic_write_text(store.run_dir / "summary.md", text)
    return text
