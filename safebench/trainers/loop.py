"""A resumable, deterministic mini-batch loop shared by the supervised trainers (SFT, score models).

Data order comes from a generator seeded by (seed, epoch), so a run resumed from a saved
step sees exactly the batches an uninterrupted run would have seen; model, optimizer,
scheduler and step are saved together (atomically) every `checkpoint_every` steps.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Sequence

from pydantic import Field

from safebench.files import atomic_directory, atomic_write_json
from safebench.trainers import engine, resume_state
from safebench.trainers.base import RecipeBase, TrainContext

if TYPE_CHECKING:
    import torch


class SupervisedRecipe(RecipeBase):
    """Fields of a supervised trainer, with Safe RLHF's defaults (`scripts/sft-deepspeed.sh`); the
    score models change a few (safebench/trainers/score_model.py)."""

    epochs: float = Field(3, gt=0)
    # examples per optimizer step, all devices together: 4 per device x 8 accumulation x 8 GPUs
    batch_size: int = Field(256, ge=1)
    micro_batch_size: int = Field(4, ge=1)     # examples per forward/backward pass; memory only
    lr: float = Field(2e-5, gt=0)
    scheduler: str = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.95)   # Safe RLHF's ADAM_BETAS, every trainer
    max_length: int = Field(512, ge=8)
    checkpoint_every: int = Field(50, ge=1)    # optimizer steps between resumable saves
    seed_offset: int = 0                       # lets two stages on one seed draw different orders


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters with and without weight decay: biases and the per-layer norms
    ("layernorm" in the name) go without, the final norm and the embeddings with, as Safe RLHF's
    `get_optimizer_grouped_parameters` splits them."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            lowered = name.lower()
            (no_decay if "bias" in lowered or "layernorm.weight" in lowered else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def adamw(groups: list[dict], lr: float, betas: tuple[float, float]) -> torch.optim.AdamW:
    """AdamW with its fused kernel where the build has one for the parameters' device (CPU and CUDA
    in current torch): one pass over all tensors instead of a loop of per-tensor ops, the same update
    up to floating-point rounding (tests/trainers/test_speed.py)."""
    import torch

    try:
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=True)
    except RuntimeError:  # no fused kernel for this device or dtype
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))


def batch_order(n_items: int, batch_size: int, epochs: float, seed: int) -> list[list[int]]:
    """All mini-batches of the run, fixed by the seed (fractional epochs cut the last one short)."""
    import torch

    batches: list[list[int]] = []
    steps_per_epoch = max(1, math.ceil(n_items / batch_size))
    total = max(1, round(steps_per_epoch * epochs))
    epoch = 0
    while len(batches) < total:
        generator = torch.Generator().manual_seed(seed * 1000 + epoch)
        order = torch.randperm(n_items, generator=generator).tolist()
        batches += [order[i:i + batch_size] for i in range(0, n_items, batch_size)]
        epoch += 1
    return batches[:total]


def train_supervised(
    ctx: TrainContext,
    recipe: SupervisedRecipe,
    model: torch.nn.Module,
    items: Sequence,
    loss_fn: Callable[[torch.nn.Module, list], tuple[torch.Tensor, dict]],
) -> TrainedModel:
    """Run the optimisation; `loss_fn(model, micro_batch_items)` returns (loss, metrics).
    Every process of a launched stage runs it on its share of each batch (engine.py); returns the
    trained model as placed for those processes (sharded under FSDP) and the optimizer step count.

    `model` holds float32 weights (the optimizer's master copy); `loss_fn` runs under autocast
    to `ctx.dtype`, so a bf16 run computes in bf16 while small updates still land in the weights
    (modeling.py: precision)."""
    import torch
    from transformers import get_scheduler

    from safebench import modeling

    torch.manual_seed(ctx.seed + recipe.seed_offset)
    batches = batch_order(len(items), recipe.batch_size, recipe.epochs, ctx.seed + recipe.seed_offset)
    accelerator = engine.make_accelerator("no")  # autocast below; under FSDP its policy casts too
    model = engine.place(accelerator, model, ctx.dtype)
    optimizer = adamw(decay_groups(model, recipe.weight_decay), recipe.lr, recipe.adam_betas)
    scheduler = get_scheduler(
        recipe.scheduler, optimizer, num_warmup_steps=math.ceil(recipe.warmup_ratio * len(batches)),
        num_training_steps=len(batches),
    )
    device_type = accelerator.device.type
    state_dir = ctx.work_dir / "state"
    start = _restore(accelerator, state_dir, model, optimizer, scheduler)
    model.train()
    main = accelerator.is_main_process
    bar = ctx.progress(len(batches), "train") if main else None
    if bar is not None:
        bar.update(start)
    for step in range(start, len(batches)):
        optimizer.zero_grad(set_to_none=True)
        batch = [items[i] for i in batches[step]]
        local: dict[str, float] = {}
        for chunk, weight in engine.micro_batches(accelerator, batch, recipe.micro_batch_size):
            with modeling.autocast(ctx.dtype, device_type):
                loss, metrics = loss_fn(model, chunk)
            (loss * weight).backward()
            for key, value in metrics.items():  # each process's share of the batch mean
                local[key] = local.get(key, 0.0) + float(value) * weight / accelerator.num_processes
        engine.average_gradients(accelerator, model)
        totals = _sum_over_processes(accelerator, local)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if main:
            ctx.log(step + 1, lr=scheduler.get_last_lr()[0], **totals)
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in list(totals.items())[:3]})
        if (step + 1) % recipe.checkpoint_every == 0 and step + 1 < len(batches):
            _save(accelerator, state_dir, step + 1, model, optimizer, scheduler)
    if bar is not None:
        bar.close()
    model.eval()
    return TrainedModel(accelerator, model, len(batches))


class TrainedModel(NamedTuple):
    """What `train_supervised` leaves: the (possibly sharded) model, its processes and the step count."""

    accelerator: Any
    model: Any
    steps: int


def _sum_over_processes(accelerator, values: dict[str, float]) -> dict[str, float]:
    if accelerator.num_processes == 1 or not values:
        return values
    import torch

    summed = accelerator.reduce(torch.tensor(list(values.values()), dtype=torch.float64,
                                             device=accelerator.device), reduction="sum")
    return dict(zip(values, summed.tolist()))


def _save(accelerator, state_dir: Path, step: int, model, optimizer, scheduler) -> None:
    model_state, optimizer_state = engine.full_state(accelerator, model, optimizer)
    if accelerator.is_main_process:
        with atomic_directory(state_dir) as tmp:
            resume_state.write_state(tmp, {"model": model_state, "optimizer": optimizer_state,
                                           "scheduler": scheduler.state_dict(), "step": step})
            atomic_write_json(tmp / "step.json", {"step": step})
    accelerator.wait_for_everyone()


def _restore(accelerator, state_dir: Path, model, optimizer, scheduler) -> int:
    state = engine.load_resume_state(accelerator, state_dir, ("model", "optimizer"))
    if state is None:
        return 0
    with resume_state.applying(state_dir):
        engine.load_full_state(accelerator, model, state["model"], optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        return int(state["step"])


def clear_state(ctx: TrainContext, accelerator) -> None:
    """Drop the resume state once the checkpoint is written (by the main process)."""
    if accelerator.is_main_process:
        shutil.rmtree(ctx.work_dir / "state", ignore_errors=True)
