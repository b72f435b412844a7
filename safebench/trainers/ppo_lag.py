"""PPO-Lagrangian (Safe RLHF, Dai et al. 2023; shared/design/algorithms.md §4).

Constraint in expectation over prompts: E_x E_y C(x, y) ≤ d.
  advantage   A = (A^r − λ·A^c) / (1 + λ)
  multiplier  λ = exp(log λ); once step ≥ delay, with J_c the mean cost of the last 128
              rollouts: log λ ← log λ + lr_λ·λ·(J_c − d)   (SGD on −(J_c − d)·λ), log λ ≤ log λ_max
Everything else is the shared PPO core (safebench/trainers/ppo.py).
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING

from pydantic import Field

from safebench.trainers.base import TrainContext
from safebench.trainers.ppo_base import PPORecipe, SafetyMethod

if TYPE_CHECKING:
    import torch


class Recipe(PPORecipe):
    threshold: float = 0.0                          # d (Safe RLHF --threshold 0)
    lambda_init: float = Field(1.0, gt=0)
    lambda_lr: float = Field(0.1, ge=0)
    lambda_max: float | None = Field(5.0, gt=0)     # None: unbounded
    lambda_update_delay_steps: int = Field(0, ge=0)
    episode_cost_window_size: int = Field(128, ge=1)


class Lagrangian(SafetyMethod):
    def __init__(self, recipe: Recipe):
        super().__init__(recipe)
        self.log_lambda = math.log(recipe.lambda_init)
        self.window: deque[float] = deque(maxlen=recipe.episode_cost_window_size)

    @property
    def multiplier(self) -> float:
        return math.exp(self.log_lambda)

    def update_multiplier(self, costs: torch.Tensor, step: int) -> None:
        self.window.extend(costs.tolist())
        if step < self.recipe.lambda_update_delay_steps:
            return
        windowed_cost = sum(self.window) / len(self.window)  # J_c
        self.log_lambda += self.recipe.lambda_lr * self.multiplier * (windowed_cost - self.recipe.threshold)
        if self.recipe.lambda_max is not None:
            self.log_lambda = min(self.log_lambda, math.log(self.recipe.lambda_max))

    def advantages(self, reward_advantages, cost_advantages, costs):
        lam = self.multiplier
        return (reward_advantages - lam * cost_advantages) / (1.0 + lam)

    def state_dict(self) -> dict:
        return {"log_lambda": self.log_lambda, "window": list(self.window)}

    def load_state_dict(self, state: dict) -> None:
        self.log_lambda = state["log_lambda"]
        self.window = deque(state["window"], maxlen=self.recipe.episode_cost_window_size)

    def metrics(self) -> dict[str, float]:
        window = sum(self.window) / len(self.window) if self.window else 0.0
        return {"lambda": self.multiplier, "windowed_cost": window}


def train(ctx: TrainContext, recipe: Recipe) -> None:
    from safebench.trainers import ppo

    ppo.train_ppo(ctx, recipe, Lagrangian(recipe))
