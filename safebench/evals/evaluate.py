"""`safebench eval`: evaluate models that safebench did not train.

Each model (a local checkpoint, a hub id at a revision, or a model served by an OpenAI-compatible
endpoint) answers the chosen suites, and the chosen scorers score the answers: a reward and a cost
model (a checkpoint in safe-rlhf's beaver format or a sequence-classification model, by path or hub
id, or the score model a safebench run trained), the LLM judge (the preset's or `--set judge.*`)
and the refusal rule (always, in the report). The stages are the pipeline's own (data for tiny-world
suites, generate, score, judge; safebench/stages.py) and the run directory is an ordinary one, so
`score`, `judge`, `report`, `check`, `verify` and `export` work on it, and a killed eval resumes
where it stopped. The manifest records each model's name and identity (checkpoint hash, hub
revision, or the endpoint's model card) under `methods`, and how to run the evaluation again under
`request.eval`.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from safebench.errors import EndpointFailed, UsageError

SCORER_ROLES = ("reward-model", "cost-model")
# The score key's stand-in for a score model that was not asked for: the rows then hold no
# reward (or cost), and the key still says which models scored them.
NO_SCORER = "none"


@dataclass
class Model:
    label: str
    spec: str            # as given: a path, HUB_ID[@REVISION], or the endpoint's model id
    path: str            # what the generation backend loads (a local folder, or the served model id)
    identity: dict       # what the samples' key hashes for the model
    config: dict | None  # a local checkpoint's config.json


@dataclass
class ScoreModel:
    role: str
    spec: str
    path: Path
    key: str
    identity: dict


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval", help="evaluate checkpoints, hub models or an endpoint on suites, with chosen scorers",
        description="Evaluate one or more models on suites into an ordinary run directory (manifest, "
                    "results.sqlite, summary.md, report): score, judge, report, check and export work on it, "
                    "and a rerun of the same command resumes. Two or more models get paired tests in the report.")
    parser.add_argument("--model", dest="models", action="append", required=True, metavar="[NAME=]MODEL",
                        help="a checkpoint folder, a hub id (ORG/NAME[@REVISION]) or, with --endpoint, the served "
                             "model's id; NAME= labels it in the results (repeatable)")
    parser.add_argument("--endpoint", metavar="URL",
                        help="an OpenAI-compatible endpoint serving the models, e.g. http://127.0.0.1:8000/v1 "
                             "(`safebench serve CHECKPOINT` serves one with vLLM)")
    parser.add_argument("--suite", dest="suites", action="append", required=True, metavar="SUITE[,SUITE]",
                        help="suite names (safebench list suites), suite files (.jsonl, .csv, .parquet or a suite "
                             ".yaml) or hub:DATASET[@REVISION][:SPLIT] (repeatable)")
    parser.add_argument("--reward-model", metavar="MODEL",
                        help="reward model: a checkpoint (safe-rlhf beaver format or sequence classification), a "
                             "hub id[@REVISION], or a safebench run directory (its trained reward model)")
    parser.add_argument("--cost-model", metavar="MODEL", help="cost model, as --reward-model")
    parser.add_argument("--preset", "--config", dest="preset", default="tiny", metavar="NAME|FILE",
                        help="preset (or your own preset file) whose generation, judge and data settings to use")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a setting, e.g. --set generation.temperature=0 (repeatable)")
    parser.add_argument("--backend", default=None, help="hf | vllm (default: the preset's; --endpoint: openai)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N prompts of each suite")
    parser.add_argument("--out", type=Path, default=None, help="run directory (default: runs/eval)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(handler=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from safebench import config as config_module
    from safebench.evals.suites import suite_argument

    request = {
        "preset": config_module.preset_argument(args.preset), "methods": None, "overrides": list(args.overrides),
        "command": "eval",
        "eval": {"models": [_model_argument(spec) for spec in args.models], "endpoint": args.endpoint,
                 "suites": [suite_argument(s.strip()) for text in args.suites for s in text.split(",") if s.strip()],
                 "reward_model": _scorer_argument(args.reward_model), "cost_model": _scorer_argument(args.cost_model),
                 "backend": args.backend, "limit": args.limit},
    }
    out = args.out or Path("runs") / "eval"
    result = run_eval(request, out, quiet=args.quiet)
    print((out / "summary.md").read_text())
    print(f"run directory: {out}  ({len(result.executed)} stage(s) run, {len(result.skipped)} reused)")
    print(f"report: {out / 'report.html'}")
    return 0


def _model_argument(spec: str) -> str:
    """`[NAME=]MODEL` with a local MODEL made absolute, named as it was given."""
    label, model = _split_label(spec)
    return f"{label}={Path(model).resolve()}" if Path(model).exists() else f"{label}={model}"


def _scorer_argument(text: str | None) -> str | None:
    """A local score model or run directory made absolute (the request is run again from anywhere)."""
    if text is None or not Path(text).exists():
        return text
    return str(Path(text).resolve())


def eval_config(request: dict):
    """The preset's config with the request's --set, --backend and --endpoint on top; the models and
    suites of the evaluation in its `methods` and `suites`."""
    from safebench import config as config_module
    from safebench.evals.generation import BACKENDS

    asked = request["eval"]
    overrides = list(request["overrides"])
    if asked.get("endpoint"):
        if asked.get("backend") not in (None, "openai"):
            raise UsageError(f"--backend {asked['backend']} with --endpoint: an endpoint is the openai backend")
        overrides += ["generation.backend=openai", f"generation.base_url={asked['endpoint']}"]
    elif asked.get("backend") is not None:
        if asked["backend"] not in BACKENDS or asked["backend"] == "openai":
            raise UsageError(f"--backend: {asked['backend']!r}; expected hf or vllm (an endpoint: --endpoint URL)")
        overrides.append(f"generation.backend={asked['backend']}")
    if asked.get("limit") is not None and asked["limit"] < 1:
        raise UsageError(f"--limit {asked['limit']}: expected a positive number of prompts")
    config, _ = config_module.resolve(request["preset"], ["sft"], overrides)
    labels = [_split_label(spec)[0] for spec in asked["models"]]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise UsageError(f"--model: the name '{duplicates[0]}' is given to two models; name them: --model NAME=MODEL")
    config.methods = labels
    config.suites = list(asked["suites"])
    return config


def _split_label(spec: str) -> tuple[str, str]:
    from safebench.evals.cli import default_label

    label, equals, model = spec.partition("=")
    if equals and label and "/" not in label:
        return label, model
    return default_label(spec.rstrip("/").split("@")[0]), spec


def resolve_model(spec: str, generation) -> Model:
    """A model as the backend loads it and as its samples' key names it."""
    from safebench.evals.cli import checkpoint_fingerprint, identify_model

    label, given = _split_label(spec)
    if generation.backend == "openai" or Path(given).exists():
        identity, model_config = identify_model(given, generation)
        path = given if generation.backend == "openai" else str(Path(given).resolve())
        return Model(label, given, path, identity, model_config)
    repo_id, _, revision = given.partition("@")
    if repo_id.count("/") != 1:
        raise UsageError(f"--model {given!r}: no such checkpoint folder, and not a hub id (ORG/NAME[@REVISION])")
    from safebench import assets
    from safebench.evals.backends import common

    folder = assets.hub_snapshot(repo_id, revision or None, None, where="--model")
    model_config = common.check_causal_lm(folder)
    return Model(label, given, str(folder), {"hub": repo_id, "revision": revision or None,
                                             "checkpoint": checkpoint_fingerprint(folder)}, model_config)


