"""The distributed engine of the training stages: processes from `accelerate launch`, weights sharded
with PyTorch FSDP2 (`torch.distributed.fsdp.fully_shard`) when the launch config asks for FSDP.

`accelerate launch --config_file trainers/launch/paper.yaml` starts the processes and passes the
config's `fsdp_config` on as environment variables (FSDP_VERSION, FSDP_RESHARD_AFTER_FORWARD,
FSDP_OFFLOAD_PARAMS, FSDP_ACTIVATION_CHECKPOINTING). This module reads them and shards the models
itself rather than through `Accelerator.prepare`, for two reasons:
  * accelerate 1.x turns FSDP on only for accelerator devices (a CPU process group stays MULTI_CPU,
    plain DDP), so the offline rehearsal on gloo could not run the engine the GPUs run;
  * the score models and critics call their backbone and head directly (modeling.token_scores),
    never the root module's forward, so each of those is its own FSDP unit here (`shard`), which
    accelerate's wrapping (decoder layers + root) does not give.
The Accelerator is therefore created with FSDP switched off in its environment: it gives the
process group (gloo or NCCL), the device, autocast and reductions; identical on CPU and GPU.

Sharding: every decoder layer is a unit, and the rest of the model (embeddings, final norm, head;
a score model's backbone and head apart, as they are called apart) one more; the
parameters stay float32 (the optimizer's master weights) and are all-gathered in the compute dtype
(MixedPrecisionPolicy param_dtype), gradients reduce-scattered in float32. Frozen models (PPO's
reference, reward and cost models) are sharded the same way, in their stored dtype: at 7B the three
of them replicated would take 40 GB of an 80 GB GPU beside the trained ones' shards.

Checkpoints: the final model is gathered into a full state dict on the main process and written as
an ordinary `from_pretrained` directory (safetensors); resumable state is gathered the same way
(model and optimizer) and read back with a broadcast from the main process (resume_state.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from safebench.errors import UsageError

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator


@dataclass(frozen=True)
class Sharding:
    """The FSDP settings a launch config passed on (None: no FSDP in this process)."""

    reshard_after_forward: bool = True
    offload_params: bool = False
    activation_checkpointing: bool = False


def _flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() in ("1", "true", "yes")


def sharding_from_environment() -> Sharding | None:
    """The FSDP settings `accelerate launch` set from the config file, or None without FSDP."""
    if not _flag("ACCELERATE_USE_FSDP", False):
        return None
    version = os.environ.get("FSDP_VERSION", "1")
    if version != "2":
        raise UsageError(f"fsdp_config.fsdp_version = {version}: expected 2 (safebench shards with FSDP2)")
    return Sharding(reshard_after_forward=_flag("FSDP_RESHARD_AFTER_FORWARD", True),
                    offload_params=_flag("FSDP_OFFLOAD_PARAMS", False),
                    activation_checkpointing=_flag("FSDP_ACTIVATION_CHECKPOINTING", False))


_SHARDING: Sharding | None = None


def make_accelerator(mixed_precision: str) -> Accelerator:
    """This process's Accelerator; FSDP, when the launch asked for it, is this module's (`shard`)."""
    global _SHARDING
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    sharding = sharding_from_environment()
    if sharding is not None:
        os.environ["ACCELERATE_USE_FSDP"] = "false"  # read above; accelerate must not wrap again
        _SHARDING = sharding
    AcceleratorState._reset_state()  # one process may train several stages with different settings
    return Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available())


def sharded(accelerator: Accelerator) -> bool:
    """Whether this stage's models are sharded: FSDP launched, in a process group (of any size: one
    GPU runs the engine's code path alone, benchmarks/gpu_check.sh)."""
    import torch.distributed as dist

    return _SHARDING is not None and dist.is_available() and dist.is_initialized()


def shard(accelerator: Accelerator, model: torch.nn.Module, compute_dtype: torch.dtype) -> torch.nn.Module:
    """Shard `model` over the processes (FSDP2): decoder layers, backbone, heads, root."""
    import torch
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    if _SHARDING.activation_checkpointing and any(p.requires_grad for p in model.parameters()):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.to(accelerator.device)
    options = {"mp_policy": MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32),
               "reshard_after_forward": _SHARDING.reshard_after_forward,
               "offload_policy": CPUOffloadPolicy() if _SHARDING.offload_params else OffloadPolicy()}
    inner = getattr(model, "module", model)
    layer_classes = set(getattr(inner, "_no_split_modules", None) or [])
    for module in inner.modules():
        if type(module).__name__ in layer_classes:
            fully_shard(module, **options)
    head = getattr(inner, "score", None)
    if isinstance(head, torch.nn.Module):
        # a score model: modeling.token_scores calls its backbone and head, never the root module
        # (a causal LM's root holds the embeddings, which its head may share)
        fully_shard(getattr(inner, inner.base_model_prefix), **options)
        fully_shard(head, **options)
    fully_shard(model, **options)
    # transformers' generate keeps sharded processes in step (synced_gpus) for modules it knows as FSDP's
    model._is_fsdp_managed_module = True
    return model


