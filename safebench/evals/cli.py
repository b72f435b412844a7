"""`safebench generate` and `safebench serve`.

generate: the pipeline's generation stage for any checkpoint (ours or a user's) on named
suites, into a run directory's results.sqlite, resumable; it warns when samples it is to
be compared with were generated under other settings.
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

from safebench.errors import UsageError

DEFAULT_OUT = Path("runs") / "generate"
# Checkpoints up to this size are identified by content; larger ones by file names, sizes
# and modification times (hashing 15 GB per command would dominate a quick evaluation).
CONTENT_HASH_LIMIT = 2 << 30


def register(subparsers) -> None:
    generate = subparsers.add_parser(
        "generate", help="generate answers of a checkpoint on suites (the standard generation stage)")
    generate.add_argument("--model", required=True,
                          help="checkpoint directory (for --backend openai: the model id the endpoint serves)")
    generate.add_argument("--suite", required=True, type=_names, help="suite name(s), comma-separated")
    generate.add_argument("--backend", default=None, help="a generation backend, see `safebench list backends` (default: the preset's generation.backend)")
    generate.add_argument("--out", type=Path, default=None, help=f"run directory (default: {DEFAULT_OUT})")
    generate.add_argument("--preset", default="tiny", help="preset whose generation settings and data to use")
    generate.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                          help="override a setting, e.g. --set generation.temperature=0 (repeatable)")
    generate.add_argument("--name", default=None, help="label of this model in the results (default: from the path)")
    generate.add_argument("--limit", type=int, default=None, help="only the first N prompts of each suite")
    generate.add_argument("--compare", type=Path, action="append", default=[], metavar="OTHER_RUN",
                          help="warn if OTHER_RUN's samples on the same suites used other generation settings")
    generate.add_argument("--quiet", action="store_true", help="no progress bars")
    generate.set_defaults(handler=cmd_generate)

    serve = subparsers.add_parser("serve", help="serve a checkpoint with vLLM's OpenAI-compatible server on loopback")
    serve.add_argument("checkpoint", type=Path)
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    serve.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                       help="compile the model (auto: on a GPU only; on a CPU it adds ~1 min to the start)")
    serve.add_argument("--startup-timeout", type=float, default=600.0, help="seconds to wait for the server")
    serve.set_defaults(handler=cmd_serve)


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def cmd_serve(args) -> int:
    from safebench.evals.serve import serve_forever

    return serve_forever(args.checkpoint, args.port, args.host, args.dtype, args.startup_timeout, args.compile)


def cmd_generate(args) -> int:
    from safebench.runlock import run_lock
    from safebench.stages import StageRunner
    from safebench.store import RunStore

    config, generation = generation_settings(args)
    template = generation.template or config.policy.template
    model_identity, model_config = identify_model(args.model, generation)
    if model_config is not None:   # a local checkpoint: torch's threads for its size (safebench/threads.py)
        from safebench import threads

        threads.configure(threads.estimate_parameters(model_config))
    label = args.name or default_label(args.model)
    from safebench.evals import suites as suites_module

    suites = [suites_module.load_suite(name) for name in args.suite]
    out = args.out or DEFAULT_OUT
    with run_lock(out):
        store = RunStore(out)
        try:
            runner = StageRunner(store, log=_notes_only)
            for suite in suites:
                items = suite_prompts(suite, config, runner, args.limit)
                if model_config is not None:
                    check_prompts_fit(args.model, model_config, items, template, generation.max_new_tokens)
                generate_suite(runner, args, label, suite.name, items, generation, template, model_identity)
        finally:
            store.close()
    print(f"results: {out / 'results.sqlite'}")
    return 0


def _notes_only(message: str) -> None:
    """The runner's notes of redone or linked stages; the command prints its own line per suite."""
    if not message.startswith(("[run ]", "[skip]")):
        print(message, file=sys.stderr, flush=True)


