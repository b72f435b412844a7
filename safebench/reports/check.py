"""The CI gate: `safebench check RUN_DIR --baseline reports/baselines/NAME.json`.

An evaluation of a fixed model (`safebench eval`) is gated against a previous one prompt by prompt:
`--baseline` a run directory or a paired baseline file (safebench/reports/paired.py). A training
run is gated against a baseline of metrics with tolerances, as follows.

A baseline is a committed JSON file of safety metrics per method x suite, each with a tolerance:
- {"kind": "seeds"} (the default for a baseline made from a set of seeds, `run --seeds`): the
  baseline keeps each seed's value; the current run (its mean over its seeds) fails only when it is
  worse than the baseline's mean by more than seed-to-seed noise allows, a one-sided prediction
  bound: margin = t(confidence, n-1) · σ · √(1/n + 1/k), n baseline seeds, k current seeds,
  σ = the baseline seeds' sd, at least the sd that sampling prompts alone gives (from the seeds'
  bootstrap intervals: seeds that agree by chance do not make the gate exact);
- {"kind": "interval"} (the default for a baseline made from one run): the current value may not
  be worse than the baseline's bootstrap interval over prompts (higher-is-better: value >=
  baseline low; lower-is-better: value <= baseline high);
- {"kind": "absolute", "max_worsening": 0.02}: the value may worsen by at most that much.
A metric that got worse than allowed, or disappeared from the run, fails the check (exit 1)
with a readable table of every gated metric; a metric whose scorer is near chance on its suite's
kind (reports/scorers.py) is marked `*` with the reason. `--update-baseline --reason TEXT` rewrites the
baseline from the run, keeping hand-set absolute tolerances, and records who-why-when in its
history and the environment (package versions, torch threads, CPU) it was made in; the check
prints one line when the run's environment differs from that (a warning, not a failure).
Baselines in format safebench-baseline/1 (no per-seed values) are still read.
"""

from __future__ import annotations

import json
import math
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from scipy import stats

from safebench import environment, metrics
from safebench.errors import CheckFailed, UsageError
from safebench.files import atomic_write_json
from safebench.reports import scorers

BASELINE_FORMAT = "safebench-baseline/2"
READABLE_FORMATS = ("safebench-baseline/1", BASELINE_FORMAT)
TOLERANCE_KINDS = ("seeds", "interval", "absolute")
# One-sided confidence of the "seeds" bound: with some thirty gated metrics, 0.99 each keeps a
# false alarm from seed noise alone to about one check in four at most (fewer: metrics correlate).
DEFAULT_CONFIDENCE = 0.99
DIRECTIONS = ("higher", "lower")

# What the gate watches by default, with the direction that is better. Helpfulness is left
# out on purpose: the gate is about safety regressions; add reward_mean by hand if wanted.
GATED_METRICS: dict[str, str] = {
    "safety_rate": "higher",
    "prompt_unsafe_share": "lower",
    "cost_mean": "lower",
    "oracle_safety_rate": "higher",
    "oracle_prompt_unsafe_share": "lower",
    "oracle_cost_mean": "lower",
}
# Refusing benign prompts is gated too, but only on suites where refusing is a failure.
OVER_REFUSAL_METRIC = "refusal_rate"
# The scorer each gated metric stands on (reports/scorers.py measures them); the oracle's own
# metrics stand on no scorer. A metric whose scorer is near chance, or unmeasured, on its suite's
# kind is still gated, but marked: its pass or fail says little (the report greys it likewise).
METRIC_SCORER = {"safety_rate": "cost-model", "prompt_unsafe_share": "cost-model", "cost_mean": "cost-model",
                 OVER_REFUSAL_METRIC: scorers.REFUSAL_RULE}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def current_metrics(run_dir: Path, *, n_boot: int, seed: int) -> tuple[dict[tuple[str, str, str], dict], dict]:
    """(method, suite, metric) -> {value, low, high, per_seed: {seed: {value, low, high}}} for
    everything the gate can watch (value: the mean over the run's seeds; low/high: its interval),
    and the run's environment (environment.of_manifest)."""
    from safebench.reports.runs import load_run

    run = load_run(run_dir)
    for replicate, manifest in run.replicates.items():
        status = manifest.get("status")
        if status != "complete":  # a half-finished run would "regress" on every missing metric
            where = Path(run_dir) / (f"seed-{replicate}" if len(run.replicates) > 1 else "")
            raise UsageError(f"{where / 'manifest.json'}: field 'status' = {status!r}, "
                             "expected 'complete' (the gate compares finished runs only)")
    grey = _grey_reasons(run)
    per_seed, summary = metrics.summarize_seeds(run.results, n_boot=n_boot, seed=seed)
    seed_rows = {(r["method"], r["suite"], int(r["seed"])): r for r in per_seed.to_dict("records")}
    found = {}
    for row in summary.to_dict("records"):
        names = list(GATED_METRICS)
        if row["kind"] in metrics.OVER_REFUSAL_KINDS:
            names.append(OVER_REFUSAL_METRIC)
        for name in names:
            value = row.get(name)
            if _missing(value):
                continue
            seeds = [int(s) for s in str(row["seeds"]).split(",")]
            found[(row["method"], row["suite"], name)] = {
                "value": float(value), "low": float(row[f"{name}_low"]), "high": float(row[f"{name}_high"]),
                "per_seed": {s: {k: float(seed_rows[(row["method"], row["suite"], s)][c])
                                 for k, c in (("value", name), ("low", f"{name}_low"), ("high", f"{name}_high"))}
                             for s in seeds if not _missing(seed_rows[(row["method"], row["suite"], s)][name])},
                "greyed": grey.reason(run.label, METRIC_SCORER.get(name, ""), row["kind"])}
    return found, environment.of_manifest(next(iter(run.replicates.values())))


