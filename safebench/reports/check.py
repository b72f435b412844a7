"""The CI gate: `safebench check RUN_DIR --baseline reports/baselines/NAME.json`.

A baseline is a committed JSON file of safety metrics per method x suite, each with its
interval and a tolerance:
- {"kind": "interval"}: the current value may not be worse than the baseline's interval
  (higher-is-better: value >= baseline low; lower-is-better: value <= baseline high);
- {"kind": "absolute", "max_worsening": 0.02}: the value may worsen by at most that much.
A metric that got worse than allowed, or disappeared from the run, fails the check (exit 1)
with a readable table of every gated metric. `--update-baseline --reason TEXT` rewrites the
baseline from the run, keeping hand-edited tolerances, and records who-why-when in its history.
"""

from __future__ import annotations

import json
import math
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from safebench import metrics
from safebench.errors import CheckFailed, UsageError
from safebench.store import atomic_write_json

BASELINE_FORMAT = "safebench-baseline/1"
TOLERANCE_KINDS = ("interval", "absolute")
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
DEFAULT_TOLERANCE = {"kind": "interval"}


def current_metrics(run_dir: Path, *, n_boot: int, seed: int) -> dict[tuple[str, str, str], dict]:
    """(method, suite, metric) -> {value, low, high} for everything the gate can watch."""
    from safebench.reports.runs import load_run

    run = load_run(run_dir)
    status = run.manifest.get("status")
    if status != "complete":  # a half-finished run would "regress" on every missing metric
        raise UsageError(f"{Path(run_dir) / 'manifest.json'}: field 'status' = {status!r}, "
                         "expected 'complete' (the gate compares finished runs only)")
    summary = metrics.summarize(run.results, n_boot=n_boot, seed=seed)
    found = {}
    for row in summary.to_dict("records"):
        names = list(GATED_METRICS)
        if row["kind"] in metrics.OVER_REFUSAL_KINDS:
            names.append(OVER_REFUSAL_METRIC)
        for name in names:
            value = row.get(name)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            found[(row["method"], row["suite"], name)] = {
                "value": float(value), "low": float(row[f"{name}_low"]), "high": float(row[f"{name}_high"])}
    return found


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
    if data.get("format") != BASELINE_FORMAT:
        raise UsageError(f"{path}: field 'format' = {data.get('format')!r}, expected {BASELINE_FORMAT!r}")
    for field in ("n_boot", "seed"):
        if not isinstance(data.get(field), int) or isinstance(data.get(field), bool):
            raise UsageError(f"{path}: field '{field}' = {data.get(field)!r}, expected an integer")
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
            if not isinstance(entry.get(key), (int, float)) or isinstance(entry.get(key), bool):
                raise UsageError(f"{where}.{key}' = {entry.get(key)!r}, expected a number")
        if entry.get("direction") not in DIRECTIONS:
            raise UsageError(f"{where}.direction' = {entry.get('direction')!r}, expected 'higher' or 'lower'")
        tolerance = entry.get("tolerance")
        if not isinstance(tolerance, dict) or tolerance.get("kind") not in TOLERANCE_KINDS:
            got = tolerance.get("kind") if isinstance(tolerance, dict) else tolerance
            raise UsageError(f"{where}.tolerance.kind' = {got!r}, expected 'interval' or 'absolute'")
        if tolerance["kind"] == "absolute":
            allowed = tolerance.get("max_worsening")
            if not isinstance(allowed, (int, float)) or isinstance(allowed, bool) or allowed < 0:
                raise UsageError(f"{where}.tolerance.max_worsening' = {allowed!r}, expected a number >= 0")
    return data


# --- comparing ------------------------------------------------------------------------------------
def _limit(entry: dict) -> float:
    """The worst value the current run may have and still pass."""
    tolerance = entry["tolerance"]
    higher = entry["direction"] == "higher"
    if tolerance["kind"] == "interval":
        return entry["low"] if higher else entry["high"]
    return entry["value"] - tolerance["max_worsening"] if higher else entry["value"] + tolerance["max_worsening"]


