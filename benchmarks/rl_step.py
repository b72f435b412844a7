"""Time one RL iteration of the shared PPO core, phase by phase, and the update phase's MFU.

    python benchmarks/rl_step.py [--models smol,tiny] [--iterations 2] [--out benchmarks/results/rl_step.json]

Models are built locally with random weights (no download): `smol` has SmolLM2-135M's
shape (hidden 576, 30 layers, 9 heads, 3 kv heads, intermediate 1536, vocab 49152), `tiny`
the tiny world's preset shape. Reward and cost models share the policy's backbone shape.

Phases: rollout (generation), scoring (reward + cost end scores), reference+values (the
reference reads the rollout; the actor and both critics too where the update is several passes,
else the update's own forward gives their old values: docs/fidelity.md "Speed"), update (PPO on
actor and both critics, its first forward included).
MFU of the update phase = its model FLOPs per second / the bf16 matmul rate measured here
(benchmarks/mfu.py: the best of several runs, before and after the workload).
Model FLOPs of the update: forward + backward = 3 × forward, with forward = 2 × (matmul
parameters) per token plus attention (4 × layers × context × hidden per token); the LM head
runs on response positions only (logits_to_keep).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from mfu import describe, matmul_flops  # benchmarks/mfu.py (the script's folder is on sys.path)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHAPES = {
    "smol": dict(hidden_size=576, num_layers=30, num_heads=9, num_kv_heads=3, intermediate_size=1536, vocab=49152,
                 batch=8, new_tokens=64),
    "tiny": dict(hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=4, intermediate_size=256, vocab=None,
                 batch=64, new_tokens=32),
}


def build_models(name: str, folder: Path, dtype: str, tokenizer=None) -> dict:
    """Random-weight policy, reward and cost checkpoints of a shape, with `tokenizer` (default: the
    tiny world's; one without a pad token pads with eos, as modeling.load_tokenizer does)."""
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    from safebench.world import tiny

    shape = SHAPES[name]
    tokenizer = tokenizer or tiny.build_tokenizer()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = LlamaConfig(
        vocab_size=shape["vocab"] or len(tokenizer), hidden_size=shape["hidden_size"],
        intermediate_size=shape["intermediate_size"], num_hidden_layers=shape["num_layers"],
        num_attention_heads=shape["num_heads"], num_key_value_heads=shape["num_kv_heads"],
        max_position_embeddings=2048, tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, num_labels=1,
    )
    torch.manual_seed(0)
    torch_dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
    LlamaForCausalLM(config).to(torch_dtype).save_pretrained(folder / "policy")
    tokenizer.save_pretrained(folder / "policy")
    for role in ("reward", "cost"):
        LlamaForSequenceClassification(config).to(torch_dtype).save_pretrained(folder / role)
        tokenizer.save_pretrained(folder / role)
    return {"policy": folder / "policy", "reward": folder / "reward", "cost": folder / "cost", "config": config}


def forward_flops_per_token(config, context: int, with_head: bool) -> float:
    h, layers, inter = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    kv = h * config.num_key_value_heads // config.num_attention_heads
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * inter        # q, o; k, v; gate, up, down
    flops = 2 * per_layer * layers + 4 * layers * context * h    # matmuls + attention scores/values
    if with_head:
        flops += 2 * h * config.vocab_size
    return flops


def bench(name: str, iterations: int, dtype: str, peak: float) -> dict:
    from safebench.trainers import ppo, ppo_lag

    shape = SHAPES[name]
    with tempfile.TemporaryDirectory(prefix=f"rl_step_{name}_") as tmp:
        paths = build_models(name, Path(tmp), dtype)
        recipe = ppo_lag.Recipe(trainer="ppo_lag", prompt_batch_size=shape["batch"], train_batch_size=shape["batch"],
                                micro_batch_size=shape["batch"],
                                max_new_tokens=shape["new_tokens"], ptx_coeff=0.0, actor_lr=1e-6, critic_lr=1e-6)
        trainer = ppo.PPOTrainer(recipe, ppo_lag.Lagrangian(recipe), policy_dir=paths["policy"],
                                 reward_model_dir=paths["reward"], cost_model_dir=paths["cost"], template="plain",
                                 dtype=dtype, seed=0, total_iterations=iterations + 1)
        from safebench.world import tiny

        prompts = [p.prompt for p in tiny.all_prompts()][: shape["batch"]]
        rows = []
        for it in range(iterations + 1):   # the first iteration warms up and is not counted
            metrics = trainer.step(prompts, seed=it)
            response_tokens, all_tokens = trainer.last_tokens
            rows.append({**{k: v for k, v in metrics.items() if k.endswith("seconds")},
                         "response_tokens": response_tokens, "tokens": all_tokens})
        counted = rows[1:]
        mean = {k: sum(r[k] for r in counted) / len(counted) for k in counted[0]}
        config = paths["config"]
        context = mean["tokens"] / shape["batch"]
        update_flops = 3 * (forward_flops_per_token(config, context, False) * mean["tokens"] * 3
                            + 2 * config.hidden_size * config.vocab_size * mean["response_tokens"])
        total = sum(mean[k] for k in ("rollout_seconds", "scoring_seconds", "experience_seconds", "update_seconds"))
        n_params = sum(p.numel() for p in trainer.unwrapped_actor.parameters())
        return {
            "model": name, "params": n_params, "dtype": dtype, "batch": shape["batch"],
            "max_new_tokens": shape["new_tokens"], "iterations": iterations,
            "rollout_s": mean["rollout_seconds"], "scoring_s": mean["scoring_seconds"],
            "reference_values_s": mean["experience_seconds"], "update_s": mean["update_seconds"],
            "iteration_s": total, "response_tokens_per_s": mean["response_tokens"] / total,
            "update_tflops": update_flops / mean["update_seconds"] / 1e12,
            "update_mfu": update_flops / mean["update_seconds"] / peak,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smol,tiny")
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/rl_step.json"))
    args = parser.parse_args()
    before = matmul_flops()
    results = [bench(name, args.iterations, args.dtype, before) for name in args.models.split(",")]
    after = matmul_flops()
    peak = max(before, after)
    for r in results:  # over the higher of the two rates
        r["update_mfu"] = r["update_tflops"] * 1e12 / peak
    columns = ["model", "params", "rollout_s", "scoring_s", "reference_values_s", "update_s", "iteration_s",
               "response_tokens_per_s", "update_tflops", "update_mfu"]
    print(f"bf16 matmul rate ({describe()}): {peak / 1e12:.3f} TFLOP/s (before {before / 1e12:.3f}, "
          f"after {after / 1e12:.3f}); threads {torch.get_num_threads()}")
    print(" | ".join(columns))
    for r in results:
        print(" | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in columns))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"matmul_bf16_flops": peak, "matmul_bf16_flops_before": before, "matmul_bf16_flops_after": after,
               "matmul_measure": describe(), "threads": torch.get_num_threads(), "torch": torch.__version__,
               "results": results}
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
