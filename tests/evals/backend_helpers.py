"""Reading what `safebench generate` wrote, for the backend tests."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def samples(run_dir: Path, suite: str | None = None) -> dict[tuple[str, int], dict]:
    """(prompt_id, sample_idx) -> row of the run's samples table."""
    with sqlite3.connect(Path(run_dir) / "results.sqlite") as db:
        db.row_factory = sqlite3.Row
        query, params = "SELECT * FROM samples", ()
        if suite:
            query, params = query + " WHERE suite=?", (suite,)
        return {(r["prompt_id"], r["sample_idx"]): dict(r) for r in db.execute(query, params)}


def count_rows(run_dir: Path) -> int:
    """Rows in the run's samples table, read-only, while another process may be writing it."""
    try:
        with sqlite3.connect(f"file:{Path(run_dir) / 'results.sqlite'}?mode=ro", uri=True, timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
    except sqlite3.OperationalError:
        return 0   # not created yet


def mean_and_halfwidth(values: list[float]) -> tuple[float, float]:
    """Sample mean and the half-width of its normal-approximation 95 % interval."""
    import numpy as np

    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(1.96 * array.std(ddof=1) / np.sqrt(len(array)))
