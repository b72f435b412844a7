"""Supervised fine-tuning: causal-LM loss on the response tokens only (prompt tokens masked).

Safe RLHF `scripts/sft-deepspeed.sh`: 3 epochs, 256 examples a step (4 per device x 8
accumulation x 8 GPUs), lr 2e-5, cosine, warmup 0.03, weight decay 0 (the defaults of
`SupervisedRecipe`, safebench/trainers/loop.py); bf16 as mixed precision (fp32 master weights,
see modeling.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from safebench import modeling
from safebench.trainers import engine
from safebench.trainers.base import TrainContext
from safebench.trainers.loop import SupervisedRecipe, clear_state, train_supervised

if TYPE_CHECKING:
    import torch


class Recipe(SupervisedRecipe):
    # The base model is already the SFT model: the stage keeps it as it is, untrained. Safe RLHF,
    # SACPO and RePO all start from PKU-Alignment/alpaca-7b-reproduced, Alpaca-7B fine-tuned by
    # Safe RLHF itself, and train it no further (the paper preset sets this; docs/fidelity.md).
    keep_base: bool = False
    KEY_NEUTRAL_DEFAULTS = ("keep_base",)


def launched(recipe: Recipe) -> bool:
    """A kept base model is copied, not trained: no processes to start for it."""
    return not recipe.keep_base


def response_only_loss(model, tokenizer, examples: list[tuple[list[int], int]]) -> tuple[torch.Tensor, dict]:
    """Mean next-token loss over response tokens; prompt and padding positions are ignored."""
    ids, mask = modeling.pad_batch([e[0] for e in examples], tokenizer.pad_token_id, side="right")
    labels = ids.clone()
    labels[mask == 0] = -100
    for row, (_, n_prompt) in enumerate(examples):
        labels[row, :n_prompt] = -100
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    return out.loss, {"loss": out.loss.item()}


def train(ctx: TrainContext, recipe: Recipe) -> None:
    if recipe.keep_base:
        keep_base(ctx)
        return
    tokenizer = modeling.load_tokenizer(ctx.policy_dir)
    model = modeling.load_policy(ctx.policy_dir, "float32")  # master weights; computes in ctx.dtype
    examples = [
        modeling.encode_pair(tokenizer, modeling.format_prompt(tokenizer, r["prompt"], ctx.template),
                             r["response"], recipe.max_length)
        for r in ctx.data.sft
    ]
    trained = train_supervised(ctx, recipe, model, examples, lambda m, chunk: response_only_loss(m, tokenizer, chunk))
    engine.save_pretrained(trained.accelerator, trained.model, tokenizer, ctx.out_dir, ctx.dtype)
    clear_state(ctx, trained.accelerator)


def keep_base(ctx: TrainContext) -> None:
    """The base checkpoint's files as the stage's model: hard links where the file system allows
    (a 7B model is not copied), a copy otherwise."""
    import os
    import shutil

    def link_or_copy(source: str, target: str) -> None:
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)

    shutil.copytree(ctx.policy_dir, ctx.out_dir, copy_function=link_or_copy, dirs_exist_ok=True)
