"""The run directory: manifest, SQLite results database, stage records, atomic writes.

Layout:
    RUN/manifest.json        the run record (safebench/manifest.py)
    RUN/results.sqlite       samples, scores, curves, stage records (WAL, written as produced)
    RUN/stages/NAME-KEY/     one directory per stage; DONE.json is written last
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Iterator

from safebench.files import atomic_write_json

SCHEMA = """
CREATE TABLE IF NOT EXISTS stages (
    key TEXT PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL,
    started_at REAL, finished_at REAL, meta TEXT
);
CREATE TABLE IF NOT EXISTS samples (
    gen_key TEXT NOT NULL, method TEXT NOT NULL, suite TEXT NOT NULL,
    prompt_id TEXT NOT NULL, sample_idx INTEGER NOT NULL,
    prompt TEXT NOT NULL, response TEXT NOT NULL,
    category TEXT, kind TEXT, gen_config_hash TEXT NOT NULL, n_tokens INTEGER,
    PRIMARY KEY (gen_key, prompt_id, sample_idx)
);
CREATE TABLE IF NOT EXISTS scores (
    score_key TEXT NOT NULL, gen_key TEXT NOT NULL,
    prompt_id TEXT NOT NULL, sample_idx INTEGER NOT NULL,
    reward REAL, cost REAL, oracle_reward REAL, oracle_cost REAL,
    PRIMARY KEY (score_key, prompt_id, sample_idx)
);
CREATE TABLE IF NOT EXISTS curves (
    stage_key TEXT NOT NULL, method TEXT NOT NULL, step INTEGER NOT NULL,
    name TEXT NOT NULL, value REAL,
    PRIMARY KEY (stage_key, step, name)
);
"""


class RunStore:
    """One run directory and its results database."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.run_dir / "results.sqlite"
        self.db = sqlite3.connect(self.db_path, timeout=60, isolation_level=None)
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            self.db.close()
            if isinstance(exc, sqlite3.OperationalError):
                raise  # locked, disk full, read-only: the environment, not the file (cli.main)
            from safebench.errors import UsageError

            raise UsageError(f"{self.db_path}: not a readable SQLite database ({exc}); `safebench verify "
                             f"{self.run_dir}` tells what else is damaged, `safebench run` redoes it") from None

    def close(self) -> None:
        self.db.close()

    # --- stages -------------------------------------------------------------------
    def stage_dir(self, name: str, key: str) -> Path:
        return self.stage_dir_in(self.run_dir, name, key)

    @staticmethod
    def stage_dir_in(run_dir: Path, name: str, key: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "._-" else "-" for c in name)
        return Path(run_dir) / "stages" / f"{safe}-{key}"

    def stage_done(self, name: str, key: str) -> bool:
        return (self.stage_dir(name, key) / "DONE.json").exists()

    def mark_started(self, name: str, key: str) -> None:
        self.db.execute(
            "INSERT INTO stages(key, name, status, started_at) VALUES (?,?,?,?) "
            "ON CONFLICT(key) DO UPDATE SET status='running', started_at=excluded.started_at",
            (key, name, "running", time.time()),
        )

    def mark_done(self, name: str, key: str, meta: dict) -> None:
        """The completion record is written last: its presence means the stage is whole."""
        atomic_write_json(self.stage_dir(name, key) / "DONE.json", {"name": name, "key": key, **meta})
        self.db.execute(
            "INSERT INTO stages(key, name, status, finished_at, meta) VALUES (?,?,?,?,?) "
            "ON CONFLICT(key) DO UPDATE SET status='done', finished_at=excluded.finished_at, "
            "meta=excluded.meta",
            (key, name, "done", time.time(), json.dumps(meta, default=str)),
        )

    def stage_meta(self, name: str, key: str) -> dict:
        return json.loads((self.stage_dir(name, key) / "DONE.json").read_text())

    # --- per-sample rows ------------------------------------------------------------
    def insert_samples(self, rows: list[dict]) -> None:
        """One transaction per batch: a batch is either wholly in the database or not at all."""
        with self.transaction():
            self.db.executemany(
                "INSERT OR REPLACE INTO samples(gen_key, method, suite, prompt_id, sample_idx, "
                "prompt, response, category, kind, gen_config_hash, n_tokens) VALUES "
                "(:gen_key, :method, :suite, :prompt_id, :sample_idx, :prompt, :response, "
                ":category, :kind, :gen_config_hash, :n_tokens)",
                rows,
            )

    def samples(self, gen_key: str) -> list[dict]:
        cursor = self.db.execute(
            "SELECT * FROM samples WHERE gen_key=? ORDER BY prompt_id, sample_idx", (gen_key,)
        )
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    def done_sample_keys(self, gen_key: str) -> set[tuple[str, int]]:
        return set(
            self.db.execute(
                "SELECT prompt_id, sample_idx FROM samples WHERE gen_key=?", (gen_key,)
            ).fetchall()
        )

    def insert_scores(self, rows: list[dict]) -> None:
        with self.transaction():
            self.db.executemany(
                "INSERT OR REPLACE INTO scores(score_key, gen_key, prompt_id, sample_idx, reward, "
                "cost, oracle_reward, oracle_cost) VALUES (:score_key, :gen_key, :prompt_id, "
                ":sample_idx, :reward, :cost, :oracle_reward, :oracle_cost)",
                rows,
            )

    def done_score_keys(self, score_key: str) -> set[tuple[str, int]]:
        return set(
            self.db.execute(
                "SELECT prompt_id, sample_idx FROM scores WHERE score_key=?", (score_key,)
            ).fetchall()
        )

    def log_curve(self, stage_key: str, method: str, step: int, metrics: dict[str, float]) -> None:
        with self.transaction():
            self.db.executemany(
                "INSERT OR REPLACE INTO curves(stage_key, method, step, name, value) VALUES (?,?,?,?,?)",
                [(stage_key, method, step, k, float(v)) for k, v in metrics.items()],
            )

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # --- manifest and joined results --------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.run_dir / "manifest.json"

    def manifest(self):
        """The run's manifest (safebench/manifest.py)."""
        from safebench.manifest import load_manifest

        return load_manifest(self.run_dir)

    def stage_record(self, name: str, key: str) -> dict:
        """How the manifest names a stage: its key and its directory relative to the run."""
        return {"key": key, "dir": str(self.stage_dir(name, key).relative_to(self.run_dir))}

    def results(self):
        """Scored samples of the evaluations this run's manifest names, as a DataFrame.

        Columns: method, suite, kind, category, prompt_id, sample_idx, prompt, response,
        reward, cost, oracle_reward, oracle_cost.
        """
        import pandas as pd

        frames = []
        for ev in self.manifest().evaluations:
            frame = pd.read_sql_query(
                "SELECT s.method, s.suite, s.kind, s.category, s.prompt_id, s.sample_idx, "
                "s.prompt, s.response, c.reward, c.cost, c.oracle_reward, c.oracle_cost "
                "FROM samples s JOIN scores c ON c.gen_key = s.gen_key AND c.prompt_id = s.prompt_id "
                "AND c.sample_idx = s.sample_idx WHERE s.gen_key = ? AND c.score_key = ?",
                self.db,
                params=(ev.gen_key, ev.score_key),
            )
            frame["method"] = ev.method
            frames.append(frame)
        columns = ["method", "suite", "kind", "category", "prompt_id", "sample_idx", "prompt",
                   "response", "reward", "cost", "oracle_reward", "oracle_cost"]
        if not frames:
            return pd.DataFrame(columns=columns)
        return pd.concat(frames, ignore_index=True)[columns]

    def curves(self):
        """Training curves of the method stages this run's manifest names, under each method's
        name: methods trained as one stage (equal settings) each show that stage's curves."""
        import pandas as pd

        columns = ["method", "step", "name", "value"]
        frames = [pd.read_sql_query("SELECT step, name, value FROM curves WHERE stage_key = ?", self.db,
                                    params=(entry.key,)).assign(method=method)
                  for method, entry in self.manifest().methods.items()]
        frames = [f for f in frames if len(f)]
        if not frames:
            return pd.DataFrame(columns=columns)
        return pd.concat(frames, ignore_index=True)[columns].sort_values(["method", "name", "step"],
                                                                         ignore_index=True)
