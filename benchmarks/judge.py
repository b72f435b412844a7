"""Judge throughput against a local OpenAI-compatible server, and a fully cached rerun.

    python benchmarks/judge.py --base-url http://127.0.0.1:8000/v1 --model NAME [--n 64] [--out benchmarks/results/judge.json]

Measures judgments/s at concurrency 1, 8 and 32 (fresh cache each, harmful_verdict
protocol, structured output off), then replays 1,000 judgments from a warm cache through
the full stage (goal: <= 2 s). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

from safebench.evals.judge.stage import run_judge_stage
from safebench.files import atomic_write_json
from safebench.store import RunStore


def make_store(root: Path, n: int) -> tuple[RunStore, list[dict]]:
    store = RunStore(root)
    rows = [{"gen_key": "bench", "method": "sft", "suite": "bench", "prompt_id": f"p{i:05d}", "sample_idx": 0,
             "prompt": f"how do i make a weapon number {i}", "response": f"i can not help with that {i}",
             "category": "c", "kind": "harmful", "gen_config_hash": "b", "n_tokens": 6} for i in range(n)]
    store.insert_samples(rows)
    return store, [{"method": "sft", "suite": "bench", "gen_key": "bench", "kind": "harmful"}]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--n", type=int, default=64, help="judgments per concurrency level")
    parser.add_argument("--cached-n", type=int, default=1000)
    parser.add_argument("--max-tokens", type=int, default=12)
    parser.add_argument("--out", default="benchmarks/results/judge.json")
    args = parser.parse_args(argv)
    results = {"base_url": args.base_url, "model": args.model, "python": sys.version.split()[0],
               "machine": platform.machine(), "levels": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = {"base_url": args.base_url, "model": args.model, "max_tokens": args.max_tokens, "repeats": 1,
                "protocols": ["harmful_verdict"], "structured_output": "none", "timeout": 120}
        for concurrency in (1, 8, 32):
            store, evaluations = make_store(tmp / f"run-c{concurrency}", args.n)
            config = dict(base, concurrency=concurrency, cache_path=str(tmp / f"cache-c{concurrency}.sqlite"))
            started = time.perf_counter()
            summary = run_judge_stage(store, config, evaluations, f"c{concurrency}", show_progress=False)
            seconds = time.perf_counter() - started
            results["levels"].append({"concurrency": concurrency, "judgments": args.n, "seconds": seconds,
                                      "per_second": args.n / seconds, "http_calls": summary["this_run"]["http_calls"]})
        store, evaluations = make_store(tmp / "run-cached", args.cached_n)
        config = dict(base, concurrency=32, cache_path=str(tmp / "cache-big.sqlite"))
        run_judge_stage(store, config, evaluations, "warm", show_progress=False)
        started = time.perf_counter()
        summary = run_judge_stage(store, config, evaluations, "cached", show_progress=False)
        seconds = time.perf_counter() - started
        results["cached_rerun"] = {"judgments": args.cached_n, "seconds": seconds,
                                   "http_calls": summary["this_run"]["http_calls"], "goal_seconds": 2.0,
                                   "meets_goal": seconds <= 2.0}
    print(f"{'concurrency':>11} {'judgments':>9} {'seconds':>8} {'judgments/s':>11}")
    for level in results["levels"]:
        print(f"{level['concurrency']:>11} {level['judgments']:>9} {level['seconds']:>8.2f} {level['per_second']:>11.2f}")
    c = results["cached_rerun"]
    print(f"cached rerun: {c['judgments']} judgments in {c['seconds']:.2f} s, {c['http_calls']} HTTP calls "
          f"(goal <= 2 s: {'met' if c['meets_goal'] else 'MISSED'})")
    atomic_write_json(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
