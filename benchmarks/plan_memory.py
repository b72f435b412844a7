"""The dry run's memory figures against measured peak memory on this CPU.

    OMP_NUM_THREADS=1 python benchmarks/plan_memory.py [--cases tiny-sft,...] [--out benchmarks/results/plan_memory.json]

Each case runs in a fresh process: the preset's stage on models of the preset's shape with random
weights (tiny: the tiny world's model; smol: SmolLM2-135M's shape, as benchmarks/rl_step.py builds
it), two optimizer steps (one PPO iteration for ppo-lag) through the trainers' own code, inputs at
the lengths the plan counts (every sequence at max_length; rollouts run to max_new_tokens).
Measured: the peak resident memory (VmHWM, reset through /proc/self/clear_refs once the models are
loaded) less the resident memory before any model was built, i.e. what the models, their
gradients, optimizer states and activations added. Planned: `safebench.plan` for the same
settings on one CPU process ("none" sharding), the PPO prompt length set to the one measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# case: (preset, method whose run holds the stage, stage, --set overrides)
CASES = {
    "tiny-sft": ("tiny", "sft", "sft", []),
    "tiny-reward-model": ("tiny", "sft", "reward-model", []),
    "tiny-ppo-lag": ("tiny", "ppo-lag", "ppo-lag", []),
    "smol-sft": ("smol", "sft", "sft", []),
    "smol-reward-model": ("smol", "sft", "reward-model", []),
    # smol has no RL settings of its own; the recipe's published sizes (128 rollouts of 512 new
    # tokens) would take an hour here, so a small iteration, planned with the same settings
    "smol-ppo-lag": ("smol", "ppo-lag", "ppo-lag",
                     ["trainers.ppo-lag.prompt_batch_size=8", "trainers.ppo-lag.train_batch_size=8",
                      "trainers.ppo-lag.micro_batch_size=4", "trainers.ppo-lag.max_new_tokens=32",
                      "trainers.ppo-lag.ptx_coeff=0"]),
}
TOLERANCE = 0.25
STEPS = 2  # the second step holds weights, gradients, Adam's moments and activations at once
# glibc keeps freed heap blocks resident, so plain RSS also measures the heap's fragmentation; with
# a fixed mmap threshold every block over 64 KiB is its own mapping, returned when freed, and the
# peak follows the live tensors, which is what the plan counts. Both are recorded; the check uses it.
ALLOCATORS = {"tensors": {"MALLOC_MMAP_THRESHOLD_": "65536"}, "glibc default": {}}


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)


def build_checkpoints(preset: str, config, folder: Path, miniature: bool = False) -> dict[str, Path]:
    """Policy, reward and cost checkpoints of the preset's shape, random weights (`miniature`: one
    small layer, for warming up)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    from safebench import plan
    from safebench.world import tiny

    tokenizer = tiny.build_tokenizer()
    shape = plan.model_shape(config.policy.init, config.policy.revision, config.policy)
    if miniature:
        shape = plan.Shape(len(tokenizer), 64, 1, 2, 2, 64, True, "warm-up")
    llama = LlamaConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                        num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                        num_key_value_heads=shape.kv_heads, max_position_embeddings=2048,
                        tie_word_embeddings=shape.tied, pad_token_id=tokenizer.pad_token_id,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, num_labels=1)
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[config.policy.dtype]
    torch.manual_seed(0)
    paths = {}
    for role, cls in (("policy", LlamaForCausalLM), ("reward", LlamaForSequenceClassification),
                      ("cost", LlamaForSequenceClassification)):
        cls(llama).to(dtype).save_pretrained(folder / role)
        tokenizer.save_pretrained(folder / role)
        paths[role] = folder / role
    return paths


