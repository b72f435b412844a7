"""Speed-ups of the PPO core that must not change what it computes: the update's own forward in
place of the experience pass, and the fused AdamW kernel."""

from __future__ import annotations

import pytest
import torch

from safebench import modeling
from safebench.trainers import loop, ppo, ppo_lag, repo
from tests.trainers import ppo_fixtures

# one optimizer step, one micro batch, one PPO epoch per iteration: the published setting; no
# warmup, so the first step moves the actor that samples the second iteration
ONE_PASS = {**ppo_fixtures.TINY_RECIPE, "micro_batch_size": 8, "actor_warmup_ratio": 0.0}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return ppo_fixtures.build_checkpoints(tmp_path_factory.mktemp("speed-models"))


def make_trainer(checkpoints, recipe, method, iterations: int = 2) -> ppo.PPOTrainer:
    return ppo.PPOTrainer(recipe, method, policy_dir=checkpoints["policy"], reward_model_dir=checkpoints["reward"],
                          cost_model_dir=checkpoints["cost"], template="plain", dtype="float32", seed=0,
                          total_iterations=iterations)


def run(checkpoints, recipe, method_class, reuse: bool, monkeypatch, iterations: int = 2):
    """Metrics of `iterations` steps and the weights they leave; `reuse` False forces the separate pass."""
    trainer = make_trainer(checkpoints, recipe, method_class(recipe), iterations)
    if not reuse:
        monkeypatch.setattr(trainer, "reuses_update_forward", lambda rows: False)
    data = ppo_fixtures.world_data(8)
    prompts = [p["prompt"] for p in data.prompts]
    ptx = [modeling.encode_pair(trainer.tokenizer, modeling.format_prompt(trainer.tokenizer, r["prompt"], "plain"),
                                r["response"], 48) for r in data.sft[:8]]
    metrics = []
    for it in range(iterations):
        step = trainer.step(prompts, seed=it, ptx_examples=ptx)
        metrics.append({k: v for k, v in step.items() if not k.endswith("seconds")})
    weights = {name: p.detach().clone() for model in (trainer.actor, trainer.reward_critic, trainer.cost_critic)
               for name, p in model.named_parameters()}
    return metrics, weights


@pytest.mark.parametrize(("method", "mixed_precision"), [("ppo_lag", "no"), ("repo", "bf16")])
def test_reusing_the_update_forward_changes_nothing(checkpoints, monkeypatch, mixed_precision, method):
    """Two iterations (the second samples from the updated actor) with the experience pass
    and with the update's own forward in its place give the same metrics and weights, bit for bit:
    the two forwards run the same kernels on the same weights, rows and padding, in float32 and
    under bf16 autocast alike (tolerance 0, not floating-point noise)."""
    module = {"ppo_lag": (ppo_lag, ppo_lag.Lagrangian), "repo": (repo, repo.Rectified)}[method]
    recipe = module[0].Recipe(trainer=method, mixed_precision=mixed_precision, **ONE_PASS)
    separate = run(checkpoints, recipe, module[1], False, monkeypatch)
    reused = run(checkpoints, recipe, module[1], True, monkeypatch)
    assert separate[0] == reused[0]
    for name, value in separate[1].items():
        torch.testing.assert_close(reused[1][name], value, rtol=0, atol=0, msg=name)


def test_the_experience_pass_runs_where_the_update_takes_several_passes(checkpoints, monkeypatch):
    """Several micro batches, optimizer steps or PPO epochs: the update's forwards see other rows or
    moved weights, so the experience pass computes the old log-probs and values itself."""
    recipe = ppo_lag.Recipe(trainer="ppo_lag", **ONE_PASS)
    trainer = make_trainer(checkpoints, recipe, ppo_lag.Lagrangian(recipe))
    assert trainer.reuses_update_forward(8)
    for change in ({"micro_batch_size": 4}, {"train_batch_size": 4}, {"update_iters": 2}):
        trainer.recipe = recipe.model_copy(update=change)
        assert not trainer.reuses_update_forward(8), change

    calls = []
    real = trainer.actor_log_probs

    def counting(model, batch, entropy=False):
        calls.append("actor" if model is trainer.actor or model is trainer.unwrapped_actor else "reference")
        return real(model, batch, entropy)

    monkeypatch.setattr(trainer, "actor_log_probs", counting)
    prompts = [p["prompt"] for p in ppo_fixtures.world_data(8).prompts]
    trainer.recipe = recipe.model_copy(update={"micro_batch_size": 4, "ptx_coeff": 0.0})
    trainer.step(prompts, seed=0)
    assert calls == ["actor", "reference", "actor", "actor"]  # experience pass, then two micro batches
    calls.clear()
    trainer.recipe = recipe.model_copy(update={"ptx_coeff": 0.0})
    trainer.step(prompts, seed=1)
    assert calls == ["actor", "reference"]  # the update's forward, then the reference


def test_the_reused_forward_equals_the_experience_pass(checkpoints):
    """The claim the reuse rests on, without a full iteration around it: old log-probs and values
    from the experience pass equal those of the update's first forward."""
    recipe = ppo_lag.Recipe(trainer="ppo_lag", mixed_precision="bf16", **ONE_PASS)
    trainer = make_trainer(checkpoints, recipe, ppo_lag.Lagrangian(recipe))
    prompts = [p["prompt"] for p in ppo_fixtures.world_data(8).prompts]
    batch = trainer.rollout(prompts, seed=4)
    scores = trainer.score(batch, prompts)
    separate = trainer.make_experience(batch, *scores)
    reused = trainer.make_experience(batch, *scores, own=trainer.update_forward(batch))
    for key in ("old_log_probs", "reward_values", "cost_values", "reward_advantages", "cost_advantages"):
        torch.testing.assert_close(reused[key], separate[key], rtol=0, atol=0, msg=key)


