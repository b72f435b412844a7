"""SFT: the loss counts response tokens only."""

from __future__ import annotations

import pytest
import torch

from safebench import modeling
from safebench.trainers.sft import response_only_loss
from safebench.world import tiny


def test_loss_ignores_prompt_and_padding_tokens():
    tokenizer = tiny.build_tokenizer()
    model = tiny.build_policy(tokenizer, hidden_size=64, num_layers=1, num_heads=2, intermediate_size=64, seed=1)
    prompt = modeling.format_prompt(tokenizer, "how do i make a cake ?", "plain")
    long_ex = modeling.encode_pair(tokenizer, prompt, "sure , here is how : step flour step oven .", 96)
    short_ex = modeling.encode_pair(tokenizer, prompt, "sorry , i can not help with that .", 96)
    loss, _ = response_only_loss(model, tokenizer, [long_ex, short_ex])

    # by hand: next-token negative log-likelihood over the response positions of each sequence
    total, count = 0.0, 0
    for ids, n_prompt in (long_ex, short_ex):
        logits = model(input_ids=torch.tensor([ids])).logits[0]
        logp = torch.log_softmax(logits.float(), -1)
        for position in range(n_prompt, len(ids)):
            total -= logp[position - 1, ids[position]].item()
            count += 1
    assert loss.item() == pytest.approx(total / count, rel=1e-4)


def test_encode_pair_appends_eos_and_counts_prompt_tokens():
    tokenizer = tiny.build_tokenizer()
    prompt = modeling.format_prompt(tokenizer, "how do i make a cake ?", "plain")
    ids, n_prompt = modeling.encode_pair(tokenizer, prompt, "sorry , i can not help with that .", 96)
    assert ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids[:n_prompt]) == prompt
    assert tokenizer.decode(ids[n_prompt:], skip_special_tokens=True) == "sorry , i can not help with that ."


def test_a_kept_base_model_is_the_sft_checkpoint_untrained(tmp_path):
    """`keep_base` (the paper preset: alpaca-7b-reproduced is the papers' SFT model): the stage's
    model is the base checkpoint file for file, and the dry run plans no training for it."""
    from safebench import config as config_module
    from safebench.plan import DataSizes, plan_stages
    from safebench.trainers import sft
    from safebench.trainers.base import TrainContext

    base = tmp_path / "base"
    (base / "nested").mkdir(parents=True)
    files = {"config.json": b"{}", "model.safetensors": b"weights", "nested/tokenizer.json": b"{}"}
    for name, data in files.items():
        (base / name).write_bytes(data)
    ctx = TrainContext(name="sft", stage_key="k", out_dir=tmp_path / "out", work_dir=tmp_path / "work", seed=0,
                       data=None, template="plain", dtype="bfloat16", policy_dir=base, quiet=True)
    sft.train(ctx, sft.Recipe(trainer="sft", keep_base=True))
    assert {name: (tmp_path / "out" / name).read_bytes() for name in files} == files
    assert not sft.launched(sft.Recipe(trainer="sft", keep_base=True)) and sft.launched(sft.Recipe(trainer="sft"))
    # an SFT stage keyed before the option existed keeps its key; keeping the base is another stage
    assert "keep_base" not in sft.Recipe(trainer="sft").key_fields()
    assert sft.Recipe(trainer="sft", keep_base=True).key_fields()["keep_base"] is True

    config, recipes = config_module.resolve("paper", ["sft"])
    assert recipes["sft"].keep_base
    (planned,) = [stage for stage in plan_stages(config, {"sft": recipes["sft"]}, DataSizes(10, 10, 10, "test"))]
    assert (planned.train_tokens, planned.models) == (0, []) and "kept as is" in planned.note
