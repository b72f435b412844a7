"""What a PPO method configures and adds to the PPO core (safebench/trainers/ppo.py): its recipe's
fields and its `SafetyMethod`. Kept apart from the core, which imports torch, so that validating a
ppo-lag or repo recipe (any `safebench run`, before it knows the input is good) does not."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Literal

from pydantic import Field, model_validator

from safebench.trainers.base import RecipeBase

if TYPE_CHECKING:
    import torch


class PPORecipe(RecipeBase):
    """Defaults: Safe RLHF `scripts/ppo-lag.sh` (and the trainer's argument defaults), run on 8 GPUs.

    Sizes are global (all processes together), so a run on any number of devices takes the
    published steps: the script's per-device sizes times its 8 devices (docs/fidelity.md).
    """

    epochs: float = Field(1, gt=0)                    # passes over the RL prompts
    update_iters: int = Field(1, ge=1)                # PPO epochs over each rollout batch
    # rollouts per iteration, all processes: 16 per device x 8 GPUs; λ moves once per iteration
    prompt_batch_size: int = Field(128, ge=1)
    # rollouts per optimizer step, all processes: 16 per device x 8 GPUs x accumulation 1
    train_batch_size: int = Field(128, ge=1)
    # rollouts in one forward/backward pass on one process; memory only, the step is the same
    micro_batch_size: int = Field(16, ge=1)
    actor_lr: float = Field(1e-5, gt=0)
    actor_scheduler: str = "cosine"
    actor_warmup_ratio: float = Field(0.03, ge=0, lt=1)
    actor_weight_decay: float = Field(0.01, ge=0)
    critic_lr: float = Field(5e-6, gt=0)
    critic_scheduler: str = "constant"
    critic_warmup_ratio: float = Field(0.03, ge=0, lt=1)     # no effect on a constant schedule
    critic_weight_decay: float = Field(0.0, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.95)
    max_grad_norm: float = Field(1.0, gt=0)           # DeepSpeed config gradient_clipping
    kl_coeff: float = Field(0.01, ge=0)               # β_KL (0.01 after upstream commit 2c1799f)
    clip_range_ratio: float = Field(0.2, gt=0)
    clip_range_score: float = Field(50.0, gt=0)
    clip_range_value: float = Field(5.0, gt=0)
    gamma: float = Field(1.0, ge=0, le=1)
    gae_lambda: float = Field(0.95, ge=0, le=1)
    ptx_coeff: float = Field(16.0, ge=0)              # 0 turns PTX off; else it shares the actor's step
    max_new_tokens: int = Field(512, ge=1)            # the script's max_length 512 bounds the whole text
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    rollout_backend: Literal["hf", "vllm"] = "hf"
    # prompts per generate call on one process, independent of micro_batch_size (the hf backend;
    # vLLM schedules its own batches); None: all of the process's prompts at once, which is Safe
    # RLHF's one call per micro batch with the published sizes (16 prompts and 16 per micro batch
    # a device). Another value samples other, equally likely, rollouts (docs/fidelity.md)
    rollout_batch_size: int | None = Field(None, ge=1)
    # autocast of the float32-weighted actor and critics; auto: bf16 when policy.dtype is bfloat16
    # or on a GPU that has it; no: float32 compute
    mixed_precision: Literal["auto", "no", "bf16"] = "auto"
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

    @model_validator(mode="after")
    def _whole_steps(self):
        if self.prompt_batch_size % self.train_batch_size:
            raise ValueError(f"train_batch_size ({self.train_batch_size}) must divide prompt_batch_size "
                             f"({self.prompt_batch_size}): every optimizer step takes the same number of rollouts")
        return self


def _same_value(value: float) -> float:
    return value


class SafetyMethod:
    """What a safe-RL method adds to PPO: how λ moves and how A^r, A^c combine into A."""

    def __init__(self, recipe: PPORecipe):
        self.recipe = recipe
        self.processes = 1
        self.mean_over_processes: Callable[[float], float] = _same_value

    def distribute(self, processes: int, mean_over_processes: Callable[[float], float]) -> None:
        """Train on `processes` processes; `mean_over_processes(x)` is the mean of x over all of them
        (a collective: every process calls it at the same point)."""
        self.processes, self.mean_over_processes = processes, mean_over_processes

    @property
    def multiplier(self) -> float:
        raise NotImplementedError

    def update_multiplier(self, costs: torch.Tensor, step: int) -> None:
        """costs: end costs of this iteration's rollouts on this process (every process calls it)."""
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