def resolve_score_model(role: str, spec: str | None) -> ScoreModel | None:
    """A reward or cost model by path, hub id[@REVISION], or a safebench run directory's own."""
    if spec is None:
        return None
    from safebench.evals.cli import checkpoint_fingerprint
    from safebench.hashing import stable_hash

    option = f"--{role}"
    path = Path(spec)
    if (path / "manifest.json").is_file():  # a run directory: the score model it trained
        from safebench.manifest import load_manifest

        record = load_manifest(path).stages.get(role)
        if record is None:
            raise UsageError(f"{option} {spec}: the run records no {role} stage")
        path = Path(record.pretrained) if record.pretrained else path / (record.dir or "") / "model"
    elif not path.exists():
        repo_id, _, revision = spec.partition("@")
        if repo_id.count("/") != 1:
            raise UsageError(f"{option} {spec!r}: no such checkpoint folder or run directory, and not a hub id "
                             "(ORG/NAME[@REVISION])")
        from safebench import assets

        path = assets.hub_snapshot(repo_id, revision or None, None, where=option)
    if not (path / "config.json").is_file():
        raise UsageError(f"{option} {spec}: {path} is not a checkpoint folder (no config.json)")
    identity = {"score_model": spec, "checkpoint": checkpoint_fingerprint(path)}
    return ScoreModel(role, spec, path, stable_hash({"stage": role, **identity}), identity)


def run_eval(request: dict, out: Path, *, quiet: bool = False):
    """Evaluate, into `out`: the manifest and which stages ran (pipeline.PipelineRun)."""
    from safebench.pipeline import PipelineRun
    from safebench.runlock import run_lock

    config = eval_config(request)
    with run_lock(out):
        evaluation = Evaluation(config, request, out, quiet=quiet)
        try:
            evaluation.run()
        finally:
            evaluation.store.close()
    manifest = evaluation.manifest
    if manifest.status != "complete":
        from safebench.reports import judge_failure

        raise EndpointFailed(f"{out}: {judge_failure(manifest.model_dump(mode='json'))} (see report.md); rerun the "
                             "same command to retry them")
    return PipelineRun(manifest, evaluation.runner.executed, evaluation.runner.skipped)


