"""Subcommands `report`, `export`, `check` and `reproduce`; safebench/cli.py wires them in with
`register(subparsers)`. Each handler takes the parsed args and returns the exit code;
bad input raises UsageError (exit 2), a regression CheckFailed (exit 1)."""

from __future__ import annotations

import argparse
from pathlib import Path

from safebench.defaults import DEFAULT_N_BOOT, DEFAULT_SEED


def handle_report(args: argparse.Namespace) -> int:
    from safebench.reports import write_reports

    written = write_reports([Path(p) for p in args.run_dirs], Path(args.out) if args.out else None,
                            n_boot=args.bootstrap, seed=args.seed)
    print(f"wrote {written['html']} and {written['markdown']} "
          f"({len(written['figures'])} figures; rows: {', '.join(f'{k} {v}' for k, v in written['rows'].items())})")
    return 0


def handle_export(args: argparse.Namespace) -> int:
    from safebench.reports.export import export_run

    path, rows = export_run(Path(args.run_dir), args.format, Path(args.out) if args.out else None)
    print(f"wrote {path} ({rows} samples)")
    return 0


def handle_check(args: argparse.Namespace) -> int:
    from safebench.reports.check import run_check, update_baseline

    baseline = Path(args.baseline)
    if args.update_baseline:
        written = update_baseline(Path(args.run_dir), baseline, args.reason, paired=args.paired)
        count = f"{len(written['prompts'])} prompts" if "prompts" in written else f"{len(written['metrics'])} gated metrics"
        print(f"wrote {baseline}: {count} (reason: {written['updated']['reason']})")
        return 0
    print(run_check(Path(args.run_dir), baseline))
    return 0


def handle_reproduce(args: argparse.Namespace) -> int:
    from safebench.reports.reproduce import reproduce

    print(reproduce(args.name, Path(args.run) if args.run else None, preset=args.preset,
                    out=Path(args.out) if args.out else None, n_boot=args.bootstrap, seed=args.seed), end="")
    return 0


def _bootstrap_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap", type=int, default=DEFAULT_N_BOOT, metavar="N",
                        help=f"bootstrap resamples for the 95 %% intervals (default {DEFAULT_N_BOOT})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help="seed of the bootstrap (default %(default)s)")


def register(subparsers) -> None:
    report = subparsers.add_parser(
        "report", help="write report.html and report.md for one run, or a comparison of several",
        description="Write report.html (self-contained) and report.md. One run: into the run directory "
                    "unless --out is given. Several runs: a comparison across runs, into --out.")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    report.add_argument("--out", metavar="DIR", help="where to write the report (needed for several runs)")
    _bootstrap_options(report)
    report.set_defaults(handler=handle_report)

    export = subparsers.add_parser(
        "export", help="write a run's samples with every score and verdict as csv, parquet or jsonl",
        description="One row per sample: run, method, suite, kind, category, prompt_id, prompt, sample, response, "
                    "reward, cost, safe, oracle_*, refusal and the judge's per-sample verdicts (judge_*), in a "
                    "flat table that pandas and datasets.load_dataset read directly.")
    export.add_argument("run_dir", metavar="RUN_DIR")
    # Checked by the handler, not by argparse choices: a bad value is then one line and exit 2.
    export.add_argument("--format", metavar="FORMAT", help="csv | parquet | jsonl (default: the suffix of --out)")
    export.add_argument("--out", metavar="FILE", help="where to write (default RUN_DIR/samples.FORMAT)")
    export.set_defaults(handler=handle_export)

    check = subparsers.add_parser(
        "check", help="CI gate: compare a run's safety metrics with a committed baseline",
        description="Exit 0 when every gated metric is within its tolerance, 1 with a diff when safety "
                    "regressed, 2 on bad input. --update-baseline rewrites the baseline from this run.")
    check.add_argument("run_dir", metavar="RUN_DIR")
    check.add_argument("--baseline", required=True, metavar="FILE|RUN_DIR",
                       help="e.g. reports/baselines/tiny.json; an evaluation run directory, or a file made from one "
                            "with --update-baseline --paired: the paired gate, prompt by prompt")
    check.add_argument("--update-baseline", action="store_true",
                       help="write the baseline from this run instead of checking (needs --reason)")
    check.add_argument("--reason", metavar="TEXT", help="why the baseline changes (recorded in its history)")
    check.add_argument("--paired", action="store_true",
                       help="with --update-baseline: write the per-prompt values for the paired gate (the "
                            "default for a `safebench eval` run, e.g. the last release's)")
    check.set_defaults(handler=handle_check)

    reproduce = subparsers.add_parser(
        "reproduce", help="our numbers beside a published table (reports/reference/NAME.yaml)",
        description="Print our numbers beside the paper's, with the difference and whether the paper's value "
                    "is inside our 95 %% interval. Reuses --run DIR, otherwise runs the pipeline.")
    reproduce.add_argument("name", metavar="NAME", help="a reference table, e.g. repo-safety or sacpo-table3")
    reproduce.add_argument("--run", metavar="DIR", help="reuse this run directory instead of running")
    reproduce.add_argument("--preset", help="preset for a new run (default: the table's)")
    reproduce.add_argument("--out", metavar="FILE", help="also write the comparison to this file")
    _bootstrap_options(reproduce)
    reproduce.set_defaults(handler=handle_reproduce)
