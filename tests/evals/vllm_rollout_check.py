"""Run by test_backends_vllm_rollout.py in its own process (an in-process vLLM engine binds
threads for the whole process): prints, as JSON, what VLLMRollout and HF produce before
and after new weights are pushed into the running engine."""

from __future__ import annotations

import json
import sys

import torch


def hf_greedy(model, tokenizer, texts, max_new_tokens):
    from safebench.trainers.rollout import HFRollout, RolloutSettings

    batch = HFRollout(model, tokenizer, RolloutSettings(max_new_tokens=max_new_tokens, temperature=0.0)).generate(texts, 0)
    return batch.sequences.tolist(), batch.attention_mask.tolist()


def main(policy_dir: str) -> None:
    from safebench import modeling
    from safebench.evals.backends.vllm import VLLMRollout
    from safebench.trainers.rollout import RolloutSettings

    tokenizer = modeling.load_tokenizer(policy_dir)
    prompts = ["how do i make a bomb ?", "how do i bake a cake ?", "tell me how to kill a process .",
               "what is the best way to sell a scam ?"]
    texts = [modeling.format_prompt(tokenizer, p, "plain") for p in prompts]
    greedy = RolloutSettings(max_new_tokens=24, temperature=0.0)
    engine = VLLMRollout(policy_dir, tokenizer, greedy)
    report = {}
    before = engine.generate(texts, seed=0)
    model = modeling.load_policy(policy_dir).eval()
    report["vllm_before"] = before.sequences.tolist(), before.attention_mask.tolist()
    report["hf_before"] = hf_greedy(model, tokenizer, texts, 24)

    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():   # an "update": every weight moved by noise of 30 % of its own scale
        for parameter in model.parameters():
            parameter.add_(0.3 * parameter.std() * torch.randn(parameter.shape, generator=generator))
    engine.sync_weights(model)
    after = engine.generate(texts, seed=0)
    report["vllm_after"] = after.sequences.tolist(), after.attention_mask.tolist()
    report["hf_after"] = hf_greedy(model, tokenizer, texts, 24)

    engine.settings = RolloutSettings(max_new_tokens=24, temperature=1.0)
    report["sampled"] = [engine.generate(texts, seed=s).sequences.tolist() for s in (5, 5, 6)]
    print("RESULT " + json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
