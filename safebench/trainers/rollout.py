"""Rollout engines for the PPO core: sample one response per prompt from the current actor.

The interface every engine implements (HF here; vLLM in safebench/evals/backends/vllm.py):

    engine.generate(prompt_texts: list[str], seed: int) -> RolloutBatch
        prompt_texts are already formatted with the template; the engine tokenises them
        with modeling.encode_prompt (the tokenizer's BOS once, as the evaluation backends do).
    engine.sync_weights(model) -> None
        called after every actor update with the (unwrapped) actor, so the next rollout
        samples from the updated policy. The HF engine samples from the live module, so
        it has nothing to copy; an engine holding its own copy (vLLM) loads the weights.

A `RolloutBatch` (rollout_batch.py) is the layout the PPO core scores and trains on; every
engine builds it with `build_rollout_batch`, so all return exactly the same shape for the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from safebench.trainers.rollout_batch import RolloutBatch, build_rollout_batch


@dataclass(frozen=True)
class RolloutSettings:
    """How responses are sampled (Safe RLHF: temperature 1.0, top_p 1.0, one sample per prompt)."""

    max_new_tokens: int = 512
    temperature: float = 1.0
    top_p: float = 1.0
    dtype: str = "float32"          # engines holding their own copy load it in this dtype
    # prompts per generate call of the HF engine (memory only); None: all of a process's prompts in
    # one call. The samples come from the same distribution either way, but the random draws fall on
    # the rows differently, so another value gives other (equally likely) rollouts.
    batch_size: int | None = None


class RolloutEngine(Protocol):
    def generate(self, prompt_texts: list[str], seed: int) -> RolloutBatch: ...
    def sync_weights(self, model) -> None: ...


class HFRollout:
    """Sampling with transformers' `generate` on the live actor module (no weight copy)."""

    def __init__(self, model, tokenizer, settings: RolloutSettings):
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings

    def sync_weights(self, model) -> None:
        self.model = model  # the same module the optimizer updates: nothing to copy

    @torch.no_grad()
    def generate(self, prompt_texts: list[str], seed: int) -> RolloutBatch:
        from safebench import modeling

        tokenizer = self.tokenizer
        prompt_ids = [modeling.encode_prompt(tokenizer, t) for t in prompt_texts]
        device = next(self.model.parameters()).device
        sampling = self.settings.temperature > 0
        size = self.settings.batch_size or len(prompt_ids)
        torch.manual_seed(seed)
        was_training = self.model.training
        self.model.eval()
        responses = []
        for start in range(0, len(prompt_ids), size):
            ids, mask = modeling.pad_batch(prompt_ids[start:start + size], tokenizer.pad_token_id, side="left")
            out = self.model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device),
                max_new_tokens=self.settings.max_new_tokens, do_sample=sampling,
                temperature=self.settings.temperature if sampling else None,
                top_p=self.settings.top_p if sampling else None, top_k=0 if sampling else None,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            )
            responses += out[:, ids.shape[1]:].cpu().tolist()
        self.model.train(was_training)
        return build_rollout_batch(prompt_ids, responses, tokenizer.pad_token_id, tokenizer.eos_token_id)


def make_rollout(backend: str, *, model, tokenizer, settings: RolloutSettings, model_dir) -> RolloutEngine:
    """The engine a recipe's `rollout_backend` names; vLLM is imported only when asked for."""
    if backend == "hf":
        return HFRollout(model, tokenizer, settings)
    if backend == "vllm":
        from safebench.errors import UsageError

        try:
            from safebench.evals.backends.vllm import VLLMRollout
        except ImportError as exc:
            raise UsageError(f"rollout_backend 'vllm': the vLLM rollout engine is not available ({exc})") from None
        return VLLMRollout(model_dir=str(model_dir), tokenizer=tokenizer, settings=settings)
    from safebench.errors import UsageError

    raise UsageError(f"rollout_backend {backend!r}: expected 'hf' or 'vllm'")
