"""Per-stage wall time of `safebench run --methods sft --preset tiny`, cold and fully cached.

    python benchmarks/tiny_pipeline.py [--methods sft] [--out benchmarks/results/tiny_pipeline.json]

Prints a table and writes JSON. Timings come from the run's own manifest (each stage's
wall time) plus the wall time of the whole command, including Python start-up and imports.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(methods: str, out: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "safebench.cli", "run", "--methods", methods, "--preset", "tiny",
                    "--quiet", "--out", str(out)], cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--methods", default="sft")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "tiny_pipeline.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        cold = run(args.methods, run_dir)
        timings = json.loads((run_dir / "manifest.json").read_text())["timings"]
        cached = run(args.methods, run_dir)
    print(f"{'stage':36s} {'seconds':>8s}")
    for stage, seconds in timings.items():
        print(f"{stage:36s} {seconds:8.2f}")
    print(f"{'whole command, cold':36s} {cold:8.2f}")
    print(f"{'whole command, everything cached':36s} {cached:8.2f}")
    result = {"methods": args.methods, "stages": timings, "cold_seconds": round(cold, 2),
              "cached_seconds": round(cached, 2), "cpus": os.cpu_count(), "machine": platform.machine(),
              "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
