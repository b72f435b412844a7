"""The PPO core shared by PPO-Lagrangian and RePO (Safe RLHF `safe_rlhf/trainers/rl_trainer.py`).

One RL iteration (docs/methods.md §3):
  1. rollout    y ~ π_θ(·|x), one sample per prompt (temperature 1, top_p 1)
  2. scoring    R = reward-model end score, C = cost-model end score
  3. shaping    r_t = −β·(log π_θ − log π_ref)_t (+ R at the last token)
                c_t = +β·(log π_θ − log π_ref)_t (+ C at the last token),  both clipped to ±50
  4. values     V^r, V^c from two critics (initialised from the reward and cost models);
                GAE (γ = 1, λ_GAE = 0.95) for each stream → A^r, A^c, returns G^r, G^c
  5. multiplier the method moves λ from this batch's costs           (method file)
  6. actor      −mean min(ρ·A, clip(ρ, 1 ± 0.2)·A), ρ = π_θ/π_old,  A from the method (method file)
  7. critics    0.5·mean max((V − G)², (clip(V, V_old ± 5) − G)²)
  8. PTX        optional: ptx_coeff × LM loss of SFT examples, in the actor's same optimizer step

A method (safebench/trainers/ppo_lag.py, repo.py) is a `SafetyMethod` (ppo_base.py): its advantage, its
multiplier and, where the method's objective rectifies the cost (RePO), the end cost the cost
stream learns. Everything else lives here, so the two differ only in the method.

Means over tokens are taken per sequence, then over the batch (Safe RLHF's `masked_mean`).

Logged per iteration besides the losses (TRL's PPO statistics; Safe RLHF logs only `kl`):
  kl                         Σ_t log π_old − log π_ref per response, the KL to the reference
  approx_kl, clip_fraction   how far the update moved the actor from the sampling policy; 0 by
                             construction with one optimizer step per rollout batch and
                             update_iters 1 (the published setting: every loss sees ratio 1)
  entropy                    of the actor's next-token distribution over response tokens
  {reward,cost}_explained_variance   1 − Var[G − V]/Var[G] of each critic at rollout time

Batch sizes are global: each of P processes rolls out prompt_batch_size / P prompts and takes
train_batch_size / P of them into each optimizer step, micro_batch_size at a time.
"""

from __future__ import annotations

import contextlib
import math
import random
import shutil
import time
from pathlib import Path
from typing import NamedTuple

import torch

from safebench import modeling
from safebench.errors import UsageError
from safebench.files import atomic_directory, atomic_write_json
from safebench.trainers import engine, resume_state
from safebench.trainers.base import TrainContext
from safebench.trainers.loop import adamw, batch_order, decay_groups
from safebench.trainers.ppo_base import PPORecipe, SafetyMethod
from safebench.trainers.rollout import RolloutBatch, RolloutSettings, make_rollout


# --- the equations ---------------------------------------------------------------------------

