"""Reward and cost end scores for (prompt, response) pairs, read where training and RL read
them (modeling.end_scores: the last attended token).

The text is always re-tokenised with the score model's own tokenizer and template, so a
score model whose tokenizer differs from the policy's scores what the policy wrote.
"""

from __future__ import annotations

import torch

from safebench import modeling


class Scorer:
    def __init__(self, model_dir, template: str, dtype: str = "float32", max_length: int = 512):
        self.tokenizer = modeling.load_tokenizer(model_dir)
        self.model = modeling.load_score_model(model_dir, dtype).eval()
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.template = template
        self.max_length = max_length

    @torch.no_grad()
    def score(self, prompts: list[str], responses: list[str], batch_size: int = 64) -> list[float]:
        scores: list[float] = []
        for start in range(0, len(prompts), batch_size):
            encoded = [
                modeling.encode_pair(self.tokenizer, modeling.format_prompt(self.tokenizer, p, self.template),
                                     r, self.max_length)[0]
                for p, r in zip(prompts[start:start + batch_size], responses[start:start + batch_size])
            ]
            ids, mask = modeling.pad_batch(encoded, self.tokenizer.pad_token_id, side="right")
            scores += modeling.end_scores(self.model, ids, mask).tolist()
        return scores
