"""One writer per run directory.

Every command that writes a run directory (run, train, score, judge) holds an exclusive
`fcntl.flock` on RUN/.lock while it works. The kernel drops the lock when its process ends,
however it ends (kill -9 included), so a lock left by a killed process is simply taken over;
the file itself only says who holds it now (pid and command), for the message a second
command prints. Whoever takes the lock first drops what a killed holder was still writing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Iterator

from safebench.errors import UsageError

LOCK_NAME = ".lock"


def writable_run_dir(run_dir: Path) -> Path:
    """`run_dir`, created if missing; UsageError when it cannot be a run directory."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"{run_dir}: exists and is not a directory; choose another --out")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{run_dir}: cannot create the run directory ({exc.strerror}); choose another --out") from exc
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise UsageError(f"{run_dir}: the run directory is not writable; choose another --out or fix its permissions")
    return run_dir


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold RUN/.lock for the body; UsageError at once when another process holds it."""
    run_dir = writable_run_dir(run_dir)
    path = run_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise UsageError(f"{path}: cannot open the run directory's lock ({exc.strerror})") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"{run_dir}: in use by another safebench process ({_holder(path)}); wait for it to "
                             "finish or stop it, or use another --out") from None
        record = {"pid": os.getpid(), "command": " ".join(["safebench", *sys.argv[1:]])[:300],
                  "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        drop_leftovers(run_dir)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays, so that no second lock file can race it


def drop_leftovers(run_dir: Path) -> None:
    """What a killed process was writing under a temporary name (files.atomic_directory: a
    checkpoint or a resumable state, model-sized; files.atomic_write_*: a file) is never renamed
    into place; only the lock's holder writes the directory, so none of it is anyone's work now."""
    for leftover in sorted(run_dir.rglob(".*.tmp"), reverse=True):  # the deepest first
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def _holder(path: Path) -> str:
    try:
        record = json.loads(path.read_text())
        return f"pid {record['pid']}, `{record['command']}` since {record['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "its pid is not recorded yet"
