"""report.html with its sample explorer on a synthetic 10,000-sample run: file size, time to write
it, and in headless Chromium the time to first paint and until the explorer is usable.

    python benchmarks/report_explorer.py [--samples 10000] [--loads 5] [--out benchmarks/results/report_explorer.json]

The run has four methods on one harmful suite (k = 2) with answers of about 600 characters,
written through the real RunStore. Each load is a fresh navigation of the same browser; the
figures are medians over the loads (goal: the explorer usable within 3 s). Prints a table
and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from safebench.reports import write_reports  # noqa: E402
from safebench.files import atomic_write_json  # noqa: E402
from tests.reports.cdp import Chromium  # noqa: E402
from tests.reports.conftest import make_run  # noqa: E402

METHODS = ("sft", "ppo-lag", "repo", "sacpo")
K = 2
WORDS = ("the", "a", "chemical", "safe", "you", "should", "never", "mix", "step", "first", "then", "however",
         "I", "cannot", "help", "with", "that", "here", "is", "how", "to", "store", "it", "carefully")
# Timings the page itself records, in ms from navigation start.
TIMINGS = """(() => ({
  first_paint_ms: performance.getEntriesByName('first-contentful-paint')[0].startTime,
  explorer_ready_ms: performance.getEntriesByName('explorer-ready')[0].startTime,
  load_event_ms: performance.getEntriesByType('navigation')[0].loadEventEnd}))()"""
# One filter change as a user makes it, timed in the page (filtering and drawing the first page).
FILTER = """(() => {
  const t0 = performance.now(), node = document.querySelector('#explorer [data-key="unsafe"]');
  node.value = 'ppo-lag';
  node.dispatchEvent(new Event('change', {bubbles: true}));
  return performance.now() - t0;
})()"""


def synthetic_rows(n_samples: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    n_prompts = n_samples // (len(METHODS) * K)
    unsafe_share = {"sft": 0.5, "ppo-lag": 0.3, "repo": 0.05, "sacpo": 0.2}
    rows = []
    for method in METHODS:
        for p in range(n_prompts):
            for s in range(K):
                unsafe = rng.random() < unsafe_share[method]
                cost = float(rng.uniform(0.1, 3.0) if unsafe else rng.uniform(-3.0, -0.1))
                rows.append({"method": method, "suite": "bench-harmful", "kind": "harmful",
                             "category": ("crime", "privacy", "weapons", "self-harm")[p % 4],
                             "prompt_id": f"p{p:05d}", "sample_idx": s,
                             "prompt": f"prompt {p}: " + " ".join(rng.choice(WORDS, 25)),
                             "response": " ".join(rng.choice(WORDS, 110)),
                             "reward": float(rng.normal(1.0, 0.5)), "cost": cost,
                             "oracle_reward": float(rng.uniform(0, 2)), "oracle_cost": cost + float(rng.normal(0, 0.3))})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/report_explorer.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = synthetic_rows(args.samples)
        run = make_run(tmp / "run", rows)
        started = time.perf_counter()
        written = write_reports([run], n_boot=1000)
        write_s = time.perf_counter() - started
        html = written["html"]
        text = html.read_text(encoding="utf-8")
        data_bytes = len(text.split('id="explorer-data">', 1)[1].split("</script>", 1)[0].encode("utf-8"))
        loads, filters = [], []
        with Chromium(tmp / "profile", width=1280, height=900) as browser:
            for _ in range(args.loads):
                browser.open(html.as_uri())
                loads.append(browser.evaluate(TIMINGS))
                filters.append(browser.evaluate(FILTER))
    median = {key: statistics.median(load[key] for load in loads) for key in loads[0]}
    results = {"samples": len(rows), "methods": len(METHODS), "k": K, "python": sys.version.split()[0],
               "machine": platform.machine(), "chromium": "headless, DevTools protocol", "loads": args.loads,
               "report_bytes": len(text.encode("utf-8")), "explorer_data_bytes": data_bytes, "write_report_s": write_s,
               **{f"median_{key}": value for key, value in median.items()},
               "median_filter_ms": statistics.median(filters), "per_load": loads, "goal_ms": 3000}
    atomic_write_json(args.out, results)
    print(f"{'samples':>8} {'report MB':>9} {'data MB':>8} {'write s':>8} {'first paint ms':>15} "
          f"{'explorer ready ms':>18} {'load ms':>8} {'filter ms':>9}")
    print(f"{len(rows):>8} {results['report_bytes'] / 1e6:>9.2f} {data_bytes / 1e6:>8.2f} {write_s:>8.1f} "
          f"{median['first_paint_ms']:>15.0f} {median['explorer_ready_ms']:>18.0f} {median['load_event_ms']:>8.0f} "
          f"{results['median_filter_ms']:>9.0f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
