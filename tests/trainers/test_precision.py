"""bf16 runs train float32 master weights under bf16 autocast, as DeepSpeed bf16 (Safe RLHF) and
TRL bf16=True (SACPO) do: small updates (lr 1e-5) land in the weights instead of rounding away.

In pure bf16 a weight w moves only if the step exceeds half its spacing, |w|·2^-9: with Adam's
first steps of about lr = 1e-5 that is |w| < ~5e-3, a small share of a model's weights (and no
norm weight, which sits at 1).
"""

from __future__ import annotations

import pytest
import torch

from safebench.trainers import ppo, ppo_lag, score_model, sft
from safebench.trainers.base import TrainContext, WorldData
from tests.trainers import ppo_fixtures

STEP = dict(lr=1e-5, scheduler="constant", warmup_ratio=0.0)


def moved_share(model, before: dict[str, torch.Tensor]) -> float:
    """Share of the elements of trainable non-embedding parameters that differ from `before`
    (a critic's embedding rows of tokens absent from the batch get no gradient)."""
    moved = total = 0
    for name, param in model.named_parameters():
        if param.requires_grad and "embed" not in name:
            moved += (param.detach().float() != before[name].float()).sum().item()
            total += param.numel()
    return moved / total


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return ppo_fixtures.build_checkpoints(tmp_path_factory.mktemp("precision-models"))


def bf16_context(tmp_path, policy_dir, data: WorldData) -> TrainContext:
    return TrainContext(name="m", stage_key="k", out_dir=tmp_path / "out", work_dir=tmp_path / "work", seed=0,
                        data=data, template="plain", dtype="bfloat16", policy_dir=policy_dir, quiet=True)


def trained_in_memory(monkeypatch, module):
    """Run `module.train` and keep the model as the loop leaves it (before the checkpoint's cast)."""
    seen = {}
    real = module.train_supervised

    def recording(ctx, recipe, model, items, loss_fn):
        seen["before"] = snapshot(model)
        steps = real(ctx, recipe, model, items, loss_fn)
        seen["share"] = moved_share(model, seen["before"])
        seen["dtypes"] = {p.dtype for p in model.parameters() if p.requires_grad}
        return steps

    monkeypatch.setattr(module, "train_supervised", recording)
    return seen


def test_sft_in_bf16_moves_nearly_every_weight(tmp_path, checkpoints, monkeypatch):
    seen = trained_in_memory(monkeypatch, sft)
    data = ppo_fixtures.world_data(8)
    sft.train(bf16_context(tmp_path, checkpoints["policy"], data),
              sft.Recipe(trainer="sft", epochs=3, batch_size=8, micro_batch_size=8, max_length=48, **STEP))
    assert seen["share"] > 0.95, seen["share"]
    assert seen["dtypes"] == {torch.float32}
    # the checkpoint is written in the config's dtype
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(tmp_path / "out" / "model.safetensors").values()} == {torch.bfloat16}


def test_score_model_in_bf16_moves_nearly_every_weight(tmp_path, checkpoints, monkeypatch):
    seen = trained_in_memory(monkeypatch, score_model)
    data = WorldData(sft=[], preference=ppo_fixtures.world_data(8).preference, prompts=[])
    score_model.train(bf16_context(tmp_path, checkpoints["policy"], data),
                      score_model.Recipe(trainer="score_model", kind="cost", epochs=3, batch_size=8,
                                         micro_batch_size=8, max_length=48, **STEP))
    assert seen["share"] > 0.95, seen["share"]


def test_ppo_in_bf16_moves_nearly_every_weight_of_actor_and_critics(checkpoints):
    recipe = ppo_lag.Recipe(trainer="ppo_lag", **{**ppo_fixtures.TINY_RECIPE, "actor_lr": 1e-5, "critic_lr": 1e-5,
                                                  "actor_warmup_ratio": 0.0, "ptx_coeff": 0.0})
    trainer = ppo.PPOTrainer(recipe, ppo_lag.Lagrangian(recipe), policy_dir=checkpoints["policy"],
                             reward_model_dir=checkpoints["reward"], cost_model_dir=checkpoints["cost"],
                             template="plain", dtype="bfloat16", seed=0, total_iterations=3)
    models = {"actor": trainer.unwrapped_actor,
              "reward critic": trainer.accelerator.unwrap_model(trainer.reward_critic),
              "cost critic": trainer.accelerator.unwrap_model(trainer.cost_critic)}
    before = {name: snapshot(model) for name, model in models.items()}
    prompts = [p["prompt"] for p in ppo_fixtures.world_data(8).prompts]
    for iteration in range(3):
        metrics = trainer.step(prompts, seed=iteration)
    for name, model in models.items():
        assert moved_share(model, before[name]) > 0.95, (name, moved_share(model, before[name]))
        assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}, name
    # the frozen reference computes in bf16, and the logged diagnostics come with every step
    assert next(trainer.reference.parameters()).dtype == torch.bfloat16
    for key in ("approx_kl", "clip_fraction", "entropy", "kl", "reward_explained_variance", "cost_explained_variance"):
        assert torch.isfinite(torch.tensor(metrics[key])), key
    assert metrics["entropy"] > 0
