"""The run record, RUN/manifest.json: what a run was asked, what it ran on, and where its results are.

The stage runner (safebench/stages.py) writes it; report, check, reproduce, verify and the seeds
read it through `load_manifest`. A field added here gets a default, so that every earlier
manifest still loads; a change that earlier manifests cannot follow bumps SCHEMA_VERSION.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from safebench.errors import UsageError
from safebench.files import atomic_write_json

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


class Record(BaseModel):
    # Fields this version does not know (a newer safebench's) are kept as they are when the
    # record is written back, so `safebench judge` on a newer run loses nothing.
    model_config = ConfigDict(extra="allow")


class StageRecord(Record):
    """How the manifest names a stage: its key and its directory relative to the run, or the
    published model used as is (a pretrained score model has no stage directory)."""

    key: str
    dir: str | None = None
    pretrained: str | None = None
    revision: str | None = None   # the hub commit a pretrained score model was read at


class MethodRecord(Record):
    key: str
    checkpoint: str                       # relative to the run directory
    sha256: dict[str, str] | None = None  # per checkpoint file
    trained_as: str | None = None         # the stage this method shares (equal settings)


class Evaluation(Record):
    """One method on one suite: its samples (gen_key) and their scores (score_key)."""

    method: str
    suite: str
    kind: str | None = None
    gen_key: str
    score_key: str
    gen_config_hash: str | None = None


class GitState(Record):
    commit: str | None = None
    dirty: bool | None = None


class Request(Record):
    """What the command asked `config.resolve` for: `safebench score RUN` resolves it again."""

    preset: str
    methods: list[str] | None = None
    overrides: list[str] = []


class Manifest(Record):
    # Absent in manifests written before the record had a schema; they read as version 0.
    schema_version: int = 0
    safebench_version: str = "?"
    # running until the report is written; then complete, or incomplete when judgments are undone
    status: str = "running"
    preset: str | None = None
    config: dict[str, Any] = {}           # RunConfig as resolved (kept as data: an old config stays readable)
    config_hash: str | None = None
    git: GitState = GitState()
    versions: dict[str, str | None] = {}
    environment: dict[str, Any] = {}
    seeds: dict[str, int] = {}
    request: Request | None = None
    assets: dict[str, Any] = {}           # pinned inputs: file -> sha256, hub repo -> commit
    stages: dict[str, StageRecord] = {}
    methods: dict[str, MethodRecord] = {}
    evaluations: list[Evaluation] = []
    timings: dict[str, float] = {}
    judge: dict[str, Any] | None = None   # the judge stage's summary (safebench/evals/judge/stage.py)

    def write(self, run_dir: Path) -> None:
        atomic_write_json(Path(run_dir) / MANIFEST, self.dump())

    def dump(self) -> dict:
        return self.model_dump(mode="json", exclude_none=True)

    def seed(self) -> int:
        """The training seed of the run."""
        return int(self.seeds.get("run", self.config.get("seed", 0)))

    def evaluation_dicts(self) -> list[dict]:
        return [ev.model_dump(mode="json", exclude_none=True) for ev in self.evaluations]


def manifest_path(run_dir: Path) -> Path:
    return Path(run_dir) / MANIFEST


def load_manifest(run_dir: Path) -> Manifest:
    """The run's manifest; UsageError (one line, what to rerun) when it is missing or damaged."""
    path = manifest_path(run_dir)
    if not path.is_file():
        raise UsageError(f"{Path(run_dir)}: not a safebench run directory (no {MANIFEST})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: not a safebench manifest (not JSON text: {exc}); the run directory is "
                         "damaged, rerun `safebench run` into a fresh --out") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: not a safebench manifest (expected a JSON object, got {type(data).__name__}); "
                         "rerun `safebench run` into a fresh --out")
    return parse_manifest(data, path)


def parse_manifest(data: dict, path: Path | str) -> Manifest:
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        dotted = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
        if err["type"] == "missing":
            problem = f"field '{dotted}' is missing"
        else:
            expected = err["msg"].removeprefix("Input should be ")
            problem = f"field '{dotted}' = {err.get('input')!r}, expected {expected}"
        raise UsageError(f"{path}: {problem}; rerun `safebench run` into a fresh --out") from None
