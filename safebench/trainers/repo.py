"""RePO, Rectified Policy Optimization (arXiv 2410.19933; docs/methods.md §5).

The constraint holds for every prompt, C(x, y) ≤ 0, and becomes one rectified penalty that
safe prompts cannot offset:  max_θ min_{λ≥0} E[R] − β·KL − λ·E[{C}^+],  {z}^+ = max(z, 0).
  penalty estimate      the cost stream ends in {C + δ}^+ (0 for a safe response), critic V^{c+},
                        A = (A^r − λ·A^{c+})/(1 + λ) for every response; or, as an option, safe/unsafe
                        batching: safe A = A^r, unsafe A = (A^r − λ·A^c)/(1 + λ) with the raw-cost critic
  multiplier            λ ← min(λ_max, λ + lr_λ·mean_i {C_i + δ}^+)   (never decreases)
Everything else is the shared PPO core (safebench/trainers/ppo.py), with the published
PPO-Lag defaults, so that the two differ only in the method.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from safebench.trainers.base import TrainContext
from safebench.trainers.ppo_base import PPORecipe, SafetyMethod

if TYPE_CHECKING:
    import torch


class Recipe(PPORecipe):
    # The paper fixes none of these; each is a choice made here (docs/methods.md §5):
    lambda_init: float = Field(1.0, ge=0)           # choice: PPO-Lag's λ_init
    lambda_lr: float = Field(0.1, ge=0)             # choice: PPO-Lag's lr_λ
    lambda_max: float | None = Field(5.0, gt=0)     # choice: PPO-Lag's λ_max; None: unbounded
    margin: float = 0.0                             # δ in {C + δ}^+; choice: 0 (the constraint C ≤ 0 as stated)
    lambda_update_delay_steps: int = Field(0, ge=0)  # choice: PPO-Lag's delay
    normalise_unsafe_advantage: bool = True         # choice: divide by 1 + λ as PPO-Lag does
    # How the penalty λ·E[{C + δ}^+] is estimated —
    #   batching (the paper's "safe/unsafe batching", the published default): safe A = A^r;
    #     unsafe A = (A^r − λ·A^c)/(1 + λ), A^c from a critic of the raw cost C
    #   rectified-critic (safebench's option): the cost stream ends in {C + δ}^+ (0 for every safe
    #     response) and every response gets (A^r − λ·A^{c+})/(1 + λ): the plain policy gradient of the
    #     rectified objective. reports/results/safety_compensation.md compares the two on every seed.
    penalty_estimator: Literal["batching", "rectified-critic"] = "batching"


class Rectified(SafetyMethod):
    def __init__(self, recipe: Recipe):
        super().__init__(recipe)
        self.lam = recipe.lambda_init

    @property
    def multiplier(self) -> float:
        return self.lam

    def update_multiplier(self, costs: torch.Tensor, step: int) -> None:
        if step < self.recipe.lambda_update_delay_steps:
            return
        # mean {C + δ}^+ over this iteration's rollouts: every process holds as many
        rectified = self.mean_over_processes((costs.float() + self.recipe.margin).clamp(min=0).mean().item())
        self.lam += self.recipe.lambda_lr * rectified
        if self.recipe.lambda_max is not None:
            self.lam = min(self.lam, self.recipe.lambda_max)

    def cost_signal(self, costs):
        if self.recipe.penalty_estimator == "rectified-critic":
            return (costs + self.recipe.margin).clamp(min=0)
        return costs

    def advantages(self, reward_advantages, cost_advantages, costs):
        import torch

        lam = self.lam
        penalised = reward_advantages - lam * cost_advantages
        if self.recipe.normalise_unsafe_advantage:
            penalised = penalised / (1.0 + lam)
        if self.recipe.penalty_estimator == "rectified-critic":
            return penalised
        unsafe = (costs > 0).unsqueeze(-1)
        return torch.where(unsafe, penalised, reward_advantages)

    def state_dict(self) -> dict:
        return {"lambda": self.lam}

    def load_state_dict(self, state: dict) -> None:
        self.lam = state["lambda"]


def train(ctx: TrainContext, recipe: Recipe) -> None:
    from safebench.trainers import ppo

    ppo.train_ppo(ctx, recipe, Rectified(recipe))