def generation_settings(args):
    """The preset's config with this command's --set and --backend, and its generation settings."""
    from safebench import config as config_module
    from safebench.evals.generation import BACKENDS

    overrides = list(args.overrides)
    if args.backend is not None:
        if args.backend not in BACKENDS:
            raise UsageError(f"--backend: unknown backend '{args.backend}'; available: {', '.join(BACKENDS)}")
        overrides.append(f"generation.backend={args.backend}")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit {args.limit}: expected a positive number of prompts")
    config, _ = config_module.resolve(args.preset, ["sft"], overrides)
    return config, config.generation


def suite_prompts(suite, config, runner, limit: int | None) -> list[dict]:
    from safebench.evals import suites as suites_module

    items = suites_module.suite_items(suite, data_dir_for(suite, config, runner))
    items = items[:limit] if limit else items
    if not items:
        raise UsageError(f"suite '{suite.name}' has no prompts")
    return items


def generate_suite(runner, args, label: str, suite_name: str, items: list[dict], generation, template: str,
                   model_identity: dict) -> None:
    """One suite's samples, as the stage `generate:LABEL:SUITE` keyed by the samples' own key."""
    from safebench.evals.generation import run_generation
    from safebench.stages import Stage, generation_key, generation_material

    gen_key = generation_key(model_identity, items, generation, template)
    out = runner.store.run_dir
    for warning in config_mismatches(suite_name, generation, [(out, gen_key), *[(r, None) for r in args.compare]]):
        print(f"safebench: warning: {warning}", file=sys.stderr)

    def build(_directory: Path) -> dict:
        written = run_generation(runner.store, gen_key, label, suite_name, items, str(args.model), generation,
                                 template, progress=not args.quiet)
        return {"rows_written": written, "generation": generation.model_dump(mode="json"),
                "gen_config_hash": generation.settings_hash(), "template": template, "suite": suite_name,
                "method": label, "model": str(args.model), "model_identity": model_identity}

    # kind "generate": the directory's key is the samples' gen_key, which the rows carry.
    result = runner.run(Stage(f"generate:{label}:{suite_name}",
                              generation_material(model_identity, items, generation, template), build,
                              kind="generate", rows=("samples", "gen_key", gen_key)))
    total = len(items) * generation.k
    if result.reused:
        print(f"{label}/{suite_name}: already generated ({total} samples, key {gen_key})")
    else:
        written = result.meta["rows_written"]
        print(f"{label}/{suite_name}: {written} sample(s) generated, {total - written} reused "
              f"(backend {generation.backend}, key {gen_key})")


def default_label(model: str) -> str:
    path = Path(model)
    # A pipeline checkpoint is RUN/stages/NAME-KEY/model: the stage directory names it.
    return path.parent.name if path.name == "model" and path.parent.name else (path.name or str(model))


def identify_model(model: str, generation) -> tuple[dict, dict | None]:
    """What the samples were generated by (part of the stage key), and the local config.json."""
    from safebench.evals.backends import common

    if generation.backend == "openai":
        from safebench.evals.backends.openai import describe_endpoint

        return describe_endpoint(model, generation), None
    model_config = common.check_causal_lm(model)
    if generation.backend == "vllm":
        from safebench.evals.backends.vllm import import_vllm

        import_vllm()
    return {"checkpoint": checkpoint_fingerprint(Path(model))}, model_config


