"""Throughput of SACPO's preference steps: samples/s and MFU per step kind.

Runs a few optimizer steps of each step kind SACPO uses (DPO on helpfulness pairs, DPO on
safety pairs, KTO on safety labels) through the same `safebench.trainers.sacpo.build_trainer`
path training uses, on
  - the tiny world's Llama (preset sizes, float32 as the tiny preset trains), and
  - a ~135M-class Llama with SmolLM2-135M's shape (hidden 576, 30 layers, 9 heads, 3 kv heads,
    intermediate 1536), random weights, the tiny world's tokenizer, bf16 mixed precision.
MFU = achieved training FLOP/s / bf16 matmul FLOP/s measured in the same process, with
training FLOPs ≈ 6 · parameters · tokens processed (padded batch; the reference log-probs
are precomputed once per step, outside the timed steps, as in training).

    python benchmarks/preference_step.py [--steps 4] [--big-steps 2] [--skip-big]
Prints a table, writes benchmarks/results/preference_step.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from safebench.files import atomic_write_json  # noqa: E402
from safebench.trainers import sacpo  # noqa: E402
from safebench.trainers.base import TrainContext, WorldData  # noqa: E402
from safebench.world import tiny  # noqa: E402
from mfu import matmul_flops  # benchmarks/mfu.py (the script's folder is on sys.path)

SMOLLM2_135M_SHAPE = dict(hidden_size=576, num_layers=30, num_heads=9, num_kv_heads=3, intermediate_size=1536)
TINY_SHAPE = dict(hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=4, intermediate_size=256)
STEP_KINDS = [("dpo-helpfulness", "helpfulness", "dpo"), ("dpo-safety", "safety", "dpo"), ("kto-safety", "safety", "kto")]


def build_model_dir(directory: Path, shape: dict, seed: int = 0) -> tuple[Path, int]:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny.build_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=shape["hidden_size"], intermediate_size=shape["intermediate_size"],
        num_hidden_layers=shape["num_layers"], num_attention_heads=shape["num_heads"],
        num_key_value_heads=shape["num_kv_heads"], max_position_embeddings=256, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory, sum(p.numel() for p in model.parameters())


def time_steps(model_dir: Path, records: list[dict], step_name: str, loss: str, dtype: str, micro_batch: int,
               steps: int, n_params: int, work: Path) -> dict:
    """Median wall time of optimizer steps 2..n of one step kind (the first warms up)."""
    from transformers import TrainerCallback

    from safebench import modeling

    recipe = sacpo.Recipe(trainer="sacpo", epochs=1, batch_size=micro_batch, micro_batch_size=micro_batch,
                          lr=1e-5, warmup_ratio=0.0, max_prompt_length=64, max_length=128, checkpoint_every=10**6,
                          helpfulness_loss=loss, safety_loss=loss,
                          order="helpfulness-first" if step_name == "helpfulness" else "safety-first")
    per_step = micro_batch if loss == "dpo" else micro_batch // 2  # KTO: two examples per record
    ctx = TrainContext(name="bench", stage_key="bench", out_dir=work / "out", work_dir=work / "work", seed=0,
                       data=WorldData(sft=[], preference=records[: per_step * (steps + 1)], prompts=[]),
                       template="plain", dtype=dtype, policy_dir=model_dir, quiet=True)
    sacpo._silence_libraries()
    step = recipe.step_plan()[0]
    tokenizer = modeling.load_tokenizer(model_dir)
    model = modeling.load_policy(model_dir, "float32")
    start = time.perf_counter()
    trainer = sacpo.build_trainer(ctx, recipe, step, model, tokenizer, work / "trainer")
    precompute_s = time.perf_counter() - start
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    tokens: list[tuple[int, int]] = []
    batches: list[dict] = []
    marks: list[float] = []
    original_collator = trainer.data_collator

    def counting_collator(examples):
        batch = original_collator(examples)
        kl_tokens = int(batch["KL_input_ids"].numel()) if "KL_input_ids" in batch else 0
        tokens.append((int(batch["input_ids"].numel()), kl_tokens))
        batches.append(batch)
        return batch

    trainer.data_collator = counting_collator

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            marks.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            marks.append(time.perf_counter())

    trainer.add_callback(Clock())
    trainer.args.max_steps = steps
    trainer.train()
    durations = [marks[i + 1] - marks[i] for i in range(0, len(marks) - 1, 2)][1:] or [marks[1] - marks[0]]
    seconds = statistics.median(durations)
    # trained sequences cost forward + backward (6 FLOPs per parameter-token); KTO's mismatched
    # KL sequences only a forward without gradient (2)
    main_tokens = statistics.median(t[0] for t in tokens)
    kl_tokens = statistics.median(t[1] for t in tokens)
    flops = 6 * n_params * main_tokens + 2 * n_params * kl_tokens
    bare = bare_step_seconds(trainer.model, batches[-1], dtype)
    return {"samples_per_s": micro_batch / seconds, "bare_fwd_bwd_s": bare, "trl_overhead": seconds / bare, "step_s": seconds, "tokens_per_step": main_tokens, "kl_tokens_per_step": kl_tokens,
            "train_flops_per_s": flops / seconds, "precompute_ref_s": precompute_s, "steps_timed": len(durations)}


def bare_step_seconds(model, batch: dict, dtype: str, repeats: int = 2) -> float:
    """The same batch as a bare forward + backward (and KTO's no-grad KL forward): the floor a
    hand-written loop could reach, to see what the TRL trainer adds around it."""
    model.train()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            if "KL_input_ids" in batch:
                with torch.no_grad():
                    model(input_ids=batch["KL_input_ids"], attention_mask=batch["KL_attention_mask"])
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
            loss = -(logp * batch["completion_mask"][:, 1:]).sum()
        loss.backward()
        model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _load_average() -> list[float] | None:
    try:
        import os

        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per step kind, tiny model")
    parser.add_argument("--big-steps", type=int, default=2, help="optimizer steps per step kind, 135M model")
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--big-micro-batch", type=int, default=8)
    parser.add_argument("--skip-big", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "preference_step.json"))
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    peak_bf16 = matmul_flops(torch.bfloat16)
    peak_fp32 = matmul_flops(torch.float32)
    records = tiny.build_datasets(0, train_prompts=200, sft_per_prompt=1, pairs_per_prompt=1)["preference"]
    models = [("tiny-llama", TINY_SHAPE, "float32", args.micro_batch, args.steps)]
    if not args.skip_big:
        models.append(("llama-135M-shape", SMOLLM2_135M_SHAPE, "bfloat16", args.big_micro_batch, args.big_steps))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model_name, shape, dtype, micro_batch, steps in models:
            model_dir, n_params = build_model_dir(Path(tmp) / model_name, shape)
            for kind, step_name, loss in STEP_KINDS:
                result = time_steps(model_dir, records, step_name, loss, dtype, micro_batch, steps, n_params,
                                    Path(tmp) / f"{model_name}-{kind}")
                rows.append({"model": model_name, "params": n_params, "dtype": dtype, "step": kind,
                             "micro_batch": micro_batch, **result, "mfu_vs_bf16_matmul": result["train_flops_per_s"] / peak_bf16})
                print(f"  done {model_name} {kind}", file=sys.stderr, flush=True)
                write_results(Path(args.out), peak_bf16, peak_fp32, rows)
    header = f"{'model':<18}{'params':>8}  {'dtype':<9}{'step':<16}{'batch':>6}{'samples/s':>11}{'step s':>8}{'tok/step':>9}{'GFLOP/s':>9}{'MFU':>8}{'bare s':>8}{'TRL/bare':>9}"
    print(f"load average {_load_average()}; bf16 matmul: {peak_bf16 / 1e9:.1f} GFLOP/s   fp32 matmul: {peak_fp32 / 1e9:.1f} GFLOP/s   "
          f"torch threads: {torch.get_num_threads()}")
    print(header)
    for r in rows:
        print(f"{r['model']:<18}{r['params'] / 1e6:>7.1f}M  {r['dtype']:<9}{r['step']:<16}{r['micro_batch']:>6}"
              f"{r['samples_per_s']:>11.2f}{r['step_s']:>8.2f}{r['tokens_per_step']:>9.0f}"
              f"{r['train_flops_per_s'] / 1e9:>9.2f}{100 * r['mfu_vs_bf16_matmul']:>7.2f}%"
              f"{r['bare_fwd_bwd_s']:>8.2f}{r['trl_overhead']:>9.2f}")
    write_results(Path(args.out), peak_bf16, peak_fp32, rows)
    print(f"wrote {args.out}")
    return 0


def write_results(out: Path, peak_bf16: float, peak_fp32: float, rows: list[dict]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, {
        "benchmark": "preference_step", "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "bf16_matmul_flops": peak_bf16, "fp32_matmul_flops": peak_fp32,
        "load_average": _load_average(),
        "note": "samples = preference pairs (DPO) or labelled completions (KTO); MFU = 6·params·tokens / step time / bf16 matmul FLOP/s",
        "rows": rows,
    })


if __name__ == "__main__":
    raise SystemExit(main())
