"""P-SACPO: SACPO's two step models merged linearly, no retraining (arXiv 2404.11049, §5 "Practical").

    θ = q · θ_safety-step + (1 − q) · θ_helpfulness-step            (paper eq. 13, model merging)

The paper trains the safety step with a conservatively small β/λ (large λ) and then moves
back toward helpfulness by choosing q ∈ {0.25, 0.5, 0.75}; q = 1 is the safety-step model,
q = 0 the helpfulness-step model. The step checkpoints come from the sacpo stage that the
recipe's `needs` names (`<sacpo>/steps/{helpfulness,safety}`): plain `sacpo`, or one variant such
as `sacpo[beta_over_lambda=0.025]` when the run holds several (config.py refuses an ambiguous
`needs`). Which step ran first does not matter here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field

from safebench import modeling
from safebench.errors import UsageError
from safebench.trainers.base import RecipeBase, TrainContext

if TYPE_CHECKING:
    import torch


class Recipe(RecipeBase):
    needs: list[str] = ["sacpo"]
    q: float = Field(0.75, ge=0, le=1)  # weight of the safety-step model


def merge_state_dicts(safety: dict[str, torch.Tensor], helpfulness: dict[str, torch.Tensor],
                      q: float) -> dict[str, torch.Tensor]:
    """q·θ_safety + (1 − q)·θ_helpfulness, computed in float32 and cast back to each tensor's dtype."""
    if safety.keys() != helpfulness.keys():
        missing = sorted(set(safety) ^ set(helpfulness))[:3]
        raise UsageError(f"p-sacpo: the two step models have different parameters (e.g. {missing})")
    merged = {}
    for name, theta_s in safety.items():
        theta_h = helpfulness[name]
        if theta_s.shape != theta_h.shape:
            raise UsageError(f"p-sacpo: parameter {name!r} has shape {tuple(theta_s.shape)} in the safety step "
                             f"and {tuple(theta_h.shape)} in the helpfulness step")
        if not theta_s.is_floating_point():
            merged[name] = theta_s.clone()
            continue
        merged[name] = (q * theta_s.float() + (1 - q) * theta_h.float()).to(theta_s.dtype)
    return merged


def step_dirs(sacpo_dir: Path) -> tuple[Path, Path]:
    """(safety-step, helpfulness-step) checkpoint directories of a finished sacpo stage."""
    safety, helpfulness = sacpo_dir / "steps" / "safety", sacpo_dir / "steps" / "helpfulness"
    for path in (safety, helpfulness):
        modeling.check_model_dir(path, "sacpo step model")
    return safety, helpfulness


def train(ctx: TrainContext, recipe: Recipe) -> None:
    source = next((n for n in recipe.needs if n in ctx.method_dirs), None)
    if source is None:
        raise UsageError(f"method '{ctx.name}': needs a sacpo stage; recipe field 'needs' = {recipe.needs!r} "
                         f"and none of them was given")
    safety_dir, helpfulness_dir = step_dirs(Path(ctx.method_dirs[source]))
    model = modeling.load_policy(helpfulness_dir, ctx.dtype)
    safety_model = modeling.load_policy(safety_dir, ctx.dtype)
    merged = merge_state_dicts(safety_model.state_dict(), model.state_dict(), recipe.q)
    del safety_model
    model.load_state_dict(merged)
    modeling.save_checkpoint(model, modeling.load_tokenizer(helpfulness_dir), ctx.out_dir)
