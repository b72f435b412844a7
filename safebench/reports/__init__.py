"""Reports of safebench runs: Markdown + HTML, the CI gate (`safebench check`) and the
reproduction of published tables (`safebench reproduce`).

`write_reports` is what `safebench report` and the end of `safebench run` call.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from safebench.defaults import DEFAULT_N_BOOT, DEFAULT_SEED
from safebench.errors import UsageError
from safebench.files import atomic_write_bytes, atomic_write_json, atomic_write_text


def json_safe(obj):
    """NaN/inf become null (strict JSON has no NaN) and numpy scalars plain numbers."""
    import math

    import numpy as np

    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def judge_failure(manifest: dict) -> str | None:
    """What a run's judge stage failed to do, in words; None when no judgment failed."""
    summary = manifest.get("judge") if isinstance(manifest.get("judge"), dict) else {}
    counts = summary.get("counts") if isinstance(summary.get("counts"), dict) else {}
    if not counts.get("error"):
        return None
    return (f"the judge failed {counts['error']} of {summary.get('expected', '?')} judgment(s); "
            "its figures cover only the verdicts that came back")


def write_reports(run_dirs: list[Path], out_dir: Path | None = None, *,
                  n_boot: int = DEFAULT_N_BOOT, seed: int = DEFAULT_SEED, status: str | None = None) -> dict:
    """Write report.html, report.md, metrics.json and figures/*.png for one run (into the
    run directory unless `out_dir` is given) or a comparison of several (`out_dir` needed).
    `status`: the status the pipeline records for its run once the report is written.

    Returns the paths written and the number of scored rows per run.
    """
    from safebench.reports.explorer import build_explorer
    from safebench.reports.figures import all_figures
    from safebench.reports.html import render_html
    from safebench.reports.markdown import render_markdown
    from safebench.reports.runs import build_model, load_runs
    from safebench.summary import shared_checkpoint_notes

    run_dirs = [Path(p) for p in run_dirs]
    if out_dir is None:
        if len(run_dirs) != 1:
            raise UsageError(f"{len(run_dirs)} runs given: a comparison needs --out DIR for its report")
        out_dir = run_dirs[0]
    out_dir = Path(out_dir)
    runs = load_runs(run_dirs)
    if status is not None:
        runs[0].manifest["status"] = status
    model = build_model(runs, n_boot=n_boot, seed=seed)
    for run in runs:
        failure = judge_failure(run.manifest)
        model.notes += [f"{run.label}: {note}" if len(runs) > 1 else note
                        for note in [*shared_checkpoint_notes(run.manifest), *([failure] if failure else [])]]
    figures = all_figures(model)

    figure_paths = []
    for figure in figures:
        path = out_dir / "figures" / f"{figure.name}.png"
        atomic_write_bytes(path, figure.png)
        figure_paths.append(path)
    metrics_path = out_dir / "metrics.json"
    atomic_write_json(metrics_path, json_safe({
        "n_boot": n_boot, "seed": seed,
        # summary: per run x method x suite, the mean over seeds with its interval (column
        # `interval`: "t over seeds", or with one seed "bootstrap over prompts"); per_seed: each seed
        "summary": model.summary.to_dict("records"),
        "per_seed": model.per_seed.to_dict("records"),
        "by_category": model.by_category.to_dict("records"),
        "paired": model.comparisons,
        "paired_across_seeds": model.comparisons_across_seeds,
        "judge": model.judge.to_dict("records") if len(model.judge) else [],
        # held-out figures of the reward and cost models per seed (reports/scorers.py); value null:
        # not measured, `note` says why
        "scorers": [asdict(figure) for figure in model.scorers],
        # cells shown greyed (a scorer near chance, or unmeasured, on that kind of prompt) and why
        "greyed": [{"table": table.id, "row": row, "column": table.header[col], "reason": reason}
                   for table in model.tables for (row, col), reason in sorted(table.greyed.items())],
    }))
    md_path, html_path = out_dir / "report.md", out_dir / "report.html"
    atomic_write_text(md_path, render_markdown(model, figures))
    # The HTML is written last: its presence means the whole report is there.
    atomic_write_text(html_path, render_html(model, figures, build_explorer(model, runs)))
    return {"html": html_path, "markdown": md_path, "metrics": metrics_path, "figures": figure_paths,
            "rows": {run.label: int(len(run.results)) for run in runs}}
