"""HF transformers generation: batched, left padding, seeded per batch."""

from __future__ import annotations

import torch

from safebench import modeling
from safebench.evals.backends import common
from safebench.evals.generation import GenerationConfig, Generated


class HFBackend:
    def __init__(self, model_dir: str, config: GenerationConfig, template: str):
        model_config = common.check_causal_lm(model_dir)
        self.config = config
        self.template = template
        self.tokenizer = modeling.load_tokenizer(model_dir)
        self.tokenizer.padding_side = "left"
        self.eos_ids = common.eos_token_ids(self.tokenizer, model_dir)
        self.model = modeling.load_policy(model_dir, config.dtype).eval()
        if torch.cuda.is_available():
            self.model.to("cuda")
        self.context_limit = common.context_limit(model_config)

    def generation_config(self):
        """Only GenerationConfig's settings: the checkpoint's generation_config.json (a
        repetition penalty, a default temperature) must not apply here and not in vLLM."""
        from transformers import GenerationConfig as HFGenerationConfig

        sampling = self.config.temperature > 0
        return HFGenerationConfig(
            max_new_tokens=self.config.max_new_tokens, do_sample=sampling,
            temperature=self.config.temperature if sampling else None,
            top_p=self.config.top_p if sampling else None, top_k=0 if sampling else None,
            pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.eos_ids,
        )

    def generate(self, prompts: list[str], seed: int) -> list[Generated]:
        texts = [modeling.format_prompt(self.tokenizer, p, self.template) for p in prompts]
        encoded = [modeling.encode_prompt(self.tokenizer, t) for t in texts]
        common.check_fits_context(max(len(e) for e in encoded), self.config.max_new_tokens, self.context_limit)
        ids, mask = modeling.pad_batch(encoded, self.tokenizer.pad_token_id, side="left")
        torch.manual_seed(seed)
        with torch.no_grad():
            out = self.model.generate(input_ids=ids.to(self.model.device), attention_mask=mask.to(self.model.device),
                                      generation_config=self.generation_config())
        results = []
        for row in out[:, ids.shape[1]:].cpu().tolist():
            tokens = common.answer_tokens(row, self.eos_ids, self.tokenizer.pad_token_id)
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            results.append(Generated(response=text.strip(), n_tokens=len(tokens)))
        return results

    def close(self) -> None:
        self.model = None


def make_backend(model_dir: str, config: GenerationConfig, template: str) -> HFBackend:
    return HFBackend(model_dir, config, template)
