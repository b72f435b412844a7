"""Where recipes, suites and presets live, what exists, and the plug-in registries.

Recipes: trainers/NAME.yaml (NAME is the method or stage name, `trainer:` names the module
safebench/trainers/<trainer>.py). Presets: trainers/presets/NAME.yaml. Suites: evals/NAME.yaml.
Generation backends and judge protocols are `Plugins` (safebench/evals/generation.py `BACKENDS`,
safebench/evals/judge/protocol.py `PROTOCOLS`): a module found by its file name registers itself.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

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
    """reports/: the report templates, reference tables and baselines."""
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
    return import_plugin("safebench.trainers", module_name, f"trainer '{trainer}' has no module "
                                                            f"safebench/trainers/{module_name}.py")


def import_plugin(package: str, name: str, missing: str):
    """The module `package.name`; `missing` is the one-line error when there is none (an import
    error inside the module itself is a bug, and is raised as it is)."""
    try:
        return importlib.import_module(f"{package}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"{package}.{name}":
            raise UsageError(missing) from None
        raise


@dataclass
class Plugins:
    """The plug-ins of one kind. `discover()` names those shipped with safebench without importing
    anything (so `safebench list`, `--help` and config validation stay fast); entry NAME is the
    attribute `attribute` of the module `package.NAME`, imported when first asked for. `register`
    adds one defined elsewhere (another package, a test). Iterating and `in` go over the names."""

    kind: str
    package: str
    attribute: str
    discover: Callable[[], Iterable[str]]
    registered: dict[str, Any] = field(default_factory=dict)

    def names(self) -> list[str]:
        return sorted(set(self.discover()) | set(self.registered))

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def description(self, name: str) -> str:
        """The first line of the plug-in module's docstring, read without importing it."""
        import ast

        if name in self.registered:
            return (getattr(self.registered[name], "__doc__", None) or "").strip().split("\n")[0]
        path = package_dir(self.package) / f"{name}.py"
        if not path.is_file():
            return ""
        return (ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or "").split("\n")[0]

    def register(self, name: str, entry: Any) -> Any:
        self.registered[name] = entry
        return entry

    def get(self, name: str) -> Any:
        if name in self.registered:
            return self.registered[name]
        if name not in self.names():
            raise UsageError(f"unknown {self.kind} '{name}'; available: {', '.join(self.names())}")
        path = f"{self.package.replace('.', '/')}/{name}.py"
        module = import_plugin(self.package, name, f"{self.kind} '{name}' has no module {path}")
        if not hasattr(module, self.attribute):
            raise UsageError(f"{path}: defines no {self.attribute}, which a {self.kind} must")
        return getattr(module, self.attribute)


def package_dir(package: str) -> Path:
    """The folder of a package of safebench ("safebench.evals.backends")."""
    return Path(__file__).resolve().parent.joinpath(*package.split(".")[1:])


def package_modules(package: str, helpers: Iterable[str] = ()) -> list[str]:
    """The modules of a package of safebench (found on disk, not imported), less its helper modules."""
    import pkgutil

    return [m.name for m in pkgutil.iter_modules([str(package_dir(package))])
            if not m.ispkg and not m.name.startswith("_") and m.name not in set(helpers)]
