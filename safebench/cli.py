"""safebench command line. Exit codes: 0 success, 1 a check failed (regression), 2 bad usage, bad input
or a bad environment (disk full, read-only), 3 an internal error (a bug: the traceback goes to a log file),
130 interrupted."""

from __future__ import annotations

import argparse
import errno
import importlib
import importlib.abc
import importlib.util
import os
import sys
from pathlib import Path

from safebench import __version__
from safebench.errors import CheckFailed, UsageError

# Areas that add their own subcommands through `register(subparsers)`.
PLUGIN_COMMANDS = (
    "safebench.evals.cli",          # generate, serve
    "safebench.evals.evaluate",     # eval
    "safebench.evals.judge.cli",    # judge, judge-validate
    "safebench.reports.cli",        # report, export, check, reproduce
)


def _methods(text: str) -> list[str]:
    """Comma-separated method names; commas inside a variant's brackets (`sacpo[a=1,b=2]`) stay."""
    names, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            names.append(current)
            current = ""
        else:
            current += char
    names.append(current)
    return [m.strip() for m in names if m.strip()]


def _preset(text: str) -> str:
    return importlib.import_module("safebench.config").preset_argument(text)


def add_run_options(parser: argparse.ArgumentParser, methods: bool = True) -> None:
    parser.add_argument("--preset", "--config", dest="preset", default="tiny", type=_preset,
                        metavar="NAME|FILE", help="preset: tiny | smol | paper (see `safebench list presets`), or "
                                                  "your own preset file anywhere (same fields as trainers/presets/)")
    if methods:
        parser.add_argument("--methods", type=_methods, default=None,
                            help="comma-separated methods, e.g. sft,ppo-lag,repo or a variant "
                                 "\"sacpo[beta_over_lambda=0.01]\" (default: the preset's)")
    parser.add_argument("--out", type=Path, default=None, help="run directory (default: runs/PRESET)")
    parser.add_argument("--seeds", default=None, metavar="S,S,...",
                        help="replicates: the whole run once per seed, into OUT/seed-S, with the mean across "
                             "seeds in OUT (e.g. --seeds 0,1,2; instead of --set seed=N)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="override any config field, e.g. --set trainers.sft.lr=1e-5 (repeatable)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--max-judge-cost", type=float, default=None, metavar="USD",
                        help="stop judging cleanly once this many dollars are spent (what was judged stays)")


def judge_overrides(args) -> list[str]:
    return [] if args.max_judge_cost is None else [f"judge.max_cost={args.max_judge_cost}"]


def choose_threads(config) -> None:
    """torch's thread count for this run's policy, unless the user set one (safebench/threads.py)."""
    from safebench import threads

    threads.configure(threads.policy_parameters(config.policy))


def stage_launcher(args):
    """How `safebench run` starts its training stages (safebench/launch.py); None: in this process."""
    from safebench import launch, plan

    return launch.launcher(args.launch, args.num_processes, plan.launch_path(args.preset))


def cmd_run(args) -> int:
    from safebench import config as config_module, seeds as seeds_module
    from safebench import pipeline as pipeline_module
    from safebench.pipeline import run_pipeline

    overrides = list(args.overrides)
    seeds = None if args.seeds is None else config_module.parse_seeds(args.seeds, overrides)
    config, recipes = config_module.resolve(args.preset, args.methods, overrides)
    if args.max_judge_cost is not None:
        if config.judge is None:
            raise UsageError("--max-judge-cost: this run has no judge (set judge.base_url and judge.model, "
                             "or use a preset with a judge block)")
        overrides += judge_overrides(args)
        config, recipes = config_module.resolve(args.preset, args.methods, overrides)
    if args.dry_run or args.device:
        from safebench import plan

        return plan.dry_run(args, config, recipes)
    launcher = stage_launcher(args)
    choose_threads(config)
    out = args.out or Path("runs") / config_module.preset_label(args.preset)
    if seeds is None:
        seeds_module.refuse_mixed(out, seeded=False)
        runs = [run_pipeline(config, recipes, out, quiet=args.quiet,
                             request=config_module.request_record(args.preset, args.methods, overrides),
                             launcher=launcher)]
    else:
        runs = pipeline_module.run_seeds(args.preset, args.methods, overrides, seeds, out, quiet=args.quiet,
                                         launcher=launcher)
    summary = (out / "summary.md").read_text()
    print(summary)
    executed, skipped = sum(len(r.executed) for r in runs), sum(len(r.skipped) for r in runs)
    print(f"run directory: {out}  ({executed} stage(s) run, {skipped} reused)")
    if (out / "report.html").exists():
        print(f"report: {out / 'report.html'}")
    return 0


