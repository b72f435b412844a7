"""The resolved run configuration: recipe YAML < preset YAML < command-line `--set`.

Every leaf remembers which file (or `--set`) it came from, so that a validation error can
name the file, the field path, the bad value and what is allowed, in one line.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from types import UnionType
from typing import TYPE_CHECKING, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from safebench import registry
from safebench.errors import UsageError
from safebench.evals.generation import GenerationConfig
from safebench.evals.judge.config import JudgeConfig, parse_judge_config
from safebench.hashing import stable_hash

if TYPE_CHECKING:
    from safebench.manifest import Manifest

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
    # Share of the preference data's prompts (all their pairs) kept out of training; the score
    # models report accuracy on them (preference_heldout.jsonl). Not for tiny-world, which holds out
    # pairs on its evaluation prompts instead (safebench/world/tiny.py, `heldout_pairs`).
    heldout_fraction: float = Field(0.0, ge=0, lt=1)
    # pyrit-human-labels: add harmless answers to benign prompts (and their harmful twins), so the
    # score models see more than red-team prompts (safebench/data.py, "benign pairs")
    benign_pairs: bool = False
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


class JudgeSection(JudgeConfig):
    """A run's `judge:` block: the judge's settings (safebench/evals/judge/config.py) and the
    pipeline's switch for the stage, which is no judge setting (`RunConfig.judge_settings`)."""

    enabled: bool = True

    @staticmethod
    def settings_of(section: dict) -> dict:
        """A recorded `judge:` block's judge settings: all but the pipeline's switch."""
        return {k: v for k, v in section.items() if k != "enabled"}


class RunConfig(StrictModel):
    preset: str
    seed: int = 0
    methods: list[str]
    data: DataConfig = DataConfig()
    policy: PolicyConfig = PolicyConfig()
    trainers: dict[str, dict[str, Any]] = {}
    generation: GenerationConfig = GenerationConfig()
    suites: list[str] = []
    judge: JudgeSection | None = None
    description: str = ""
    # Derived by `resolve`, never read from a preset or --set (hence private, and out of the hash):
    # a variant whose settings equal another stage's trains as that stage (see `trained_as`).
    _trained_as: dict[str, str] = PrivateAttr(default_factory=dict)

    def hash(self) -> str:
        return stable_hash(self.model_dump(mode="json"))

    def judge_settings(self) -> JudgeConfig | None:
        """The judge stage's settings; None when the run has no judge or switches it off."""
        if self.judge is None or not self.judge.enabled:
            return None
        return JudgeConfig.model_validate(JudgeSection.settings_of(self.judge.model_dump(mode="json")))

    def trained_as(self, name: str) -> str:
        """The stage that trains method `name`: its plain name (`plain_variant_name`), which
        `sacpo[beta_over_lambda=0.025]` shares with `sacpo` while sacpo's β/λ is 0.025."""
        return self._trained_as.get(name, name)


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


