"""How many CPU threads torch uses when the user has not said.

Left to itself, torch (through OpenMP) runs one intra-op thread per core, and OpenMP threads
spin while they wait for work. For models as small as the tiny world's, splitting a matmul
across threads costs more than it saves, and on a machine shared with other processes the
spinning threads made runs 10-30x slower. So when neither OMP_NUM_THREADS nor torch's thread
count was set by the user, the CLI picks: one thread for a policy under
SMALL_MODEL_MAX_PARAMETERS, all available cores otherwise (measured: DEVELOPERS.md, "Threads").
The choice is exported as OMP_NUM_THREADS, so processes the run starts follow it, and recorded
in the run manifest (`environment`).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

# Below this many parameters one thread: measured faster at 0.35M and 10.7M parameters, while at
# 135M two threads were 1.5x faster on free cores (DEVELOPERS.md, "Threads"). 50M lies between.
SMALL_MODEL_MAX_PARAMETERS = 50_000_000
USER_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
# The tiny world's word-level vocabulary has under 200 words; its embeddings hardly count.
TINY_WORLD_VOCABULARY_BOUND = 1024

# What the last `configure` decided, for the manifest; None while nothing was decided.
_choice: dict | None = None
# The OMP_NUM_THREADS value `configure` exported itself (not a setting of the user's).
_exported: str | None = None


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def estimate_parameters(model_config: dict) -> int | None:
    """Rough parameter count of a decoder-only transformer from its config.json (within a
    few per cent for Llama-style models: embeddings, attention and gated MLP; norms and
    biases left out). None when the config lacks the sizes."""
    hidden = model_config.get("hidden_size") or model_config.get("n_embd")
    layers = model_config.get("num_hidden_layers") or model_config.get("n_layer")
    vocab = model_config.get("vocab_size")
    if not (hidden and layers and vocab):
        return None
    heads = model_config.get("num_attention_heads") or model_config.get("n_head") or 1
    kv_heads = model_config.get("num_key_value_heads") or heads
    intermediate = model_config.get("intermediate_size") or model_config.get("n_inner") or 4 * hidden
    attention = 2 * hidden * hidden + 2 * hidden * (hidden * kv_heads // heads)
    mlp = 3 * hidden * intermediate
    embeddings = vocab * hidden * (1 if model_config.get("tie_word_embeddings", True) else 2)
    return int(layers * (attention + mlp) + embeddings)


def policy_parameters(policy) -> int | None:
    """Parameter estimate of a run's policy (config.PolicyConfig) before anything is loaded;
    None for a model not on disk yet (package or hub), which is a real, large model."""
    init = policy.init.strip()
    if init == "tiny-llama":
        return estimate_parameters({
            "hidden_size": policy.hidden_size, "num_hidden_layers": policy.num_layers,
            "num_attention_heads": policy.num_heads, "intermediate_size": policy.intermediate_size,
            "vocab_size": TINY_WORLD_VOCABULARY_BOUND, "tie_word_embeddings": True})
    return checkpoint_parameters(Path(init).expanduser())


def checkpoint_parameters(checkpoint: Path) -> int | None:
    try:
        return estimate_parameters(json.loads((Path(checkpoint) / "config.json").read_text()))
    except (OSError, ValueError):
        return None


def user_setting() -> str | None:
    """How the user fixed the thread count, or None when they did not."""
    for name in USER_THREAD_VARIABLES:
        value = os.environ.get(name)
        if value and not (name == "OMP_NUM_THREADS" and value == _exported):
            return f"{name}={value} (set by the user)"
    torch = sys.modules.get("torch")
    if _exported is None and torch is not None and torch.get_num_threads() != available_cores():
        # torch is already loaded with a count other than its default: the caller set it
        return f"torch.set_num_threads({torch.get_num_threads()}) (set by the caller)"
    return None


def configure(parameters: int | None) -> dict:
    """Pick torch's intra-op thread count for a model of `parameters` unless the user has;
    returns (and remembers) the record the manifest stores."""
    global _choice, _exported
    decided_by = user_setting()
    if decided_by is None:
        cores = available_cores()
        if parameters is not None and parameters < SMALL_MODEL_MAX_PARAMETERS:
            threads = 1
            decided_by = (f"safebench: 1 thread for a model of about {parameters / 1e6:.1f}M parameters "
                          f"(< {SMALL_MODEL_MAX_PARAMETERS / 1e6:.0f}M)")
        else:
            threads = cores
            size = "unknown size" if parameters is None else f"about {parameters / 1e6:.0f}M parameters"
            decided_by = f"safebench: all {cores} cores for a model of {size}"
        _exported = os.environ["OMP_NUM_THREADS"] = str(threads)  # before torch starts its pool; children inherit it
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)
    _choice = {"torch_threads": _torch_threads(), "threads_decided_by": decided_by,
               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}
    return _choice


def record() -> dict:
    """The thread settings of this process for the manifest (also when the CLI chose none)."""
    if _choice is not None:
        return {**_choice, "torch_threads": _torch_threads()}
    return {"torch_threads": _torch_threads(), "threads_decided_by": user_setting() or "torch default",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()