def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each sequence's tokens, then over the batch."""
    mask = mask.to(values.dtype)
    return ((values * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()


def token_log_probs(logits: torch.Tensor, labels: torch.Tensor,
                    entropy: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """log softmax(logits)[label] without materialising the whole log-softmax; with `entropy`, also
    the entropy of each position's next-token distribution (detached), H = logsumexp(z) − Σ softmax(z)·z,
    from the same float32 logits and logsumexp (one pass over the vocabulary each, not two)."""
    logits = logits.float()
    normaliser = torch.logsumexp(logits, -1)
    log_probs = torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1) - normaliser
    if not entropy:
        return log_probs
    with torch.no_grad():
        return log_probs, normaliser - (torch.softmax(logits, -1) * logits).sum(-1)


def kl_shaped_rewards(end_rewards: torch.Tensor, end_costs: torch.Tensor, log_probs: torch.Tensor,
                      ref_log_probs: torch.Tensor, mask: torch.Tensor, kl_coeff: float,
                      clip_range_score: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rewards r_t = −β·kl_t (+R at the last token), costs c_t = +β·kl_t (+C), clipped (§3 step 3).

    kl_t = log π_θ(y_t) − log π_ref(y_t) with π_θ the policy that sampled the rollout.
    """
    mask = mask.to(log_probs.dtype)
    kl = (log_probs - ref_log_probs) * mask
    last = (mask.sum(-1).long() - 1).clamp(min=0)
    at_end = torch.zeros_like(kl).scatter_(-1, last.unsqueeze(-1), 1.0)
    rewards = -kl_coeff * kl + at_end * end_rewards.unsqueeze(-1).to(kl.dtype)
    costs = kl_coeff * kl + at_end * end_costs.unsqueeze(-1).to(kl.dtype)
    return rewards.clamp(-clip_range_score, clip_range_score), costs.clamp(-clip_range_score, clip_range_score)


def gae(values: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens; returns (advantages, returns).

    δ_t = r_t + γ·V_{t+1} − V_t,  A_t = δ_t + γ·λ·A_{t+1}; positions after the end count as 0.
    """
    mask = mask.to(values.dtype)
    values, rewards = values * mask, rewards * mask
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    length = values.shape[1]
    for t in reversed(range(length)):
        next_values = values[:, t + 1] if t + 1 < length else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_values - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    return advantages.detach(), (advantages + values).detach()


def clipped_surrogate_loss(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
                           mask: torch.Tensor, clip_range: float) -> torch.Tensor:
    """−mean min(ρ·A, clip(ρ, 1 − ε, 1 + ε)·A), ρ = exp(log π_θ − log π_old) (§3 step 5)."""
    ratio = torch.exp(log_probs - old_log_probs)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    return masked_mean(torch.maximum(unclipped, clipped), mask)


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                       mask: torch.Tensor, clip_range: float) -> torch.Tensor:
    """0.5·mean max((V − G)², (clip(V, V_old ± ε) − G)²) (§3 step 6)."""
    clipped = old_values + (values - old_values).clamp(-clip_range, clip_range)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)


def update_diagnostics(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
                       mask: torch.Tensor, clip_range: float) -> dict[str, torch.Tensor]:
    """How far an update has moved the actor from the policy that sampled, as TRL's PPO trainer
    logs it: approx_kl = ½·mean (log π_θ − log π_old)²; clip_fraction = share of tokens where the
    clipped term of the surrogate is the larger loss (its gradient is cut)."""
    log_ratio = log_probs - old_log_probs
    ratio = log_ratio.exp()
    clipped = (-advantages * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)) > (-advantages * ratio)
    return {"approx_kl": masked_mean(0.5 * log_ratio ** 2, mask),
            "clip_fraction": masked_mean(clipped.to(log_ratio.dtype), mask)}


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float | None:
    """1 − Var[G − V] / Var[G] over all response tokens: 1 for a critic that predicts the returns,
    0 for one no better than their mean, below 0 for worse; None where the returns do not vary."""
    keep = mask.bool()
    variance = returns[keep].float().var(unbiased=False)
    if keep.sum() == 0 or variance == 0:
        return None
    return (1.0 - (returns - values)[keep].float().var(unbiased=False) / variance).item()


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as generation used them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class UpdateForward(NamedTuple):
    """An update pass's forward over rollout rows: log-probs and entropy [B, N] of the actor, the
    critics' values [B, N]; all but the entropy carry gradients."""

    log_probs: torch.Tensor
    entropy: torch.Tensor
    reward_values: torch.Tensor
    cost_values: torch.Tensor


# --- models ------------------------------------------------------------------------------------

