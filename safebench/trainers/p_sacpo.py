"""P-SACPO: SACPO's model merged linearly with the helpfulness model, no retraining (arXiv 2404.11049,
§5 "Practical"; docs/methods.md §6).

    θ = q · θ_safety-step + (1 − q) · θ_helpfulness-step            (paper eq. 13, model merging)

The safety-step model is SACPO's final model, DPO(H) → DPO(S), trained with a conservatively small
β/λ; the helpfulness-step model is DPO(H), SACPO's first step. q ∈ {0.25, 0.5, 0.75} moves back
toward helpfulness: q = 1 is the SACPO model, q = 0 DPO(H). SACPO's released merges
(line/sacpo config/merge/linear_{0.25,0.5,0.75}.yaml) take helpful_dpo_0.1 and
helpful_dpo_safety_dpo_0.01, so the default `needs` is the sacpo stage at β/λ = 0.01, and its
`<stage>/steps/{safety,helpfulness}` are merged. Another β/λ: name that variant in `needs`.
A sacpo stage trained safety-first (DPO(S) → DPO(H)) or as one step is refused: its steps are
no pair the paper merges.
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
    # the SACPO model the paper merges: DPO(H) β = 0.1 -> DPO(S) β/λ = 0.01 (config/merge/linear_*.yaml)
    needs: list[str] = ["sacpo[beta_over_lambda=0.01]"]
    q: float = Field(0.75, ge=0, le=1)  # weight of the safety-step model

    def check_needs(self, name: str, needed: dict[str, RecipeBase], where: str) -> None:
        for need, recipe in needed.items():
            if getattr(recipe, "trainer", "") != "sacpo":
                raise UsageError(f"{where}: method '{name}' merges a sacpo stage's step models; '{need}' "
                                 f"is trained by '{recipe.trainer}'")
            if recipe.only is not None or recipe.order != "helpfulness-first":
                setting = f"only: {recipe.only}" if recipe.only is not None else f"order: {recipe.order}"
                raise UsageError(f"{where}: method '{name}' needs '{need}', trained with {setting}; P-SACPO "
                                 f"merges the helpfulness-first SACPO model with DPO(H) (arXiv 2404.11049 §5), "
                                 f"so name a helpfulness-first sacpo variant")


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


def launched(recipe: Recipe) -> bool:
    """A weight merge: nothing to distribute, so `safebench run --num-processes` runs it in its own
    process (safebench/launch.py) rather than in launched processes that would all write the one
    checkpoint."""
    return False


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