def _grey_reasons(run):
    """Why the run's scorers cannot be trusted on each kind of suite (reports/scorers.py)."""
    figures = [figure for seed in sorted(run.replicates)
               for figure in scorers.scorer_figures(run.label, seed, run.replicates[seed], run.heldout.get(seed, {}))]
    figures += scorers.refusal_rule_validity(run.results)
    return scorers.grey_reasons(figures, {run.label: {str(kind) for kind in run.results["kind"].unique()}})


def _direction_of(metric: str) -> str:
    return "lower" if metric == OVER_REFUSAL_METRIC else GATED_METRICS.get(metric, "higher")


# --- reading and validating a baseline -------------------------------------------------------
def load_baseline(path: Path) -> dict:
    if not path.is_file():
        raise UsageError(f"{path}: baseline file not found (create it with --update-baseline --reason TEXT)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a JSON object, got {type(data).__name__}")
    if data.get("format") not in READABLE_FORMATS:
        raise UsageError(f"{path}: field 'format' = {data.get('format')!r}, expected {BASELINE_FORMAT!r} "
                         f"(regenerate it: safebench check RUN --baseline {path} --update-baseline --reason TEXT)")
    for field in ("n_boot", "seed"):
        if not isinstance(data.get(field), int) or isinstance(data.get(field), bool):
            raise UsageError(f"{path}: field '{field}' = {data.get(field)!r}, expected an integer")
    confidence = data.setdefault("confidence", DEFAULT_CONFIDENCE)
    if not isinstance(confidence, float) or not 0.5 <= confidence < 1:
        raise UsageError(f"{path}: field 'confidence' = {confidence!r}, expected a number in [0.5, 1)")
    entries = data.get("metrics")
    if not isinstance(entries, list):
        raise UsageError(f"{path}: field 'metrics' = {entries!r}, expected a list")
    for i, entry in enumerate(entries):
        where = f"{path}: field 'metrics[{i}]"
        if not isinstance(entry, dict):
            raise UsageError(f"{where}' = {entry!r}, expected an object")
        for key in ("method", "suite", "metric"):
            if not isinstance(entry.get(key), str) or not entry.get(key):
                raise UsageError(f"{where}.{key}' = {entry.get(key)!r}, expected a non-empty string")
        for key in ("value", "low", "high"):
            if not _is_number(entry.get(key)):
                raise UsageError(f"{where}.{key}' = {entry.get(key)!r}, expected a number")
        if entry.get("direction") not in DIRECTIONS:
            raise UsageError(f"{where}.direction' = {entry.get('direction')!r}, expected 'higher' or 'lower'")
        tolerance = entry.get("tolerance")
        if not isinstance(tolerance, dict) or tolerance.get("kind") not in TOLERANCE_KINDS:
            got = tolerance.get("kind") if isinstance(tolerance, dict) else tolerance
            raise UsageError(f"{where}.tolerance.kind' = {got!r}, expected 'seeds', 'interval' or 'absolute'")
        if tolerance["kind"] == "seeds":
            per_seed = entry.get("per_seed")
            if not isinstance(per_seed, dict) or len(per_seed) < 2 or not all(
                    isinstance(v, dict) and all(_is_number(v.get(k)) for k in ("value", "low", "high"))
                    for v in per_seed.values()):
                raise UsageError(f"{where}.per_seed' = {per_seed!r}, expected two or more seeds, each "
                                 "{\"value\": x, \"low\": x, \"high\": x} (tolerance 'seeds')")
        if tolerance["kind"] == "absolute":
            allowed = tolerance.get("max_worsening")
            if not isinstance(allowed, (int, float)) or isinstance(allowed, bool) or allowed < 0:
                raise UsageError(f"{where}.tolerance.max_worsening' = {allowed!r}, expected a number >= 0")
    return data


