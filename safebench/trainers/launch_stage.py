"""One training stage in a process of `accelerate launch` (safebench/launch.py starts it):

    python -m safebench.trainers.launch_stage WORK_DIR/launch-spec.json

The spec names the trainer's context; the trainer writes its checkpoint to `out_dir` and its
resumable state to `work_dir`, the main process its curves to `curves.jsonl` (the pipeline, not
this process, records the stage).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from safebench import data as data_module, launch, registry
from safebench.errors import UsageError
from safebench.trainers.base import TrainContext


class CurveFile:
    """Stands in for the run database in a launched stage: curves as JSON lines beside the spec."""

    def __init__(self, path: Path):
        self.path = path

    def log_curve(self, stage_key: str, method: str, step: int, metrics: dict[str, float]) -> None:
        with self.path.open("a") as out:
            out.write(json.dumps({"step": step, "metrics": {k: float(v) for k, v in metrics.items()}}) + "\n")


def context(spec: dict, work_dir: Path) -> TrainContext:
    data_dir = Path(spec["data_dir"])
    oracle = None
    if spec["oracle"]:
        from safebench.world import tiny

        oracle = tiny.oracle_for(data_dir)
    optional = {key: Path(spec[key]) for key in ("policy_dir", "reward_model_dir", "cost_model_dir") if spec.get(key)}
    return TrainContext(
        name=spec["name"], stage_key=spec["stage_key"], out_dir=Path(spec["out_dir"]), work_dir=work_dir,
        seed=spec["seed"], data=data_module.load(data_dir), template=spec["template"], dtype=spec["dtype"],
        method_dirs={k: Path(v) for k, v in spec["method_dirs"].items()}, store=CurveFile(work_dir / launch.CURVES),
        quiet=spec["quiet"], oracle=oracle, **optional)


def main(spec_path: Path) -> None:
    spec = json.loads(spec_path.read_text())
    module = registry.trainer_module(spec["recipe"]["trainer"])
    recipe = module.Recipe.model_validate(spec["recipe"])
    ctx = context(spec, spec_path.parent)
    try:
        module.train(ctx, recipe)
    except UsageError as exc:  # the pipeline repeats it as its own one-line error
        (spec_path.parent / launch.ERROR).write_text(str(exc))
        raise SystemExit(2) from None
    finally:
        ctx.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
