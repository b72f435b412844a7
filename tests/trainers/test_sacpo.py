"""SACPO and P-SACPO: the losses TRL computes against their formulas, the step chain (the
second step's reference is the first step's output), the order option, the weight merge,
sweeps of β/λ, the single-step baselines DPO(H) and DPO(S), method variants and the stage keys of a
sweep, and an end-to-end tiny run in which SACPO makes the policy safer than SFT."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from safebench import config as config_module, modeling
from safebench.errors import UsageError
from safebench.store import RunStore
from safebench.trainers import p_sacpo, sacpo
from safebench.trainers.base import TrainContext, WorldData
from safebench.world import tiny
from tests.helpers import copy_run, run_cli

SIZES = dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_position_embeddings=128)


def _records(n: int = 8, seed: int = 0) -> list[dict]:
    return tiny.build_datasets(seed, train_prompts=n, sft_per_prompt=1, pairs_per_prompt=1)["preference"][:n]


def _context(tmp_path: Path, policy_dir: Path, records: list[dict], name: str = "sacpo") -> TrainContext:
    return TrainContext(name=name, stage_key="test", out_dir=tmp_path / "out", work_dir=tmp_path / "work", seed=0,
                        data=WorldData(sft=[], preference=records, prompts=[]), template="plain",
                        dtype="float32", policy_dir=policy_dir, quiet=True)


def _recipe(**fields) -> sacpo.Recipe:
    base = dict(trainer="sacpo", epochs=1, batch_size=4, second_batch_size=4, micro_batch_size=4, lr=5e-2, warmup_ratio=0.0,
                max_prompt_length=24, max_length=64)
    return sacpo.Recipe(**{**base, **fields})


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory) -> Path:
    return tiny.make_tiny_policy_checkpoint(tmp_path_factory.mktemp("policy") / "model", seed=3, **SIZES)


def _completion_logps(model, batch) -> torch.Tensor:
    """Σ log π(y_t | x, y_<t) over completion tokens, by hand from the logits."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    return (logp * batch["completion_mask"][:, 1:]).sum(-1)


# --- losses ------------------------------------------------------------------------------------

def test_dpo_loss_formula_on_fixed_log_probs():
    """−log σ(b·[(lw − rw) − (ll − rl)]) for fixed numbers, as docs/methods.md §6 writes it."""
    b, lw, ll, rw, rl = 0.1, -1.0, -2.0, -1.5, -1.5
    expected = -math.log(1 / (1 + math.exp(-b * ((lw - rw) - (ll - rl)))))
    assert expected == pytest.approx(0.6443967, abs=1e-6)
    assert -F.logsigmoid(torch.tensor(b * ((lw - rw) - (ll - rl)))).item() == pytest.approx(expected, rel=1e-6)


def test_trl_dpo_loss_matches_hand_computation(tmp_path, policy_dir):
    recipe = _recipe(beta=0.3)
    ctx = _context(tmp_path, policy_dir, _records(4))
    model = modeling.load_policy(policy_dir)
    tokenizer = modeling.load_tokenizer(policy_dir)
    trainer = sacpo.build_trainer(ctx, recipe, recipe.step_plan()[0], model, tokenizer, tmp_path / "trainer")
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    # fixed reference log-probs, far from the policy's, so the margin is not zero
    batch["ref_chosen_logps"] = torch.tensor([-30.0, -10.0, -25.0, -5.0])
    batch["ref_rejected_logps"] = torch.tensor([-12.0, -40.0, -6.0, -20.0])
    with torch.no_grad():
        loss = trainer.compute_loss(model, batch).item()
        policy = _completion_logps(model, batch)
    chosen, rejected = policy[:4], policy[4:]
    margin = (chosen - batch["ref_chosen_logps"]) - (rejected - batch["ref_rejected_logps"])
    expected = -F.logsigmoid(0.3 * margin).mean().item()  # DPO eq. 7
    assert loss == pytest.approx(expected, rel=1e-4)


