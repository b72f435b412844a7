"""SACPO: Stepwise Alignment for Constrained Policy Optimization (Wachi et al., arXiv 2404.11049).

The constrained optimum  π* ∝ π_ref · exp((r + λ·g) / β)  factorises into two preference
alignments done one after the other (paper, Theorem 1 / eq. 9):

  1. helpfulness step:  π_r ∝ π_ref · exp(r / β)        DPO (or KTO) on `better_response_id`
                        pairs, reference = SFT, coefficient β (default 0.1)
  2. safety step:       π*  ∝ π_r · exp(g / (β/λ))      DPO (or KTO) on `safer_response_id`
                        pairs, reference = π_r (the first step's output), coefficient β/λ
                        (default 0.025, the released model)

`order: safety-first` runs the safety step first (from SFT, coefficient `beta`, default 0.01,
the paper's DPO(S)) and the helpfulness step second (coefficient `beta_over_lambda`). So `beta`
is always the first step's coefficient and `beta_over_lambda` the second's, whichever order.

`only: helpfulness` / `only: safety` runs that one step from SFT and stops: the paper's
single-step baselines DPO(H) (β = 0.1) and DPO(S) (β = 0.01) of Table 3 (recipes dpo-h, dpo-s).
`beta` is then the step's coefficient (default by the step) and `beta_over_lambda` is unused.

Losses, as TRL 1.16 computes them (`trl.DPOTrainer`, `trl.KTOTrainer`, the library the
original code stands on):
  DPO  −log σ(b·[log πθ(y_w|x)/π_ref(y_w|x) − log πθ(y_l|x)/π_ref(y_l|x)])      (DPO eq. 7)
  KTO  w⁺·(1 − σ(b·log πθ/π_ref − ν)) desirable, w⁻·(1 − σ(ν − b·log πθ/π_ref)) undesirable,
       ν = b·KL estimate from mismatched pairs in the batch                     (KTO eq. 8)
       w⁺ = 1, w⁻ = n_desirable / n_undesirable

Data: the same PKU-SafeRLHF-shaped records as the score models, tokenised by
`modeling.encode_pair` exactly as SFT saw them (the tokenizer's BOS once, prompt template, a
space before the response, one eos after it); TRL's own text tokenisation is bypassed because
it adds the tokenizer's special tokens on top of a chat template's (a second BOS for Llama
tokenizers) and has no prompt length limit.

Output: ctx.out_dir holds the final (last step's) model; ctx.out_dir/steps/{helpfulness,
safety}/ hold each step's model (of the steps that ran) for P-SACPO to merge. Each finished step is kept in
ctx.work_dir/steps/ and TRL saves resumable trainer state every `checkpoint_every` steps, so
a rerun after a crash resumes instead of starting over.

Defaults (line/sacpo scripts): 3 epochs, lr 2e-5, warmup 0.03, cosine, bf16, max prompt
length 128, max length 512, helpfulness β = 0.1, β/λ = 0.025, 256 pairs a step in the first step
and 64 in the second (docs/methods.md §6, docs/fidelity.md).
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from safebench import modeling
from safebench.errors import UsageError
from safebench.files import atomic_directory
from safebench.trainers import engine
from safebench.trainers.base import RecipeBase, TrainContext

STEPS = ("helpfulness", "safety")
# the paper's coefficient for a step run from SFT: DPO(H) β = 0.1, DPO(S) β = 0.01
DEFAULT_FIRST_BETA = {"helpfulness": 0.1, "safety": 0.01}


class Recipe(RecipeBase):
    order: Literal["helpfulness-first", "safety-first"] = "helpfulness-first"
    # run one step only (DPO(H) / DPO(S) baselines); None = both steps, in `order`
    only: Literal["helpfulness", "safety"] | None = None
    helpfulness_loss: Literal["dpo", "kto"] = "dpo"
    safety_loss: Literal["dpo", "kto"] = "dpo"
    # KL coefficient of the first step; None = the paper's value for that step (0.1 / 0.01)
    beta: float | None = Field(None, gt=0)
    # KL coefficient of the second step (β/λ); a plain float so `--set ...=[a,b]` sweeps it
    beta_over_lambda: float = Field(0.025, gt=0)
    epochs: float = Field(3, gt=0)
    lr: float = Field(2e-5, gt=0)
    # the second step's epochs and learning rate; None = `epochs` / `lr` (the published scripts use
    # one setting for both). Apart so that a small model can train the second step until its
    # coefficient β/λ binds without pushing the first step into degenerate text.
    second_epochs: float | None = Field(None, gt=0)
    second_lr: float | None = Field(None, gt=0)
    scheduler: str = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)            # (choice) TRL / HF default
    # pairs per optimizer step, all devices together. line/sacpo's scripts: 16 per device x 2
    # accumulation, the first step on 8 GPUs (256), the second on 2 (64; they train four β/λ at once)
    batch_size: int = Field(256, ge=1)
    second_batch_size: int = Field(64, ge=1)
    micro_batch_size: int = Field(16, ge=1)           # KTO estimates its KL term within one micro batch
    max_prompt_length: int = Field(128, ge=1)         # prompts keep their last tokens (the template's end)
    max_length: int = Field(512, ge=8)
    checkpoint_every: int = Field(50, ge=1)           # optimizer steps between resumable trainer saves
    # (choice) cheaper steps for small machines; line/sacpo fine-tunes every weight, so both default off.
    # lora_rank > 0: LoRA adapters on a frozen base in policy.dtype, merged into the weights when a step ends
    lora_rank: int = Field(0, ge=0)
    lora_alpha: float = Field(16, gt=0)
    lora_target_modules: str | list[str] = "all-linear"
    # only the top N transformer layers train (with LoRA: only they get adapters), so the backward pass
    # stops there; None: every layer
    train_layers: int | None = Field(None, ge=1)
    KEY_NEUTRAL_DEFAULTS = ("lora_rank", "lora_alpha", "lora_target_modules", "train_layers")

    @field_validator("micro_batch_size")
    @classmethod
    def _divides_batch(cls, value: int, info):
        for field in ("batch_size", "second_batch_size"):
            batch = info.data.get(field)
            if batch is not None and batch % value:
                raise ValueError(f"expected a divisor of {field} ({batch})")
        return value

    @field_validator("max_length")
    @classmethod
    def _longer_than_prompt(cls, value: int, info):
        prompt = info.data.get("max_prompt_length")
        if prompt is not None and value <= prompt:
            raise ValueError(f"expected more than max_prompt_length ({prompt})")
        return value

    @model_validator(mode="after")
    def _fill_first_beta(self):
        if self.beta is None:
            self.beta = DEFAULT_FIRST_BETA[self.step_names()[0]]
        return self

    def step_names(self) -> list[str]:
        if self.only is not None:
            return [self.only]
        return list(STEPS) if self.order == "helpfulness-first" else list(reversed(STEPS))

    def step_plan(self) -> list[dict]:
        """The steps in the order they run: which preference, which loss, which coefficient."""
        losses = {"helpfulness": self.helpfulness_loss, "safety": self.safety_loss}
        betas = [self.beta, self.beta_over_lambda]
        epochs = [self.epochs, self.second_epochs or self.epochs]
        lrs = [self.lr, self.second_lr or self.lr]
        batches = [self.batch_size, self.second_batch_size]
        return [{"name": name, "loss": losses[name], "beta": beta, "epochs": n, "lr": lr, "batch_size": batch}
                for name, beta, n, lr, batch in zip(self.step_names(), betas, epochs, lrs, batches)]


# --- data: PKU-SafeRLHF records -> tokenised pairs (one path with SFT and the score models) ----

def preference_pairs(step: str, records: list[dict]) -> list[dict]:
    """(prompt, chosen, rejected) texts: better vs worse for helpfulness, safer vs less safe for safety."""
    key = "better_response_id" if step == "helpfulness" else "safer_response_id"
    pairs = []
    for r in records:
        chosen = r[key]
        pairs.append({"prompt": r["prompt"], "chosen": r[f"response_{chosen}"],
                      "rejected": r[f"response_{1 - chosen}"]})
    return pairs


def kto_examples(step: str, records: list[dict]) -> list[dict]:
    """(prompt, completion, desirable?) texts: helpfulness labels better as desirable and worse as not,
    safety labels each response by `is_response_i_safe`."""
    examples = []
    for r in records:
        if step == "helpfulness":
            better = r["better_response_id"]
            examples.append({"prompt": r["prompt"], "completion": r[f"response_{better}"], "label": True})
            examples.append({"prompt": r["prompt"], "completion": r[f"response_{1 - better}"], "label": False})
        else:
            for i in (0, 1):
                examples.append({"prompt": r["prompt"], "completion": r[f"response_{i}"],
                                 "label": bool(r[f"is_response_{i}_safe"])})
    return examples


def encode_prompt_and_completion(tokenizer, prompt: str, response: str, template: str,
                                 max_prompt_length: int, max_length: int) -> tuple[list[int], list[int]]:
    """Prompt ids (last `max_prompt_length` tokens) and completion ids (response + eos), as SFT encodes them."""
    ids, n_prompt = modeling.encode_pair(tokenizer, modeling.format_prompt(tokenizer, prompt, template),
                                         response, max_length=10**9)
    prompt_ids = ids[:n_prompt][-max_prompt_length:]
    completion_ids = ids[n_prompt:][: max_length - len(prompt_ids)]
    return prompt_ids, completion_ids


def dpo_dataset(tokenizer, pairs: list[dict], template: str, recipe: Recipe):
    from datasets import Dataset

    rows = []
    for pair in pairs:
        prompt_ids, chosen_ids = encode_prompt_and_completion(tokenizer, pair["prompt"], pair["chosen"], template,
                                                              recipe.max_prompt_length, recipe.max_length)
        _, rejected_ids = encode_prompt_and_completion(tokenizer, pair["prompt"], pair["rejected"], template,
                                                       recipe.max_prompt_length, recipe.max_length)
        rows.append({"prompt_ids": prompt_ids, "chosen_ids": chosen_ids, "rejected_ids": rejected_ids})
    return Dataset.from_list(rows)


def kto_dataset(tokenizer, examples: list[dict], template: str, recipe: Recipe, seed: int):
    """KTO trains in a fixed order (TRL pairs each completion with its batch neighbour's prompt for
    the KL estimate), so the examples are shuffled here, once, by the seed."""
    from datasets import Dataset

    examples = list(examples)
    random.Random(seed).shuffle(examples)
    rows = []
    for ex in examples:
        prompt_ids, completion_ids = encode_prompt_and_completion(tokenizer, ex["prompt"], ex["completion"], template,
                                                                  recipe.max_prompt_length, recipe.max_length)
        rows.append({"prompt_ids": prompt_ids, "completion_ids": completion_ids, "label": ex["label"]})
    # KL estimate (KTO §4.1): completion y_j judged after prompt x_i, rotated by one inside each micro batch
    size = recipe.micro_batch_size
    for start in range(0, len(rows), size):
        chunk = rows[start:start + size]
        rotated = [chunk[-1]["completion_ids"]] + [c["completion_ids"] for c in chunk[:-1]]
        for row, kl_ids in zip(chunk, rotated):
            row["KL_completion_ids"] = kl_ids
    return Dataset.from_list(rows)


def kto_weights(examples: list[dict]) -> tuple[float, float]:
    """(w⁺, w⁻) = (1, n_desirable / n_undesirable): the two classes weigh the same in total."""
    n_desirable = sum(1 for e in examples if e["label"])
    n_undesirable = len(examples) - n_desirable
    if n_desirable == 0 or n_undesirable == 0:
        raise UsageError(f"KTO needs both desirable and undesirable examples; got {n_desirable} desirable, "
                         f"{n_undesirable} undesirable")
    return 1.0, n_desirable / n_undesirable


# --- TRL trainers fed with our tokenisation ------------------------------------------------

def _trainer_classes():
    from trl import DPOTrainer, KTOTrainer

    class PretokenizedDPOTrainer(DPOTrainer):
        """DPOTrainer on rows already holding prompt_ids / chosen_ids / rejected_ids."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    class PretokenizedKTOTrainer(KTOTrainer):
        """KTOTrainer on rows already holding prompt_ids / completion_ids / KL_completion_ids / label."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    return PretokenizedDPOTrainer, PretokenizedKTOTrainer


def _curve_callback(ctx: TrainContext, step_name: str):
    from transformers import TrainerCallback

    class CurveCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            numbers = {f"{step_name}/{k}": float(v) for k, v in (logs or {}).items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)}
            if numbers and state.is_world_process_zero:  # one process logs (several under a launch)
                ctx.log(state.global_step, **numbers)

    return CurveCallback()


def build_trainer(ctx: TrainContext, recipe: Recipe, step: dict, model, tokenizer, output_dir: Path):
    """A TRL trainer for one step. The reference is the model as loaded, before training: its
    log-probs are precomputed, so no second copy stays in memory; with LoRA it is the model with its
    adapters off, read for each batch as it trains, so a fraction of an epoch reads only its pairs."""
    import torch

    from trl import DPOConfig, KTOConfig

    from accelerate import PartialState

    dpo_cls, kto_cls = _trainer_classes()
    # batch sizes are global: P processes (`safebench run --num-processes`) share each step
    processes = PartialState(cpu=not torch.cuda.is_available()).num_processes
    if step["batch_size"] % (recipe.micro_batch_size * processes):
        raise UsageError(f"{step['name']} step: batch size {step['batch_size']}: expected a multiple of micro_batch_size "
                         f"({recipe.micro_batch_size}) x the number of processes ({processes})")
    common = dict(
        output_dir=str(output_dir), num_train_epochs=step["epochs"],
        per_device_train_batch_size=recipe.micro_batch_size,
        gradient_accumulation_steps=step["batch_size"] // (recipe.micro_batch_size * processes),
        learning_rate=step["lr"], lr_scheduler_type=recipe.scheduler, warmup_steps=recipe.warmup_ratio,
        weight_decay=recipe.weight_decay, beta=step["beta"], max_length=recipe.max_length,
        precompute_ref_log_probs=recipe.lora_rank == 0, precompute_ref_batch_size=max(recipe.micro_batch_size, 16),
        logging_steps=1, save_strategy="steps", save_steps=recipe.checkpoint_every, save_total_limit=1,
        report_to="none", seed=ctx.seed, data_seed=ctx.seed, disable_tqdm=ctx.quiet,
        use_cpu=not torch.cuda.is_available(), bf16=ctx.dtype == "bfloat16", dataloader_num_workers=0,
        remove_unused_columns=False, max_grad_norm=1.0,
    )
    callbacks = [_curve_callback(ctx, step["name"])]
    if step["loss"] == "dpo":
        dataset = dpo_dataset(tokenizer, preference_pairs(step["name"], ctx.data.preference), ctx.template, recipe)
        if processes > 1:
            dataset = _shared_on_disk(dataset, output_dir / "dataset")
        args = DPOConfig(loss_type=["sigmoid"], **common)
        return dpo_cls(model=model, ref_model=None, args=args, train_dataset=dataset, processing_class=tokenizer,
                       callbacks=callbacks)
    examples = kto_examples(step["name"], ctx.data.preference)
    desirable_weight, undesirable_weight = kto_weights(examples)
    dataset = kto_dataset(tokenizer, examples, ctx.template, recipe, ctx.seed)
    if processes > 1:
        dataset = _shared_on_disk(dataset, output_dir / "dataset")
    args = KTOConfig(loss_type="kto", desirable_weight=desirable_weight, undesirable_weight=undesirable_weight,
                     train_sampling_strategy="sequential", **common)
    return kto_cls(model=model, ref_model=None, args=args, train_dataset=dataset, processing_class=tokenizer,
                   callbacks=callbacks)


def trainable_model(start_dir: Path, recipe: Recipe, dtype: str):
    """The policy to align, with only what the recipe trains left trainable, as float32 master weights.

    Full fine-tuning loads it in float32: bf16 runs as mixed precision (fp32 master weights, bf16
    autocast), like every trainer here; the published scripts trained the bf16-loaded model itself
    (docs/fidelity.md). With LoRA the frozen base stays in `dtype` and only the adapters are float32."""
    import torch

    from safebench.trainers.score_model import freeze_below

    if recipe.lora_rank == 0:
        model = modeling.load_policy(start_dir, "float32")
        if recipe.train_layers is not None:
            freeze_below(model, recipe.train_layers)
        return model
    from peft import LoraConfig, get_peft_model

    model = modeling.load_policy(start_dir, dtype)
    targets, top = recipe.lora_target_modules, None
    if recipe.train_layers is not None:
        freeze_below(model, recipe.train_layers)  # checks the layer count
        layers = model.base_model.layers
        top = list(range(len(layers) - recipe.train_layers, len(layers)))
        if isinstance(targets, str):  # peft limits layers only for named modules: every linear one of a layer
            targets = sorted({name.rsplit(".", 1)[-1] for name, module in layers[-1].named_modules()
                              if isinstance(module, torch.nn.Linear)})
    config = LoraConfig(r=recipe.lora_rank, lora_alpha=recipe.lora_alpha, target_modules=targets,
                        layers_to_transform=top, task_type="CAUSAL_LM")
    return modeling.trainable_in_float32(get_peft_model(model, config))


def _shared_on_disk(dataset, directory: Path):
    """The dataset read back from `directory`: TRL caches the precomputed reference log-probs beside a
    dataset's files, where every process finds them (an in-memory dataset's cache is in a temporary
    directory of each process's own, and the others wait for a file they never see)."""
    from accelerate import PartialState
    from datasets import load_from_disk

    state = PartialState()
    with state.main_process_first():
        if state.is_main_process:
            shutil.rmtree(directory, ignore_errors=True)
            dataset.save_to_disk(str(directory))
        return load_from_disk(str(directory))


