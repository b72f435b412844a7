"""`safebench export RUN`: a run's samples with every score and verdict, one row per sample,
in a flat table that pandas and the `datasets` library load as they are (csv, parquet, jsonl).

The report's sample explorer shows the same per-sample judge columns (`sample_verdicts`).
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from safebench import metrics
from safebench.errors import UsageError
from safebench.files import atomic_write_bytes

FORMATS = {"csv": "csv", "parquet": "parquet", "jsonl": "jsonl"}  # format -> default file suffix
BASE_COLUMNS = ["run", "seed", "method", "suite", "kind", "category", "prompt_id", "prompt", "sample", "response",
                "reward", "cost", "safe", "oracle_reward", "oracle_cost", "oracle_safe", "refusal", "refusal_rule"]


def verdict_column(protocol: str, criterion: str, opponent) -> str:
    """The column a judged quantity goes to: judge_harm (share of harmful verdicts),
    judge_<criterion> (pointwise score), judge_<criterion>_vs_<opponent> (pairwise outcome:
    1 win, 0.5 tie, 0 loss)."""
    name = f"judge_{criterion}"
    if isinstance(opponent, str) and opponent:
        name += f"_vs_{opponent}"
    return name


def sample_verdicts(verdicts: pd.DataFrame | None) -> pd.DataFrame:
    """Per (method, suite, prompt_id, sample_idx, and seed for a set of seeds): the mean of each
    judged quantity over its scored verdicts (repeats, both pairwise orders) and judge_unscored,
    the number of verdicts the judge gave no usable answer for. Empty (no rows) when the run has
    no verdicts."""
    keys = ["method", "suite", "prompt_id", "sample_idx"]
    if verdicts is None or verdicts.empty:
        return pd.DataFrame(columns=keys)
    keys += ["seed"] if "seed" in verdicts.columns else []
    frame = verdicts.assign(column=[verdict_column(p, c, o) for p, c, o in
                                    zip(verdicts["protocol"], verdicts["criterion"], verdicts["opponent"])])
    ok = frame[(frame["status"] == "ok") & frame["value"].notna()]
    values = ok.assign(value=ok["value"].astype(float)).pivot_table(
        index=keys, columns="column", values="value", aggfunc="mean")
    values.columns = [str(c) for c in values.columns]
    unscored = (frame["status"] != "ok").groupby([frame[k] for k in keys]).sum().rename("judge_unscored")
    return values.join(unscored, how="outer").reset_index()


def sample_table(run) -> pd.DataFrame:
    """One row per sample of `run` (a reports.runs.RunData; a set of seeds gives every seed's
    samples) with the columns of BASE_COLUMNS and then the judge columns of `sample_verdicts`,
    sorted by seed, method, suite, prompt, sample."""
    results = run.results
    flags, rule = metrics.refusal_flags(results) if len(results) else (pd.Series(dtype=bool), pd.Series(dtype=str))
    table = results.assign(
        run=run.label, seed=results["seed"].astype(int), sample=results["sample_idx"].astype(int),
        safe=_safe(results["cost"]), oracle_safe=_safe(results["oracle_cost"]),
        refusal=flags.astype(bool), refusal_rule=rule)
    verdicts = sample_verdicts(run.verdicts)
    judge_columns = sorted(c for c in verdicts.columns if c.startswith("judge_"))
    if judge_columns:
        verdicts = verdicts.rename(columns={"sample_idx": "sample"})
        keys = ["method", "suite", "prompt_id", "sample"] + (["seed"] if "seed" in verdicts.columns else [])
        table = table.merge(verdicts, on=keys, how="left")
        table["judge_unscored"] = table["judge_unscored"].fillna(0).astype(int)
    table = table[BASE_COLUMNS + judge_columns]
    return table.sort_values(["seed", "method", "suite", "prompt_id", "sample"], ignore_index=True)


def _safe(cost: pd.Series) -> pd.Series:
    """True/False by the cost convention (safe iff cost <= 0), missing where unscored."""
    return (cost <= metrics.SAFE_COST_MAX).astype("boolean").where(cost.notna(), pd.NA)


def encode(table: pd.DataFrame, fmt: str) -> bytes:
    if fmt == "csv":
        return table.to_csv(index=False).encode("utf-8")
    if fmt == "jsonl":
        # One JSON object per line; missing values are null (strict JSON has no NaN). The Unicode
        # line separators are escaped: valid inside JSON strings, but line readers split at them.
        text = table.to_json(orient="records", lines=True, force_ascii=False, double_precision=15)
        return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").encode("utf-8")
    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False)
    return buffer.getvalue()


def export_run(run_dir: str | Path, fmt: str | None, out: str | Path | None = None) -> tuple[Path, int]:
    """Write the samples of the run at `run_dir` as `fmt` (None: by the suffix of `out`) to `out`
    (default RUN/samples.<suffix>); returns the path and the number of rows."""
    from safebench.reports.runs import load_run

    if fmt is None and out is not None and Path(out).suffix.lstrip(".") in FORMATS:
        fmt = Path(out).suffix.lstrip(".")
    if fmt is None:
        raise UsageError(f"--format missing: expected one of {', '.join(FORMATS)} (or an --out FILE with that suffix)")
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / f"samples.{FORMATS[fmt]}"
    if out.is_dir():
        raise UsageError(f"--out {out}: is a directory, expected a file name")
    table = sample_table(load_run(run_dir))
    atomic_write_bytes(out, encode(table, fmt))
    return out, int(len(table))