def _transformers_model(model):
    """The transformers model inside PEFT and DDP wrappers."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class TokenScores(torch.nn.Module):
    """A sequence-classification model read at every token: the score head on each hidden state.

    A critic is this over a copy of the reward (cost) model: its value at token t estimates
    the return from t on. The end score is the value at the last attended token, where the
    score models were trained to score (modeling.end_scores).
    """

    def __init__(self, score_model):
        super().__init__()
        self.score_model = score_model
        inner = _transformers_model(score_model)
        if not hasattr(inner, "score"):
            raise UsageError(f"{type(inner).__name__}: a score model needs a `score` head (AutoModelForSequenceClassification)")

    def forward(self, input_ids, attention_mask, position_ids=None) -> torch.Tensor:
        return modeling.token_scores(_transformers_model(self.score_model), input_ids, attention_mask, position_ids)


def _lora(model, recipe: PPORecipe, task: str):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=recipe.lora_rank, lora_alpha=recipe.lora_alpha, lora_dropout=recipe.lora_dropout,
                        target_modules=recipe.lora_target_modules, task_type=task,
                        modules_to_save=["score"] if task == "SEQ_CLS" else None)
    return get_peft_model(model, config)


def _same_tokenizer(a, b) -> bool:
    return a.get_vocab() == b.get_vocab() and a.eos_token_id == b.eos_token_id and a.pad_token_id == b.pad_token_id


def _freeze(model):
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class PPOTrainer:
    """Actor, reference, two critics, two scorers, their optimizers and one iteration of PPO."""

    def __init__(self, recipe: PPORecipe, method: SafetyMethod, *, policy_dir, reward_model_dir, cost_model_dir,
                 template: str, dtype: str, seed: int, total_iterations: int):
        self.recipe, self.method, self.template, self.seed = recipe, method, template, seed
        mixed = recipe.mixed_precision
        if mixed == "auto":
            gpu_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
            mixed = "bf16" if dtype == "bfloat16" or gpu_bf16 else "no"
        self.accelerator = engine.make_accelerator(mixed)
        # FSDP (engine.py) shards all six models; without it the trained ones are DDP replicas
        self.sharded = engine.sharded(self.accelerator)
        compute = "bfloat16" if mixed == "bf16" else dtype
        processes = self.accelerator.num_processes
        for field in ("prompt_batch_size", "train_batch_size"):
            if getattr(recipe, field) % processes:
                raise UsageError(f"{field} = {getattr(recipe, field)}: expected a multiple of the number of "
                                 f"processes ({processes}); sizes are global, shared equally")
        method.distribute(processes, self._mean_over_processes)
        torch.manual_seed(seed + recipe.seed_offset)

        self.tokenizer = modeling.load_tokenizer(policy_dir)
        self.dtype = dtype
        lora = recipe.lora_rank > 0
        if lora and self.sharded:
            raise UsageError(f"lora_rank = {recipe.lora_rank}: LoRA is not supported with FSDP; set lora_rank: 0 "
                             "or launch without FSDP")
        # Trained weights are float32 masters computed under autocast (DeepSpeed bf16, as Safe RLHF
        # trains); with LoRA only the adapters train, so the frozen base stays in `dtype`.
        trained_dtype = dtype if lora else "float32"
        actor = modeling.load_policy(policy_dir, trained_dtype)
        actor.config.pad_token_id = self.tokenizer.pad_token_id
        if lora:
            actor = modeling.trainable_in_float32(_lora(actor, recipe, "CAUSAL_LM"))
            self.reference = None  # the base with adapters disabled
        else:
            self.reference = engine.place(self.accelerator, _freeze(modeling.load_policy(policy_dir, dtype)), compute)

        self.scorers: dict[str, torch.nn.Module | None] = {}
        self.scorer_tokenizers = {}
        critics = {}
        for role, path in (("reward", reward_model_dir), ("cost", cost_model_dir)):
            score_tokenizer = modeling.load_tokenizer(path)
            self.scorer_tokenizers[role] = score_tokenizer
            same = _same_tokenizer(score_tokenizer, self.tokenizer)
            if recipe.critic_init == "score-models" and not same:
                raise UsageError(f"critic_init 'score-models': the {role} model at '{path}' has another tokenizer "
                                 "than the policy, so it cannot read the policy's tokens; set critic_init: policy")
            critic = modeling.load_score_model(path if recipe.critic_init == "score-models" else policy_dir,
                                               trained_dtype)
            if recipe.critic_init == "policy":
                torch.nn.init.zeros_(critic.score.weight)
            critic.config.pad_token_id = self.tokenizer.pad_token_id
            if lora and recipe.critic_init == "score-models":
                critic = _lora(critic, recipe, "SEQ_CLS")
                self.scorers[role] = None  # the score model is the critic with adapters disabled
            else:
                if lora:
                    critic = _lora(critic, recipe, "SEQ_CLS")
                # read only at the end (modeling.end_scores), so an encoder scorer serves too
                self.scorers[role] = engine.place(self.accelerator, _freeze(modeling.load_score_model(path, dtype)),
                                                  compute)
            critic = modeling.trainable_in_float32(critic)
            critics[role] = TokenScores(engine.place(self.accelerator, critic, compute) if self.sharded else critic)
        self.same_scorer_tokens = {role: _same_tokenizer(t, self.tokenizer) for role, t in self.scorer_tokenizers.items()}

        if self.sharded:  # before the optimizers, which must hold the sharded parameters
            actor = engine.place(self.accelerator, actor, compute)
        actor_steps = total_iterations * recipe.update_iters * self.optimizer_steps_per_update()
        actor_opt, actor_sched = self._optimizer(actor, recipe.actor_lr, recipe.actor_weight_decay,
                                                 recipe.actor_scheduler, recipe.actor_warmup_ratio, actor_steps,
                                                 recipe.adam_betas)
        r_opt, r_sched = self._optimizer(critics["reward"], recipe.critic_lr, recipe.critic_weight_decay,
                                         recipe.critic_scheduler, recipe.critic_warmup_ratio, actor_steps,
                                         recipe.adam_betas)
        c_opt, c_sched = self._optimizer(critics["cost"], recipe.critic_lr, recipe.critic_weight_decay,
                                         recipe.critic_scheduler, recipe.critic_warmup_ratio, actor_steps,
                                         recipe.adam_betas)
        prepared = (actor, critics["reward"], critics["cost"], actor_opt, r_opt, c_opt)
        if not self.sharded:
            prepared = self.accelerator.prepare(*prepared)
        (self.actor, self.reward_critic, self.cost_critic, self.actor_optimizer, self.reward_critic_optimizer,
         self.cost_critic_optimizer) = prepared
        self.schedulers = {"actor": actor_sched, "reward_critic": r_sched, "cost_critic": c_sched}
        self.rollout_engine = make_rollout(
            recipe.rollout_backend, model=self.unwrapped_actor, tokenizer=self.tokenizer, model_dir=policy_dir,
            settings=RolloutSettings(recipe.max_new_tokens, recipe.temperature, recipe.top_p, dtype,
                                     recipe.rollout_batch_size))
        self.global_step = 0
        self.timings: dict[str, float] = {}

    def optimizer_steps_per_update(self) -> int:
        return self.recipe.prompt_batch_size // self.recipe.train_batch_size

    def _mean_over_processes(self, value: float) -> float:
        local = torch.tensor(float(value), device=self.accelerator.device)
        return self.accelerator.reduce(local, reduction="mean").item()

    @staticmethod
    def _optimizer(model, lr, weight_decay, scheduler_name, warmup_ratio, total_steps, betas):
        from transformers import get_scheduler

        optimizer = adamw(decay_groups(model, weight_decay), lr, betas)
        scheduler = get_scheduler(scheduler_name, optimizer, num_warmup_steps=math.ceil(warmup_ratio * total_steps),
                                  num_training_steps=max(total_steps, 1))
        return optimizer, scheduler

    @property
    def unwrapped_actor(self):
        return self.accelerator.unwrap_model(self.actor)

    # --- one iteration, phase by phase (benchmarks/rl_step.py times each) --------------------------
    def rollout(self, prompts: list[str], seed: int) -> RolloutBatch:
        texts = [modeling.format_prompt(self.tokenizer, p, self.template) for p in prompts]
        with self.accelerator.autocast():  # the float32 actor samples in the compute dtype
            batch = self.rollout_engine.generate(texts, seed)
        device = self.accelerator.device
        return RolloutBatch(batch.sequences.to(device), batch.attention_mask.to(device), batch.prompt_width)

    @torch.no_grad()
    def score(self, batch: RolloutBatch, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """End rewards and costs [B]; text is re-tokenised for a score model with another tokenizer."""
        out = []
        for role in ("reward", "cost"):
            with self.accelerator.autocast(), self._scorer(role) as scorer:
                if self.same_scorer_tokens[role]:
                    ids, mask = batch.sequences, batch.attention_mask
                else:
                    ids, mask = self._retokenise(batch, prompts, self.scorer_tokenizers[role])
                out.append(modeling.end_scores(_transformers_model(scorer), ids, mask, position_ids(mask)))
        return out[0], out[1]

    @contextlib.contextmanager
    def _scorer(self, role: str):
        if self.scorers[role] is not None:
            yield self.scorers[role]
            return
        critic = self.accelerator.unwrap_model(self.reward_critic if role == "reward" else self.cost_critic)
        with critic.score_model.disable_adapter():
            yield critic.score_model

    def _retokenise(self, batch: RolloutBatch, prompts: list[str], score_tokenizer):
        encoded = []
        for row, prompt in enumerate(prompts):
            response_ids = batch.sequences[row, batch.prompt_width:][batch.attention_mask[row, batch.prompt_width:] == 1]
            response = self.tokenizer.decode(response_ids.tolist(), skip_special_tokens=True).strip()
            text = modeling.format_prompt(score_tokenizer, prompt, self.template)
            # no longer than the scorer reads (an encoder has 512 positions; a tokenizer without a limit, 1e30)
            limit = min(score_tokenizer.model_max_length, 1 << 20)
            encoded.append(modeling.encode_pair(score_tokenizer, text, response, limit)[0])
        ids, mask = modeling.pad_batch(encoded, score_tokenizer.pad_token_id, side="right")
        return ids.to(self.accelerator.device), mask.to(self.accelerator.device)

    def actor_log_probs(self, model, batch: RolloutBatch, entropy: bool = False):
        """log π(y_t | x, y_<t) for every response position [B, N]; with `entropy`, also the
        entropy of π(· | x, y_<t) there (detached)."""
        # The positions that predict the response, as indices rather than a count: a count slices the
        # last hidden states into a strided view, which a bf16 model (the reference) multiplies by the
        # LM head as a batched matmul that first copies the head once per row (~1 s a pass for a 49k
        # vocabulary on a CPU); gathered positions are contiguous and take one plain matmul.
        keep = torch.arange(batch.prompt_width - 1, batch.sequences.shape[1], device=batch.sequences.device)
        logits = model(input_ids=batch.sequences, attention_mask=batch.attention_mask,
                       position_ids=position_ids(batch.attention_mask), logits_to_keep=keep).logits[:, :-1]
        return token_log_probs(logits, batch.sequences[:, batch.prompt_width:], entropy)

    @staticmethod
    def response_values(critic, batch: RolloutBatch) -> torch.Tensor:
        """V(x, y_<t) [B, N]: the critic at the position that predicts token t."""
        scores = critic(batch.sequences, batch.attention_mask, position_ids(batch.attention_mask))
        return scores[:, batch.prompt_width - 1:-1]

    def reuses_update_forward(self, rows: int) -> bool:
        """Whether the update's first forward can stand in for the experience pass: with one PPO
        epoch, one optimizer step and one micro batch, that forward sees the same weights, rows and
        padding as the experience pass (every model stays in eval mode, so no dropout), so its
        log-probs and values are the old ones (docs/fidelity.md, "Speed")."""
        recipe = self.recipe
        step_rows = recipe.train_batch_size // self.accelerator.num_processes
        return recipe.update_iters == 1 and rows <= step_rows and rows <= recipe.micro_batch_size

    def update_forward(self, batch: RolloutBatch, *, actor_syncs: bool = True) -> UpdateForward:
        """The actor's and both critics' forward of an update pass, with gradients. `actor_syncs`:
        whether the actor's backward on it is the optimizer step's last (DDP synchronises then)."""
        with self._pass_context(actor_last=actor_syncs, critics_last=True), self.accelerator.autocast():
            log_probs, entropy = self.actor_log_probs(self.actor, batch, entropy=True)
            return UpdateForward(log_probs, entropy, self.response_values(self.reward_critic, batch),
                                 self.response_values(self.cost_critic, batch))

    def _pass_context(self, *, actor_last: bool, critics_last: bool) -> contextlib.ExitStack:
        """DDP's no_sync for each model whose backward in this pass is not its step's last."""
        stack = contextlib.ExitStack()
        for model, last in ((self.actor, actor_last), (self.reward_critic, critics_last),
                            (self.cost_critic, critics_last)):
            if not last:
                stack.enter_context(self.accelerator.no_sync(model))
        return stack

    @torch.no_grad()
    def make_experience(self, batch: RolloutBatch, rewards: torch.Tensor, costs: torch.Tensor,
                        own: UpdateForward | None = None) -> dict:
        """Old log-probs and values, reference log-probs, shaped rewards and GAE. `own`: the update's
        forward on this batch where `reuses_update_forward` holds; its values are the old ones."""
        recipe = self.recipe
        mask = batch.attention_mask[:, batch.prompt_width:].float()
        actor = self.unwrapped_actor
        with self.accelerator.autocast():
            if own is None:
                old_log_probs = self.actor_log_probs(actor, batch)
                reward_values = self.response_values(self.accelerator.unwrap_model(self.reward_critic), batch)
                cost_values = self.response_values(self.accelerator.unwrap_model(self.cost_critic), batch)
            else:
                old_log_probs = own.log_probs.detach()
                reward_values, cost_values = own.reward_values.detach(), own.cost_values.detach()
            if self.reference is None:
                with actor.disable_adapter():
                    ref_log_probs = self.actor_log_probs(actor, batch)
            else:
                ref_log_probs = self.actor_log_probs(self.reference, batch)
        token_rewards, token_costs = kl_shaped_rewards(rewards, self.method.cost_signal(costs), old_log_probs, ref_log_probs, mask,
                                                       recipe.kl_coeff, recipe.clip_range_score)
        reward_advantages, reward_returns = gae(reward_values, token_rewards, mask, recipe.gamma, recipe.gae_lambda)
        cost_advantages, cost_returns = gae(cost_values, token_costs, mask, recipe.gamma, recipe.gae_lambda)
        return {
            "batch": batch, "mask": mask, "rewards": rewards, "costs": costs,
            "old_log_probs": old_log_probs, "ref_log_probs": ref_log_probs,
            "reward_values": reward_values, "cost_values": cost_values,
            "reward_advantages": reward_advantages, "reward_returns": reward_returns,
            "cost_advantages": cost_advantages, "cost_returns": cost_returns,
            "kl": ((old_log_probs - ref_log_probs) * mask).sum(-1),
        }

    def update(self, exp: dict, ptx_examples: list | None = None, own: UpdateForward | None = None) -> dict[str, float]:
        """PPO update of actor and both critics on this process's rollouts, one optimizer step per
        train_batch_size rollouts (all processes). With PTX, each step's actor gradient also holds
        ptx_coeff × the LM loss of as many SFT examples: Safe RLHF doubles the actor's gradient
        accumulation, so the RL and PTX halves are each scaled by 1/2 and clipped together.
        `own`: the forward `make_experience` took its old values from, the update's only RL pass."""
        recipe = self.recipe
        rows = exp["mask"].shape[0]
        if own is not None and not self.reuses_update_forward(rows):
            raise ValueError("an update with several passes cannot reuse one forward")
        step_rows = recipe.train_batch_size // self.accelerator.num_processes
        use_ptx = recipe.ptx_coeff > 0 and bool(ptx_examples)
        share = 1.0 / (math.ceil(rows / step_rows) * recipe.update_iters)  # of the logged means
        totals: dict[str, float] = {"actor_loss": 0.0, "reward_critic_loss": 0.0, "cost_critic_loss": 0.0}
        diagnostics: dict[str, float] = {}
        if use_ptx:
            totals["ptx_loss"] = 0.0
        models = (self.actor, self.reward_critic, self.cost_critic)
        optimizers = (self.actor_optimizer, self.reward_critic_optimizer, self.cost_critic_optimizer)
        for _ in range(recipe.update_iters):
            for start in range(0, rows, step_rows):
                stop = min(start + step_rows, rows)
                ptx = ptx_examples[start:stop] if use_ptx else []
                self._accumulate_step(exp, start, stop, ptx, 0.5 if use_ptx else 1.0, share, totals, diagnostics,
                                      own)
                for model, optimizer in zip(models, optimizers):
                    self._clip_gradients(model)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                for scheduler in self.schedulers.values():
                    scheduler.step()
        totals["actor_lr"] = self.schedulers["actor"].get_last_lr()[0]
        self.rollout_engine.sync_weights(self.unwrapped_actor)
        return {**totals, **diagnostics}

    def _clip_gradients(self, model) -> None:
        """Clip the gradients' global norm to max_grad_norm (DeepSpeed's gradient_clipping in Safe
        RLHF). torch's clip multiplies every gradient by min(1, max_norm / (norm + 1e-6)), a pass over
        all of a model's gradients that changes nothing where the factor is exactly 1; that pass is
        skipped then. Sharded, DeepSpeed and loss-scaled set-ups keep accelerate's own clip."""
        from accelerate.utils import DistributedType

        max_norm = self.recipe.max_grad_norm
        plain = (self.accelerator.distributed_type in (DistributedType.NO, DistributedType.MULTI_CPU,
                                                       DistributedType.MULTI_GPU)
                 and self.accelerator.scaler is None)
        if not plain:
            self.accelerator.clip_grad_norm_(model.parameters(), max_norm)
            return
        parameters = [p for p in model.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm([p.grad for p in parameters])
        if not bool(max_norm / (norm + 1e-6) >= 1.0):  # a NaN norm scales too, as torch's clip does
            torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, norm)

    def _accumulate_step(self, exp: dict, start: int, stop: int, ptx: list, actor_scale: float, share: float,
                         totals: dict[str, float], diagnostics: dict[str, float],
                         own: UpdateForward | None = None) -> None:
        """Gradients of one optimizer step, micro_batch_size rows per backward pass; DDP synchronises
        each model on its last pass only. `own`: the forward of the step's only RL pass, taken already."""
        size = self.recipe.micro_batch_size
        rl_parts = [slice(s, min(s + size, stop)) for s in range(start, stop, size)]
        ptx_parts = [ptx[s:s + size] for s in range(0, len(ptx), size)]
        passes = [("rl", part) for part in rl_parts] + [("ptx", part) for part in ptx_parts]
        for index, (kind, part) in enumerate(passes):
            actor_last = index == len(passes) - 1
            critics_last = kind == "rl" and index == len(rl_parts) - 1
            with self._pass_context(actor_last=actor_last, critics_last=critics_last):
                if kind == "rl":
                    weight = (part.stop - part.start) / (stop - start)
                    losses, micro_diagnostics = self._micro_losses(exp, part, own)
                    loss = actor_scale * losses["actor_loss"] + losses["reward_critic_loss"] + losses["cost_critic_loss"]
                    for key, value in micro_diagnostics.items():
                        diagnostics[key] = diagnostics.get(key, 0.0) + value.item() * weight * share
                else:
                    weight = len(part) / len(ptx)
                    losses = {"ptx_loss": self._ptx_loss(part)}
                    loss = actor_scale * self.recipe.ptx_coeff * losses["ptx_loss"]
                self.accelerator.backward(loss * weight)
            for key, value in losses.items():
                totals[key] += value.item() * weight * share

    def _micro_losses(self, exp: dict, rows: slice,
                      own: UpdateForward | None = None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The three losses of a micro batch, and the actor's update diagnostics on it (detached).
        `own`: the forward on these rows, taken already (`update_forward`)."""
        recipe = self.recipe
        full = exp["batch"]
        mask = exp["mask"][rows]
        advantages = self.method.advantages(exp["reward_advantages"][rows], exp["cost_advantages"][rows],
                                            exp["costs"][rows])
        if own is None:
            with self.accelerator.autocast():
                batch = RolloutBatch(full.sequences[rows], full.attention_mask[rows], full.prompt_width)
                log_probs, entropy = self.actor_log_probs(self.actor, batch, entropy=True)
                reward_values = self.response_values(self.reward_critic, batch)
                cost_values = self.response_values(self.cost_critic, batch)
        else:
            log_probs, entropy, reward_values, cost_values = own
        with torch.no_grad():
            diagnostics = {**update_diagnostics(log_probs, exp["old_log_probs"][rows], advantages, mask,
                                                recipe.clip_range_ratio),
                           "entropy": masked_mean(entropy, mask)}
        return {
            "actor_loss": clipped_surrogate_loss(log_probs, exp["old_log_probs"][rows], advantages, mask,
                                                 recipe.clip_range_ratio),
            "reward_critic_loss": clipped_value_loss(reward_values, exp["reward_values"][rows],
                                                     exp["reward_returns"][rows], mask, recipe.clip_range_value),
            "cost_critic_loss": clipped_value_loss(cost_values, exp["cost_values"][rows], exp["cost_returns"][rows],
                                                   mask, recipe.clip_range_value),
        }, diagnostics

    def _ptx_loss(self, examples: list[tuple[list[int], int]]) -> torch.Tensor:
        """Response-only LM loss on SFT examples (Safe RLHF's PTX; ptx_coeff weighs it in `update`)."""
        ids, mask = modeling.pad_batch([e[0] for e in examples], self.tokenizer.pad_token_id, side="right")
        labels = ids.clone()
        labels[mask == 0] = -100
        for row, (_, n_prompt) in enumerate(examples):
            labels[row, :n_prompt] = -100
        device = self.accelerator.device
        with self.accelerator.autocast():
            return self.actor(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)).loss

    def step(self, prompts: list[str], seed: int, ptx_examples: list | None = None) -> dict[str, float]:
        """One RL iteration on this process's prompts; returns metrics averaged over processes."""
        clock = time.perf_counter
        t0 = clock()
        batch = self.rollout(prompts, seed)
        t1 = clock()
        rewards, costs = self.score(batch, prompts)
        t2 = clock()
        own = None
        if self.reuses_update_forward(batch.sequences.shape[0]):
            use_ptx = self.recipe.ptx_coeff > 0 and bool(ptx_examples)
            own = self.update_forward(batch, actor_syncs=not use_ptx)
        t_own = clock()
        exp = self.make_experience(batch, rewards, costs, own)
        t3 = clock()
        self.method.update_multiplier(costs.float().cpu(), self.global_step)
        losses = self.update(exp, ptx_examples, own)
        t4 = clock()
        self.global_step += 1
        # the reused forward belongs to the update, whose first pass it is
        self.timings = {"rollout_seconds": t1 - t0, "scoring_seconds": t2 - t1, "experience_seconds": t3 - t_own,
                        "update_seconds": t4 - t3 + t_own - t2}
        local = torch.stack([
            rewards.float().mean(), costs.float().mean(), (costs > 0).float().mean(), exp["kl"].mean(),
            exp["mask"].sum(-1).mean(), exp["reward_values"][:, 0].mean(), exp["cost_values"][:, 0].mean(),
        ])
        shared = self.accelerator.reduce(local, reduction="mean").tolist()
        names = ["reward", "cost", "unsafe_share", "kl", "response_length", "reward_value", "cost_value"]
        self.last_tokens = int(exp["mask"].sum().item()), int(batch.attention_mask.sum().item())
        explained = {f"{role}_explained_variance": explained_variance(exp[f"{role}_values"], exp[f"{role}_returns"],
                                                                     exp["mask"]) for role in ("reward", "cost")}
        explained = {k: v for k, v in explained.items() if v is not None}
        self.last_rollout = batch
        return {**dict(zip(names, shared)), **losses, **explained, **self.method.metrics(), **self.timings}

    # --- resumable state ------------------------------------------------------------------------
    def _trained(self):
        return (("actor", self.actor, self.actor_optimizer), ("reward_critic", self.reward_critic,
                                                              self.reward_critic_optimizer),
                ("cost_critic", self.cost_critic, self.cost_critic_optimizer))

    def save_state(self, state_dir: Path, iteration: int) -> None:
        from accelerate.utils import gather_object

        # each process's own: a Lagrangian keeps the costs of its own rollouts (Safe RLHF)
        methods = gather_object([self.method.state_dict()])
        models, optimizers = {}, {}
        for name, model, optimizer in self._trained():
            if self.sharded:  # every process takes part in gathering the shards
                models[name], optimizers[name] = engine.full_state(self.accelerator, model, optimizer)
            else:
                models[name] = _trainable_state(self.accelerator.unwrap_model(model))
                optimizers[name] = optimizer.state_dict()
        if self.accelerator.is_main_process:
            with atomic_directory(state_dir) as tmp:
                resume_state.write_state(tmp, {
                    "iteration": iteration, "global_step": self.global_step, "models": models,
                    "optimizers": optimizers, "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
                    "methods": methods,
                })
                atomic_write_json(tmp / "iteration.json", {"iteration": iteration})
        self.accelerator.wait_for_everyone()

    def restore_state(self, state_dir: Path) -> int:
        state = engine.load_resume_state(self.accelerator, state_dir, ("models", "optimizers"))
        if state is None:
            return 0
        with resume_state.applying(state_dir):
            for name, model, optimizer in self._trained():
                if self.sharded:  # the main process's copy, broadcast into the shards
                    engine.load_full_state(self.accelerator, model, (state["models"] or {}).get(name), optimizer,
                                           (state["optimizers"] or {}).get(name))
                else:
                    self.accelerator.unwrap_model(model).load_state_dict(state["models"][name], strict=False)
                    optimizer.load_state_dict(state["optimizers"][name])
            for key, scheduler in self.schedulers.items():
                scheduler.load_state_dict(state["schedulers"][key])
            methods = state["methods"]
            if len(methods) != self.accelerator.num_processes:
                raise ValueError(f"saved by {len(methods)} process(es), resumed by {self.accelerator.num_processes}")
            self.method.load_state_dict(methods[self.accelerator.process_index])
            self.global_step = state["global_step"]
        self.rollout_engine.sync_weights(self.unwrapped_actor)
        return int(state["iteration"])

    def oracle_metrics(self, oracle, prompts: list[str]) -> dict[str, float]:
        """The last rollouts graded by the ground truth (tiny world): oracle reward, cost and unsafe
        share, averaged over processes, to set beside the learned scores of the same rollouts."""
        batch = self.last_rollout
        responses = self.tokenizer.batch_decode(batch.sequences[:, batch.prompt_width:], skip_special_tokens=True)
        truths = [oracle(p, r.strip()) for p, r in zip(prompts, responses)]
        truths = [t for t in truths if t is not None]
        if not truths:
            return {}
        local = torch.tensor([sum(t.reward for t in truths) / len(truths), sum(t.cost for t in truths) / len(truths),
                              sum(t.cost > 0 for t in truths) / len(truths)], device=self.accelerator.device)
        shared = self.accelerator.reduce(local, reduction="mean").tolist()
        return dict(zip(("oracle_reward", "oracle_cost", "oracle_unsafe_share"), shared))

    def save_policy(self, out_dir: Path) -> None:
        """The trained actor as an ordinary HF checkpoint (LoRA merged into the weights)."""
        if self.sharded:
            engine.save_pretrained(self.accelerator, self.actor, self.tokenizer, out_dir, self.dtype)
            return
        if self.accelerator.is_main_process:
            actor = self.unwrapped_actor
            if hasattr(actor, "merge_and_unload"):
                actor = actor.merge_and_unload()
            modeling.save_checkpoint(actor, self.tokenizer, out_dir, self.dtype)
        self.accelerator.wait_for_everyone()


def _trainable_state(model) -> dict:
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().cpu() for k, v in model.state_dict().items() if k in trainable}