def checkpoint_fingerprint(path: Path) -> str:
    from safebench.hashing import sha256_dir, stable_hash

    files = sorted(p for p in path.rglob("*") if p.is_file())
    if sum(p.stat().st_size for p in files) <= CONTENT_HASH_LIMIT:
        return stable_hash(sha256_dir(path))
    return stable_hash([(str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in files])


def data_dir_for(suite, config, runner) -> Path | None:
    """The tiny world's data (its held-out prompts), built into the run directory as the pipeline
    builds it, under the same stage key, so a pipeline run's data is reused."""
    if suite.source.type != "tiny-world":
        return None
    from safebench.stages import data_stage

    if config.data.source != "tiny-world":
        raise UsageError(f"suite '{suite.name}' needs the tiny world's data; the preset has data.source: "
                         f"{config.data.source}")
    return runner.run(data_stage(config.data, config.seed)).dir


def check_prompts_fit(model: str, model_config: dict, items: list[dict], template: str, max_new_tokens: int) -> None:
    """Fail before generating anything if the longest prompt + answer exceeds the context."""
    from safebench import modeling
    from safebench.evals.backends import common

    limit = common.context_limit(model_config)
    if not limit:
        return
    tokenizer = modeling.load_tokenizer(model)
    lengths = [len(modeling.encode_prompt(tokenizer, modeling.format_prompt(tokenizer, item["prompt"], template)))
               for item in items]
    longest = max(range(len(items)), key=lambda i: lengths[i])
    common.check_fits_context(lengths[longest], max_new_tokens, limit,
                              where=f"{model}: prompt '{items[longest]['id']}'")


# --- comparing generation settings across runs ---------------------------------------------------

def recorded_settings(run_dir: Path) -> list[dict]:
    """(suite, method, gen_config_hash, gen_key, settings or None) of every sample set in a run."""
    import json

    from pydantic import ValidationError

    from safebench.evals.generation import GenerationConfig
    from safebench.manifest import load_manifest, manifest_path

    db_path = Path(run_dir) / "results.sqlite"
    if not db_path.exists():
        raise UsageError(f"--compare {run_dir}: not a run directory (no results.sqlite)")
    with contextlib_closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as db:
        sets = db.execute("SELECT DISTINCT suite, method, gen_config_hash, gen_key FROM samples").fetchall()
        metas = [json.loads(m) for (m,) in db.execute("SELECT meta FROM stages WHERE meta IS NOT NULL")]
    by_hash: dict[str, dict] = {}
    for meta in metas:
        if isinstance(meta, dict) and "generation" in meta and "gen_config_hash" in meta:
            by_hash[meta["gen_config_hash"]] = meta["generation"]
    if manifest_path(run_dir).exists():
        generation = load_manifest(run_dir).config.get("generation")
        if generation:
            try:
                settings = GenerationConfig.model_validate(generation)
                by_hash.setdefault(settings.settings_hash(), settings.model_dump(mode="json"))
            except ValidationError:
                pass  # settings that do not validate: those samples compare by hash only
    return [{"suite": s, "method": m, "hash": h, "gen_key": k, "settings": by_hash.get(h)} for s, m, h, k in sets]


def config_mismatches(suite: str, generation, runs: list[tuple[Path, str | None]]) -> list[str]:
    """One line per earlier sample set on `suite` whose generation settings differ from ours.
    `runs`: (run directory, our own gen_key there or None)."""
    mine = generation.model_dump(mode="json")
    my_hash = generation.settings_hash()
    warnings = []
    for run_dir, own_key in runs:
        if not (Path(run_dir) / "results.sqlite").exists() and own_key is not None:
            continue  # a new run directory holds nothing to compare with
        for record in recorded_settings(run_dir):
            if record["suite"] != suite or record["hash"] == my_hash or record["gen_key"] == own_key:
                continue
            if record["settings"] is None:
                detail = f"settings hash {record['hash']} vs {my_hash}"
            else:
                differing = [f"{name} {record['settings'].get(name)!r} vs {value!r}" for name, value in mine.items()
                             if name not in generation.EXECUTION_ONLY and record["settings"].get(name) != value]
                detail = ", ".join(differing) or f"settings hash {record['hash']} vs {my_hash}"
            warnings.append(f"'{record['method']}' on {suite} in {run_dir} was generated with other settings "
                            f"({detail}); score differences between them may come from the settings, not the models")
    return warnings


def contextlib_closing(db):
    import contextlib

    return contextlib.closing(db)