def parse_seeds(text: str, overrides: list[str] = ()) -> list[int]:
    """`--seeds 0,1,2` -> [0, 1, 2]: distinct integers >= 0, in the order given. Each seed is one
    replicate of the whole run, so `--set seed=N` beside it would be ambiguous."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit():
            raise UsageError(f"--seeds {text!r}: {part!r} is not a seed; expected integers >= 0 separated "
                             "by commas, e.g. --seeds 0,1,2")
        if int(part) in seeds:
            raise UsageError(f"--seeds {text!r}: seed {int(part)} is given twice")
        seeds.append(int(part))
    for override in overrides:
        if parse_override(override)[0] == ["seed"]:
            raise UsageError(f"--seeds {text!r} and --set {override!r} both set the seed; use one of them")
    return seeds


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


# --- method names and variants ----------------------------------------------------------

# NAME or NAME[FIELD=VALUE,...]; values hold no brackets (they are single YAML scalars)
_METHOD_NAME_RE = re.compile(r"^(?P<base>[A-Za-z0-9_.-]+)(?:\[(?P<fields>[^\[\]]*)\])?$")
_VARIANT_EXAMPLE = "NAME or NAME[FIELD=VALUE,...], e.g. sacpo[beta_over_lambda=0.01]"


def parse_method_name(text: str, where: str) -> tuple[str, dict[str, Any]]:
    """`sacpo[beta_over_lambda=0.01,lr=1e-4]` -> ('sacpo', {'beta_over_lambda': 0.01, 'lr': 0.0001})."""
    match = _METHOD_NAME_RE.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise UsageError(f"{where}: method {text!r}: expected {_VARIANT_EXAMPLE}")
    fields: dict[str, Any] = {}
    if match["fields"] is None:
        return match["base"], fields
    for part in match["fields"].split(","):
        key, equals, raw = (piece.strip() for piece in part.partition("="))
        if not equals or not key or not raw:
            raise UsageError(f"{where}: method {text!r}: {part.strip()!r} is not FIELD=VALUE; "
                             f"expected {_VARIANT_EXAMPLE}")
        if key in fields:
            raise UsageError(f"{where}: method {text!r}: field '{key}' is given twice")
        try:
            value = _numberish(yaml.safe_load(raw))
        except yaml.YAMLError:
            value = raw
        if isinstance(value, (list, dict)) or value is None:
            raise UsageError(f"{where}: method {text!r}: field '{key}' = {raw!r}: expected one value "
                             f"(a list of values is a sweep: --set trainers.{match['base']}.{key}=[a,b])")
        fields[key] = value
    return match["base"], fields


def variant_name(base: str, fields: dict[str, Any], recipe_class) -> str:
    """The one spelling of a variant: fields in the recipe's field order, values as Python prints
    them (`0.010` and `1e-2` both give `sacpo[beta_over_lambda=0.01]`), so stage names and keys
    agree however the variant was asked for (method list, `needs`, or a sweep)."""
    if not fields:
        return base
    order = list(recipe_class.model_fields)
    label = ",".join(f"{k}={fields[k]}" for k in sorted(fields, key=order.index))
    return f"{base}[{label}]"


def _check_variant_fields(base: str, fields: dict[str, Any], recipe_class, where: str, text: str) -> None:
    for key in fields:
        if key not in recipe_class.model_fields or key in ("trainer", "role", "description"):
            settable = [f for f in recipe_class.model_fields
                        if f not in ("trainer", "role", "description") and not _is_list_field(recipe_class, f)]
            raise UsageError(f"{where}: method {text!r}: unknown field '{key}' of method '{base}'; "
                             f"expected one of {', '.join(settable)}")
        if _is_list_field(recipe_class, key):
            raise UsageError(f"{where}: method {text!r}: field '{key}' is a list; a variant sets single-valued "
                             f"fields (set lists with --set trainers.{base}.{key}=[...])")


def plain_variant_name(name: str, recipe, unswept_recipes: dict[str, dict]) -> str:
    """`name` less the variant fields that give what its base recipe has anyway (compared as
    validated): `sacpo[beta_over_lambda=0.025]` is `sacpo` while sacpo's β/λ is 0.025, and
    `sacpo[beta=0.1]` is `sacpo` too (β null means 0.1 there). The fields kept keep their spelling,
    so a variant that changes something keeps its name and stage key. `unswept_recipes`: each base
    recipe's data before sweeps, so that a swept value equal to the base's own setting is the base,
    as it is when named in the method list."""
    base, fields = parse_method_name(name, name)
    if not fields:
        return name
    recipe_class = type(recipe)
    settings = recipe.model_dump(mode="json")
    kept = dict(fields)
    for key in fields:
        trial = {k: v for k, v in kept.items() if k != key}
        try:
            without = recipe_class.model_validate({**unswept_recipes[base], **trial, "needs": recipe.needs})
        except ValidationError:
            continue  # the base alone is no valid recipe here: the field is needed
        if without.model_dump(mode="json") == settings:
            kept = trial
    return variant_name(base, kept, recipe_class)


def _without_sweeps(layer: dict, trainers: dict) -> dict:
    """`layer` less the lists it gives single-valued recipe fields (its sweeps)."""
    given = layer.get("trainers")
    if not isinstance(given, dict):
        return layer
    kept = {}
    for name, fields in given.items():
        trainer = (trainers.get(name) or {}).get("trainer")
        if isinstance(fields, dict) and trainer:
            recipe_class = registry.trainer_module(trainer).Recipe
            fields = {k: v for k, v in fields.items()
                      if not (isinstance(v, list) and not _is_list_field(recipe_class, k))}
        kept[name] = fields
    return {**layer, "trainers": kept}


def _layered(preset: str, preset_data: dict, preset_rel: str, bases: list[str],
             parsed_overrides: list, sweeps: bool = True) -> tuple[dict, Provenance]:
    """recipe YAML < preset YAML < --set, for the recipes named in `bases`; with `sweeps=False`,
    the preset's and --set's sweeps are left out (each field keeps the value below the sweep)."""
    provenance: Provenance = {}
    merged: dict[str, Any] = {"preset": preset, "trainers": {}}
    for name in bases:
        recipe = registry.load_recipe(name)
        _merge(merged["trainers"], {name: recipe}, str(registry.recipe_path(name).relative_to(registry.project_root())),
               provenance, ("trainers",))
    preset_layer = {k: v for k, v in preset_data.items() if k != "trainers"}
    preset_layer["trainers"] = {k: v for k, v in (preset_data.get("trainers") or {}).items() if k in bases}
    if not sweeps:
        preset_layer = _without_sweeps(preset_layer, merged["trainers"])
    _merge(merged, preset_layer, preset_rel, provenance)
    for path, value in parsed_overrides:
        layer: dict = {}
        cursor = layer
        for part in path[:-1]:
            cursor = cursor.setdefault(part, {})
        cursor[path[-1]] = value
        if not sweeps:
            layer = _without_sweeps(layer, merged["trainers"])
        _merge(merged, layer, f"--set {'.'.join(path)}", provenance)
    return merged, provenance


def resolve(preset: str, methods: list[str] | None = None, overrides: list[str] = (),
            methods_source: str = "--methods") -> tuple[RunConfig, dict]:
    """Build and validate the run config. Returns (config, validated recipes by stage name).

    A method may be a variant, NAME[FIELD=VALUE,...]: NAME's recipe (after the preset and `--set`)
    with those fields changed, trained as its own stage unless its settings are another's:
    `config.trained_as(name)` is then that stage, which `recipes` holds too. `methods_source`
    names where the list came from, for errors.
    """
    preset_data, preset_rel = _load_preset(preset)
    parsed_overrides = [parse_override(o) for o in overrides]
    if methods is None:
        methods = preset_data.get("methods", ["sft"])
        methods_source = f"{preset_rel}: field 'methods'"

    def layers(bases: list[str], sweeps: bool = True) -> tuple[dict, Provenance]:
        return _layered(preset, preset_data, preset_rel, bases, parsed_overrides, sweeps)

    requested: dict[str, tuple[str, dict]] = {}
    for text in methods:
        name, base, fields = _stage_spec(text, methods_source)
        requested.setdefault(name, (base, fields))
    specs, stage_needs, needs_where, merged, provenance = _collect_stages(requested, layers)
    merged["methods"] = list(requested)
    _validate_sections(merged, provenance)
    try:
        config = RunConfig.model_validate(merged)
    except ValidationError as exc:
        raise UsageError(format_validation_error(exc, (), provenance)) from None

    stage_names, config.methods = expand_stages(specs, stage_needs, config, provenance, methods_source)
    recipes = _validated_recipes(stage_names, config, provenance, needs_where)
    bases = list(dict.fromkeys(base for base, _ in specs.values()))
    share_stages(config, recipes, stage_names, layers(bases, sweeps=False)[0]["trainers"])
    # The validated recipes (defaults filled in) are what the run records and hashes.
    config.trainers = {name: recipes[name].model_dump(mode="json") for name in stage_names}
    _check_suites(config, provenance)
    return config, recipes


def _load_preset(preset: str) -> tuple[dict, str]:
    """A preset's data and its path relative to the project, for messages."""
    preset_path = registry.presets_dir() / f"{preset}.yaml"
    if not preset_path.exists():
        raise UsageError(f"unknown preset '{preset}'; available: {', '.join(registry.preset_names())}")
    return registry.load_yaml(preset_path), str(preset_path.relative_to(registry.project_root()))


