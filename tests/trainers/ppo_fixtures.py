"""Tiny untrained checkpoints (policy, reward model, cost model) for PPO tests: seconds to build.

The score models are the policy's backbone with a small random head, so rewards and costs
vary across responses and every part of an iteration has something to do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from safebench.trainers.base import TrainContext, WorldData
from safebench.world import tiny

SIZES = dict(hidden_size=64, num_layers=1, num_heads=2, intermediate_size=128, max_position_embeddings=96)


def build_checkpoints(root: Path) -> dict[str, Path]:
    from safebench import modeling

    policy = tiny.make_tiny_policy_checkpoint(root / "policy", seed=0, **SIZES)
    paths = {"policy": policy}
    for i, role in enumerate(("reward", "cost")):
        model = modeling.load_score_model(policy)
        torch.manual_seed(10 + i)
        torch.nn.init.normal_(model.score.weight, std=0.5)
        model.save_pretrained(root / role, safe_serialization=True)
        modeling.load_tokenizer(policy).save_pretrained(root / role)
        paths[role] = root / role
    return paths


def world_data(n_prompts: int = 16) -> WorldData:
    data = tiny.build_datasets(seed=0, train_prompts=n_prompts, sft_per_prompt=1, pairs_per_prompt=1)
    return WorldData(sft=data["sft"], preference=data["preference"], prompts=data["prompts"])


@dataclass
class RecordingContext(TrainContext):
    """A TrainContext that keeps the curves in memory instead of a run database."""

    curves: list = field(default_factory=list)

    def log(self, step: int, **metrics: float) -> None:
        self.curves.append((step, metrics))


def make_context(paths: dict[str, Path], out: Path, name: str = "ppo-lag", n_prompts: int = 16) -> RecordingContext:
    return RecordingContext(name=name, stage_key="test", out_dir=out / "model", work_dir=out / "work", seed=0,
                            data=world_data(n_prompts), template="plain", dtype="float32",
                            policy_dir=paths["policy"], reward_model_dir=paths["reward"],
                            cost_model_dir=paths["cost"], quiet=True)


# Small enough for a CPU test, large enough for two iterations and one resumable save.
TINY_RECIPE = dict(epochs=1, prompt_batch_size=8, train_batch_size=8, micro_batch_size=4,
                   actor_lr=1e-3, critic_lr=1e-3, max_new_tokens=8, ptx_coeff=1.0, checkpoint_every=1)