def place(accelerator: Accelerator, model: torch.nn.Module, compute_dtype: str) -> torch.nn.Module:
    """A model ready for this process: sharded under FSDP, else whole on the device (a trainer
    without FSDP keeps its processes' replicas equal by averaging gradients: `average_gradients`,
    or DDP through `accelerator.prepare`)."""
    from safebench import modeling

    if sharded(accelerator):
        return shard(accelerator, model, modeling.torch_dtype(compute_dtype))
    return model.to(accelerator.device)


def average_gradients(accelerator: Accelerator, model: torch.nn.Module) -> None:
    """Mean of the processes' gradients, for replicated (unsharded) models of several processes;
    FSDP reduces them itself. One all-reduce per parameter: the score models call their backbone
    and head directly, past a DDP wrapper's hooks."""
    if sharded(accelerator) or accelerator.num_processes == 1:
        return
    import torch.distributed as dist

    for param in model.parameters():
        if param.grad is not None:
            dist.all_reduce(param.grad)  # a sum: gloo has no average
            param.grad /= accelerator.num_processes


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DDP wrapper (an FSDP2 module is the model itself)."""
    return getattr(model, "module", model)


def full_state(accelerator: Accelerator, model: torch.nn.Module, optimizer=None) -> tuple[dict, dict | None]:
    """(model, optimizer) state dicts in full, on the main process (empty elsewhere). Every process
    must call it: under FSDP it gathers the shards."""
    if not sharded(accelerator):
        optimizer_state = optimizer.state_dict() if optimizer is not None else None
        return unwrap(model).state_dict(), optimizer_state
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    if optimizer is None:
        return get_model_state_dict(model, options=options), None
    return get_state_dict(model, optimizer, options=options)


def load_full_state(accelerator: Accelerator, model: torch.nn.Module, model_state: dict | None,
                    optimizer=None, optimizer_state: dict | None = None, strict: bool = True) -> None:
    """Load what `full_state` returned; under FSDP the main process's copy is broadcast to the shards
    (the others may pass None)."""
    if not sharded(accelerator):
        unwrap(model).load_state_dict(model_state, strict=strict)
        if optimizer is not None:
            optimizer.load_state_dict(optimizer_state)
        return
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=strict)
    main = accelerator.is_main_process
    # apart, not through set_state_dict: that one treats an empty model state (every process but
    # the main one) as "optimizer only", and the processes would wait in different collectives
    set_model_state_dict(model, model_state if main else {}, options=options)
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, optimizer_state if main else {}, options=options)


def save_pretrained(accelerator: Accelerator, model: torch.nn.Module, tokenizer, out_dir: Path,
                    dtype: str | None) -> None:
    """The model as an ordinary `from_pretrained` directory, written by the main process from the
    gathered weights; every process must call it."""
    from safebench import modeling

    state, _ = full_state(accelerator, model)
    if accelerator.is_main_process:
        if sharded(accelerator):
            model = plain_copy(model, state)
        modeling.save_checkpoint(unwrap(model), tokenizer, out_dir, dtype)
    accelerator.wait_for_everyone()


def plain_copy(model: torch.nn.Module, state: dict) -> torch.nn.Module:
    """An unsharded model of `model`'s class holding `state` (FSDP2 swaps a module's class for a
    subclass whose name would end up in the checkpoint's config)."""
    import torch
    from torch.distributed.fsdp import FSDPModule

    cls = next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))
    with torch.device("meta"):
        copy = cls(model.config)
    copy.load_state_dict(state, assign=True, strict=False)
    copy.tie_weights()
    return copy.eval()


def micro_batches(accelerator: Accelerator, batch: list, micro_batch_size: int) -> list[tuple[list, float]]:
    """This process's share of a global batch as (micro batch, weight) pairs, the weights summing to
    this process's share of the batch's mean loss times the number of processes (gradients are
    averaged over processes). Every process runs the same number of passes, as sharded and DDP
    processes must: one left without rows repeats the batch's first row with weight 0."""
    processes = accelerator.num_processes
    rows = batch[accelerator.process_index::processes]
    passes = max(1, -(-(-(-len(batch) // processes)) // micro_batch_size))
    chunks = [rows[i * micro_batch_size:(i + 1) * micro_batch_size] for i in range(passes)]
    return [(chunk, len(chunk) * processes / len(batch)) if chunk else (batch[:1], 0.0) for chunk in chunks]


def load_resume_state(accelerator: Accelerator, state_dir: Path, gathered: tuple[str, ...]) -> dict | None:
    """The resume state (resume_state.load) as each process needs it: under FSDP the main process
    reads the file and sends the others everything but the `gathered` parts (full model and
    optimizer states), which `load_full_state` broadcasts; otherwise every process reads it."""
    from safebench.trainers import resume_state

    if not sharded(accelerator):
        return resume_state.load(state_dir)
    from accelerate.utils import broadcast_object_list

    state = resume_state.load(state_dir) if accelerator.is_main_process else None
    small = [None if state is None else {k: v for k, v in state.items() if k not in gathered}]
    broadcast_object_list(small)
    if small[0] is None:
        return None
    return state if accelerator.is_main_process else {**small[0], **{key: None for key in gathered}}
