"""Run by `accelerate launch --config_file trainers/launch/paper.yaml --num_processes 2` (FSDP2 on
gloo): SFT and PPO-Lag each trained straight through, then again from the state the first run
saved half-way (its clean-up after the checkpoint is skipped), into another output directory.

Each process writes which steps each run logged and whether its models were sharded; the test
compares the two checkpoints of each trainer.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from safebench.evals.backends import vllm  # noqa: E402
from safebench.trainers import engine, ppo, ppo_lag, sft  # noqa: E402
from tests.trainers import ppo_fixtures  # noqa: E402


def main(models: Path, out: Path) -> None:
    paths = {"policy": models / "policy", "reward": models / "reward", "cost": models / "cost"}
    seen = {}
    sft.clear_state = lambda ctx, accelerator: None     # keep the step-2 state for the second run
    ppo.shutil.rmtree = lambda *args, **kwargs: None    # train_ppo's removal of its state
    for run in ("straight", "resumed"):
        ctx = ppo_fixtures.make_context(paths, out / "sft", name="sft")
        ctx.out_dir = out / f"sft-{run}"
        sft.train(ctx, sft.Recipe(trainer="sft", epochs=1, batch_size=4, micro_batch_size=2, max_length=48,
                                  checkpoint_every=2))
        seen[f"sft-{run}"] = [step for step, _ in ctx.curves]
    original = ppo.PPOTrainer.save_policy

    def keep(trainer, out_dir):
        seen["sharded"] = trainer.sharded and all(
            isinstance(p, torch.distributed.tensor.DTensor) for p in trainer.actor.parameters())
        # what the vLLM rollout engine of each process would be pushed: the whole actor
        pushed = vllm._full_state_dict(trainer.actor)
        seen["pushed"] = {name: float(t.double().sum()) for name, t in pushed.items()}
        seen["pushed_plain"] = all(type(t) is torch.Tensor for t in pushed.values())   # not DTensor shards
        original(trainer, out_dir)

    ppo.PPOTrainer.save_policy = keep
    for run in ("straight", "resumed"):
        ctx = ppo_fixtures.make_context(paths, out / "ppo", n_prompts=16)
        ctx.out_dir = out / f"ppo-{run}"
        recipe = ppo_lag.Recipe(trainer="ppo_lag", **{**ppo_fixtures.TINY_RECIPE, "micro_batch_size": 2})
        ppo_lag.train(ctx, recipe)
        seen[f"ppo-{run}"] = [step for step, _ in ctx.curves]
    seen["processes"] = torch.distributed.get_world_size()
    seen["engine_sharded"] = engine._SHARDING is not None
    (out / f"process-{torch.distributed.get_rank()}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