def run_step(ctx: TrainContext, recipe: Recipe, step: dict, start_dir: Path, out_dir: Path) -> None:
    """Align the model in `start_dir` (which is also the step's reference) and save it to `out_dir`."""
    import torch

    from transformers.trainer_utils import get_last_checkpoint

    tokenizer = modeling.load_tokenizer(start_dir)
    model = trainable_model(start_dir, recipe, ctx.dtype)
    trainer_dir = ctx.work_dir / "trainer" / step["name"]
    trainer_dir.mkdir(parents=True, exist_ok=True)
    trainer = build_trainer(ctx, recipe, step, model, tokenizer, trainer_dir)
    if ctx.quiet:
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # the curves go to ctx.log instead
    resume = get_last_checkpoint(str(trainer_dir))
    trainer.train(resume_from_checkpoint=resume)
    model = trainer.model
    accelerator = trainer.accelerator
    if accelerator.num_processes > 1:  # one writer, from weights gathered where they are sharded
        state = accelerator.get_state_dict(trainer.model_wrapped)
        model = engine.plain_copy(model, state) if accelerator.is_main_process else None
    if accelerator.is_main_process:
        if hasattr(model, "merge_and_unload"):  # LoRA: the step's output is an ordinary checkpoint
            model = model.merge_and_unload()
        model.eval()
        if ctx.dtype == "bfloat16":
            model = model.to(torch.bfloat16)
        with atomic_directory(out_dir) as tmp:
            modeling.save_checkpoint(model, tokenizer, tmp)
        shutil.rmtree(trainer_dir, ignore_errors=True)
    accelerator.wait_for_everyone()


