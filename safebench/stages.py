"""A stage of a run, and the one runner every command runs its stages with.

A `Stage` is a name, the material its key hashes, and a build function. `StageRunner.run`
does the stage protocol:

    key ─► record it in the manifest ─► done and its outputs match their record? ─► reuse
                                         └─ no: mark started ─► build ─► record outputs ─► DONE.json

DONE.json is written last: its presence means the stage is whole. A rerun reuses a done stage
only while its outputs match that record (safebench/verify.py); otherwise it is built again.
The command holds the run lock (safebench/runlock.py) around every runner it makes.

The key functions of the stages that several commands share live here, once: the data stage,
generation and scoring. A training stage's key is the pipeline's (`Pipeline.train_material`),
the judge stage's is `judge_stage_key` (safebench/evals/judge/stage.py).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from safebench import verify
from safebench.hashing import stable_hash
from safebench.manifest import Manifest, StageRecord
from safebench.files import atomic_directory
from safebench.store import RunStore
from safebench.world.tiny import WORLD_VERSION



def stage_key(kind: str, material: dict, version: int = 1) -> str:
    """The key of a stage of `kind` with these inputs. Version 1 is left out of the hash, so that
    the keys of every stage directory written before stages had versions stay what they were."""
    versioned = {} if version == 1 else {"stage_version": version}
    return stable_hash({"stage": kind, **versioned, **material})


@dataclass
class Unfinished:
    """What a build returns when it stopped short on purpose (a judge budget, failed requests): the
    stage stays open, its record is kept in the manifest, and a rerun resumes it."""

    meta: dict
    note: str


@dataclass
class Stage:
    """name: how the manifest and the stage directory name it (`generate:sft:harmful`).
    material: what its key hashes (its settings and the keys of its inputs).
    build: makes the outputs in the given stage directory; returns what DONE.json records, or
        `Unfinished`. A checkpoint is built with `files.atomic_directory` inside it.
    kind: the key's stage name, when several stages share a formula (every `generate:*` is
        "generate"); default: `name`.
    version: the stage's format; bump it when its outputs change so old stage directories are
        not reused.
    rows: (table, column, value) naming the rows in results.sqlite it writes, which a reuse
        counts again (safebench/verify.py).
    key: given instead of derived from `material` where another module owns the key formula.
    """

    name: str
    material: dict
    build: Callable[[Path], dict | Unfinished | None]
    kind: str | None = None
    version: int = 1
    rows: tuple[str, str, str] | None = None
    key: str = ""

    def __post_init__(self) -> None:
        if not self.key:
            self.key = stage_key(self.kind or self.name, self.material, self.version)


@dataclass
class StageResult:
    key: str
    dir: Path
    meta: dict           # what DONE.json records (for an open stage: what its build returned)
    reused: bool
    done: bool = True


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class StageRunner:
    """Runs stages into one run directory, recording each in `manifest` (when the command keeps
    one) and writing it after every stage. `shared_runs`: other seeds' run directories of a set
    of seeds (safebench/seeds.py); a stage done there under the same key is hard-linked, not rebuilt."""

    def __init__(self, store: RunStore, manifest: Manifest | None = None,
                 log: Callable[[str], None] = _stderr, shared_runs: list[Path] = ()):
        self.store = store
        self.manifest = manifest
        self.log = log
        self.shared_runs = [Path(p) for p in shared_runs]
        self.executed: list[str] = []
        self.skipped: list[str] = []

    def run(self, stage: Stage) -> StageResult:
        name, key = stage.name, stage.key
        directory = self.store.stage_dir(name, key)
        self.record(name, StageRecord(**self.store.stage_record(name, key)))
        self.link_shared(name, key)
        if self.store.stage_done(name, key):
            problem = self.reuse_problem(name, key)
            if problem is None:
                return self.reuse(name, key)
            self.log(f"[redo] {name} ({key}): {problem}")
            (directory / "DONE.json").unlink()
        self.log(f"[run ] {name} ({key})")
        start = time.time()
        directory.mkdir(parents=True, exist_ok=True)
        self.store.mark_started(name, key)
        built = stage.build(directory)
        seconds = round(time.time() - start, 3)
        self.executed.append(name)
        self.timing(name, seconds)
        if isinstance(built, Unfinished):
            self.log(f"[open] {name} ({key}): {built.note}")
            self.save()
            return StageResult(key, directory, built.meta, reused=False, done=False)
        meta = built or {}
        outputs = verify.record(directory, self.store.db, verify.checkpoint_files(meta), stage.rows)
        meta = {**meta, "seconds": seconds, "outputs": outputs}
        self.store.mark_done(name, key, meta)
        self.save()
        return StageResult(key, directory, {"name": name, "key": key, **meta}, reused=False)

    def reuse(self, name: str, key: str) -> StageResult:
        self.log(f"[skip] {name} ({key}): already done")
        self.skipped.append(name)
        meta = self.store.stage_meta(name, key)
        self.timing(name, meta.get("seconds", 0.0))
        return StageResult(key, self.store.stage_dir(name, key), meta, reused=True)

    def reuse_problem(self, name: str, key: str) -> str | None:
        """What is wrong with a finished stage's outputs, in one line; None when they match its record."""
        try:
            meta = self.store.stage_meta(name, key)
        except (OSError, ValueError) as exc:
            return f"its DONE.json cannot be read ({exc})"
        found = verify.problems(self.store.stage_dir(name, key), self.store.db, verify.recorded_outputs(meta))
        return "; ".join(found) if found else None

    def link_shared(self, name: str, key: str) -> None:
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

    # --- the manifest: every change to it goes through these ------------------------------
    def record(self, name: str, record: StageRecord) -> None:
        if self.manifest is not None:
            self.manifest.stages[name] = record

    def timing(self, name: str, seconds: float) -> None:
        if self.manifest is not None:
            self.manifest.timings[name] = seconds

    def save(self) -> None:
        if self.manifest is not None:
            self.manifest.write(self.store.run_dir)