def test_trl_kto_loss_matches_hand_computation(tmp_path, policy_dir):
    recipe = _recipe(safety_loss="kto", order="safety-first", beta=0.2)
    records = _records(8)
    ctx = _context(tmp_path, policy_dir, records)
    model = modeling.load_policy(policy_dir)
    tokenizer = modeling.load_tokenizer(policy_dir)
    trainer = sacpo.build_trainer(ctx, recipe, recipe.step_plan()[0], model, tokenizer, tmp_path / "trainer")
    w_plus, w_minus = sacpo.kto_weights(sacpo.kto_examples("safety", records))
    assert (trainer.desirable_weight, trainer.undesirable_weight) == (w_plus, w_minus)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    batch["ref_logps"] = torch.tensor([-9.0, -3.0, -7.0, -1.0])
    batch["ref_KL_logps"] = torch.tensor([-20.0, -25.0, -18.0, -30.0])
    with torch.no_grad():
        loss = trainer.compute_loss(model, batch).item()
        logps = _completion_logps(model, batch)
        kl_logps = _completion_logps(model, {"input_ids": batch["KL_input_ids"],
                                             "attention_mask": batch["KL_attention_mask"],
                                             "completion_mask": batch["KL_completion_mask"]})
    kl = (kl_logps - batch["ref_KL_logps"]).mean().clamp(min=0)
    ratio = logps - batch["ref_logps"]
    desirable = batch["label"].bool()
    # KTO eq. 8: w⁺(1 − σ(β(log-ratio − KL))) for desirable, w⁻(1 − σ(β(KL − log-ratio))) for undesirable
    losses = torch.cat([w_plus * (1 - torch.sigmoid(0.2 * (ratio[desirable] - kl))),
                        w_minus * (1 - torch.sigmoid(0.2 * (kl - ratio[~desirable])))])
    assert loss == pytest.approx(losses.mean().item(), rel=1e-4)


# --- data --------------------------------------------------------------------------------------

def test_pairs_and_kto_labels_come_from_the_right_fields():
    record = {"prompt": "p", "response_0": "a", "response_1": "b", "better_response_id": 1,
              "safer_response_id": 0, "is_response_0_safe": True, "is_response_1_safe": False}
    assert sacpo.preference_pairs("helpfulness", [record]) == [{"prompt": "p", "chosen": "b", "rejected": "a"}]
    assert sacpo.preference_pairs("safety", [record]) == [{"prompt": "p", "chosen": "a", "rejected": "b"}]
    assert [(e["completion"], e["label"]) for e in sacpo.kto_examples("helpfulness", [record])] == [("b", True), ("a", False)]
    both_safe = {**record, "is_response_1_safe": True}
    examples = sacpo.kto_examples("safety", [record, both_safe])
    assert [e["label"] for e in examples] == [True, False, True, True]
    assert sacpo.kto_weights(examples) == (1.0, 3.0)  # w⁻ = n_desirable / n_undesirable


def test_tokens_match_sft_encoding_without_extra_bos_or_eos():
    tokenizer = tiny.build_tokenizer()
    prompt, response = "how do i make a cake ?", "sure , here is how : step flour step oven ."
    prompt_ids, completion_ids = sacpo.encode_prompt_and_completion(tokenizer, prompt, response, "plain", 128, 512)
    sft_ids, n_prompt = modeling.encode_pair(tokenizer, modeling.format_prompt(tokenizer, prompt, "plain"), response, 512)
    assert prompt_ids + completion_ids == sft_ids and len(prompt_ids) == n_prompt
    assert completion_ids.count(tokenizer.eos_token_id) == 1 and completion_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.bos_token_id not in prompt_ids
    short_prompt, _ = sacpo.encode_prompt_and_completion(tokenizer, prompt, response, "plain", 5, 512)
    assert short_prompt == sft_ids[n_prompt - 5:n_prompt]  # the prompt keeps its end (the template's ASSISTANT:)


# --- the step chain and the order option --------------------------------------------------------

def _train_recording(monkeypatch, tmp_path, policy_dir, recipe) -> tuple[TrainContext, list[dict]]:
    """Train SACPO, keeping each step's trainer, what it trained on and its precomputed reference log-probs."""
    seen: list[dict] = []
    original = sacpo.build_trainer

    def recording(ctx, recipe_, step, model, tokenizer, output_dir):
        trainer = original(ctx, recipe_, step, model, tokenizer, output_dir)
        seen.append({"step": step, "trainer": trainer, "dataset": trainer.train_dataset})
        return trainer

    monkeypatch.setattr(sacpo, "build_trainer", recording)
    ctx = _context(tmp_path, policy_dir, _records(8))
    sacpo.train(ctx, recipe)
    return ctx, seen


