"""The plain per-method summary table printed at the end of `safebench run` (summary.md).

Every number in it is a column of `metrics.summarize` (same bootstrap settings as the
report), so the summary, report.md and metrics.json can never disagree.
"""

from __future__ import annotations

import json
import math

import pandas as pd

from safebench import metrics
from safebench.files import atomic_write_text
from safebench.store import RunStore

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
EXPLANATION_SEEDS = (
    "One row per seed (a replicate of the whole run) and their mean. On the mean rows [low, high] is "
    "the 95 % t-interval over the seeds (mean ± t·sd/√n); on a seed's rows, the 95 % bootstrap interval "
    "over that seed's prompts ({n_boot} resamples, seed {seed}). safety rate = share of samples with "
    "cost <= 0 (cost model); prompts_with_unsafe = share of prompts with at least one unsafe sample; "
    "oracle_* = the tiny world's ground truth.")


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
    """The table's rows; with a `seed` column, a seed column after method and suite."""
    if table.empty:
        return "_no scored samples_\n"
    keys = ["method", "suite"] + (["seed"] if "seed" in table.columns else [])
    headers = keys + ["samples"] + [h for h, metric in COLUMNS.items() if metric in table.columns]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for _, row in table.iterrows():
        cells = [str(row[k]) for k in keys] + [str(int(row["n_samples"]))]
        cells += [format_cell(row, COLUMNS[h]) for h in headers[len(keys) + 1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def seeds_table(results: pd.DataFrame, *, n_boot: int = metrics.DEFAULT_N_BOOT,
                seed: int = metrics.DEFAULT_SEED) -> pd.DataFrame:
    """Per method x suite, in the order the runs produced them: the mean across seeds (seed
    'mean of N'), then one row per seed."""
    if results.empty:
        return pd.DataFrame()
    per_seed, across = metrics.summarize_seeds(results, n_boot=n_boot, seed=seed)
    rows = []
    for method, suite in results[["method", "suite"]].drop_duplicates().itertuples(index=False):
        mean = across[(across["method"] == method) & (across["suite"] == suite)]
        mine = per_seed[(per_seed["method"] == method) & (per_seed["suite"] == suite)].sort_values("seed")
        rows.append(mean.assign(seed=f"mean of {int(mean['n_seeds'].iloc[0])}"))
        rows.append(mine.assign(seed=mine["seed"].astype(int).astype(str)))
    return pd.concat(rows, ignore_index=True)


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
    notes = shared_checkpoint_notes(store.manifest().dump())
    if notes:
        text += "\n" + "".join(f"- {note}\n" for note in notes)
    atomic_write_text(store.run_dir / "summary.md", text)
    return text


def write_seeds_summary(out, *, n_boot: int = metrics.DEFAULT_N_BOOT, seed: int = metrics.DEFAULT_SEED) -> str:
    """summary.md of a set of seeds (safebench/seeds.py): per-seed rows and their mean."""
    from safebench import seeds

    replicates = seeds.replicates(out)
    table = seeds_table(seeds.results(out), n_boot=n_boot, seed=seed)
    text = (f"# safebench summary: seeds {', '.join(map(str, replicates))}\n\n"
            + EXPLANATION_SEEDS.format(n_boot=n_boot, seed=seed) + "\n\n" + to_markdown(table))
    notes = []
    for replicate, run_dir in replicates.items():
        manifest = json.loads((run_dir / "manifest.json").read_text()) if (run_dir / "manifest.json").exists() else {}
        notes += [f"seed {replicate}: {note}" for note in shared_checkpoint_notes(manifest)]
    if notes:
        text += "\n" + "".join(f"- {note}\n" for note in notes)
    atomic_write_text(out / "summary.md", text)
    return text
