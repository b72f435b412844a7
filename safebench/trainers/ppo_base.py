"""What a PPO method configures and adds to the PPO core (safebench/trainers/ppo.py): its recipe's
fields and its `SafetyMethod`. Kept apart from the core, which imports torch, so that validating a
ppo-lag or repo recipe (any `safebench run`, before it knows the input is good) does not."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from safebench.trainers.base import RecipeBase

if TYPE_CHECKING:
    import torch


class PPORecipe(RecipeBase):
    """Defaults: Safe RLHF `scripts/ppo-lag.sh` (and the trainer's argument defaults)."""

    epochs: float = Field(1, gt=0)                    # passes over the RL prompts
    update_iters: int = Field(1, ge=1)                # PPO epochs over each rollout batch
    prompt_batch_size: int = Field(16, ge=1)          # per device: rollouts per iteration
    train_batch_size: int = Field(16, ge=1)           # per device micro batch of the update
    gradient_accumulation_steps: int = Field(1, ge=1)
    actor_lr: float = Field(1e-5, gt=0)
    actor_scheduler: str = "cosine"
    actor_warmup_ratio: float = Field(0.03, ge=0, lt=1)
    actor_weight_decay: float = Field(0.01, ge=0)
    critic_lr: float = Field(5e-6, gt=0)
    critic_scheduler: str = "constant"
    critic_warmup_ratio: float = Field(0.0, ge=0, lt=1)
    critic_weight_decay: float = Field(0.0, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.95)
    max_grad_norm: float = Field(1.0, gt=0)           # DeepSpeed config gradient_clipping
    kl_coeff: float = Field(0.01, ge=0)               # β_KL (0.01 after upstream commit 2c1799f)
    clip_range_ratio: float = Field(0.2, gt=0)
    clip_range_score: float = Field(50.0, gt=0)
    clip_range_value: float = Field(5.0, gt=0)
    gamma: float = Field(1.0, ge=0, le=1)
    gae_lambda: float = Field(0.95, ge=0, le=1)
    ptx_coeff: float = Field(16.0, ge=0)              # 0 turns the PTX step off
    max_new_tokens: int = Field(512, ge=1)            # the script's max_length 512 bounds the whole text
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    rollout_backend: Literal["hf", "vllm"] = "hf"
    mixed_precision: Literal["auto", "no", "bf16"] = "auto"   # auto: bf16 on a GPU that has it
    critic_init: Literal["score-models", "policy"] = "score-models"  # policy: when tokenizers differ
    lora_rank: int = Field(0, ge=0)                   # 0: full fine-tuning; > 0: LoRA on actor and critics
    lora_alpha: float = Field(16, gt=0)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    lora_target_modules: str | list[str] = "all-linear"
    checkpoint_every: int = Field(20, ge=1)           # iterations between resumable saves
    seed_offset: int = 0
    # Only these kinds of RL prompts (where the data gives kinds: the tiny world's harmful, benign,
    # over-refusal); None: every prompt. [harmful] makes the SFT policy violate E[C] <= 0 in the
    # tiny world, as Alpaca-7B does on the papers' prompts (reports/results/safety_compensation.md).
    rl_prompt_kinds: list[Literal["harmful", "benign", "over-refusal"]] | None = None


class SafetyMethod:
    """What a safe-RL method adds to PPO: how λ moves and how A^r, A^c combine into A."""

    def __init__(self, recipe: PPORecipe):
        self.recipe = recipe

    @property
    def multiplier(self) -> float:
        raise NotImplementedError

    def update_multiplier(self, costs: torch.Tensor, step: int) -> None:
        """costs: end costs of this iteration's rollouts on every process."""
        raise NotImplementedError

    def advantages(self, reward_advantages: torch.Tensor, cost_advantages: torch.Tensor,
                   costs: torch.Tensor) -> torch.Tensor:
        """Per-token advantages [B, N] from A^r, A^c [B, N] and end costs C [B]."""
        raise NotImplementedError

    def cost_signal(self, costs: torch.Tensor) -> torch.Tensor:
        """The end cost the cost stream (and so the cost critic) learns; the raw C unless a method says otherwise."""
        return costs

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def metrics(self) -> dict[str, float]:
        return {"lambda": self.multiplier}