def measure(case: str, folder: Path, gpu: bool = False) -> dict:
    """One case in this process: peak bytes added by the stage, and the plan's figure. With `gpu`
    (PPO cases: its trainer places the models on the accelerator) the peak is CUDA's allocator's."""
    import gc
    import random

    import torch

    from safebench import config as config_module, modeling, plan
    from safebench.trainers import loop, score_model, sft
    from tests.trainers.ppo_fixtures import RecordingContext, world_data

    preset, method, stage, overrides = CASES[case]
    config, recipes = config_module.resolve(preset, [method], overrides)
    recipe = recipes[stage]
    paths = build_checkpoints(preset, config, folder)
    tokenizer = modeling.load_tokenizer(paths["policy"])
    vocab = plan.model_shape(config.policy.init, config.policy.revision, config.policy).vocab
    rng = random.Random(0)
    data = world_data(64)
    prompt_tokens = plan.RL_PROMPT_TOKENS
    if recipe.trainer == "ppo_lag":
        data.prompts = (data.prompts * 8)[: recipe.prompt_batch_size]
        prompt_tokens = max(len(modeling.encode_prompt(tokenizer, modeling.format_prompt(tokenizer, p["prompt"],
                                                                                     config.policy.template)))
                            for p in data.prompts)
    ctx = RecordingContext(name=stage, stage_key="bench", out_dir=folder / "out", work_dir=folder / "work", seed=0,
                           data=data, template=config.policy.template, dtype=config.policy.dtype,
                           policy_dir=paths["policy"], reward_model_dir=paths["reward"], cost_model_dir=paths["cost"],
                           quiet=True)
    # Warm up on a miniature model of the same classes (imports, thread pool, autocast, kernels first
    # used, AdamW, the scheduler, the progress bar), so that the baseline holds the runtime and the
    # peak only what the stage's sizes add.
    warm_dir = folder / "warm"
    mini = build_checkpoints(preset, config, warm_dir, miniature=True)
    warm_model = modeling.load_policy(mini["policy"], "float32")
    warm_items = [([5, 6, 7, 8, 9, 10], 2)] * 2
    warm_recipe = recipes["sft"].model_copy(update={"batch_size": 2, "micro_batch_size": 2, "epochs": 1.0})
    warm_ctx = RecordingContext(name="warm", stage_key="warm", out_dir=warm_dir / "out", work_dir=warm_dir / "work",
                                seed=0, data=data, template=config.policy.template, dtype=config.policy.dtype,
                                quiet=True)
    loop.train_supervised(warm_ctx, warm_recipe, warm_model,
                          warm_items, lambda m, chunk: sft.response_only_loss(m, tokenizer, chunk))
    warm_model.generate(input_ids=torch.tensor([[5, 6, 7]]), max_new_tokens=2, do_sample=True,
                        pad_token_id=tokenizer.pad_token_id)
    del warm_model
    if recipe.trainer == "ppo_lag":
        from accelerate import Accelerator

        from safebench.trainers import ppo, ppo_lag  # noqa: F401  (imported before the baseline)

        Accelerator(cpu=True)
    gc.collect()
    baseline = torch.cuda.memory_allocated() if gpu else _status("VmRSS")

    def ids(length: int) -> list[int]:
        return [rng.randrange(4, vocab) for _ in range(length)]

    if recipe.trainer == "sft":
        model = modeling.load_policy(paths["policy"], "float32")
        examples = [(ids(recipe.max_length), 16) for _ in range(STEPS * recipe.micro_batch_size)]
        run = recipe.model_copy(update={"batch_size": recipe.micro_batch_size, "epochs": 1.0})
        _reset_peak()
        loop.train_supervised(ctx, run, model, examples, lambda m, chunk: sft.response_only_loss(m, tokenizer, chunk))
    elif recipe.trainer == "score_model":
        model = modeling.load_score_model(paths["policy"], "float32")
        if recipe.train_layers is not None:
            score_model.freeze_below(model, recipe.train_layers)
        items = [{"high_ids": ids(recipe.max_length), "low_ids": ids(recipe.max_length), "high_sign": 1.0,
                  "low_sign": -1.0} for _ in range(STEPS * recipe.micro_batch_size)]
        run = recipe.model_copy(update={"batch_size": recipe.micro_batch_size, "epochs": 1.0})

        def loss_fn(m, chunk):
            high, low = score_model.pair_scores(m, tokenizer, chunk)
            return score_model.reward_loss(high, low, run.regularization), {}

        _reset_peak()
        loop.train_supervised(ctx, run, model, items, loss_fn)
    else:
        ppo.PPOTrainer.save_policy = lambda trainer, out_dir: None  # the peak of training, not of saving
        _reset_peak()  # PPO loads its six models inside train_ppo: they count, as in the plan
        if gpu:
            torch.cuda.reset_peak_memory_stats()
        ppo_lag.train(ctx, recipe.model_copy(update={"epochs": 1.0}))
    measured = (torch.cuda.max_memory_allocated() if gpu else _status("VmHWM")) - baseline

    plan.RL_PROMPT_TOKENS = prompt_tokens
    planned = plan.build_plan(config, recipes, plan.read_launch(None, "cpu"))
    figures = next(s for s in planned.stages if s.name == stage)
    return {"case": case, "preset": preset, "stage": stage, "overrides": overrides, "dtype": config.policy.dtype,
            "measured_bytes": measured, "planned_bytes": figures.total, "steps": STEPS, "planned": figures.memory,
            "prompt_tokens": prompt_tokens, "ratio": figures.total / measured}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "plan_memory.json")
    parser.add_argument("--gpu", action="store_true",
                        help="PPO cases on the GPU: peak of CUDA's allocator (benchmarks/gpu_check.sh)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # one case, in a child process
    args = parser.parse_args()
    if args.case:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(measure(args.case, Path(tmp), args.gpu)))
        return
    if args.gpu:
        rows = []
        for case in args.cases.split(","):
            if CASES[case][2] != "ppo-lag":
                raise SystemExit(f"--gpu: {case} trains on the CPU (only the PPO trainer places models on the GPU)")
            result = subprocess.run([sys.executable, __file__, "--case", case, "--gpu"], capture_output=True,
                                    text=True, cwd=ROOT)
            if result.returncode != 0:
                raise SystemExit(f"{case} failed:\n{result.stderr[-3000:]}")
            row = json.loads(result.stdout.strip().splitlines()[-1])
            rows.append({**row, "ratio": row["planned_bytes"] / row["measured_bytes"]})
            print(f"{case:18s} planned {row['planned_bytes'] / 2**20:8.1f} MiB   measured (CUDA) "
                  f"{row['measured_bytes'] / 2**20:8.1f} MiB   plan/measured {rows[-1]['ratio']:.2f}", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"device": "cuda", "cases": rows}, indent=2) + "\n")
        return
    rows = []
    for case in args.cases.split(","):
        row = None
        for allocator, env in ALLOCATORS.items():
            result = subprocess.run([sys.executable, __file__, "--case", case], capture_output=True, text=True,
                                    cwd=ROOT, env={**os.environ, **env})
            if result.returncode != 0:
                raise SystemExit(f"{case} failed:\n{result.stderr[-3000:]}")
            found = json.loads(result.stdout.strip().splitlines()[-1])
            row = row or {**found, "measured_bytes": {}}
            row["measured_bytes"][allocator] = found["measured_bytes"]
        row["ratio"] = row["planned_bytes"] / row["measured_bytes"]["tensors"]
        rows.append(row)
        print(f"{case:18s} planned {row['planned_bytes'] / 2**20:8.1f} MiB   measured {row['measured_bytes']['tensors'] / 2**20:8.1f}"
              f" MiB (glibc default {row['measured_bytes']['glibc default'] / 2**20:8.1f})   plan/measured {row['ratio']:.2f}",
              flush=True)
    within = all(abs(r["ratio"] - 1) <= TOLERANCE for r in rows)
    print(f"all within {TOLERANCE:.0%}: {within}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"tolerance": TOLERANCE, "within": within, "cases": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