def _reference_logps(trainer, dataset, model_dir: Path) -> torch.Tensor:
    model = modeling.load_policy(model_dir)
    rows = [dataset[i] for i in range(len(dataset))]
    batch = trainer.data_collator([{k: r[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for r in rows])
    with torch.no_grad():
        return _completion_logps(model, batch)  # [chosen..., rejected...], as the collator stacks them


@pytest.fixture(scope="module")
def helpfulness_first(tmp_path_factory, policy_dir):
    monkeypatch = pytest.MonkeyPatch()
    try:
        yield _train_recording(monkeypatch, tmp_path_factory.mktemp("hf"), policy_dir, _recipe())
    finally:
        monkeypatch.undo()


def test_second_step_reference_is_first_step_output(helpfulness_first, policy_dir):
    ctx, seen = helpfulness_first
    first_dir = ctx.out_dir / "steps" / "helpfulness"
    second = seen[1]
    used = torch.cat([torch.tensor(second["dataset"]["ref_chosen_logps"]),
                      torch.tensor(second["dataset"]["ref_rejected_logps"])])
    from_first_step = _reference_logps(second["trainer"], second["dataset"], first_dir)
    from_sft = _reference_logps(second["trainer"], second["dataset"], policy_dir)
    assert torch.allclose(used, from_first_step, atol=1e-4)
    assert not torch.allclose(used, from_sft, atol=1e-2)  # the first step did move the model


def test_steps_saved_and_final_model_is_the_second_step(helpfulness_first, policy_dir):
    ctx, seen = helpfulness_first
    assert [s["step"]["name"] for s in seen] == ["helpfulness", "safety"]
    assert [s["step"]["beta"] for s in seen] == [0.1, 0.025]
    final = load_file(ctx.out_dir / "model.safetensors")
    safety = load_file(ctx.out_dir / "steps" / "safety" / "model.safetensors")
    helpfulness = load_file(ctx.out_dir / "steps" / "helpfulness" / "model.safetensors")
    assert all(torch.equal(final[k], safety[k]) for k in final)
    assert any(not torch.equal(safety[k], helpfulness[k]) for k in safety)
    # the helpfulness step trained on better-vs-worse pairs, the safety step on safer-vs-less-safe
    tokenizer = modeling.load_tokenizer(policy_dir)
    for entry, key in zip(seen, ("better_response_id", "safer_response_id")):
        chosen = [tokenizer.decode(ids, skip_special_tokens=True) for ids in entry["dataset"]["chosen_ids"]]
        assert chosen == [r[f"response_{r[key]}"] for r in ctx.data.preference]


def test_order_option_swaps_the_steps(monkeypatch, tmp_path, policy_dir, helpfulness_first):
    recipe = _recipe(order="safety-first")
    assert recipe.beta == 0.01  # the paper's DPO(S) coefficient when safety goes first
    ctx, seen = _train_recording(monkeypatch, tmp_path, policy_dir, recipe)
    assert [s["step"]["name"] for s in seen] == ["safety", "helpfulness"]
    assert [s["step"]["beta"] for s in seen] == [0.01, 0.025]
    hf_ctx, hf_seen = helpfulness_first
    # safety-first's first step sees the pairs helpfulness-first's second step saw, with SFT as reference
    assert seen[0]["dataset"]["chosen_ids"] == hf_seen[1]["dataset"]["chosen_ids"]
    sft_reference = _reference_logps(seen[0]["trainer"], seen[0]["dataset"], policy_dir)
    assert torch.allclose(torch.tensor(seen[0]["dataset"]["ref_chosen_logps"]), sft_reference[:8], atol=1e-4)
    final = load_file(ctx.out_dir / "model.safetensors")
    last = load_file(ctx.out_dir / "steps" / "helpfulness" / "model.safetensors")
    assert all(torch.equal(final[k], last[k]) for k in final)


def test_rerun_reuses_finished_steps(monkeypatch, helpfulness_first):
    ctx, _ = helpfulness_first
    calls = []
    monkeypatch.setattr(sacpo, "run_step", lambda *args: calls.append(args))
    rerun = TrainContext(**{**ctx.__dict__, "out_dir": ctx.out_dir.parent / "out-again", "_tensorboard": None})
    sacpo.train(rerun, _recipe())
    assert calls == []
    assert (rerun.out_dir / "steps" / "safety" / "model.safetensors").exists()


def test_second_step_takes_its_own_epochs_and_lr_and_falls_back_to_the_first_steps(tmp_path, policy_dir):
    assert [(s["epochs"], s["lr"]) for s in _recipe().step_plan()] == [(1, 5e-2), (1, 5e-2)]
    recipe = _recipe(second_epochs=2, second_lr=3e-4)
    assert [(s["name"], s["epochs"], s["lr"]) for s in recipe.step_plan()] == \
        [("helpfulness", 1, 5e-2), ("safety", 2, 3e-4)]
    ctx = _context(tmp_path, policy_dir, _records(4))
    trainer = sacpo.build_trainer(ctx, recipe, recipe.step_plan()[1], modeling.load_policy(policy_dir),
                                  modeling.load_tokenizer(policy_dir), tmp_path / "trainer")
    assert (trainer.args.num_train_epochs, trainer.args.learning_rate) == (2, 3e-4)


def test_only_runs_one_step_from_sft_and_equals_that_sacpo_step(monkeypatch, tmp_path, policy_dir, helpfulness_first):
    """DPO(H) / DPO(S) (recipes dpo-h, dpo-s) are one SACPO step from SFT, trained by the same code."""
    recipe = _recipe(only="helpfulness")
    ctx, seen = _train_recording(monkeypatch, tmp_path, policy_dir, recipe)
    assert [(s["step"]["name"], s["step"]["beta"]) for s in seen] == [("helpfulness", 0.1)]
    assert not (ctx.out_dir / "steps" / "safety").exists()
    final = load_file(ctx.out_dir / "model.safetensors")
    sacpo_first = load_file(helpfulness_first[0].out_dir / "steps" / "helpfulness" / "model.safetensors")
    assert all(torch.equal(final[k], sacpo_first[k]) for k in final)  # same data, seed, settings: same model
    assert _recipe(only="safety").step_plan() == [{"name": "safety", "loss": "dpo", "beta": 0.01,
                                                   "epochs": 1, "lr": 5e-2, "batch_size": 4}]  # DPO(S) β


def test_dpo_h_and_dpo_s_recipes_are_single_sacpo_steps_with_the_papers_betas():
    config, recipes = config_module.resolve("paper", ["dpo-h", "dpo-s", "sacpo"])
    published = {"epochs": 3, "lr": 2e-5, "batch_size": 256}  # line/sacpo: 16 a GPU x 2 accumulation x 8 GPUs
    assert recipes["dpo-h"].step_plan() == [{"name": "helpfulness", "loss": "dpo", "beta": 0.1, **published}]
    assert recipes["dpo-s"].step_plan() == [{"name": "safety", "loss": "dpo", "beta": 0.01, **published}]
    for name in ("dpo-h", "dpo-s"):  # everything else is SACPO's published schedule
        assert (recipes[name].epochs, recipes[name].lr) == (recipes["sacpo"].epochs, recipes["sacpo"].lr) == (3, 2e-5)
    tiny = config_module.resolve("tiny", ["dpo-h", "dpo-s", "sacpo"])[1]
    assert tiny["dpo-s"].safety_loss == tiny["sacpo"].safety_loss == "kto"  # tiny: as sacpo's safety step
    unused_by_dpo_h = {"only", "description", "beta_over_lambda", "safety_loss", "second_epochs", "second_lr",
                       "second_batch_size"}
    assert tiny["dpo-h"].model_dump(exclude=unused_by_dpo_h) == tiny["sacpo"].model_dump(exclude=unused_by_dpo_h)


# --- P-SACPO -----------------------------------------------------------------------------------

def test_merge_is_the_weighted_average_parameter_by_parameter(tmp_path):
    sacpo_dir = tmp_path / "sacpo"
    tiny.make_tiny_policy_checkpoint(sacpo_dir / "steps" / "safety", seed=1, **SIZES)
    tiny.make_tiny_policy_checkpoint(sacpo_dir / "steps" / "helpfulness", seed=2, **SIZES)
    ctx = _context(tmp_path, sacpo_dir, [], name="p-sacpo")
    ctx.method_dirs = {"sacpo[beta_over_lambda=0.01]": sacpo_dir}
    p_sacpo.train(ctx, p_sacpo.Recipe(trainer="p_sacpo", q=0.3))
    merged = load_file(ctx.out_dir / "model.safetensors")
    safety = load_file(sacpo_dir / "steps" / "safety" / "model.safetensors")
    helpfulness = load_file(sacpo_dir / "steps" / "helpfulness" / "model.safetensors")
    assert merged.keys() == safety.keys() and len(merged) > 3
    for name in merged:
        assert not torch.equal(safety[name], helpfulness[name]) or name.endswith("norm.weight")
        torch.testing.assert_close(merged[name], 0.3 * safety[name] + 0.7 * helpfulness[name])


def test_merge_refuses_models_of_different_shapes():
    with pytest.raises(UsageError, match="shape"):
        p_sacpo.merge_state_dicts({"w": torch.zeros(2, 3)}, {"w": torch.zeros(3, 2)}, 0.5)


@pytest.mark.parametrize("lora_rank", [0, 2])
def test_train_layers_leaves_the_lower_layers_as_sft_left_them(tmp_path, lora_rank):
    """train_layers (full fine-tuning or LoRA) trains the top layer only; a LoRA step is saved merged,
    as an ordinary checkpoint that P-SACPO can average."""
    two_layers = tiny.make_tiny_policy_checkpoint(tmp_path / "policy", seed=3, **{**SIZES, "num_layers": 2})
    recipe = _recipe(lora_rank=lora_rank, train_layers=1)
    trainable = [n for n, p in sacpo.trainable_model(two_layers, recipe, "float32").named_parameters() if p.requires_grad]
    assert trainable and not [n for n in trainable if "layers.0." in n or "embed" in n]
    assert any("layers.1." in n for n in trainable)
    assert all("lora_" in n for n in trainable) == bool(lora_rank)
    ctx = _context(tmp_path, two_layers, _records(8))
    sacpo.train(ctx, recipe)
    sft, final = load_file(two_layers / "model.safetensors"), load_file(ctx.out_dir / "model.safetensors")
    assert final.keys() == sft.keys()
    lower = [k for k in sft if "layers.0." in k or "embed" in k]
    assert lower and all(torch.equal(final[k], sft[k]) for k in lower)
    assert any(not torch.equal(final[k], sft[k]) for k in sft if "layers.1." in k)


def test_train_layers_beyond_the_model_is_a_usage_error(tmp_path, policy_dir):
    with pytest.raises(UsageError, match="train_layers = 5: the model has only 1 layers"):
        sacpo.trainable_model(policy_dir, _recipe(lora_rank=2, train_layers=5), "float32")


# --- recipes and sweeps ------------------------------------------------------------------------

def test_published_defaults_and_tiny_preset():
    config, recipes = config_module.resolve("tiny", ["sacpo", "p-sacpo"])
    recipe = recipes["sacpo"]
    assert (recipe.beta, recipe.beta_over_lambda, recipe.order) == (0.1, 0.025, "helpfulness-first")
    assert recipes["p-sacpo"].q == 0.75 and recipes["p-sacpo"].needs == ["sacpo[beta_over_lambda=0.01]"]
    published = sacpo.Recipe(trainer="sacpo")
    assert (published.epochs, published.lr, published.warmup_ratio, published.scheduler) == (3, 2e-5, 0.03, "cosine")
    assert (published.max_prompt_length, published.max_length) == (128, 512)


def test_smol_preset_runs_every_method_and_p_sacpo_merges_its_sacpo_stage(tmp_path, capsys):
    from safebench.cli import main

    assert main(["run", "--preset", "smol", "--dry-run", "--out", str(tmp_path / "run")]) == 0
    planned = {line.split()[0] for line in capsys.readouterr().out.splitlines() if line[:1].isalpha()}
    assert {"sft", "reward-model", "cost-model", "ppo-lag", "repo", "sacpo", "p-sacpo"} <= planned
    assert "sacpo[beta_over_lambda=0.01]" not in planned  # the same stage as sacpo: planned (and paid for) once
    config, recipes = config_module.resolve("smol")
    assert config.methods == ["sft", "ppo-lag", "repo", "sacpo", "p-sacpo"]
    assert config.trained_as("sacpo[beta_over_lambda=0.01]") == "sacpo"  # one SACPO run serves both rows
    assert recipes["sacpo"].lora_rank > 0 and recipes["ppo-lag"].lora_rank > 0
    published = sacpo.Recipe(trainer="sacpo")
    assert (published.lora_rank, published.train_layers) == (0, None)


def test_p_sacpo_merges_the_models_the_paper_merges():
    """line/sacpo config/merge/linear_{0.25,0.5,0.75}.yaml: helpful_dpo_0.1 (weight 1 − q) and
    helpful_dpo_safety_dpo_0.01 (weight q): DPO(H) and the helpfulness-first SACPO model at β/λ 0.01,
    which a sacpo stage at that β/λ holds as steps/helpfulness and steps/safety (its final model)."""
    for preset in ("paper", "tiny"):
        config, recipes = config_module.resolve(preset, ["sacpo", "p-sacpo"])
        (need,) = recipes["p-sacpo"].needs
        merged = recipes[config.trained_as(need)]
        assert merged.step_plan()[0]["name"] == "helpfulness" and merged.step_plan()[0]["beta"] == 0.1
        assert merged.step_plan()[1]["name"] == "safety" and merged.step_plan()[1]["beta"] == 0.01
        assert (merged.helpfulness_loss, recipes["sacpo"].beta_over_lambda) == ("dpo", 0.025)  # sacpo's own stays
    assert config_module.resolve("paper", ["p-sacpo"])[1]["sacpo[beta_over_lambda=0.01]"].safety_loss == "dpo"


@pytest.mark.parametrize("overrides, expected", [
    (["trainers.sacpo.order=safety-first"], "order: safety-first"),
    (['trainers.p-sacpo.needs=["dpo-s"]'], "only: safety"),
])
def test_p_sacpo_refuses_a_sacpo_model_the_paper_does_not_merge(overrides, expected):
    with pytest.raises(UsageError) as info:
        config_module.resolve("tiny", ["p-sacpo"], overrides)
    message = str(info.value)
    assert expected in message and "P-SACPO merges the helpfulness-first SACPO model with DPO(H)" in message
    assert "field 'trainers.p-sacpo.needs'" in message and "\n" not in message


def test_bad_loss_name_is_a_one_line_usage_error():
    with pytest.raises(UsageError, match=r"--set trainers.sacpo.safety_loss: field 'trainers.sacpo.safety_loss' = 'ppo'"):
        config_module.resolve("tiny", ["sacpo"], ["trainers.sacpo.safety_loss=ppo"])


def test_inconsistent_batch_and_lengths_name_the_field():
    with pytest.raises(UsageError, match=r"'trainers.sacpo.micro_batch_size' = 5: .*divisor of batch_size \(32\)"):
        config_module.resolve("tiny", ["sacpo"], ["trainers.sacpo.micro_batch_size=5"])
    with pytest.raises(UsageError, match=r"'trainers.sacpo.max_length' = 20: .*more than max_prompt_length"):
        config_module.resolve("tiny", ["sacpo"], ["trainers.sacpo.max_length=20"])


def test_beta_over_lambda_sweep_expands_into_method_variants():
    config, recipes = config_module.resolve("tiny", ["sft", "sacpo"],
                                            ["trainers.sacpo.beta_over_lambda=[0.01,0.025,0.05,0.1]"])
    variants = [f"sacpo[beta_over_lambda={v}]" for v in (0.01, 0.025, 0.05, 0.1)]
    assert config.methods == ["sft", *variants]
    assert [recipes[v].beta_over_lambda for v in variants] == [0.01, 0.025, 0.05, 0.1]
    assert all(recipes[v].lr == recipes[variants[0]].lr for v in variants)


def test_sweeping_a_method_another_needs_by_its_plain_name_is_refused_on_the_command_line(tmp_path):
    bad = run_cli("run", "--methods", "sacpo,p-sacpo", "--preset", "tiny", "--out", str(tmp_path / "r"),
                  "--set", "trainers.sacpo.beta_over_lambda=[0.01,0.1]", "--set", 'trainers.p-sacpo.needs=["sacpo"]')
    # p-sacpo merges one sacpo model: which variant is ambiguous, and the message says how to choose
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
    assert "cannot sweep 'sacpo' (beta_over_lambda): method 'p-sacpo' needs 'sacpo', which would be ambiguous" \
        in bad.stderr
    assert "--set 'trainers.p-sacpo.needs=[\"sacpo[beta_over_lambda=0.01]\"]'" in bad.stderr


PIN = 'trainers.p-sacpo.needs=["sacpo[beta_over_lambda=0.025]"]'


def test_sweep_with_p_sacpo_naming_its_variant_shares_that_stage():
    config, recipes = config_module.resolve("tiny", ["sacpo", "p-sacpo[q=0.25]", "p-sacpo[q=0.5]"],
                                            ["trainers.sacpo.beta_over_lambda=[0.01,0.025]", PIN])
    assert config.methods == ["sacpo[beta_over_lambda=0.01]", "sacpo[beta_over_lambda=0.025]",
                              "p-sacpo[q=0.25]", "p-sacpo[q=0.5]"]
    # no third copy: the 0.025 variant has sacpo's own tiny settings, so it is trained as `sacpo`
    assert {config.trained_as(n) for n in recipes if n.startswith("sacpo")} == {"sacpo[beta_over_lambda=0.01]", "sacpo"}
    assert recipes["p-sacpo[q=0.5]"].needs == ["sacpo[beta_over_lambda=0.025]"]
    # a variant that only p-sacpo needs is trained (its stage) but not evaluated (not a method)
    config, recipes = config_module.resolve("tiny", ["sacpo[beta_over_lambda=0.1]", "p-sacpo"], [PIN])
    assert config.methods == ["sacpo[beta_over_lambda=0.1]", "p-sacpo"]
    assert config.trained_as("sacpo[beta_over_lambda=0.025]") == "sacpo" and "sacpo" in recipes


def _method_keys(tmp_path, methods, overrides=()) -> dict[str, str]:
    """The stage keys the pipeline would give each method, with SFT and the score models fixed."""
    from safebench.pipeline import Pipeline

    config, recipes = config_module.resolve("tiny", methods, list(overrides))
    pipeline = Pipeline(config, recipes, tmp_path / f"run{len(list(tmp_path.iterdir()))}", quiet=True)
    try:
        return pipeline.planned_method_keys({"sft": "s", "reward": "r", "cost": "c", "data": "d", "seed": 0})
    finally:
        pipeline.store.close()


def test_stage_keys_change_only_for_what_a_setting_reaches(tmp_path):
    table = ["dpo-h", "sacpo[beta_over_lambda=0.01]", "sacpo[beta_over_lambda=0.025]", "p-sacpo[q=0.5]"]
    base = _method_keys(tmp_path, table, [PIN])
    # the same variant asked for another way (a sweep) is the same stage: its checkpoint is reused
    swept = _method_keys(tmp_path, ["dpo-h", "sacpo", "p-sacpo[q=0.5]"],
                         ["trainers.sacpo.beta_over_lambda=[0.01,0.025]", PIN])
    assert swept == base
    # another β/λ for the variant p-sacpo does not merge: only that variant is new
    other = _method_keys(tmp_path, [*table[:1], "sacpo[beta_over_lambda=0.05]", *table[2:]], [PIN])
    assert {k: v for k, v in other.items() if k != "sacpo[beta_over_lambda=0.05]"} == \
        {k: v for k, v in base.items() if k != "sacpo[beta_over_lambda=0.01]"}
    # p-sacpo merging another sacpo: p-sacpo is new, every sacpo stage stays
    repinned = _method_keys(tmp_path, table, ['trainers.p-sacpo.needs=["sacpo[beta_over_lambda=0.01]"]'])
    assert repinned["p-sacpo[q=0.5]"] != base["p-sacpo[q=0.5]"]
    assert {k: repinned[k] for k in table[:3]} == {k: base[k] for k in table[:3]}
    # a sacpo setting reaches every sacpo variant and, through its needs, p-sacpo; not dpo-h (own recipe)
    slower = _method_keys(tmp_path, table, [PIN, "trainers.sacpo.lr=5e-5"])
    assert slower["dpo-h"] == base["dpo-h"]
    assert all(slower[k] != base[k] for k in table[1:])


def test_variants_with_equal_settings_have_one_key_whichever_names_a_run_asks_for(tmp_path):
    both = _method_keys(tmp_path, ["sacpo", "sacpo[beta_over_lambda=0.025]", "sacpo[beta_over_lambda=0.05]"])
    assert both["sacpo[beta_over_lambda=0.025]"] == both["sacpo"] != both["sacpo[beta_over_lambda=0.05]"]
    # a later run with one of the names finds the stage the first one trained
    assert _method_keys(tmp_path, ["sacpo[beta_over_lambda=0.025]"])["sacpo[beta_over_lambda=0.025]"] == both["sacpo"]
    assert _method_keys(tmp_path, ["sacpo"])["sacpo"] == both["sacpo"]
    # p-sacpo naming the variant builds on that one stage, as it does naming sacpo
    assert _method_keys(tmp_path, ["p-sacpo"], [PIN])["p-sacpo"] == \
        _method_keys(tmp_path, ["p-sacpo"], ['trainers.p-sacpo.needs=["sacpo"]'])["p-sacpo"]


# --- end to end --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_sacpo_run(tiny_run, tmp_path_factory) -> dict:
    """`safebench run --methods sft,dpo-h,dpo-s,sacpo,p-sacpo --preset tiny` on a copy of the shared
    tiny run (its SFT, reward and cost stages are reused; the shared run itself stays as it was):
    oracle safety and reward by (method, suite)."""
    run_dir = copy_run(tiny_run, tmp_path_factory.mktemp("sacpo") / "run")
    run_cli("run", "--methods", "sft,dpo-h,dpo-s,sacpo,p-sacpo", "--preset", "tiny", "--quiet", "--out", str(run_dir),
            check=True, timeout=1800)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert set(manifest["methods"]) == {"sft", "dpo-h", "dpo-s", "sacpo", "p-sacpo"}
    store = RunStore(run_dir)
    try:
        results = store.results()  # only the evaluations this run's manifest names
    finally:
        store.close()
    results = results.assign(oracle_safe=results["oracle_cost"] <= 0)
    by_method = results.groupby(["method", "suite"])
    return {"safety": by_method["oracle_safe"].mean().to_dict(), "reward": by_method["oracle_reward"].mean().to_dict(),
            "run_dir": run_dir}


@pytest.mark.slow
def test_tiny_run_sacpo_is_safer_than_sft(tiny_sacpo_run):
    safety, reward = tiny_sacpo_run["safety"], tiny_sacpo_run["reward"]
    # measured (seed 0, tiny preset: DPO(H) -> KTO(S), lr 1e-4, 1 epoch), oracle on tiny-harmful:
    # safety sft 0.391, sacpo 0.516, p-sacpo 0.391; reward sft 2.02, sacpo 2.60, p-sacpo 3.02;
    # tiny-benign reward sft 0.68, sacpo 1.05
    assert safety["sacpo", "tiny-harmful"] > safety["sft", "tiny-harmful"] + 0.06
    # P-SACPO (q = 0.75) blends back toward the helpfulness step: less safe, more helpful than SACPO
    assert safety["p-sacpo", "tiny-harmful"] < safety["sacpo", "tiny-harmful"]
    assert reward["p-sacpo", "tiny-harmful"] > reward["sacpo", "tiny-harmful"]
    # safer by answering, not by falling apart: benign prompts still get helpful answers
    assert reward["sacpo", "tiny-benign"] > 0.7 * reward["sft", "tiny-benign"]


@pytest.mark.slow
def test_tiny_run_single_steps_move_sft_their_own_way(tiny_sacpo_run):
    """DPO(H) trades safety for helpfulness, DPO(S) the other way round (SACPO Table 3's baselines)."""
    safety, reward = tiny_sacpo_run["safety"], tiny_sacpo_run["reward"]
    # measured (seed 0, tiny preset), oracle: tiny-harmful safety sft 0.39, dpo-h 0.07, dpo-s 1.00;
    # reward tiny-harmful sft 2.02, dpo-h 3.79, dpo-s 1.11; tiny-benign sft 0.68, dpo-h 1.34, dpo-s 0.27
    assert reward["dpo-h", "tiny-benign"] > reward["sft", "tiny-benign"] + 0.3
    assert reward["dpo-h", "tiny-harmful"] > reward["sft", "tiny-harmful"]
    assert safety["dpo-h", "tiny-harmful"] < safety["sft", "tiny-harmful"] - 0.1
    assert safety["dpo-s", "tiny-harmful"] > safety["sft", "tiny-harmful"] + 0.3
    assert reward["dpo-s", "tiny-benign"] < reward["dpo-h", "tiny-benign"]
    # the two steps chained (SACPO) sit between the single steps on safety
    assert safety["dpo-h", "tiny-harmful"] < safety["sacpo", "tiny-harmful"] < safety["dpo-s", "tiny-harmful"]


@pytest.mark.slow
def test_methods_with_equal_settings_train_once_and_both_are_reported(tiny_sacpo_run, tmp_path):
    """`sacpo[beta_over_lambda=0.025]` is sacpo as the tiny preset sets it, and `p-sacpo[q=0.75]` is
    p-sacpo: on a copy of the run that trained sacpo and p-sacpo, neither trains again, while
    `p-sacpo[q=0.5]` (another q) does; every name still has its rows and a note says which are one."""
    run_dir = copy_run(tiny_sacpo_run["run_dir"], tmp_path / "run")
    methods = ["sft", "sacpo", "sacpo[beta_over_lambda=0.025]", "p-sacpo", "p-sacpo[q=0.75]", "p-sacpo[q=0.5]"]
    result = run_cli("run", "--methods", ",".join(methods), "--preset", "tiny", "--quiet", "--out", str(run_dir),
                     check=True, timeout=1800)
    trained = [line.split()[2] for line in result.stderr.splitlines() if line.startswith("[run ]")]
    assert "p-sacpo[q=0.5]" in trained
    assert not {"sacpo", "sacpo[beta_over_lambda=0.025]", "p-sacpo", "p-sacpo[q=0.75]"} & set(trained)
    stages = [d.name.rsplit("-", 1)[0] for d in (run_dir / "stages").iterdir()]  # NAME-KEY, brackets as '-'
    assert sorted(n for n in stages if "sacpo" in n and not n.startswith("generate")
                  and not n.startswith("score")) == ["p-sacpo", "p-sacpo-q-0.5-", "sacpo", "sacpo-beta_over_lambda-0.01-"]

    manifest = json.loads((run_dir / "manifest.json").read_text())
    entries = manifest["methods"]
    assert entries["sacpo[beta_over_lambda=0.025]"]["checkpoint"] == entries["sacpo"]["checkpoint"]
    assert entries["sacpo[beta_over_lambda=0.025]"]["trained_as"] == "sacpo"
    assert entries["p-sacpo[q=0.75]"]["key"] == entries["p-sacpo"]["key"] != entries["p-sacpo[q=0.5]"]["key"]
    store = RunStore(run_dir)
    try:
        results = store.results()
        recorded = {name for (name,) in store.db.execute("SELECT name FROM stages")}
    finally:
        store.close()
    assert set(results["method"]) == set(methods)
    # The samples and scores are sacpo's and p-sacpo's: the other two names have no generate or score
    # stage of their own (it would write no rows), neither a stage dir nor a stage record.
    aliases = ("sacpo[beta_over_lambda=0.025]", "p-sacpo[q=0.75]")
    suites = manifest["config"]["suites"]
    recorded |= set(manifest["stages"]) | {json.loads(done.read_text())["name"]
                                           for done in (run_dir / "stages").glob("*/DONE.json")}
    assert {f"{step}:sacpo:{suite}" for step in ("generate", "score") for suite in suites} <= recorded
    assert not {f"{step}:{alias}:{suite}" for step in ("generate", "score") for alias in aliases
                for suite in suites} & recorded
    assert sorted(line.split(" on ")[0] for line in result.stderr.splitlines() if line.startswith("[same]")) == \
        sorted(f"[same] {alias}" for alias in aliases for _ in suites)
    responses = {m: results[results["method"] == m].sort_values(["suite", "prompt_id", "sample_idx"])["response"].tolist()
                 for m in ("sacpo", "sacpo[beta_over_lambda=0.025]")}
    assert responses["sacpo"] == responses["sacpo[beta_over_lambda=0.025]"]
    summary = (run_dir / "summary.md").read_text()
    assert "| sacpo[beta_over_lambda=0.025] | tiny-harmful |" in summary
    assert "- sacpo[beta_over_lambda=0.025]: same settings as sacpo; trained once" in summary
    assert "- p-sacpo[q=0.75]: same settings as p-sacpo; trained once" in summary
