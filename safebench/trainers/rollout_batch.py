"""The layout of a rollout, shared by every rollout engine (trainers/rollout.py, and the vLLM one in
evals/backends/vllm.py): prompts left-padded to a common width, responses right after them,
right-padded. `build_rollout_batch` makes one from token lists, so every engine returns exactly
the same shape for the same tokens.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class RolloutBatch(NamedTuple):
    sequences: torch.Tensor        # [B, P + N] token ids: left-padded prompt, response, right padding
    attention_mask: torch.Tensor   # [B, P + N] 1 on prompt and response tokens (up to and including eos)
    prompt_width: int              # P: the response of every row starts at this column


def build_rollout_batch(prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int,
                        eos_id: int | None) -> RolloutBatch:
    """Lay out token lists; a response is cut after its first eos (the eos itself is kept)."""
    cut = []
    for response in response_ids:
        response = list(response)
        if eos_id is not None and eos_id in response:
            response = response[: response.index(eos_id) + 1]
        cut.append(response or ([eos_id] if eos_id is not None else [pad_id]))
    prompt_width = max(len(p) for p in prompt_ids)
    width = prompt_width + max(len(r) for r in cut)
    sequences = torch.full((len(cut), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(cut), width), dtype=torch.long)
    for row, (prompt, response) in enumerate(zip(prompt_ids, cut)):
        start = prompt_width - len(prompt)
        sequences[row, start:prompt_width] = torch.tensor(prompt, dtype=torch.long)
        sequences[row, prompt_width:prompt_width + len(response)] = torch.tensor(response, dtype=torch.long)
        mask[row, start:prompt_width + len(response)] = 1
    return RolloutBatch(sequences, mask, prompt_width)
