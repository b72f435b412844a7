"""Checking a finished stage's outputs against its record before they are reused.

A stage's DONE.json records what it left behind: the sha256 of its files (a checkpoint, the
data files) and, for stages that write rows into results.sqlite, how many rows carry its key.
A rerun reuses a stage only if its outputs still match; the quick check hashes a file once and
afterwards trusts an unchanged size and modification time (kept in the stage's VERIFIED.json),
`safebench verify RUN` hashes everything again and runs SQLite's full integrity check.

Not checked: training curves. They are diagnostics, and losing them with a damaged database is
no reason to train a method again.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Callable

from safebench.errors import CheckFailed
from safebench.hashing import sha256_file
from safebench.manifest import load_manifest
from safebench.files import atomic_write_json
from safebench.store import RunStore

VERIFIED = "VERIFIED.json"
# Files of a stage directory that are not its outputs: records, resume state, TensorBoard logs.
NOT_OUTPUTS = {"DONE.json", VERIFIED}
NOT_OUTPUT_DIRS = {"work", "tensorboard"}
# (table, key column) pairs a record may count rows in: the record is data, its SQL is not.
COUNTED = {("samples", "gen_key"), ("scores", "score_key"), ("judge_judgments", "stage_key")}


def output_files(stage_dir: Path) -> dict[str, str]:
    """sha256 of a stage's output files, keyed by their path relative to the stage directory."""
    found = {}
    for path in sorted(stage_dir.rglob("*")):
        relative = path.relative_to(stage_dir)
        if path.is_file() and relative.parts[0] not in NOT_OUTPUT_DIRS and str(relative) not in NOT_OUTPUTS:
            found[str(relative)] = sha256_file(path)
    return found


def count_rows(db: sqlite3.Connection, table: str, column: str, value: str) -> int:
    if (table, column) not in COUNTED:
        raise ValueError(f"rows of {table}.{column} are not counted")
    try:
        return db.execute(f"SELECT COUNT(*) FROM {table} WHERE {column}=?", (value,)).fetchone()[0]
    except sqlite3.OperationalError:  # a table that a fresh database does not have yet
        return 0


def checkpoint_files(meta: dict) -> dict[str, str] | None:
    """The file hashes a training stage's build returned (its checkpoint in model/), relative to
    the stage directory; None for stages whose files are hashed when their record is written."""
    hashes = meta.get("sha256")
    return {f"model/{name}": digest for name, digest in hashes.items()} if isinstance(hashes, dict) else None


def recorded_outputs(meta: dict) -> dict:
    """A DONE.json's `outputs` block; for a record without one, what its checkpoint hashes say."""
    outputs = meta.get("outputs")
    if isinstance(outputs, dict):
        return outputs
    return {"files": checkpoint_files(meta) or {}}


def record(stage_dir: Path, db: sqlite3.Connection, file_hashes: dict[str, str] | None,
           counted: tuple[str, str, str] | None) -> dict:
    """The `outputs` block of a finished stage's DONE.json (`file_hashes`: already computed ones,
    relative to the stage directory; otherwise its files are hashed here)."""
    files = output_files(stage_dir) if file_hashes is None else file_hashes
    _remember_stats(stage_dir, files)
    outputs: dict = {"files": files}
    if counted is not None:
        table, column, value = counted
        outputs["rows"] = {"table": table, "column": column, "value": value,
                           "count": count_rows(db, table, column, value)}
    return outputs


def problems(stage_dir: Path, db: sqlite3.Connection | None, outputs: dict, full: bool = False) -> list[str]:
    """How the outputs differ from their record (empty when they match). Without `full`, a file whose
    size and modification time are what they were when it last hashed right is not hashed again
    (and those of files hashed right are remembered); `full` hashes all and writes nothing.
    Without `db` (a damaged database) row counts are not checked."""
    found = []
    stats = {} if full else _stats(stage_dir)
    good = {}
    files = outputs.get("files") or {}
    if not isinstance(files, dict):
        return ["its record of files is malformed"]
    for relative, digest in files.items():
        path = stage_dir / relative
        if not path.is_file():
            found.append(f"{relative} is missing")
            continue
        stat = path.stat()
        if stats.get(relative) == [stat.st_size, stat.st_mtime_ns, digest]:
            good[relative] = digest
        elif sha256_file(path) != digest:
            found.append(f"{relative} differs from its recorded sha256")
        else:
            good[relative] = digest
    if not found and not full:
        _remember_stats(stage_dir, good)
    rows = outputs.get("rows")
    if rows and db is not None:
        try:
            count = count_rows(db, rows["table"], rows["column"], rows["value"])
        except (ValueError, KeyError, sqlite3.DatabaseError) as exc:
            found.append(f"its row count cannot be checked ({exc})")
        else:
            if count != rows.get("count"):
                found.append(f"results.sqlite holds {count} of its {rows.get('count')} {rows['table']} rows")
    return found