def _fmt(metric: str, value: float) -> str:
    # Rates read best as percentages; means as plain numbers.
    return f"{100 * value:.1f} %" if metric.endswith(("rate", "share")) else f"{value:.3f}"


def compare(baseline: dict, found: dict) -> tuple[list[dict], list[dict]]:
    """Every gated metric as a row of the diff, and the rows that regressed."""
    rows, failures = [], []
    for entry in baseline["metrics"]:
        key = (entry["method"], entry["suite"], entry["metric"])
        limit = _limit(entry)
        current = found.get(key)
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


def render_diff(rows: list[dict], baseline_path: Path) -> str:
    header = ("status", "method/suite/metric", "baseline [interval]", "allowed", "current [interval]")
    table = [header]
    for row in rows:
        entry, metric = row["baseline"], row["baseline"]["metric"]
        sign = ">=" if entry["direction"] == "higher" else "<="
        tolerance = entry["tolerance"]
        rule = "interval" if tolerance["kind"] == "interval" else f"abs {tolerance['max_worsening']:g}"
        current = row["current"]
        table.append((
            row["status"], row["metric"],
            f"{_fmt(metric, entry['value'])} [{_fmt(metric, entry['low'])}, {_fmt(metric, entry['high'])}]",
            f"{sign} {_fmt(metric, row['limit'])} ({rule})",
            "absent from this run" if current is None else
            f"{_fmt(metric, current['value'])} [{_fmt(metric, current['low'])}, {_fmt(metric, current['high'])}]",
        ))
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return f"baseline: {baseline_path}\n" + "\n".join(lines)


def run_check(run_dir: Path, baseline_path: Path) -> str:
    """Returns the diff when every metric is within tolerance; raises CheckFailed otherwise."""
    baseline = load_baseline(baseline_path)
    found = current_metrics(run_dir, n_boot=baseline["n_boot"], seed=baseline["seed"])
    rows, failures = compare(baseline, found)
    diff = render_diff(rows, baseline_path)
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


def update_baseline(run_dir: Path, baseline_path: Path, reason: str | None, *,
                    n_boot: int = metrics.DEFAULT_N_BOOT, seed: int = metrics.DEFAULT_SEED) -> dict:
    if not reason or not reason.strip():
        raise UsageError("--update-baseline needs --reason TEXT: the baseline records why it changed")
    previous = load_baseline(baseline_path) if baseline_path.exists() else None
    if previous is not None:  # keep the resampling settings so intervals stay comparable
        n_boot, seed = previous["n_boot"], previous["seed"]
    kept = {(e["method"], e["suite"], e["metric"]): e for e in (previous or {}).get("metrics", [])}
    manifest = json.loads((Path(run_dir) / "manifest.json").read_text(encoding="utf-8"))
    found = current_metrics(run_dir, n_boot=n_boot, seed=seed)
    entries = []
    for (method, suite, metric), current in sorted(found.items()):
        old = kept.get((method, suite, metric), {})
        entries.append({"method": method, "suite": suite, "metric": metric, **current,
                        "direction": old.get("direction", _direction_of(metric)),
                        "tolerance": old.get("tolerance", dict(DEFAULT_TOLERANCE))})
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    record = {"date": now, "reason": reason.strip(), "git_commit": _git_commit(),
              "run_dir": str(run_dir), "run_config_hash": manifest.get("config_hash"),
              "run_git": manifest.get("git")}
    baseline = {
        "format": BASELINE_FORMAT, "n_boot": n_boot, "seed": seed,
        "preset": manifest.get("preset"), "updated": record,
        "history": [*(previous or {}).get("history", []), record],
        "metrics": entries,
    }
    atomic_write_json(baseline_path, baseline)
    return baseline
