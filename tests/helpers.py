"""Helpers shared by tests: the project root and the real CLI in a subprocess."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# SQLite's side files: they come and go as connections open and close (WAL mode).
_SQLITE_SIDE_FILES = ("*.sqlite-wal", "*.sqlite-shm", "*.sqlite-journal")


def copy_run(source: Path, target: Path) -> Path:
    """A copy of a run directory that a test may change. A plain copytree is not enough: another
    test may hold the run's database open, and when that connection is closed (or collected),
    SQLite checkpoints and deletes results.sqlite-wal between copytree listing it and copying it
    (CI failed so). So the side files are left out and each database is copied through SQLite's
    backup API, which reads one consistent snapshot, WAL included."""
    source, target = Path(source), Path(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.sqlite", *_SQLITE_SIDE_FILES))
    for db_path in source.rglob("*.sqlite"):
        reader = sqlite3.connect(db_path, timeout=60)
        writer = sqlite3.connect(target / db_path.relative_to(source))
        try:
            reader.backup(writer)
        finally:
            writer.close()
            reader.close()
    return target


def run_cli(*args: str, cwd: Path | None = None, check: bool = False, env: dict | None = None,
            unset: tuple[str, ...] = (), timeout: float = 600) -> subprocess.CompletedProcess:
    """The real console entry point in a subprocess, as a user would run it; `env` adds to this
    process's environment, `unset` names variables to leave out of it."""
    full_env = {k: v for k, v in {**os.environ, **(env or {})}.items() if k not in unset}
    result = subprocess.run([sys.executable, "-m", "safebench.cli", *args], cwd=cwd or ROOT,
                            capture_output=True, text=True, env=full_env, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"safebench {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result

# The name under which tests/evals/conftest.py serves the tiny SFT policy (vLLM's OpenAI server).
TINY_SERVED_MODEL = "tiny-sft"