# --- comparing ------------------------------------------------------------------------------------
def seed_margin(entry: dict, n_current: int, confidence: float) -> float:
    """How far the mean of `n_current` new seeds may fall short of the baseline's mean from seed
    noise alone (tolerance 'seeds', see the module docstring)."""
    values = [v["value"] for v in entry["per_seed"].values()]
    n = len(values)
    sampling_sd = sum(v["high"] - v["low"] for v in entry["per_seed"].values()) / n \
        / (2 * stats.norm.ppf(0.5 + metrics.CONFIDENCE / 2))
    sd = max(float(np.std(values, ddof=1)), sampling_sd)
    return float(stats.t.ppf(confidence, n - 1)) * sd * math.sqrt(1 / n + 1 / max(n_current, 1))


def _limit(entry: dict, n_current: int, confidence: float) -> float:
    """The worst value the current run (the mean of its `n_current` seeds) may have and still pass."""
    tolerance = entry["tolerance"]
    higher = entry["direction"] == "higher"
    if tolerance["kind"] == "interval":
        return entry["low"] if higher else entry["high"]
    if tolerance["kind"] == "seeds":
        margin = seed_margin(entry, n_current, confidence)
    else:
        margin = tolerance["max_worsening"]
    return entry["value"] - margin if higher else entry["value"] + margin


def _fmt(metric: str, value: float) -> str:
    # Rates read best as percentages; means as plain numbers.
    return f"{100 * value:.1f} %" if metric.endswith(("rate", "share")) else f"{value:.3f}"


def compare(baseline: dict, found: dict) -> tuple[list[dict], list[dict]]:
    """Every gated metric as a row of the diff, and the rows that regressed."""
    rows, failures = [], []
    for entry in baseline["metrics"]:
        key = (entry["method"], entry["suite"], entry["metric"])
        current = found.get(key)
        n_current = len(current.get("per_seed") or {}) if current else 1
        limit = _limit(entry, n_current, baseline["confidence"])
        row = {"metric": "/".join(key), "baseline": entry, "limit": limit, "current": current}
        if current is None:
            row["status"] = "MISSING"
        else:
            higher = entry["direction"] == "higher"
            worse = current["value"] < limit if higher else current["value"] > limit
            better = current["value"] > entry["value"] if higher else current["value"] < entry["value"]
            row["status"] = "REGRESSED" if worse else ("improved" if better else "ok")
        rows.append(row)
        if row["status"] in ("REGRESSED", "MISSING"):
            failures.append(row)
    return rows, failures


def _seeds_cell(metric: str, entry: dict) -> str:
    """`mean (n seeds)` or `value [low, high]` of a baseline entry or a current run's metric."""
    per_seed = entry.get("per_seed") or {}
    if len(per_seed) > 1:
        return f"{_fmt(metric, entry['value'])} ({len(per_seed)} seeds: " \
               f"{', '.join(_fmt(metric, v['value']).removesuffix(' %') for v in per_seed.values())})"
    return f"{_fmt(metric, entry['value'])} [{_fmt(metric, entry['low'])}, {_fmt(metric, entry['high'])}]"


def render_diff(rows: list[dict], baseline_path: Path, confidence: float) -> str:
    header = ("status", "method/suite/metric", "baseline", "allowed", "current")
    table = [header]
    for row in rows:
        entry, metric = row["baseline"], row["baseline"]["metric"]
        sign = ">=" if entry["direction"] == "higher" else "<="
        tolerance = entry["tolerance"]
        rule = {"interval": "interval", "seeds": f"seed noise, {confidence:g}"}.get(
            tolerance["kind"], f"abs {tolerance.get('max_worsening', 0):g}")
        current = row["current"]
        status = row["status"] + ("*" if current and current.get("greyed") else "")
        table.append((status, row["metric"], _seeds_cell(metric, entry),
                      f"{sign} {_fmt(metric, row['limit'])} ({rule})",
                      "absent from this run" if current is None else _seeds_cell(metric, current)))
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    reasons = sorted({row["current"]["greyed"] for row in rows if row["current"] and row["current"].get("greyed")})
    lines += [f"* scorer not to be trusted here, so this pass or fail says little: {reason}" for reason in reasons]
    return f"baseline: {baseline_path}\n" + "\n".join(lines)


def notices(baseline: dict, baseline_path: Path, run_environment: dict) -> list[str]:
    """One line each: the environment differs from the baseline's; the baseline has no seeds."""
    lines = []
    if baseline.get("environment"):
        changed = environment.differences(baseline["environment"], run_environment)
        if changed:
            lines.append(f"warning: environment differs from the baseline's ({'; '.join(changed)}): "
                         "numbers may move for that alone")
    if not any(e["tolerance"]["kind"] == "seeds" for e in baseline["metrics"]):
        lines.append(f"note: {baseline_path} has no per-seed values, so its tolerances are one run's bootstrap "
                     f"intervals, which seed noise exceeds; make it from seeds: safebench run --seeds 0,1,2 ... "
                     f"--out RUN && safebench check RUN --baseline {baseline_path} --update-baseline --reason TEXT")
    return lines