def cmd_train(args) -> int:
    """Train one method (and what it depends on) without evaluating it."""
    from safebench import config as config_module, seeds as seeds_module
    from safebench import pipeline as pipeline_module
    from safebench.pipeline import run_pipeline

    overrides = [*args.overrides, "suites=[]"]
    seeds = None if args.seeds is None else config_module.parse_seeds(args.seeds, overrides)
    config, recipes = config_module.resolve(args.preset, [args.method], overrides)
    choose_threads(config)
    out = args.out or Path("runs") / config_module.preset_label(args.preset)
    if seeds is None:
        seeds_module.refuse_mixed(out, seeded=False)
        run = run_pipeline(config, recipes, out, quiet=args.quiet,
                           request=config_module.request_record(args.preset, [args.method], overrides))
        print(f"{args.method}: {out / run.manifest.methods[args.method].checkpoint}")
        return 0
    runs = pipeline_module.run_seeds(args.preset, [args.method], overrides, seeds, out, quiet=args.quiet)
    for seed, run in zip(seeds, runs):
        checkpoint = seeds_module.seed_dir(out, seed) / run.manifest.methods[args.method].checkpoint
        print(f"{args.method} (seed {seed}): {checkpoint}")
    return 0


def cmd_score(args) -> int:
    """Score every unscored sample of a run (or of each seed of a set of seeds) with its reward and
    cost models."""
    from safebench import pipeline as pipeline_module, seeds as seeds_module

    replicates = seeds_module.replicates(Path(args.run))
    for run_dir in (replicates or {None: Path(args.run)}).values():
        score_run(run_dir, args)
    if replicates:
        pipeline_module.write_across_seeds(Path(args.run))
    print((Path(args.run) / "summary.md").read_text())
    return 0


def score_run(run_dir: Path, args) -> None:
    from safebench import config as config_module
    from safebench.manifest import load_manifest, manifest_path as path_of
    from safebench.pipeline import run_pipeline

    manifest_path = path_of(run_dir)
    # The run's own request (preset, methods, --set), with this command's --set on top: the
    # run's settings stay unless overridden here, so its stages (and keys) are found again.
    try:
        recorded = config_module.recorded_request(load_manifest(run_dir))
    except (KeyError, TypeError) as exc:
        raise UsageError(f"{manifest_path}: the run's request cannot be read (field {exc} is missing or "
                         "malformed); rerun `safebench run` with its settings instead") from None
    request = {**recorded, "overrides": [*recorded["overrides"], *args.overrides]}
    if request.get("command") == "eval":  # an evaluation of given models (safebench/evals/evaluate.py)
        from safebench.evals.evaluate import run_eval

        run_eval(request, run_dir, quiet=args.quiet)
        return
    config, recipes = config_module.resolve(request["preset"], request["methods"], request["overrides"],
                                            methods_source=f"{manifest_path}: field 'request.methods'")
    choose_threads(config)
    run_pipeline(config, recipes, run_dir, quiet=args.quiet, request=request)


def cmd_list(args) -> int:
    from safebench import registry

    if args.what == "methods":
        for name in registry.method_names():
            print(f"{name:12s} {registry.load_recipe(name).get('description', '')}")
    elif args.what == "suites":
        from safebench.evals.suites import load_suite

        broken = []
        for name in registry.suite_names():
            try:
                suite = load_suite(name)
            except UsageError as exc:  # one bad file hides none of the others
                broken.append(exc)
                continue
            print(f"{name:24s} {suite.kind:13s} {suite.description}")
        if broken:
            raise UsageError("; ".join(str(exc) for exc in broken))
    elif args.what == "presets":
        for name in registry.preset_names():
            print(f"{name:8s} {registry.load_yaml(registry.presets_dir() / f'{name}.yaml').get('description', '')}")
    else:
        plugins = plugin_registries()[args.what]
        for name in plugins:
            print(f"{name:16s} {plugins.description(name)}")
    return 0