def _stats(stage_dir: Path) -> dict:
    try:
        stats = json.loads((stage_dir / VERIFIED).read_text())
    except (OSError, ValueError):
        return {}
    return stats if isinstance(stats, dict) else {}


def _remember_stats(stage_dir: Path, files: dict[str, str]) -> None:
    """Size, modification time and sha256 of files that were just hashed and found right."""
    stats = {}
    for relative, digest in files.items():
        stat = (stage_dir / relative).stat()
        stats[relative] = [stat.st_size, stat.st_mtime_ns, digest]
    if stats != _stats(stage_dir):
        atomic_write_json(stage_dir / VERIFIED, stats)


def database_problem(db_path: Path, full: bool = False) -> str | None:
    """Why results.sqlite cannot be used (None when it opens and passes SQLite's check)."""
    if not db_path.exists():
        return None
    pragma = "integrity_check" if full else "quick_check"
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=60)
        try:
            rows = db.execute(f"PRAGMA {pragma}").fetchall()
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        return f"not a readable SQLite database ({exc})"
    if rows != [("ok",)]:
        return f"fails SQLite's {pragma} ({'; '.join(str(r[0]) for r in rows[:3])})"
    return None


def open_checked_store(run_dir: Path, log: Callable[[str], None]) -> RunStore:
    """The run's store; a results.sqlite that fails the check is moved aside (kept for a look), and
    the stages whose rows it held are redone because their row counts no longer match."""
    db_path = Path(run_dir) / "results.sqlite"
    problem = database_problem(db_path)
    if problem:
        aside = db_path.with_name(f"results.sqlite.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        for suffix in ("", "-wal", "-shm"):
            if Path(f"{db_path}{suffix}").exists():
                os.replace(f"{db_path}{suffix}", f"{aside}{suffix}")
        log(f"[redo] results.sqlite: {problem}; moved to {aside.name}, its stages are redone")
    return RunStore(run_dir)


def verify_run(run_dir: Path) -> list[str]:
    """Everything `safebench verify` finds wrong with a run directory, one line each."""
    run_dir = Path(run_dir)
    stages = load_manifest(run_dir).stages
    found = []
    db_path = run_dir / "results.sqlite"
    problem = database_problem(db_path, full=True)
    if problem:
        found.append(f"results.sqlite: {problem}")
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) if db_path.exists() and not problem else None
    try:
        for name, entry in sorted(stages.items()):
            if entry.dir is None:
                continue  # a published model used as is: pinned by the manifest's asset hashes
            stage_dir = (run_dir / entry.dir).resolve()
            if run_dir.resolve() not in stage_dir.parents:
                found.append(f"{name}: its directory {entry.dir!r} lies outside the run")
                continue
            try:
                meta = json.loads((stage_dir / "DONE.json").read_text())
            except (OSError, ValueError) as exc:
                found.append(f"{name}: no readable DONE.json ({type(exc).__name__}), the stage is not finished")
                continue
            found += [f"{name}: {p}" for p in problems(stage_dir, db, recorded_outputs(meta), full=True)]
    finally:
        if db is not None:
            db.close()
    return found


def cmd_verify(args) -> int:
    found = verify_run(args.run)
    for line in found:
        print(f"MISMATCH {line}")
    if found:
        raise CheckFailed(f"{args.run}: {len(found)} output(s) differ from their record; rerun "
                          "`safebench run` with the same settings to redo those stages")
    print(f"ok: {args.run}: every stage's outputs and results.sqlite match their records")
    return 0