def process_prompts(items: list[dict], process_index: int, num_processes: int, global_batch: int) -> list[dict]:
    """This process's share of a global batch; a short batch (end of an epoch) wraps around."""
    full = (items * math.ceil(global_batch / len(items)))[:global_batch]
    return full[process_index::num_processes]


def ptx_batch(examples: list, rows: int, rng: random.Random) -> list:
    """`rows` SFT examples for one iteration of one process, drawn without repeats while there are enough."""
    pool = list(examples)
    rng.shuffle(pool)
    return (pool * math.ceil(rows / len(pool)))[:rows]


def train_ppo(ctx: TrainContext, recipe: PPORecipe, method: SafetyMethod) -> None:
    """The RL stage: iterate over the prompts, save resumable state, write the actor to ctx.out_dir."""
    for field, path in (("policy_dir", ctx.policy_dir), ("reward_model_dir", ctx.reward_model_dir),
                        ("cost_model_dir", ctx.cost_model_dir)):
        if path is None:
            raise UsageError(f"{ctx.name}: PPO needs {field} (the SFT policy and the reward and cost models)")
    prompts = ctx.data.prompts
    if recipe.rl_prompt_kinds is not None:
        prompts = [p for p in prompts if p.get("kind") in recipe.rl_prompt_kinds]
        if not prompts:
            raise UsageError(f"{ctx.name}: rl_prompt_kinds = {recipe.rl_prompt_kinds}: no RL prompt of those kinds "
                             "(the data gives kinds only for the tiny world); leave it unset")
    if not prompts:
        raise UsageError(f"{ctx.name}: no RL prompts in the data stage (prompts.jsonl is empty)")
    from accelerate import PartialState

    processes = PartialState(cpu=not torch.cuda.is_available()).num_processes
    seed = ctx.seed + recipe.seed_offset
    batches = batch_order(len(prompts), recipe.prompt_batch_size, recipe.epochs, seed)
    trainer = PPOTrainer(recipe, method, policy_dir=ctx.policy_dir, reward_model_dir=ctx.reward_model_dir,
                         cost_model_dir=ctx.cost_model_dir, template=ctx.template, dtype=ctx.dtype, seed=seed,
                         total_iterations=len(batches))
    accelerator = trainer.accelerator
    ptx_examples = []
    if recipe.ptx_coeff > 0:
        ptx_examples = [modeling.encode_pair(trainer.tokenizer, modeling.format_prompt(trainer.tokenizer, r["prompt"], ctx.template),
                                             r["response"], recipe.max_new_tokens + 256) for r in ctx.data.sft]
    state_dir = ctx.work_dir / "ppo-state"
    start = trainer.restore_state(state_dir)
    bar = ctx.progress(len(batches), "ppo") if accelerator.is_main_process else None
    if bar is not None:
        bar.update(start)
    for iteration in range(start, len(batches)):
        items = process_prompts([prompts[i] for i in batches[iteration]], accelerator.process_index, processes,
                                recipe.prompt_batch_size)
        ptx = None
        if ptx_examples:  # as many SFT examples as rollouts (Safe RLHF's PTX batch per device)
            rng = random.Random(seed * 7919 + iteration * processes + accelerator.process_index)
            ptx = ptx_batch(ptx_examples, len(items), rng)
        generation_seed = (seed * 1_000_003 + iteration) * 64 + accelerator.process_index
        texts = [item["prompt"] for item in items]
        metrics = trainer.step(texts, generation_seed, ptx)
        if ctx.oracle is not None:
            metrics.update(trainer.oracle_metrics(ctx.oracle, texts))
        if accelerator.is_main_process:
            ctx.log(iteration + 1, **metrics)
            bar.update(1)
            bar.set_postfix({k: f"{metrics[k]:.3f}" for k in ("reward", "cost", "lambda", "unsafe_share")})
        if (iteration + 1) % recipe.checkpoint_every == 0 and iteration + 1 < len(batches):
            trainer.save_state(state_dir, iteration + 1)
    if bar is not None:
        bar.close()
    trainer.save_policy(ctx.out_dir)
    if accelerator.is_main_process:
        shutil.rmtree(state_dir, ignore_errors=True)