def _stage_spec(text: str, where: str) -> tuple[str, str, dict]:
    """A method name as asked for -> (its one spelling, base recipe, variant fields)."""
    available = registry.method_names()
    base, fields = parse_method_name(text, where)
    if base not in available:
        raise UsageError(f"{where}: unknown method '{base}'" + (f" in {text!r}" if fields else "")
                         + f"; available: {', '.join(available)}")
    if fields and base == "sft":
        raise UsageError(f"{where}: method {text!r}: sft has no variants: every method starts from the "
                         f"one SFT model (change it with --set trainers.sft.FIELD=VALUE)")
    recipe_class = registry.trainer_module(registry.load_recipe(base).get("trainer", base)).Recipe
    _check_variant_fields(base, fields, recipe_class, where, text)
    return variant_name(base, fields, recipe_class), base, fields


def _collect_stages(requested: dict[str, tuple[str, dict]], layers):
    """SFT and the score models always; the requested methods; whatever they `need`, where a need
    may itself be a variant (p-sacpo: needs: ["sacpo[beta_over_lambda=0.025]"]). A recipe's `needs`
    may come from the preset or --set, so the layers are rebuilt until no stage is new.
    Returns (specs, needs by stage, where each base's needs were set, merged layers, provenance)."""
    specs: dict[str, tuple[str, dict]] = {name: (name, {}) for name in ("sft", *SCORE_MODEL_STAGES)}
    specs.update(requested)
    stage_needs: dict[str, list[str]] = {}
    needs_where: dict[str, str] = {}  # by base recipe: where its `needs` was set, for messages
    while True:
        merged, provenance = layers(list(dict.fromkeys(base for base, _ in specs.values())))
        new = False
        for name, (base, _) in list(specs.items()):
            declared, source = _declared_needs(merged["trainers"][base], ("trainers", base, "needs"), provenance)
            where = needs_where[base] = f"{source}: field 'trainers.{base}.needs'"
            if not isinstance(declared, list):
                raise UsageError(f"{where} = {declared!r}: expected a list of method names")
            stage_needs[name] = []
            for text in declared:
                need, need_base, need_fields = _stage_spec(text, where)
                stage_needs[name].append(need)
                if need not in specs:
                    specs[need], new = (need_base, need_fields), True
        if not new:
            return specs, stage_needs, needs_where, merged, provenance