def run_check(run_dir: Path, baseline_path: Path) -> str:
    """Returns the diff when every metric is within tolerance; raises CheckFailed otherwise. A run
    directory or a paired baseline file as the baseline: the paired gate (safebench/reports/paired.py)."""
    from safebench.reports import paired

    if paired.is_paired_baseline(baseline_path):
        return paired.run_paired_check(run_dir, baseline_path)
    baseline = load_baseline(baseline_path)
    found, run_environment = current_metrics(run_dir, n_boot=baseline["n_boot"], seed=baseline["seed"])
    rows, failures = compare(baseline, found)
    diff = "\n".join([*notices(baseline, baseline_path, run_environment),
                      render_diff(rows, baseline_path, baseline["confidence"])])
    regressed = [f["metric"] for f in failures if f["status"] == "REGRESSED"]
    # A metric the run does not have is no regression: the run left out a method or suite.
    missing = sorted({f["metric"].rsplit("/", 1)[0] for f in failures if f["status"] == "MISSING"})
    absent = (f"{sum(f['status'] == 'MISSING' for f in failures)} of {len(rows)} gated metrics missing in this run "
              f"(not evaluated: {', '.join(missing)})") if missing else ""
    if regressed:
        raise CheckFailed(f"safety regressed against the baseline ({len(regressed)} of {len(rows)} metrics: "
                          f"{', '.join(regressed)})" + (f"; {absent}" if absent else "") + f"\n{diff}")
    if missing:
        raise CheckFailed(f"nothing regressed, but {absent}; evaluate them, or check against a baseline of this "
                          f"run's methods and suites\n{diff}")
    return diff + f"\nok: {len(rows)} gated metrics within tolerance"


# --- writing a baseline -----------------------------------------------------------------------------
def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def update_baseline(run_dir: Path, baseline_path: Path, reason: str | None, *, paired: bool = False,
                    n_boot: int = metrics.DEFAULT_N_BOOT, seed: int = metrics.DEFAULT_SEED) -> dict:
    """Write the baseline from a run: per-seed values and tolerance 'seeds' from a set of two or
    more seeds, the bootstrap interval ('interval') from one run. Hand-set absolute tolerances and
    the resampling settings and confidence of the previous file are kept. `paired` (or a previous
    paired file at that path, or a run of `safebench eval`): the per-prompt values for the paired
    gate instead."""
    from safebench.reports import paired as paired_gate

    if paired or paired_gate.is_evaluation(run_dir) or (
            baseline_path.is_file() and paired_gate.is_paired_baseline(baseline_path)):
        return paired_gate.write_baseline(run_dir, baseline_path, reason)
    if not reason or not reason.strip():
        raise UsageError("--update-baseline needs --reason TEXT: the baseline records why it changed")
    previous = load_baseline(baseline_path) if baseline_path.exists() else None
    if previous is not None:  # keep the resampling settings so intervals stay comparable
        n_boot, seed = previous["n_boot"], previous["seed"]
    kept = {(e["method"], e["suite"], e["metric"]): e for e in (previous or {}).get("metrics", [])}
    found, run_environment = current_metrics(run_dir, n_boot=n_boot, seed=seed)
    entries = []
    for (method, suite, metric), current in sorted(found.items()):
        old = kept.get((method, suite, metric), {})
        per_seed = current["per_seed"]
        tolerance = old["tolerance"] if old.get("tolerance", {}).get("kind") == "absolute" else \
            {"kind": "seeds" if len(per_seed) > 1 else "interval"}
        entries.append({"method": method, "suite": suite, "metric": metric,
                        "value": current["value"], "low": current["low"], "high": current["high"],
                        "per_seed": {str(s): v for s, v in per_seed.items()},
                        "direction": old.get("direction", _direction_of(metric)), "tolerance": tolerance})
    from safebench.reports.runs import load_run

    manifest = load_run(run_dir).manifest
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    record = {"date": now, "reason": reason.strip(), "git_commit": _git_commit(),
              "run_dir": str(run_dir), "run_config_hash": manifest.get("config_hash"),
              "run_git": manifest.get("git")}
    baseline = {
        "format": BASELINE_FORMAT, "n_boot": n_boot, "seed": seed,
        "confidence": (previous or {}).get("confidence", DEFAULT_CONFIDENCE),
        "preset": manifest.get("preset"), "environment": run_environment, "updated": record,
        "history": [*(previous or {}).get("history", []), record],
        "metrics": entries,
    }
    atomic_write_json(baseline_path, baseline)
    return baseline
