"""What every trainer gets from the pipeline, and the recipe base class."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from safebench.data import WorldData


class RecipeBase(BaseModel):
    """Fields every recipe YAML has; a trainer's `Recipe` adds its own with published defaults."""

    model_config = ConfigDict(extra="forbid")

    trainer: str
    role: Literal["method", "score-model", "stage"] = "method"
    description: str = ""
    needs: list[str] = []  # other methods whose checkpoints this one builds on (p-sacpo: sacpo)

    # Options added after stages of this trainer were first keyed, whose default is the behaviour
    # those stages had: left out of the stage key while at their default, so that a new option does
    # not make every existing run train again (set to anything else, it is keyed like any field).
    KEY_NEUTRAL_DEFAULTS: ClassVar[tuple[str, ...]] = ()

    def key_fields(self) -> dict:
        """The recipe as a stage key hashes it (`KEY_NEUTRAL_DEFAULTS` at their default left out)."""
        fields = self.model_dump(mode="json")
        for name in self.KEY_NEUTRAL_DEFAULTS:
            if getattr(self, name) == type(self).model_fields[name].default:
                del fields[name]
        return fields

    def check_needs(self, name: str, needed: dict[str, RecipeBase], where: str) -> None:
        """Refuse (UsageError) needed stages whose settings this method cannot build on; `where`
        names the setting of `needs` for the message."""


@dataclass
class TrainContext:
    name: str
    stage_key: str
    out_dir: Path                     # write the final checkpoint here
    work_dir: Path                    # resumable state survives here between attempts
    seed: int
    data: WorldData
    template: str
    dtype: str
    policy_dir: Path | None = None    # the SFT checkpoint (or the base model, for SFT itself)
    reward_model_dir: Path | None = None
    cost_model_dir: Path | None = None
    method_dirs: dict[str, Path] = field(default_factory=dict)
    store: Any = None
    run_config: Any = None
    quiet: bool = False
    # The tiny world's ground truth, oracle(prompt, response) -> Judgement or None (None elsewhere):
    # RL logs its rollouts' oracle reward and cost beside the learned scores, so the curves show
    # when the policy starts to exploit the reward or cost model (over-optimisation).
    oracle: Callable[[str, str], Any] | None = None
    _tensorboard: Any = None

    def log(self, step: int, **metrics: float) -> None:
        """A point of the training curves: into the run database and TensorBoard."""
        if self.store is not None:
            self.store.log_curve(self.stage_key, self.name, step, metrics)
        try:
            if self._tensorboard is None:
                from torch.utils.tensorboard import SummaryWriter

                self._tensorboard = SummaryWriter(str(self.work_dir.parent / "tensorboard"))
            for key, value in metrics.items():
                self._tensorboard.add_scalar(f"{self.name}/{key}", value, step)
        except ImportError:  # tensorboard is optional; the database has the curves
            pass

    def progress(self, total: int, desc: str):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=f"{self.name}: {desc}", disable=True if self.quiet else None, leave=False, dynamic_ncols=True)

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