def _validate_sections(merged: dict, provenance: Provenance) -> None:
    """The generation and judge blocks, validated by their own models (one line naming the field)."""
    try:
        merged["generation"] = GenerationConfig.model_validate(merged.get("generation") or {})
    except ValidationError as exc:
        raise UsageError(format_validation_error(exc, ("generation",), provenance)) from None
    judge = merged.get("judge")
    if isinstance(judge, dict):
        enabled = judge.get("enabled", True)
        settings = parse_judge_config(JudgeSection.settings_of(judge), source=source_of(("judge",), provenance))
        try:
            merged["judge"] = JudgeSection.model_validate({**settings.model_dump(), "enabled": enabled})
        except ValidationError as exc:
            raise UsageError(format_validation_error(exc, ("judge",), provenance)) from None


def _validated_recipes(stage_names: list[str], config: RunConfig, provenance: Provenance,
                       needs_where: dict[str, str]) -> dict:
    recipes = {name: validate_recipe(name, config.trainers[name], provenance) for name in stage_names}
    for name in stage_names:
        where = needs_where.get(parse_method_name(name, name)[0], f"field 'trainers.{name}.needs'")
        recipes[name].check_needs(name, {need: recipes[need] for need in recipes[name].needs}, where)
    return recipes


def _check_suites(config: RunConfig, provenance: Provenance) -> None:
    known_suites = registry.suite_names()
    for suite in config.suites:
        if suite not in known_suites:
            raise UsageError(f"{source_of(('suites',), provenance)}: field 'suites': unknown suite '{suite}'; "
                             f"available: {', '.join(known_suites)}")


