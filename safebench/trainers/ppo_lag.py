"""PPO-Lagrangian (Safe RLHF, Dai et al. 2023; docs/methods.md §4).

Constraint in expectation over prompts: E_x E_y C(x, y) ≤ d.
  advantage   A = (A^r − λ·A^c) / (1 + λ)
  multiplier  λ = exp(log λ); once step ≥ delay, with J_c the windowed cost (below):
              log λ ← log λ + lr_λ·λ·(J_c − d)   (SGD on −(J_c − d)·λ), log λ ≤ log λ_max
  window      each process keeps the last episode_cost_window_size / processes costs of its own
              rollouts; J_c is the mean over processes of each one's window mean (Safe RLHF
              `ppo_lag/trainer.py`: a deque per process, reduced with ReduceOp.AVG)
Everything else is the shared PPO core (safebench/trainers/ppo.py).
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING

from pydantic import Field

from safebench.errors import UsageError
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
    # rollouts in J_c, all processes: 128 per process x 8 GPUs (the window spans 8 iterations)
    episode_cost_window_size: int = Field(1024, ge=1)


class Lagrangian(SafetyMethod):
    def __init__(self, recipe: Recipe):
        super().__init__(recipe)
        self.log_lambda = math.log(recipe.lambda_init)
        self.window: deque[float] = deque(maxlen=recipe.episode_cost_window_size)  # this process's costs
        self.last_windowed_cost = 0.0

    @property
    def multiplier(self) -> float:
        return math.exp(self.log_lambda)

    def distribute(self, processes, mean_over_processes) -> None:
        super().distribute(processes, mean_over_processes)
        size = self.recipe.episode_cost_window_size
        if size % processes:
            raise UsageError(f"episode_cost_window_size = {size}: expected a multiple of the number of "
                             f"processes ({processes}); each process keeps an equal share")
        self.window = deque(self.window, maxlen=size // processes)

    def update_multiplier(self, costs: torch.Tensor, step: int) -> None:
        self.window.extend(costs.tolist())
        windowed_cost = self.mean_over_processes(sum(self.window) / len(self.window))  # J_c
        self.last_windowed_cost = windowed_cost
        if step < self.recipe.lambda_update_delay_steps:
            return
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
        self.window = deque(state["window"], maxlen=self.window.maxlen)

    def metrics(self) -> dict[str, float]:
        return {"lambda": self.multiplier, "windowed_cost": self.last_windowed_cost}


def train(ctx: TrainContext, recipe: Recipe) -> None:
    from safebench.trainers import ppo

    ppo.train_ppo(ctx, recipe, Lagrangian(recipe))
