"""Resumable trainer state without pickle: a run directory is data, and loading it must run no code.

A state (nested dicts, lists and tuples of tensors, numbers, strings, booleans and None: model,
optimizer, scheduler and method state dicts) is written as two files: every tensor into
`tensors.safetensors`, and the structure, with each tensor replaced by its name there, into
`state.json`. Reading parses JSON and safetensors only, so a planted file can at worst be
unreadable, never executed. (SACPO resumes through the transformers Trainer, which loads its
optimizer, scheduler and RNG files with `torch.load(weights_only=True)`.)
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any, Iterator

from safebench.errors import UsageError
from safebench.files import atomic_write_text

TENSORS = "tensors.safetensors"
STRUCTURE = "state.json"


class UnreadableState(Exception):
    """A resume state that is missing a part, malformed, or holds something other than data."""


def write_state(directory: Path, state: Any) -> None:
    """Write `state` into `directory` (which the caller builds atomically)."""
    from safetensors.torch import save_file

    tensors: dict = {}
    storages: set[int] = set()
    structure = _encode(state, tensors, storages)
    save_file(tensors, str(directory / TENSORS))
    atomic_write_text(directory / STRUCTURE, json.dumps(structure))


def read_state(directory: Path) -> Any:
    """The state `write_state` wrote into `directory`; UnreadableState when it is not one."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        structure = json.loads((directory / STRUCTURE).read_text(encoding="utf-8"))
        tensors = load_file(str(directory / TENSORS), device="cpu")
        return _decode(structure, tensors)
    except (OSError, ValueError, SafetensorError, KeyError, TypeError) as exc:
        raise UnreadableState(f"{directory}: {type(exc).__name__}: {exc}") from exc


def load(directory: Path) -> Any:
    """The saved state to resume from, or None: none was saved, or what is there does not read back
    as data (then the stage starts over, which gives the numbers an uninterrupted run gives)."""
    if not (directory / STRUCTURE).exists():
        return None
    try:
        return read_state(directory)
    except UnreadableState as exc:
        print(f"safebench: ignoring an unreadable resume state ({exc}); starting this stage over",
              file=sys.stderr, flush=True)
        return None


@contextlib.contextmanager
def applying(directory: Path) -> Iterator[None]:
    """Around loading a read state into models and optimizers: a state that does not fit them
    (another model's) is refused with one line, since part of it may already be loaded."""
    try:
        yield
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
        raise UsageError(f"{directory}: the resume state does not fit this stage ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}); delete that directory to start "
                         "the stage over") from exc


def _encode(value: Any, tensors: dict, storages: set[int]) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
        storage = tensor.untyped_storage().data_ptr()
        # safetensors refuses tensors that share memory (tied embeddings, views): store a copy
        if storage in storages or not tensor.is_contiguous():
            tensor = tensor.clone().contiguous()
        storages.add(tensor.untyped_storage().data_ptr())
        name = str(len(tensors))
        tensors[name] = tensor
        return {"tensor": name}
    if isinstance(value, dict):
        return {"dict": [[_key(k), _encode(v, tensors, storages)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return {"tuple" if isinstance(value, tuple) else "list": [_encode(v, tensors, storages) for v in value]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"value": value}  # JSON keeps int and float apart, and inf/nan with allow_nan
    raise TypeError(f"resume state: cannot store a {type(value).__name__} (only tensors and plain data)")


def _key(key: Any) -> Any:
    if key is None or isinstance(key, (bool, int, str)):
        return key
    raise TypeError(f"resume state: a dict key must be a string or a number, not {type(key).__name__}")


def _decode(node: Any, tensors: dict) -> Any:
    if not isinstance(node, dict) or len(node) != 1:
        raise ValueError(f"malformed node {str(node)[:80]!r}")
    (kind, payload), = node.items()
    if kind == "tensor":
        return tensors[payload]
    if kind == "dict":
        return {_key(k): _decode(v, tensors) for k, v in payload}
    if kind == "list":
        return [_decode(v, tensors) for v in payload]
    if kind == "tuple":
        return tuple(_decode(v, tensors) for v in payload)
    if kind == "value" and (payload is None or isinstance(payload, (bool, int, float, str))):
        return payload
    raise ValueError(f"malformed node {str(node)[:80]!r}")
