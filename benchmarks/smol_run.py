"""Time a whole `safebench run --preset smol`: each stage's wall time, CPU time and peak memory.

    python benchmarks/smol_run.py                       # runs/smol-bench, benchmarks/results/smol_run.json
    python benchmarks/smol_run.py --out /tmp/s -- --seeds 0    # arguments after -- go to `safebench run`

The run is started as a child process; once a second this script reads /proc for the child's
process tree (resident memory summed over it, user+system CPU time including reaped children)
and /proc/loadavg. A stage lasts from its `[run ]` line on stderr to the next stage's line (or
the end), so model loading counts with the stage that loads. The thread count is left to the CLI
(safebench/threads.py), as a user's run would.

On a shared machine wall time measures the other work as much as this run, so every stage also
gets its CPU time and the load average beside it. `quiet_estimate_s` = [CPU/cores, CPU] is a
range, not a measurement: a stage that keeps every core busy takes CPU/cores seconds, one that
runs on one core CPU seconds. On contended cores OpenMP's waiting threads spin and count as CPU
time, so there the range can sit far above a quiet run (reports/results/smol.md); a stage run at a
load average near this run's own thread count is the better guide.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")
STAGE_LINE = re.compile(r"^\[(run |skip|redo|link|open)\] (\S+)")


@dataclass
class Sample:
    wall: float
    rss_bytes: int
    cpu_s: float
    load1: float


@dataclass
class Stage:
    name: str
    start: float
    end: float = 0.0
    samples: list[Sample] = field(default_factory=list)

    def summary(self, cpu_at_start: float, cpu_at_end: float, cores: int) -> dict:
        wall = self.end - self.start
        cpu = max(cpu_at_end - cpu_at_start, 0.0)
        loads = [s.load1 for s in self.samples]
        return {"stage": self.name, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
                "quiet_estimate_s": [round(cpu / cores, 1), round(cpu, 1)],
                "peak_rss_gb": round(max((s.rss_bytes for s in self.samples), default=0) / 1e9, 2),
                "load1_mean": round(sum(loads) / len(loads), 2) if loads else None,
                "load1_max": max(loads, default=None)}


def _stat(pid: int) -> tuple[int, float, int] | None:
    """(parent pid, user+system seconds incl. reaped children, resident bytes) of a live process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/statm") as f:
            resident = int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return None
    # after the name: state ppid ... utime(14) stime(15) cutime(16) cstime(17), counted from 1 with pid, name
    ppid = int(fields[1])
    cpu = sum(int(x) for x in fields[11:15]) / TICKS
    return ppid, cpu, resident