def _silence_libraries() -> None:
    """`--quiet`: no per-step log dicts or progress bars from transformers, datasets and TRL."""
    import datasets
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    os.environ["TQDM_DISABLE"] = "1"  # TRL's reference log-prob pass reads this


def _link_tree(source: Path, target: Path) -> None:
    """Hard-link (or copy, across file systems) a checkpoint's files: no second copy on disk."""
    target.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.is_dir():
            _link_tree(path, target / path.name)
            continue
        try:
            os.link(path, target / path.name)
        except OSError:
            shutil.copy2(path, target / path.name)


def train(ctx: TrainContext, recipe: Recipe) -> None:
    if not ctx.data.preference:
        raise UsageError(f"method '{ctx.name}': no preference records in the data (SACPO trains on them)")
    if ctx.quiet:
        _silence_libraries()
    start = Path(ctx.policy_dir)  # SFT: the first step's start and reference
    finished = ctx.work_dir / "steps"
    for step in recipe.step_plan():
        step_dir = finished / step["name"]
        if not (step_dir / "config.json").exists():  # a finished step survives a crash of the next one
            run_step(ctx, recipe, step, start, step_dir)
        start = step_dir  # the second step starts from, and is regularised towards, the first's output
    from accelerate import PartialState

    if not PartialState().is_main_process:  # the checkpoint has one writer
        return
    for name in recipe.step_names():
        _link_tree(finished / name, ctx.out_dir / "steps" / name)
    _link_tree(start, ctx.out_dir)