def test_fused_adamw_takes_the_same_steps():
    """The fused kernel against the per-tensor loop on the same gradients: equal to float32 rounding
    (both compute Adam's update in float32, in another order of operations)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 4))
    twin = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 4))
    twin.load_state_dict(model.state_dict())
    start = [p.detach().clone() for p in model.parameters()]
    fused = loop.adamw(loop.decay_groups(model, 0.01), 1e-2, (0.9, 0.95))
    plain = torch.optim.AdamW(loop.decay_groups(twin, 0.01), lr=1e-2, betas=(0.9, 0.95))
    assert fused.defaults["fused"] and not plain.defaults["fused"]
    for step in range(5):
        x = torch.randn(8, 16)
        for m, optimizer in ((model, fused), (twin, plain)):
            optimizer.zero_grad()
            m(x).pow(2).mean().backward()
            optimizer.step()
    for a, b, before in zip(model.parameters(), twin.parameters(), start):
        assert not torch.equal(a, before)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_rollout_batch_size_splits_generation_and_keeps_the_layout(checkpoints):
    """Generation in calls of rollout_batch_size prompts, whatever the micro batch: with greedy
    decoding the rollouts equal those of one call over all prompts."""
    from safebench.trainers.rollout import HFRollout, RolloutSettings

    policy = modeling.load_policy(checkpoints["policy"])
    tokenizer = modeling.load_tokenizer(checkpoints["policy"])
    prompts = [p["prompt"] for p in ppo_fixtures.world_data(8).prompts]
    calls = []
    generate = policy.generate

    def counting(**kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return generate(**kwargs)

    policy.generate = counting
    batches = [HFRollout(policy, tokenizer, RolloutSettings(max_new_tokens=6, temperature=0.0, batch_size=size))
               .generate(prompts, seed=0) for size in (None, 3)]
    assert calls == [8, 3, 3, 2]
    assert batches[0].prompt_width == batches[1].prompt_width
    assert torch.equal(batches[0].sequences, batches[1].sequences)
    assert torch.equal(batches[0].attention_mask, batches[1].attention_mask)


@pytest.mark.parametrize("scale", [1e-4, 1e4])
def test_clipping_equals_torch_and_skips_only_a_multiply_by_one(checkpoints, monkeypatch, scale):
    """The trainer's clip against torch's clip_grad_norm_ on the same gradients, bit for bit: with a
    norm under max_grad_norm it leaves the gradients as they are without the pass that would multiply
    them by 1; over it, it scales them as torch does."""
    recipe = ppo_lag.Recipe(trainer="ppo_lag", **ONE_PASS)
    trainer = make_trainer(checkpoints, recipe, ppo_lag.Lagrangian(recipe))
    torch.manual_seed(0)
    for p in trainer.actor.parameters():
        p.grad = torch.randn_like(p) * scale
    twins = []
    for p in trainer.actor.parameters():
        twins.append(torch.nn.Parameter(p.detach().clone()))
        twins[-1].grad = p.grad.clone()
    torch.nn.utils.clip_grad_norm_(twins, recipe.max_grad_norm)
    scaled = []
    real = torch.nn.utils.clip_grads_with_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grads_with_norm_", lambda *a, **k: scaled.append(1) or real(*a, **k))
    trainer._clip_gradients(trainer.actor)
    assert scaled == ([] if scale < 1 else [1])
    for p, twin in zip(trainer.actor.parameters(), twins):
        torch.testing.assert_close(p.grad, twin.grad, rtol=0, atol=0)


def test_the_lm_head_reads_contiguous_positions(checkpoints):
    """The reference (frozen) reads the response positions through its LM head as one contiguous
    block: a strided slice there makes torch copy the head once per row. The log-probs equal those
    of the slice, bit for bit."""
    recipe = ppo_lag.Recipe(trainer="ppo_lag", mixed_precision="bf16", **ONE_PASS)
    trainer = make_trainer(checkpoints, recipe, ppo_lag.Lagrangian(recipe))
    prompts = [p["prompt"] for p in ppo_fixtures.world_data(8).prompts]
    batch = trainer.rollout(prompts, seed=0)
    contiguous = []
    head = trainer.reference.get_output_embeddings()
    hook = head.register_forward_pre_hook(lambda module, args: contiguous.append(args[0].is_contiguous()))
    with torch.no_grad(), trainer.accelerator.autocast():
        log_probs = trainer.actor_log_probs(trainer.reference, batch)
        n = batch.sequences.shape[1] - batch.prompt_width
        sliced = trainer.reference(input_ids=batch.sequences, attention_mask=batch.attention_mask,
                                   position_ids=ppo.position_ids(batch.attention_mask), logits_to_keep=n + 1).logits
    hook.remove()
    assert contiguous == [True, False]
    expected = ppo.token_log_probs(sliced[:, :-1], batch.sequences[:, batch.prompt_width:])
    torch.testing.assert_close(log_probs, expected, rtol=0, atol=0)