class Evaluation:
    """The stages of one `safebench eval` over one run directory."""

    def __init__(self, config, request: dict, run_dir: Path, quiet: bool = False):
        from safebench import verify
        from safebench.pipeline import new_manifest
        from safebench.stages import StageRunner

        self.config, self.request, self.run_dir, self.quiet = config, request, Path(run_dir), quiet
        self.log = lambda message: print(message, file=sys.stderr, flush=True)
        self.store = verify.open_checked_store(self.run_dir, self.log)
        self.manifest = new_manifest(config, request)
        self.runner = StageRunner(self.store, self.manifest, self.log)
        self.data_dir: Path | None = None
        self.loaded: dict = {}  # role -> Scorer

    def run(self) -> None:
        from safebench.evals import suites as suites_module
        from safebench.evals.cli import check_prompts_fit, data_dir_for
        from safebench.manifest import MethodRecord, StageRecord

        asked = self.request["eval"]
        generation = self.config.generation
        template = generation.template or self.config.policy.template
        # Everything that can be wrong with the input is found before any model is loaded.
        suites = [suites_module.check_suite(spec, where="--suite") for spec in self.config.suites]
        scorers = {role: resolve_score_model(role, asked.get(role.replace("-", "_"))) for role in SCORER_ROLES}
        models = [resolve_model(spec, generation) for spec in asked["models"]]
        self.manifest.write(self.run_dir)
        for role, scorer in scorers.items():
            if scorer is not None:
                self.runner.record(role, StageRecord(key=scorer.key, pretrained=str(scorer.path)))
                self.manifest.assets[role] = scorer.identity
        for model in models:
            self.manifest.methods[model.label] = MethodRecord(
                key=_model_key(model.identity), checkpoint=model.path, model=model.spec, identity=model.identity)
        prompts = {}
        for suite in suites:
            data_dir = data_dir_for(suite, self.config, self.runner)
            self.data_dir = data_dir or self.data_dir
            items = suites_module.suite_items(suite, data_dir)
            prompts[suite.name] = (suite, items[: asked["limit"]] if asked.get("limit") else items)
            for model in models:
                if model.config is not None:
                    check_prompts_fit(model.path, model.config, prompts[suite.name][1], template,
                                      generation.max_new_tokens)
        for suite, items in prompts.values():
            for model in models:
                self.evaluate(model, suite, items, scorers, template)
        self.judge()
        self.report()

    def evaluate(self, model: Model, suite, items: list[dict], scorers: dict, template: str) -> None:
        from safebench.evals.generation import run_generation
        from safebench.manifest import Evaluation as EvaluationRecord
        from safebench.stages import Stage, generation_key, generation_material, score_material, stage_key

        generation = self.config.generation
        gen_key = generation_key(model.identity, items, generation, template)
        keys = {role: scorer.key if scorer else NO_SCORER for role, scorer in scorers.items()}
        materials = score_material(gen_key, keys["reward-model"], keys["cost-model"])
        score_key = stage_key("score", materials)
        self.runner.run(Stage(
            f"generate:{model.label}:{suite.name}", generation_material(model.identity, items, generation, template),
            kind="generate", rows=("samples", "gen_key", gen_key),
            build=lambda _directory: {"rows_written": run_generation(
                self.store, gen_key, model.label, suite.name, items, model.path, generation, template,
                progress=not self.quiet), "model": model.spec, "model_identity": model.identity}))
        self.runner.run(Stage(
            f"score:{model.label}:{suite.name}", materials, kind="score", rows=("scores", "score_key", score_key),
            build=lambda _directory: self.score(scorers, gen_key, score_key)))
        self.manifest.evaluations.append(EvaluationRecord(
            method=model.label, suite=suite.name, kind=suite.kind, gen_key=gen_key, score_key=score_key,
            gen_config_hash=generation.settings_hash()))
        self.runner.save()

    def score(self, scorers: dict, gen_key: str, score_key: str) -> dict:
        from safebench.evals.scoring import Scorer
        from safebench.stages import score_samples
        from safebench.world import tiny

        def scorer(role: str):  # each score model loaded once, at the first stage that scores
            if scorers[role] is not None and role not in self.loaded:
                self.loaded[role] = Scorer(scorers[role].path, self.config.policy.template, self.config.policy.dtype)
            return self.loaded.get(role)

        return score_samples(self.store, scorer, tiny.oracle_for(self.data_dir), gen_key, score_key)

    def judge(self) -> None:
        from safebench.stages import judge_stage, judge_summary

        settings = self.config.judge_settings()
        if settings is None:
            return
        result = self.runner.run(judge_stage(self.store, settings.model_dump(mode="json"),
                                             self.manifest.evaluation_dicts(), show_progress=not self.quiet))
        self.manifest.judge = judge_summary(self.store, result)
        self.runner.save()

    def report(self) -> None:
        from safebench import summary
        from safebench.reports import judge_failure, write_reports

        status = "incomplete" if judge_failure(self.manifest.model_dump(mode="json")) else "complete"
        self.runner.save()
        summary.write_summary(self.store)
        write_reports([self.run_dir], status=status)
        # Last, after every report file: a run killed before this line never says "complete".
        self.manifest.status = status
        self.runner.save()


def _model_key(identity: dict) -> str:
    from safebench.hashing import stable_hash

    return stable_hash({"stage": "model", **identity})
