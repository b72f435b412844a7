"""Where recipes, suites and presets live, and what exists.

Recipes: trainers/NAME.yaml (NAME is the method or stage name, `trainer:` names the module
safebench/trainers/<trainer>.py). Presets: trainers/presets/NAME.yaml. Suites: evals/NAME.yaml.
"""

from __future__ import annotations

import importlib
import os
from functools import lru_cache
from pathlib import Path

import yaml

from safebench.errors import UsageError


def project_root() -> Path:
    """The folder holding trainers/, evals/ and reports/ (the repository root).

    SAFEBENCH_HOME overrides it, for installs that are not editable.
    """
    env = os.environ.get("SAFEBENCH_HOME")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent


def recipes_dir() -> Path:
    return project_root() / "trainers"


def presets_dir() -> Path:
    return recipes_dir() / "presets"


def suites_dir() -> Path:
    return project_root() / "evals"


def reports_dir() -> Path:
    return project_root() / "reports"


def load_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
                         "expected a YAML file saved as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = (str(getattr(exc, "problem", None) or exc).splitlines() or ["?"])[0]
        raise UsageError(f"{path}:{where} invalid YAML ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping at top level, got {type(data).__name__}")
    return data


def _names(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def recipe_names() -> list[str]:
    return _names(recipes_dir())


def method_names() -> list[str]:
    """Recipes whose role is `method` (sft counts: it is the baseline of every comparison)."""
    return [n for n in recipe_names() if load_recipe(n).get("role", "method") == "method"]


def preset_names() -> list[str]:
    return _names(presets_dir())


def suite_names() -> list[str]:
    return _names(suites_dir())


@lru_cache(maxsize=None)
def _load_recipe_cached(path: str, mtime: float) -> dict:
    return load_yaml(Path(path))


def load_recipe(name: str) -> dict:
    path = recipes_dir() / f"{name}.yaml"
    if not path.exists():
        raise UsageError(f"unknown recipe '{name}': no {path}; available: {', '.join(recipe_names())}")
    return dict(_load_recipe_cached(str(path), path.stat().st_mtime))


def recipe_path(name: str) -> Path:
    return recipes_dir() / f"{name}.yaml"


def trainer_module(trainer: str):
    """The module safebench/trainers/<trainer>.py that implements a recipe."""
    module_name = trainer.replace("-", "_")
    try:
        return importlib.import_module(f"safebench.trainers.{module_name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"safebench.trainers.{module_name}":
            raise UsageError(f"trainer '{trainer}' has no module safebench/trainers/{module_name}.py") from None
        raise