# --- key functions of the stages several commands share --------------------------------------

def data_stage(data_config, seed: int) -> Stage:
    """The training data and suite prompts (`safebench run`; `generate` on a tiny-world suite)."""
    from safebench import data as data_module

    return Stage("data", {"data": data_config.model_dump(mode="json"), "seed": seed, "world": WORLD_VERSION},
                 lambda directory: data_module.prepare(data_config, seed, directory))


def generation_material(model: Any, items: list[dict], generation, template: str) -> dict:
    """What a sample set's key hashes: the model (a stage key or a checkpoint's identity), the
    suite's prompts, the generation settings and the prompt template."""
    return {"model": model, "suite": stable_hash(items), "generation": generation.settings_hash(),
            "template": template}


def generation_key(model: Any, items: list[dict], generation, template: str) -> str:
    return stage_key("generate", generation_material(model, items, generation, template))


def score_material(gen_key: str, reward_key: str, cost_key: str) -> dict:
    return {"generation": gen_key, "reward": reward_key, "cost": cost_key}



def judge_stage(store: RunStore, settings: dict, evaluations: list[dict], show_progress: bool = True) -> Stage:
    """The LLM judge over `evaluations` (manifest entries). It is done only when every judgment
    is in; a budget stop or exhausted retries leave it open, and a rerun asks only for the rest."""
    from safebench.evals.judge.stage import judge_stage_key, run_judge_stage

    key = judge_stage_key(settings, evaluations)

    def build(_directory: Path) -> dict | Unfinished:
        summary = run_judge_stage(store, settings, evaluations, key, show_progress=show_progress)
        if summary.get("complete"):
            return {"summary": summary}
        return Unfinished({"summary": summary},
                          f"{len(summary.get('not_judged', []))} judgment(s) not done; rerun to resume")

    return Stage("judge", {"judge": settings}, build, rows=("judge_judgments", "stage_key", key), key=key)


def judge_summary(store: RunStore, result: StageResult) -> dict | None:
    """A judge stage's summary, from its record."""
    if "summary" in result.meta:
        return result.meta["summary"]
    # Compatibility: `safebench judge` at 417acde recorded only counts; the summary is in the database.
    row = store.db.execute("SELECT summary FROM judge_summaries WHERE stage_key=?", (result.key,)).fetchone()
    return json.loads(row[0]) if row else None


def score_samples(store: RunStore, scorer: Callable[[str], Any], oracle, gen_key: str, score_key: str) -> dict:
    """Reward, cost and (the tiny world) ground truth of every sample of `gen_key` not scored yet
    under `score_key`. `scorer(role)`: the Scorer of 'reward-model' or 'cost-model', or None where
    the run has none (`safebench eval` without that model: its column stays empty)."""
    samples = store.samples(gen_key)
    done = store.done_score_keys(score_key)
    todo = [s for s in samples if (s["prompt_id"], s["sample_idx"]) not in done]
    for start in range(0, len(todo), 256):
        chunk = todo[start:start + 256]
        prompts = [s["prompt"] for s in chunk]
        responses = [s["response"] for s in chunk]
        values = {}
        for role in ("reward-model", "cost-model"):
            model = scorer(role)
            values[role] = model.score(prompts, responses) if model is not None else [None] * len(chunk)
        rows = []
        for sample, reward, cost in zip(chunk, values["reward-model"], values["cost-model"]):
            truth = oracle(sample["prompt"], sample["response"]) if oracle else None
            rows.append({"score_key": score_key, "gen_key": gen_key, "prompt_id": sample["prompt_id"],
                         "sample_idx": sample["sample_idx"], "reward": reward, "cost": cost,
                         "oracle_reward": truth.reward if truth else None,
                         "oracle_cost": truth.cost if truth else None})
        store.insert_scores(rows)
    return {"scored": len(todo)}
