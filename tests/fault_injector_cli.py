"""FAULT INJECTOR (a test fake): the real safebench command line with one fault planted.

    python -m tests.fault_injector_cli FAULT ARGS...   (from the repository root; ARGS as for `safebench`)

FAULT:
  ENOSPC, EROFS   os.fsync fails with that error, as on a full disk or a read-only file system:
                  every atomic write (manifest, DONE.json, reports, checkpoints' records) meets it
  bug             the pipeline raises ZeroDivisionError when it starts: an internal error
"""

from __future__ import annotations

import errno
import os
import sys


def plant(fault: str) -> None:
    if fault in ("ENOSPC", "EROFS"):
        code = getattr(errno, fault)

        def failing_fsync(fd: int) -> None:
            raise OSError(code, os.strerror(code))

        os.fsync = failing_fsync
    elif fault == "bug":
        from safebench import pipeline

        def broken_run(self):
            return 1 / 0

        pipeline.Pipeline.run = broken_run
    else:
        raise SystemExit(f"unknown fault {fault!r}")


if __name__ == "__main__":
    plant(sys.argv[1])
    from safebench.cli import main

    sys.exit(main(sys.argv[2:]))
