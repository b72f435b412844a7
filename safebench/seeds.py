"""Replicates: the whole run once per training seed (`safebench run --seeds 0,1,2`).

    runs/NAME/seeds.json      the set: its seeds, each seed's run directory, the request
    runs/NAME/seed-N/         one complete run per seed, as a run without --seeds writes it
                              (manifest.json, results.sqlite, stages/, its own summary and report)
    runs/NAME/summary.md  report.html  report.md  metrics.json   per-seed rows and the mean across seeds

`report`, `check` and `score` take runs/NAME and read every seed; a seed's directory is a run
of its own for any command. Each seed's stages are keyed with its seed, so nothing is trained
twice; a stage whose key does not depend on the seed (a converted base model) is built once and
hard-linked into the other seeds' directories (`Pipeline(shared_runs=...)`).
"""

from __future__ import annotations

import json
from pathlib import Path

from safebench.errors import UsageError

SEEDS_FILE = "seeds.json"
SEEDS_FORMAT = "safebench-seeds/1"


def seed_dir(out: Path, seed: int) -> Path:
    return Path(out) / f"seed-{seed}"


def replicates(path: Path) -> dict[int, Path] | None:
    """seed -> run directory of the set of seeds at `path`; None when `path` is no such set."""
    file = Path(path) / SEEDS_FILE
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UsageError(f"{file}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    runs = data.get("runs") if isinstance(data, dict) else None
    if not isinstance(data, dict) or data.get("format") != SEEDS_FORMAT:
        raise UsageError(f"{file}: field 'format' = {data.get('format') if isinstance(data, dict) else data!r}, "
                         f"expected {SEEDS_FORMAT!r}")
    if not isinstance(runs, dict) or not runs or not all(str(k).isdigit() and isinstance(v, str)
                                                         for k, v in runs.items()):
        raise UsageError(f"{file}: field 'runs' = {runs!r}, expected {{\"SEED\": \"seed-SEED\", ...}}")
    return {int(seed): Path(path) / directory for seed, directory in runs.items()}


def refuse_mixed(out: Path, seeded: bool) -> None:
    """One directory holds either one run or a set of seeds, never both."""
    out = Path(out)
    if seeded and (out / "manifest.json").exists():
        raise UsageError(f"{out}: holds a run without --seeds (manifest.json); give --seeds runs another --out")
    if not seeded and (out / SEEDS_FILE).exists():
        raise UsageError(f"{out}: holds a set of seeds ({SEEDS_FILE}); run it with --seeds, or give another --out")


def results(out: Path):
    """RunStore.results() of every seed of the set at `out`, with a `seed` column."""
    import pandas as pd

    from safebench.store import RunStore

    frames = []
    for seed, run_dir in (replicates(out) or {}).items():
        store = RunStore(run_dir)
        try:
            frames.append(store.results().assign(seed=seed))
        finally:
            store.close()
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