def plugin_registries() -> dict:
    """`safebench list` names of the plug-in registries (registry.Plugins)."""
    from safebench.evals.generation import BACKENDS
    from safebench.evals.judge.protocol import PROTOCOLS

    return {"backends": BACKENDS, "protocols": PROTOCOLS}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="safebench", description="Benchmark suite for safe RLHF methods.")
    parser.add_argument("--version", action="version", version=f"safebench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="train methods, generate on suites, score, report")
    add_run_options(run)
    from safebench import plan

    plan.add_options(run)  # --dry-run, --launch, --device
    run.set_defaults(handler=cmd_run)

    train = sub.add_parser("train", help="train one method (and its dependencies) without evaluating")
    train.add_argument("method")
    add_run_options(train, methods=False)
    train.set_defaults(handler=cmd_train)

    score = sub.add_parser("score", help="score a run's unscored samples with its reward and cost models")
    score.add_argument("run", type=Path)
    score.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                       help="override a field on top of the run's own settings (repeatable)")
    score.add_argument("--quiet", action="store_true")
    score.set_defaults(handler=cmd_score)

    check_run = sub.add_parser("verify", help="check a run's checkpoints, rows and database against their records "
                                              "(exit 0 ok, 1 mismatch, 2 bad input)")
    check_run.add_argument("run", type=Path)
    check_run.set_defaults(handler=lambda args: importlib.import_module("safebench.verify").cmd_verify(args))

    listing = sub.add_parser("list", help="list methods, suites, presets, generation backends or judge protocols")
    listing.add_argument("what", choices=["methods", "suites", "presets", "backends", "protocols"])
    listing.set_defaults(handler=cmd_list)

    for module_name in PLUGIN_COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue  # that area is not built yet
            raise
        module.register(sub)
    return parser


class _AfterImport(importlib.abc.MetaPathFinder):
    """Calls `then()` right after module `name` is first imported, wherever that happens."""

    def __init__(self, name: str, then) -> None:
        self.name, self.then, self.searching = name, then, False

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name or self.searching:
            return None
        self.searching = True  # importlib's own search below must not come back here
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self.searching = False
        # Libraries look modules up without importing them (`importlib.util.find_spec`), so the hook
        # stays until the module is executed; every lookup gets a loader of its own to wrap.
        if spec is not None and spec.loader is not None:
            exec_module = spec.loader.exec_module

            def exec_then(module) -> None:
                exec_module(module)
                if self in sys.meta_path:
                    sys.meta_path.remove(self)
                    self.then()

            spec.loader.exec_module = exec_then
        return spec


def _quiet_transformers() -> None:
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def quiet_libraries() -> None:
    """Library chatter (weight-loading reports, hub warnings) would drown the stage log."""
    import os
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore", category=UserWarning, module="transformers")
    # Importing transformers takes about a second, which commands that load no model (--help, list,
    # bad input) should not pay: its logging is set when something imports it. Not through
    # TRANSFORMERS_VERBOSITY: child processes (the vLLM server) would inherit it.
    if "transformers" in sys.modules:
        _quiet_transformers()
    elif not any(isinstance(finder, _AfterImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport("transformers", _quiet_transformers))


INTERNAL_ERROR = 3
# What the machine, not safebench, is short of or refuses: exit 2, with what to do.
ENVIRONMENT_ERRORS = {
    errno.ENOSPC: "free some space (or use another --out) and rerun the same command to resume",
    errno.EDQUOT: "free some space (or use another --out) and rerun the same command to resume",
    errno.EROFS: "choose a writable --out",
    errno.EACCES: "choose a writable --out or fix the permissions",
    errno.EPERM: "choose a writable --out or fix the permissions",
}


def environment_error(exc: BaseException) -> str | None:
    """One line for an error of the machine (full disk, read-only or forbidden path); None otherwise."""
    import sqlite3

    if isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRORS:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror or os.strerror(exc.errno)}; {ENVIRONMENT_ERRORS[exc.errno]}"
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc)
        if "disk is full" in text:
            return f"results.sqlite: {text}; {ENVIRONMENT_ERRORS[errno.ENOSPC]}"
        if "readonly" in text or "read-only" in text:
            return f"results.sqlite: {text}; {ENVIRONMENT_ERRORS[errno.EROFS]}"
    return None


def internal_error(exc: BaseException) -> int:
    """A bug: the traceback into a log file, one line pointing at it."""
    import tempfile
    import traceback

    text = "".join(traceback.format_exception(exc))
    try:
        fd, log = tempfile.mkstemp(prefix="safebench-error-", suffix=".log")
        with os.fdopen(fd, "w") as handle:
            handle.write(f"safebench {__version__}: {' '.join(sys.argv)}\n{text}")
        where = f"traceback in {log}"
    except OSError:  # nowhere to write it: show it here
        print(text, file=sys.stderr)
        where = "traceback above"
    first = (str(exc).splitlines() or [""])[0][:200]
    print(f"safebench: internal error: {type(exc).__name__}: {first} ({where}; please report it)", file=sys.stderr)
    return INTERNAL_ERROR


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    quiet_libraries()
    args = parser.parse_args(argv)
    try:
        return args.handler(args) or 0
    except UsageError as exc:
        print(f"safebench: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except CheckFailed as exc:
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("safebench: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - every other error is the environment's or a bug
        line = environment_error(exc)
        if line is None:
            return internal_error(exc)
        print(f"safebench: error: {line}", file=sys.stderr)
        return UsageError.exit_code


if __name__ == "__main__":
    sys.exit(main())
