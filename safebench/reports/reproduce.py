"""`safebench reproduce NAME`: our numbers beside a published table.

The table is data (reports/reference/NAME.yaml, with its source). The run is reused when
`--run DIR` is given, otherwise produced by the pipeline with the methods the table needs.
For each row: the paper's value, ours with its 95 % interval, the difference and whether the
paper's value falls inside our interval; then whether the *order* of methods agrees. At
tiny/smol scale the models, data and scorers are not the paper's, so only direction and
order are comparable, and the output says so.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from safebench import metrics, registry
from safebench.errors import UsageError
from safebench.reports.runs import BASELINE_METHOD, load_run
from safebench.files import atomic_write_text
from safebench.summary import shared_checkpoint_notes

SUMMARY_METRICS = ("safety_rate", "prompt_unsafe_share", "reward_mean", "cost_mean", "refusal_rate",
                   "oracle_safety_rate", "oracle_cost_mean", "oracle_reward_mean")
JUDGE_METRICS = ("win_rate", "score_mean")


def reference_dir() -> Path:
    return registry.reports_dir() / "reference"


def available() -> list[str]:
    return sorted(p.stem for p in reference_dir().glob("*.yaml"))


def load_reference(name: str) -> dict:
    path = reference_dir() / f"{name}.yaml"
    if not path.is_file():
        raise UsageError(f"unknown reference table '{name}'; available: {', '.join(available()) or 'none'}")
    data = registry.load_yaml(path)  # one-line errors for bad YAML or a non-mapping top level
    metric = data.get("metric")
    if metric not in SUMMARY_METRICS + JUDGE_METRICS:
        raise UsageError(f"{path}: field 'metric' = {metric!r}, expected one of "
                         f"{', '.join(SUMMARY_METRICS + JUDGE_METRICS)}")
    if not isinstance(data.get("source"), dict) or not data["source"].get("arxiv"):
        raise UsageError(f"{path}: field 'source.arxiv' is missing (every published number needs its source)")
    rows = data.get("rows")
    if not isinstance(rows, list) or not rows:
        raise UsageError(f"{path}: field 'rows' = {rows!r}, expected a non-empty list")
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("method"), str):
            raise UsageError(f"{path}: field 'rows[{i}].method' is missing")
        value = row.get("value")
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise UsageError(f"{path}: field 'rows[{i}].value' = {value!r}, expected a number")
        if metric in JUDGE_METRICS and not row.get("criterion"):
            raise UsageError(f"{path}: field 'rows[{i}].criterion' is missing (judge metrics are per criterion)")
    data["path"] = str(path)
    return data


def produce_run(reference: dict, preset: str | None, out_dir: Path) -> Path:
    """Run (or reuse, stage by stage) what the table needs through the pipeline."""
    from safebench import config as config_module
    from safebench.evals.judge.config import parse_judge_config
    from safebench.pipeline import run_pipeline

    run_spec = reference.get("run") or {}
    preset = preset or run_spec.get("preset", "tiny")
    overrides = list(run_spec.get("overrides", []))
    # `run.judge.PRESET`: the table's judge for that preset (tiny: the oracle judge); a preset
    # not listed keeps the judge it has (paper: GPT-4).
    judge = (run_spec.get("judge") or {}).get(preset)
    if judge is not None:
        parse_judge_config(judge, source=f"{reference['path']}: run.judge.{preset}")
        overrides.append("judge=" + json.dumps(judge))
    methods = list(run_spec.get("methods", [])) or None
    config, recipes = config_module.resolve(preset, methods, overrides,
                                            methods_source=f"{reference['path']}: field 'run.methods'")
    run_pipeline(config, recipes, out_dir, quiet=True,
                 request=config_module.request_record(preset, methods, overrides))
    return out_dir


def our_values(reference: dict, run_dir: Path, *, n_boot: int, seed: int) -> list[dict]:
    run = load_run(run_dir)
    metric = reference["metric"]
    results = run.results
    if reference.get("suite"):
        results = results[results["suite"] == reference["suite"]]
    elif reference.get("suite_kind"):
        results = results[results["kind"] == reference["suite_kind"]]
    out = []
    for row in reference["rows"]:
        ours = {"value": math.nan, "low": math.nan, "high": math.nan}
        if metric == "win_rate" and row["method"] == BASELINE_METHOD:
            # The baseline is never judged against itself: its win rate against itself is 1/2
            # by definition, with no interval, so it takes no part in the interval check.
            out.append({**row, "ours": {**ours, "value": 0.5}, "diff": 0.5 - row["value"], "inside": None,
                        "by_definition": True})
            continue
        if metric in SUMMARY_METRICS:
            mine = results[results["method"] == row["method"]]
            if len(mine):
                # Pool the chosen suites: the paper reports one number over its test set. A set of
                # seeds gives the mean over its seeds, with the t-interval over seeds.
                summary = metrics.summarize_seeds(mine, by=("method",), n_boot=n_boot, seed=seed)[1].iloc[0]
                if metric in summary:
                    ours = {k: summary[f"{metric}{s}"] for k, s in (("value", ""), ("low", "_low"), ("high", "_high"))}
        else:
            judge = metrics.judge_summary(run.verdicts, [row["method"]], n_boot=n_boot, seed=seed)
            match = judge[judge["criterion"] == row["criterion"]] if "criterion" in judge else judge.iloc[0:0]
            if len(match) and metric in match:
                first = match.iloc[0]
                ours = {"value": first.get(metric), "low": first.get(f"{metric}_low"),
                        "high": first.get(f"{metric}_high")}
        ours = {k: (float(v) if v is not None and not pd.isna(v) else math.nan) for k, v in ours.items()}
        diff = ours["value"] - row["value"]
        inside = (not math.isnan(ours["low"])) and ours["low"] <= row["value"] <= ours["high"]
        out.append({**row, "ours": ours, "diff": diff, "inside": inside})
    return out


def order_agreement(rows: list[dict]) -> tuple[int, int, list[str]]:
    """Over pairs of rows with the same criterion and different published values: how many
    have our values in the same order as the paper's."""
    agree, total, disagreements = 0, 0, []
    for i, a in enumerate(rows):
        for b in rows[i + 1:]:
            if a.get("criterion") != b.get("criterion") or a["value"] == b["value"]:
                continue
            if math.isnan(a["ours"]["value"]) or math.isnan(b["ours"]["value"]):
                continue
            total += 1
            paper_sign = math.copysign(1, b["value"] - a["value"])
            ours_diff = b["ours"]["value"] - a["ours"]["value"]
            if ours_diff != 0 and math.copysign(1, ours_diff) == paper_sign:
                agree += 1
            else:
                crit = f" ({a['criterion']})" if a.get("criterion") else ""
                disagreements.append(f"{a['label']} vs {b['label']}{crit}")
    return agree, total, disagreements


