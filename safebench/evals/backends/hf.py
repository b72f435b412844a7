"""HF transformers generation: batched, left padding, seeded per batch."""

from __future__ import annotations

import torch

from safebench import modeling
from safebench.evals.generation import GenerationConfig, Generated


class HFBackend:
    def __init__(self, model_dir: str, config: GenerationConfig, template: str):
        modeling.check_model_dir(model_dir)
        self.config = config
        self.template = template
        self.tokenizer = modeling.load_tokenizer(model_dir)
        self.tokenizer.padding_side = "left"
        self.model = modeling.load_policy(model_dir, config.dtype).eval()
        limit = getattr(self.model.config, "max_position_embeddings", None)
        self.context_limit = limit

    def generate(self, prompts: list[str], seed: int) -> list[Generated]:
        texts = [modeling.format_prompt(self.tokenizer, p, self.template) for p in prompts]
        encoded = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        longest = max(len(e) for e in encoded)
        if self.context_limit and longest + self.config.max_new_tokens > self.context_limit:
            from safebench.errors import UsageError

            raise UsageError(
                f"generation: prompt ({longest} tokens) + max_new_tokens ({self.config.max_new_tokens}) "
                f"exceeds the model's context of {self.context_limit} tokens"
            )
        ids, mask = modeling.pad_batch(encoded, self.tokenizer.pad_token_id, side="left")
        sampling = self.config.temperature > 0
        torch.manual_seed(seed)
        with torch.no_grad():
            out = self.model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=self.config.max_new_tokens,
                do_sample=sampling, temperature=self.config.temperature if sampling else None,
                top_p=self.config.top_p if sampling else None, top_k=0 if sampling else None,
                pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id,
            )
        results = []
        for row in out[:, ids.shape[1]:].tolist():
            tokens = []
            for token in row:
                if token == self.tokenizer.eos_token_id:
                    tokens.append(token)
                    break
                if token == self.tokenizer.pad_token_id:
                    break
                tokens.append(token)
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            results.append(Generated(response=text.strip(), n_tokens=len(tokens)))
        return results

    def close(self) -> None:
        self.model = None


def make_backend(model_dir: str, config: GenerationConfig, template: str) -> HFBackend:
    return HFBackend(model_dir, config, template)