def tree_usage(root: int) -> tuple[float, int]:
    """CPU seconds and resident bytes of `root` and every live descendant. A reaped child's time is in
    its parent's cutime/cstime, so summing all four fields over the live tree counts each once."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None:
                stats[int(entry)] = stat
    tree, frontier = set(), [root]
    while frontier:
        pid = frontier.pop()
        if pid in stats and pid not in tree:
            tree.add(pid)
            frontier.extend(p for p, (ppid, _, _) in stats.items() if ppid == pid)
    return sum(stats[p][1] for p in tree), sum(stats[p][2] for p in tree)


def load1() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
        return head + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run(command: list[str], interval: float, log_path: Path | None) -> dict:
    cores = len(os.sched_getaffinity(0))
    load_before = os.getloadavg()
    start = time.time()
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stages: list[Stage] = [Stage("(start-up)", 0.0)]
    cpu_marks: list[float] = [0.0]
    samples: list[Sample] = []
    lock = threading.Lock()
    last_cpu = [0.0]

    def sample_forever():
        while child.poll() is None:
            cpu, rss = tree_usage(child.pid)
            with lock:
                last_cpu[0] = max(last_cpu[0], cpu)
                s = Sample(time.time() - start, rss, last_cpu[0], load1())
                samples.append(s)
                stages[-1].samples.append(s)
            time.sleep(interval)

    sampler = threading.Thread(target=sample_forever, daemon=True)
    sampler.start()
    log = open(log_path, "w") if log_path else None
    for line in child.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        if log:
            log.write(line)
            log.flush()
        match = STAGE_LINE.match(line)
        if match:
            now = time.time() - start
            cpu, _ = tree_usage(child.pid)
            with lock:
                last_cpu[0] = max(last_cpu[0], cpu)
                stages[-1].end = now
                cpu_marks.append(last_cpu[0])
                stages.append(Stage(match.group(2) if match.group(1) == "run " else f"{match.group(2)} ({match.group(1)})",
                                    now))
    returncode = child.wait()
    sampler.join()
    end = time.time() - start
    # the child is reaped: its whole CPU time and the largest resident set of any one process
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    total_cpu = children.ru_utime + children.ru_stime
    stages[-1].end = end
    cpu_marks.append(max(total_cpu, last_cpu[0]))
    rows = [st.summary(cpu_marks[i], cpu_marks[i + 1], cores) for i, st in enumerate(stages)]
    loads = [s.load1 for s in samples]
    return {
        "benchmark": "smol_run", "command": command, "returncode": returncode, "commit": git_commit(),
        "machine": {"cores": cores, "processor": platform.processor() or platform.machine(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(start)),
        "wall_s": round(end, 1), "cpu_s": round(total_cpu, 1),
        "quiet_estimate_s": [round(total_cpu / cores, 1), round(total_cpu, 1)],
        "peak_rss_gb": round(children.ru_maxrss * 1024 / 1e9, 2),  # ru_maxrss is in KiB on Linux
        "peak_tree_rss_gb": round(max((s.rss_bytes for s in samples), default=0) / 1e9, 2),
        "loadavg_before": list(load_before),
        "load1_during": {"mean": round(sum(loads) / len(loads), 2) if loads else None,
                         "min": min(loads, default=None), "max": max(loads, default=None)},
        "note": ("load1 = /proc/loadavg's 1-minute figure, this run's own threads included; "
                 "quiet_estimate_s = [CPU/cores, CPU]: an estimate from CPU time, not a quiet-machine measurement"),
        "stages": rows,
    }


def group(name: str) -> str:
    """Training stages by name; generate:M:suite and score:M:suite together as eval:M."""
    parts = name.split(":")
    return f"eval:{parts[1]}" if len(parts) == 3 and parts[0] in ("generate", "score") else name


def print_table(result: dict) -> None:
    groups: dict[str, dict] = {}
    for row in result["stages"]:
        g = groups.setdefault(group(row["stage"]), {"wall_s": 0.0, "cpu_s": 0.0, "peak_rss_gb": 0.0, "loads": []})
        g["wall_s"] += row["wall_s"]
        g["cpu_s"] += row["cpu_s"]
        g["peak_rss_gb"] = max(g["peak_rss_gb"], row["peak_rss_gb"])
        if row["load1_mean"] is not None:
            g["loads"].append(row["load1_mean"])
    cores = result["machine"]["cores"]
    print(f"\n{'stage':<32}{'wall s':>9}{'cpu s':>9}{'quiet est. s':>16}{'peak RSS GB':>13}{'load1':>8}")
    for name, g in groups.items():
        load = f"{sum(g['loads']) / len(g['loads']):.1f}" if g["loads"] else "-"
        estimate = f"{g['cpu_s'] / cores:.0f}-{g['cpu_s']:.0f}"
        print(f"{name:<32}{g['wall_s']:>9.0f}{g['cpu_s']:>9.0f}{estimate:>16}{g['peak_rss_gb']:>13.2f}{load:>8}")
    low, high = result["quiet_estimate_s"]
    print(f"{'total':<32}{result['wall_s']:>9.0f}{result['cpu_s']:>9.0f}{f'{low:.0f}-{high:.0f}':>16}"
          f"{result['peak_rss_gb']:>13.2f}{result['load1_during']['mean']:>8}")
    print(f"load average before: {result['loadavg_before']}; during (1 min): {result['load1_during']}; "
          f"exit code {result['returncode']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="smol")
    parser.add_argument("--out", default="runs/smol-bench", help="run directory (a finished stage there is reused)")
    parser.add_argument("--json", default="benchmarks/results/smol_run.json")
    parser.add_argument("--log", default=None, help="also write the run's output to this file")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    parser.add_argument("run_args", nargs="*", help="after --: more arguments for `safebench run`")
    args = parser.parse_args()
    command = [sys.executable, "-m", "safebench.cli", "run", "--preset", args.preset, "--out", args.out, "--quiet",
               *args.run_args]
    result = run(command, args.interval, Path(args.log) if args.log else None)
    print_table(result)
    out = ROOT / args.json
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result["returncode"]


if __name__ == "__main__":
    sys.exit(main())