def render(reference: dict, rows: list[dict], run_dir: Path, preset: str, shared: list[str] = ()) -> str:
    """The table; `shared`: notes under it (rows' methods that are one checkpoint, from
    summary.shared_checkpoint_notes; the run's judge note)."""
    source = reference["source"]
    percent = reference["metric"].endswith(("rate", "share"))

    def fmt(x: float) -> str:
        if math.isnan(x):
            return "n/a"
        return f"{100 * x:.2f} %" if percent else f"{x:.3f}"

    lines = [f"# {reference.get('title', reference['name'])}",
             f"source: {source.get('paper', '')}, arXiv {source['arxiv']}"
             + (f" ({source['where']})" if source.get("where") else ""),
             f"paper setting: {reference.get('setting', 'n/a')}",
             f"our run: {run_dir} (preset {preset})", ""]
    if preset not in reference.get("paper_scale_presets", []):
        lines += [f"NOTE: preset '{preset}' is not the paper's scale (its models, data and scorer differ), so "
                  "compare direction and order, not the values; the interval check is shown for completeness.", ""]
    header = ["method", "paper row", *(["criterion"] if any(r.get("criterion") for r in rows) else []),
              "paper", "ours [95 % CI]", "ours - paper", "paper in our CI"]
    table = [header]
    for r in rows:
        ours = r["ours"]
        cells = [r["method"], r.get("label", r["method"])]
        if len(header) == 7:
            cells.append(str(r.get("criterion", "")))
        if r.get("by_definition"):
            ours_text = f"{fmt(ours['value'])} (by definition)"
        elif math.isnan(ours["value"]):
            ours_text = "not in this run"
        else:
            ours_text = f"{fmt(ours['value'])} [{fmt(ours['low'])}, {fmt(ours['high'])}]"
        diff_text = "n/a" if math.isnan(r["diff"]) else (f"{100 * r['diff']:+.2f} pp" if percent else f"{r['diff']:+.3f}")
        inside_text = "n/a" if r["inside"] is None else "yes" if r["inside"] else "no"
        cells += [fmt(r["value"]), ours_text, diff_text, inside_text]
        table.append(cells)
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for j, row in enumerate(table):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    agree, total, disagreements = order_agreement(rows)
    lines.append("")
    if total:
        lines.append(f"order: {agree} of {total} pairs of methods are ordered as in the paper"
                     + (f"; differing: {'; '.join(disagreements)}" if disagreements else ""))
    else:
        lines.append("order: no pair of methods with values on both sides to compare")
    by_definition = sorted({r["method"] for r in rows if r.get("by_definition")})
    if by_definition:
        lines.append(f"{', '.join(by_definition)}: the baseline's win rate against itself is 0.5 by definition "
                     "(never judged); not in the interval check, kept in the order comparison")
    lines += shared
    missing = sorted({r["method"] for r in rows if math.isnan(r["ours"]["value"])})
    if missing:
        what = "judge verdicts" if reference["metric"] in JUDGE_METRICS else "samples"
        lines.append(f"no {what} in this run for: {', '.join(missing)}")
    return "\n".join(lines) + "\n"


def reproduce(name: str, run_dir: Path | None = None, *, preset: str | None = None,
              out: Path | None = None, n_boot: int = metrics.DEFAULT_N_BOOT,
              seed: int = metrics.DEFAULT_SEED) -> str:
    reference = load_reference(name)
    if run_dir is None:
        run_dir = produce_run(reference, preset, Path("runs") / f"reproduce-{name}")
    run = load_run(run_dir)
    rows = our_values(reference, Path(run_dir), n_boot=n_boot, seed=seed)
    notes = shared_checkpoint_notes(run.manifest, [row["method"] for row in reference["rows"]])
    if run.judge_note:  # the report's note (runs._judge_verdicts), worded as the report puts it
        notes.append(f"Judge: {run.judge_note}")
    text = render(reference, rows, Path(run_dir), str(run.manifest.get("preset", "?")), notes)
    if out is not None:
        atomic_write_text(out, text)
    return text
