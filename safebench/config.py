"""The resolved run configuration: recipe YAML < preset YAML < command-line `--set`.

Every leaf remembers which file (or `--set`) it came from, so that a validation error can
name the file, the field path, the bad value and what is allowed, in one line.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Any, Literal, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from safebench import registry
from safebench.errors import UsageError
from safebench.hashing import stable_hash

SCORE_MODEL_STAGES = ("reward-model", "cost-model")


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(StrictModel):
    """Where training data and suite prompts come from."""

    # pyrit-human-labels: real human harm/refusal labels from the pyrit wheel (smol preset; data.py)
    source: Literal["tiny-world", "hub", "jsonl", "pyrit-human-labels"] = "tiny-world"
    # tiny-world: sizes of the synthetic world (safebench/world/tiny.py)
    train_prompts: int = Field(600, ge=10)
    sft_responses_per_prompt: int = Field(4, ge=1)
    preference_pairs_per_prompt: int = Field(3, ge=1)
    # hub: a PKU-SafeRLHF-shaped dataset id and revision (v0 is the 2023 data of the papers)
    hub_dataset: str = "PKU-Alignment/PKU-SafeRLHF"
    hub_revision: str | None = "v0"
    hub_sft_dataset: str | None = None
    max_records: int | None = None
    # jsonl: local files in the PKU-SafeRLHF shape
    preference_file: str | None = None
    sft_file: str | None = None


class PolicyConfig(StrictModel):
    """The model every method starts from (before SFT)."""

    # 'tiny-llama' builds one from the tiny world; else package:NAME==VERSION, a path or a hub id
    # (safebench/assets.py)
    init: str = "tiny-llama"
    gguf_file: str | None = None          # a GGUF file (inside the wheel, folder or hub repo)
    revision: str | None = None           # hub: branch, tag or commit
    wheel_sha256: str | None = None       # package: pin of the wheel
    gguf_sha256: str | None = None        # package: pin of the GGUF file inside it
    hidden_size: int = Field(128, ge=32)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    intermediate_size: int = Field(256, ge=8)
    max_position_embeddings: int = Field(160, ge=16)
    template: Literal["plain", "chat"] = "plain"
    dtype: Literal["float32", "bfloat16"] = "float32"


class RunConfig(StrictModel):
    preset: str
    seed: int = 0
    methods: list[str]
    data: DataConfig = DataConfig()
    policy: PolicyConfig = PolicyConfig()
    trainers: dict[str, dict[str, Any]] = {}
    generation: dict[str, Any] = {}
    suites: list[str] = []
    judge: dict[str, Any] | None = None
    description: str = ""

    def hash(self) -> str:
        return stable_hash(self.model_dump(mode="json"))


# --- layering with provenance ------------------------------------------------------------

Provenance = dict[tuple, str]


def _merge(base: dict, layer: dict, source: str, provenance: Provenance, prefix: tuple = ()) -> None:
    for key, value in layer.items():
        path = prefix + (key,)
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value, source, provenance, path)
        else:
            base[key] = copy.deepcopy(value)
            _mark(value, source, provenance, path)


def _mark(value: Any, source: str, provenance: Provenance, path: tuple) -> None:
    provenance[path] = source
    if isinstance(value, dict):
        for key, sub in value.items():
            _mark(sub, source, provenance, path + (key,))


def source_of(path: tuple, provenance: Provenance) -> str:
    for cut in range(len(path), 0, -1):
        if path[:cut] in provenance:
            return provenance[path[:cut]]
    return "defaults"


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=VALUE` with VALUE parsed as YAML (lists like [0.01,0.1] allowed)."""
    if "=" not in text:
        raise UsageError(f"--set {text!r}: expected FIELD.PATH=VALUE, e.g. trainers.sft.lr=1e-5")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise UsageError(f"--set {text!r}: empty field path")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return path, _numberish(value)


def _numberish(value: Any) -> Any:
    """YAML 1.1 reads `1e-5` as a string; a user typing it means a number."""
    if isinstance(value, str):
        try:
            return float(value) if any(c in value.lower() for c in ".e") else int(value)
        except ValueError:
            return value
    if isinstance(value, list):
        return [_numberish(v) for v in value]
    return value


def format_validation_error(exc: ValidationError, prefix: tuple, provenance: Provenance) -> str:
    err = exc.errors()[0]
    path = prefix + tuple(str(p) for p in err["loc"])
    dotted = ".".join(path)
    source = source_of(path, provenance)
    if err["type"] == "extra_forbidden":
        return f"{source}: unknown field '{dotted}'"
    if err["type"] == "missing":
        return f"{source}: field '{dotted}' is required"
    expected = err["msg"]
    ctx = err.get("ctx") or {}
    if "expected" in ctx:
        expected = f"expected {ctx['expected']}"
    return f"{source}: field '{dotted}' = {err.get('input')!r}: {expected}"


