"""Command-line entry points: `safebench judge RUN_DIR`, `safebench judge-validate` and
`safebench serve-judge --world tiny`.

safebench/cli.py wires them in with `register(subparsers)`; each handler takes the parsed
argparse namespace and returns an exit code (UsageError propagates: exit 2, one line).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from safebench.errors import EndpointFailed, UsageError


def _apply_overrides(base: dict, overrides: list[str], max_cost: float | None) -> dict:
    data = dict(base)
    for text in overrides or []:
        if "=" not in text:
            raise UsageError(f"--set {text!r}: expected FIELD=VALUE, e.g. judge.model=gpt-4o-2024-08-06")
        field, raw = text.split("=", 1)
        field = field.strip().removeprefix("judge.")
        if not field or "." in field and not field.startswith("prices."):
            raise UsageError(f"--set {text!r}: unknown judge field '{field}'")
        value = yaml.safe_load(raw)
        if field.startswith("prices."):
            _, model, which = (field.split(".") + ["", ""])[:3]
            data.setdefault("prices", {}).setdefault(model, {})[which] = value
        else:
            data[field] = value
    if max_cost is not None:
        data["max_cost"] = max_cost
    return data


def _load_yaml(path: str | None) -> dict:
    if not path:
        return {}
    from safebench.registry import load_yaml

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--config {p}: file not found")
    data = load_yaml(p)
    judge = data.get("judge", data)
    if not isinstance(judge, dict):
        raise UsageError(f"{p}: field 'judge' = {judge!r}: expected a mapping of judge fields")
    return judge


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a judge field, e.g. --set model=gpt-4o-2024-08-06")
    parser.add_argument("--max-judge-cost", type=float, default=None, metavar="DOLLARS",
                        help="stop cleanly when the judge has spent this much; the rest is listed as not judged")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def register(subparsers) -> None:
    judge = subparsers.add_parser("judge", help="run the LLM judge over a run's generated samples")
    judge.add_argument("run_dir", help="a safebench run directory")
    judge.add_argument("--config", help="YAML with judge fields (default: the run config's `judge:`)")
    _common(judge)
    judge.set_defaults(handler=handle_judge)

    validate = subparsers.add_parser("judge-validate",
                                     help="agreement of the harmful/safe judge with human harm labels")
    validate.add_argument("--config", help="YAML with judge fields")
    validate.add_argument("--wheel", help="path to pyrit-1.1.0-py3-none-any.whl (default: cache, else pip download)")
    validate.add_argument("--limit", type=int, default=200, help="items to judge, balanced by label (0 = all)")
    validate.add_argument("--threshold", type=float, default=0.5, help="mean human score that counts as harmful")
    validate.add_argument("--seed", type=int, default=0)
    validate.add_argument("--out", help="folder for judge_validation.json and per-item jsonl")
    _common(validate)
    validate.set_defaults(handler=handle_judge_validate)

    serve = subparsers.add_parser(
        "serve-judge", help="serve a synthetic world's oracle as an OpenAI-compatible judge (not an LLM)")
    serve.add_argument("--world", choices=["tiny"], required=True,
                       help="whose ground truth answers: tiny = safebench/world/tiny.py's oracle")
    serve.add_argument("--port", type=int, default=8001, help="0 picks a free port")
    serve.add_argument("--host", default="127.0.0.1")
    serve.set_defaults(handler=handle_serve_judge)


def handle_judge(args) -> int:
    from safebench.reports import judge_failure
    from safebench.runlock import run_lock
    from safebench.seeds import SEEDS_FILE

    run_dir = Path(args.run_dir)
    if (run_dir / SEEDS_FILE).is_file():
        raise UsageError(f"{run_dir}: a set of seeds ({SEEDS_FILE}); judge each seed's run "
                         f"(safebench judge {run_dir / 'seed-N'}), then safebench report {run_dir}")
    if not (run_dir / "manifest.json").is_file():
        raise UsageError(f"{run_dir}: not a safebench run directory (no manifest.json)")
    with run_lock(run_dir):
        summary = _judge_run(args, run_dir)
    print(format_summary(summary))
    failure = judge_failure({"judge": summary})
    if failure:
        raise EndpointFailed(f"{run_dir}: {failure}; rerun the same command to retry them")
    return 0


def _judge_run(args, run_dir: Path) -> dict:
    from safebench import verify
    from safebench.evals.judge.config import parse_judge_config
    from safebench.evals.judge.stage import judge_stage_key, run_judge_stage
    from safebench.store import RunStore

    store = RunStore(run_dir)
    try:
        manifest = store.manifest()
        recorded = manifest.get("config", {}).get("judge") or {}
        # `enabled` is the pipeline's switch for the stage, not a judge setting.
        base = _load_yaml(args.config) if args.config else {k: v for k, v in recorded.items() if k != "enabled"}
        data = _apply_overrides(base, args.set, args.max_judge_cost)
        parse_judge_config(data, source=args.config or f"{run_dir}/manifest.json")
        evaluations = manifest.get("evaluations", [])
        if not evaluations:
            raise UsageError(f"{run_dir}/manifest.json: field 'evaluations' is empty; generate samples first")
        key = judge_stage_key(data, evaluations)
        store.mark_started("judge", key)
        summary = run_judge_stage(store, data, evaluations, key, show_progress=not args.no_progress)
        if summary["complete"]:
            # The record the pipeline's judge stage writes, so that `safebench run` with this judge
            # reuses the stage only while its verdicts are all in results.sqlite (safebench/verify.py).
            directory = store.stage_dir("judge", key)
            directory.mkdir(parents=True, exist_ok=True)
            outputs = verify.record(directory, store.db, None, ("judge_judgments", "stage_key", key))
            store.mark_done("judge", key, {"summary": summary, "outputs": outputs})
        # Recorded once the stage has run (even in part), as the pipeline records its judge:
        # reports read only the verdicts of the judge stage the manifest names, so from now on
        # this judge's, not an earlier one's. A failure before any verdict keeps the old record.
        def record_judge(manifest: dict) -> None:
            manifest.setdefault("stages", {})["judge"] = store.stage_record("judge", key)
            manifest["judge"] = summary

        store.update_manifest(record_judge)
    finally:
        store.close()
    return summary


def format_summary(summary: dict) -> str:
    c = summary["counts"]
    lines = [f"judge stage {summary['stage_key']}: {summary['expected']} judgments: {c['scored']} scored, "
             f"{c['unparsed']} unscored (parse failure), {c['error']} errors, {c['not_judged']} not judged; "
             f"cost ${summary['cost_usd_total']:.4f}"]
    if summary["unparsed_reasons"]:
        lines.append("unscored reasons: " + json.dumps(summary["unparsed_reasons"]))
    if summary["not_judged"]:
        shown = summary["not_judged"][:10]
        lines.append(f"not judged ({len(summary['not_judged'])}): " + ", ".join(shown)
                     + (" ..." if len(summary["not_judged"]) > 10 else ""))
        lines.append("rerun the same command to judge the rest (answers already given come from the cache)")
    for note in summary["notes"]:
        lines.append("note: " + note)
    return "\n".join(lines)


def handle_judge_validate(args) -> int:
    from safebench.evals.judge.config import TINY_ORACLE_ENDPOINT, parse_judge_config
    from safebench.evals.judge.validate import format_report, locate_wheel, run_validation

    data = _apply_overrides(_load_yaml(args.config), args.set, args.max_judge_cost)
    config = parse_judge_config(data, source=args.config or "--set")
    if config.endpoint == TINY_ORACLE_ENDPOINT:
        raise UsageError(f"{args.config or '--set'}: field 'judge.endpoint' = '{TINY_ORACLE_ENDPOINT}': the tiny "
                         "world's oracle knows only its own prompts, not the human-labelled items judge-validate uses")
    if args.limit is not None and args.limit < 0:
        raise UsageError(f"--limit {args.limit}: expected 0 (all) or a positive number of items")
    if not 0 < args.threshold <= 1:
        raise UsageError(f"--threshold {args.threshold}: expected a human score in (0, 1]")
    wheel = locate_wheel(args.wheel)
    report = run_validation(config, wheel, limit=args.limit or None, seed=args.seed,
                            threshold=args.threshold, out_dir=Path(args.out) if args.out else None,
                            show_progress=not args.no_progress)
    print(format_report(report))
    return 0


def handle_serve_judge(args) -> int:
    from safebench.evals.judge import tiny_oracle_judge
    from safebench.evals.serve import LOOPBACK, free_port

    port = args.port or free_port(args.host)
    if args.host not in LOOPBACK:
        print(f"safebench: warning: serving on {args.host}, reachable from other machines; the server has no "
              "authentication", file=sys.stderr)
    host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{host}:{port}/v1"
    print(f"serving the tiny world's oracle as model '{tiny_oracle_judge.MODEL_NAME}' at {url} "
          "(ground truth of the synthetic world, not an LLM)", flush=True)
    print(f"  e.g. safebench judge RUN_DIR --set base_url={url} --set model={tiny_oracle_judge.MODEL_NAME}; "
          "Ctrl-C stops it", flush=True)
    tiny_oracle_judge.run_forever(args.host, port)
    return 0