def _declared_needs(data: dict, path: tuple, provenance: Provenance) -> tuple[Any, str]:
    """A recipe's `needs` before validation, and where it was set: a YAML layer or --set, or else
    the default of the trainer's Recipe class (the one source of recipe defaults)."""
    if "needs" in data or not data.get("trainer"):
        return data.get("needs") or [], source_of(path, provenance)
    trainer = data["trainer"]
    default = registry.trainer_module(trainer).Recipe.model_fields["needs"].default
    return list(default), f"safebench/trainers/{trainer.replace('-', '_')}.py"


def request_record(preset: str, methods: list[str] | None, overrides: list[str]) -> dict:
    """What a command asked `resolve` for, recorded in the manifest ("request"): `safebench score
    RUN --set ...` resolves the run's config from it again, with its own --set on top."""
    return {"preset": preset, "methods": None if methods is None else list(methods), "overrides": list(overrides)}


# Sections of a recorded RunConfig that a rebuilt request sets again whole (see `recorded_request`).
_RECORDED_SECTIONS = ("seed", "data", "policy", "generation", "suites", "judge", "description")


def recorded_request(manifest: Manifest) -> dict:
    """The request a run was made with. A manifest without one gets one rebuilt from its resolved
    config: every section set again whole, and each recipe the run trained under its plain name
    (variants apply their fields on top). Best effort: a --set on a swept recipe's other fields
    is not in the config under the base's name and is lost."""
    if manifest.request is not None:
        return manifest.request.model_dump(mode="json")
    config = manifest.config
    overrides = [f"{name}={json.dumps(config[name])}" for name in _RECORDED_SECTIONS
                 if name in config and config[name] is not None]
    overrides += [f"trainers.{name}={json.dumps(recipe)}" for name, recipe in config.get("trainers", {}).items()
                  if "[" not in name]
    return request_record(config["preset"], config["methods"], overrides)


def share_stages(config: RunConfig, recipes: dict, stage_names: list[str], unswept_recipes: dict[str, dict]) -> None:
    """Methods with equal validated recipes (so equal inputs: a run's SFT, score models, data and
    seed are common, and `needs` is a recipe field) train once, as the stage of the shortest of
    their plain names (`plain_variant_name`). That stage is trained even when no method is called
    by its name, so a later run asking for any one of them finds it done; it is added to `recipes`
    and `stage_names`, and `config.trained_as` maps each other name to it."""
    groups: dict[str, list[str]] = {}
    for name in stage_names:
        if name not in ("sft", *SCORE_MODEL_STAGES):
            groups.setdefault(stable_hash(recipes[name].model_dump(mode="json")), []).append(name)
    for names in groups.values():
        stage = min((plain_variant_name(n, recipes[n], unswept_recipes) for n in names), key=lambda n: (len(n), n))
        config._trained_as.update({name: stage for name in names if name != stage})
        if stage not in recipes:
            recipes[stage] = recipes[names[0]].model_copy()
            stage_names.append(stage)


def _is_list_field(recipe_class, field: str) -> bool:
    info = recipe_class.model_fields.get(field)
    if info is None:
        return False
    annotations = [info.annotation]
    if get_origin(info.annotation) in (Union, UnionType):  # an optional list (`list[str] | None`) is a list field
        annotations = list(get_args(info.annotation))
    return any(a in (list, tuple) or get_origin(a) in (list, tuple) for a in annotations)