def resolve(preset: str, methods: list[str] | None = None, overrides: list[str] = ()) -> tuple[RunConfig, dict]:
    """Build and validate the run config. Returns (config, validated recipes by stage name)."""
    preset_path = registry.presets_dir() / f"{preset}.yaml"
    if not preset_path.exists():
        raise UsageError(
            f"unknown preset '{preset}'; available: {', '.join(registry.preset_names())}"
        )
    preset_data = registry.load_yaml(preset_path)
    provenance: Provenance = {}
    merged: dict[str, Any] = {"preset": preset, "trainers": {}}

    parsed_overrides = [parse_override(o) for o in overrides]
    if methods is None:
        methods = preset_data.get("methods", ["sft"])
    available = registry.method_names()
    for method in methods:
        if method not in available:
            raise UsageError(f"unknown method '{method}'; available: {', '.join(available)}")

    # Recipes: the SFT and score-model stages always run; methods add their own, plus
    # whatever they `need`.
    stage_names = ["sft", *SCORE_MODEL_STAGES]
    queue = list(methods)
    while queue:
        name = queue.pop(0)
        if name in stage_names:
            continue
        stage_names.append(name)
        queue.extend(registry.load_recipe(name).get("needs", []))
    for name in stage_names:
        recipe = registry.load_recipe(name)
        _merge(merged["trainers"], {name: recipe}, str(registry.recipe_path(name).relative_to(registry.project_root())), provenance, ("trainers",))

    preset_rel = str(preset_path.relative_to(registry.project_root()))
    preset_layer = {k: v for k, v in preset_data.items() if k != "trainers"}
    preset_layer["trainers"] = {k: v for k, v in (preset_data.get("trainers") or {}).items() if k in stage_names}
    _merge(merged, preset_layer, preset_rel, provenance)
    merged["methods"] = list(methods)
    for path, value in parsed_overrides:
        layer: dict = {}
        cursor = layer
        for part in path[:-1]:
            cursor = cursor.setdefault(part, {})
        cursor[path[-1]] = value
        _merge(merged, layer, f"--set {'.'.join(path)}", provenance)

    try:
        config = RunConfig.model_validate(merged)
    except ValidationError as exc:
        raise UsageError(format_validation_error(exc, (), provenance)) from None

    stage_names, config.methods = expand_sweeps(stage_names, config, provenance)
    recipes = {}
    for name in stage_names:
        recipes[name] = validate_recipe(name, config.trainers[name], provenance)
    # The validated recipes (defaults filled in) are what the run records and hashes.
    config.trainers = {name: recipes[name].model_dump(mode="json") for name in stage_names}

    from safebench.evals.generation import GenerationConfig

    try:
        generation = GenerationConfig.model_validate(config.generation)
    except ValidationError as exc:
        raise UsageError(format_validation_error(exc, ("generation",), provenance)) from None
    config.generation = generation.model_dump(mode="json")
    if config.judge is not None and config.judge.get("enabled", True):
        from safebench.evals.judge.config import parse_judge_config

        judge_data = {k: v for k, v in config.judge.items() if k != "enabled"}
        config.judge = {"enabled": True, **parse_judge_config(judge_data, source=source_of(("judge",), provenance))
                        .model_dump(mode="json")}
    known_suites = registry.suite_names()
    for suite in config.suites:
        if suite not in known_suites:
            raise UsageError(
                f"{source_of(('suites',), provenance)}: field 'suites': unknown suite '{suite}'; "
                f"available: {', '.join(known_suites)}"
            )
    return config, recipes


def _is_list_field(recipe_class, field: str) -> bool:
    info = recipe_class.model_fields.get(field)
    if info is None:
        return False
    annotation = info.annotation
    return annotation in (list, tuple) or get_origin(annotation) in (list, tuple)


def expand_sweeps(stage_names: list[str], config: RunConfig, provenance: Provenance) -> tuple[list[str], list[str]]:
    """A list given for a scalar recipe field is a sweep: one method variant per value.

    `--set trainers.sacpo.beta_over_lambda=[0.01,0.1]` turns method `sacpo` into
    `sacpo[beta_over_lambda=0.01]` and `sacpo[beta_over_lambda=0.1]`, each its own stage.
    """
    new_stages, new_methods = [], list(config.methods)
    needed = {n for name in stage_names for n in config.trainers[name].get("needs", [])}
    for name in stage_names:
        data = config.trainers[name]
        recipe_class = registry.trainer_module(data.get("trainer", "")).Recipe if data.get("trainer") else None
        swept = {k: v for k, v in data.items()
                 if isinstance(v, list) and recipe_class is not None and not _is_list_field(recipe_class, k)}
        if not swept:
            new_stages.append(name)
            continue
        if name not in config.methods or name in needed or name in ("sft", *SCORE_MODEL_STAGES):
            raise UsageError(f"{source_of(('trainers', name, next(iter(swept))), provenance)}: cannot sweep '{name}' "
                             f"({', '.join(swept)}): only requested methods that no other method needs can be swept")
        variants = []
        for values in itertools.product(*swept.values()):
            label = ",".join(f"{k}={v}" for k, v in zip(swept, values))
            variant = f"{name}[{label}]"
            config.trainers[variant] = {**data, **dict(zip(swept, values))}
            for path, source in list(provenance.items()):
                if path[:2] == ("trainers", name):
                    provenance[("trainers", variant) + path[2:]] = source
            variants.append(variant)
        new_stages += variants
        position = new_methods.index(name)
        new_methods[position:position + 1] = variants
    return new_stages, new_methods


def validate_recipe(name: str, data: dict, provenance: Provenance):
    trainer = data.get("trainer")
    if not trainer:
        raise UsageError(f"{source_of(('trainers', name), provenance)}: field 'trainers.{name}.trainer' is required")
    module = registry.trainer_module(trainer)
    try:
        return module.Recipe.model_validate(data)
    except ValidationError as exc:
        raise UsageError(format_validation_error(exc, ("trainers", name), provenance)) from None


def write_yaml(path: Path, data: dict) -> None:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
