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
    pass


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
