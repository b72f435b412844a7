"""Run by `accelerate launch --num_processes 2 --cpu`: a few PPO-Lag iterations on tiny models.

Each process writes what it ended with (λ, a checksum of the actor, the curves it saw), so
the test can check that the two processes trained one model together.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from safebench.trainers import ppo, ppo_lag  # noqa: E402
from tests.trainers import ppo_fixtures  # noqa: E402


def main(models: Path, out: Path) -> None:
    from accelerate import PartialState

    state = PartialState(cpu=True)
    paths = {"policy": models / "policy", "reward": models / "reward", "cost": models / "cost"}
    ctx = ppo_fixtures.make_context(paths, out, n_prompts=16)
    recipe = ppo_lag.Recipe(trainer="ppo_lag", **{**ppo_fixtures.TINY_RECIPE, "micro_batch_size": 2})
    captured = {}
    original = ppo.PPOTrainer.save_policy

    def keep(trainer, out_dir):
        actor = trainer.unwrapped_actor
        captured["checksum"] = float(sum(p.detach().double().sum() for p in actor.parameters()))
        captured["lambda"] = trainer.method.multiplier
        captured["processes"] = trainer.accelerator.num_processes
        captured["window"] = len(trainer.method.window)
        original(trainer, out_dir)

    ppo.PPOTrainer.save_policy = keep
    ppo_lag.train(ctx, recipe)
    captured["curves"] = [step for step, _ in ctx.curves]
    (out / f"process-{state.process_index}.json").write_text(json.dumps(captured))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