def expand_stages(specs: dict[str, tuple[str, dict]], stage_needs: dict[str, list[str]], config: RunConfig,
                  provenance: Provenance, methods_source: str) -> tuple[list[str], list[str]]:
    """Each stage's recipe data (its base recipe with the variant's fields), with sweeps expanded.

    A list given for a single-valued recipe field is a sweep: one method variant per value.
    `--set trainers.sacpo.beta_over_lambda=[0.01,0.1]` turns method `sacpo` into
    `sacpo[beta_over_lambda=0.01]` and `sacpo[beta_over_lambda=0.1]`, each its own stage.
    A stage another method needs by that exact name is not swept: which variant the dependent
    builds on would be ambiguous, so the dependent must name one in its `needs`.
    """
    new_stages: list[str] = []
    new_methods = list(config.methods)
    dependents = {need: name for name, needs in stage_needs.items() for need in needs}
    for name, (base, fields) in specs.items():
        data = {**config.trainers[base], **fields, "needs": stage_needs[name]}
        recipe_class = registry.trainer_module(data["trainer"]).Recipe if data.get("trainer") else None
        if name != base:
            _copy_provenance(provenance, base, name)
            for key in fields:
                where = methods_source if name in config.methods else \
                    f"{source_of(('trainers', dependents.get(name, base), 'needs'), provenance)}"
                provenance[("trainers", name, key)] = f"{where}: method '{name}'"
        swept = {k: v for k, v in data.items()
                 if isinstance(v, list) and recipe_class is not None and not _is_list_field(recipe_class, k)}
        if not swept:
            config.trainers[name] = data
            variants = [name]
        else:
            _check_sweepable(name, base, fields, swept, dependents, recipe_class, provenance)
            variants = _sweep(name, base, fields, swept, data, recipe_class, config, provenance)
            if name in new_methods:
                position = new_methods.index(name)
                new_methods[position:position + 1] = [v for v in variants if v not in new_methods]
        new_stages += [v for v in variants if v not in new_stages]
    return new_stages, new_methods


def _copy_provenance(provenance: Provenance, source: str, target: str) -> None:
    """Stage `target`'s recipe fields come from where stage `source`'s came from."""
    for path, where in list(provenance.items()):
        if path[:2] == ("trainers", source):
            provenance[("trainers", target) + path[2:]] = where


def _check_sweepable(name: str, base: str, fields: dict, swept: dict, dependents: dict[str, str], recipe_class,
                     provenance: Provenance) -> None:
    where = source_of(("trainers", base, next(iter(swept))), provenance)
    if name in ("sft", *SCORE_MODEL_STAGES):
        raise UsageError(f"{where}: cannot sweep '{name}' ({', '.join(swept)}): every method starts from it")
    if name in dependents:
        field, values = next(iter(swept.items()))
        example = variant_name(base, {**fields, field: values[0]}, recipe_class)
        raise UsageError(
            f"{where}: cannot sweep '{name}' ({', '.join(swept)}): method '{dependents[name]}' needs '{name}', "
            f"which would be ambiguous; name one variant in its needs, e.g. "
            f"--set 'trainers.{dependents[name]}.needs=[\"{example}\"]'")


def _sweep(name: str, base: str, fields: dict, swept: dict, data: dict, recipe_class, config: RunConfig,
           provenance: Provenance) -> list[str]:
    """One variant of stage `name` per combination of the swept values; their names, in order."""
    variants = []
    for values in itertools.product(*swept.values()):
        chosen = {**fields, **dict(zip(swept, values))}
        variant = variant_name(base, chosen, recipe_class)
        config.trainers[variant] = {**data, **chosen}
        _copy_provenance(provenance, name, variant)
        variants.append(variant)
    return variants


def validate_recipe(name: str, data: dict, provenance: Provenance):
    trainer = data.get("trainer")
    if not trainer:
        raise UsageError(f"{source_of(('trainers', name), provenance)}: field 'trainers.{name}.trainer' is required")
    module = registry.trainer_module(trainer)
    try:
        return module.Recipe.model_validate(data)
    except ValidationError as exc:
        raise UsageError(format_validation_error(exc, ("trainers", name), provenance)) from None
