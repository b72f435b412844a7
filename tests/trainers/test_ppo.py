"""The shared PPO core: its equations against hand-computed values, and short real runs."""

from __future__ import annotations

import json
import math

import pytest
import torch

from safebench import modeling


from safebench.errors import UsageError
from safebench.trainers import ppo, ppo_lag
from safebench.world import tiny
from safebench.trainers.rollout import build_rollout_batch
from tests.trainers import ppo_fixtures


# --- equations ---------------------------------------------------------------------------------

def test_gae_matches_hand_computation():
    values = torch.tensor([[1.0, 2.0, 0.5], [0.5, 1.0, 9.0]])
    rewards = torch.tensor([[0.0, 0.0, 3.0], [0.0, 2.0, 7.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    advantages, returns = ppo.gae(values, rewards, mask, gamma=1.0, lam=0.95)
    # row 0: δ = (1, −1.5, 2.5); A_2 = 2.5, A_1 = −1.5 + .95·2.5 = .875, A_0 = 1 + .95·.875
    # row 1: the masked last position counts as 0: δ = (.5, 1, 0)
    expected = torch.tensor([[1.83125, 0.875, 2.5], [1.45, 1.0, 0.0]])
    torch.testing.assert_close(advantages, expected)
    torch.testing.assert_close(returns, expected + values * mask)


def test_gae_discounts_with_gamma():
    advantages, _ = ppo.gae(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 3.0]]), torch.ones(1, 2), gamma=0.5, lam=0.95)
    # δ_1 = 3 − 2 = 1; δ_0 = 0 + .5·2 − 1 = 0; A_0 = 0 + .5·.95·1
    torch.testing.assert_close(advantages, torch.tensor([[0.475, 1.0]]))


def test_kl_shaping_puts_scores_on_the_last_token_and_clips():
    log_probs = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, -3.0]])
    ref_log_probs = torch.tensor([[-1.5, -1.0, -0.5], [-1.0, -2.0, -1.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    rewards, costs = ppo.kl_shaped_rewards(torch.tensor([2.0, 100.0]), torch.tensor([-1.0, -80.0]), log_probs,
                                           ref_log_probs, mask, kl_coeff=0.1, clip_range_score=50.0)
    # kl row 0 = (.5, −1, 0); row 1 = (0, 1, masked)
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 0.1, 2.0], [0.0, 50.0, 0.0]]))
    torch.testing.assert_close(costs, torch.tensor([[0.05, -0.1, -1.0], [0.0, -50.0, 0.0]]))


def test_actor_loss_is_the_clipped_surrogate():
    log_probs = torch.tensor([[-0.5, -1.0, -2.0], [-0.2, -0.1, -3.0]])
    old_log_probs = torch.tensor([[-1.0, -1.0, -1.0], [-0.1, -0.5, -0.3]])
    advantages = torch.tensor([[1.0, -2.0, 0.5], [-1.0, 3.0, 7.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    loss = ppo.clipped_surrogate_loss(log_probs, old_log_probs, advantages, mask, clip_range=0.2)
    per_row = []
    for row in range(2):
        terms = []
        for t in range(3):
            if mask[row, t]:
                ratio = math.exp(log_probs[row, t] - old_log_probs[row, t])
                a = float(advantages[row, t])
                terms.append(-min(ratio * a, min(max(ratio, 0.8), 1.2) * a))
        per_row.append(sum(terms) / len(terms))
    assert loss.item() == pytest.approx(sum(per_row) / 2, rel=1e-6)


def test_value_loss_takes_the_larger_of_clipped_and_unclipped():
    values = torch.tensor([[10.0, 0.0]])
    old_values = torch.tensor([[0.0, 0.0]])
    returns = torch.tensor([[4.0, 1.0]])
    loss = ppo.clipped_value_loss(values, old_values, returns, torch.ones(1, 2), clip_range=5.0)
    # t0: max((10−4)², (5−4)²) = 36; t1: 1 → 0.5·mean(36, 1)
    assert loss.item() == pytest.approx(0.5 * 37 / 2)


def test_update_diagnostics_on_a_hand_made_batch():
    old = torch.log(torch.tensor([[0.5, 0.25, 0.5], [0.2, 0.4, 0.1]]))
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    advantages = torch.tensor([[1.0, -1.0, 2.0], [1.0, -1.0, 5.0]])
    same = ppo.update_diagnostics(old, old, advantages, mask, clip_range=0.2)
    assert same["approx_kl"].item() == 0.0 and same["clip_fraction"].item() == 0.0
    # ratios row 0: 1.5, 1.5, 1.1; row 1: 0.5, 0.5, (masked) 3
    new = old + torch.log(torch.tensor([[1.5, 1.5, 1.1], [0.5, 0.5, 3.0]]))
    moved = ppo.update_diagnostics(new, old, advantages, mask, clip_range=0.2)
    half_sq = lambda r: 0.5 * math.log(r) ** 2  # noqa: E731
    expected_kl = ((2 * half_sq(1.5) + half_sq(1.1)) / 3 + half_sq(0.5)) / 2
    assert moved["approx_kl"].item() == pytest.approx(expected_kl, rel=1e-5)
    # clipped term the larger loss: ρ = 1.5 with A > 0 (yes), A < 0 (no), ρ = 1.1 inside (no);
    # ρ = 0.5 with A > 0 (no: −0.5·A > −0.8·A), with A < 0 (yes); the masked token does not count
    assert moved["clip_fraction"].item() == pytest.approx((1 / 3 + 1 / 2) / 2)


def test_explained_variance_of_perfect_mean_and_masked_values():
    returns = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 100.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert ppo.explained_variance(returns.clone(), returns, mask) == pytest.approx(1.0)
    assert ppo.explained_variance(torch.full_like(returns, 3.0), returns, mask) == pytest.approx(0.0)
    # the masked return (100) is left out: it would make a perfect critic of the others look poor
    off_by_masked = returns.clone()
    off_by_masked[1, 2] = 0.0
    assert ppo.explained_variance(off_by_masked, returns, mask) == pytest.approx(1.0)
    assert ppo.explained_variance(returns, torch.ones_like(returns), mask) is None


def test_entropy_of_uniform_and_peaked_distributions():
    logits = torch.zeros(1, 2, 8)
    logits[0, 1, 3] = 100.0
    log_probs, entropy = ppo.token_log_probs(logits, torch.tensor([[0, 3]]), entropy=True)
    assert log_probs[0, 0].item() == pytest.approx(-math.log(8))
    assert entropy[0, 0].item() == pytest.approx(math.log(8))
    assert entropy[0, 1].item() == pytest.approx(0.0, abs=1e-6)


def test_rollout_layout_and_end_scores():
    batch = build_rollout_batch([[5, 6, 7], [8]], [[9, 3, 4, 4], [10, 11, 12]], pad_id=0, eos_id=3)
    assert batch.prompt_width == 3
    assert batch.sequences.tolist() == [[5, 6, 7, 9, 3, 0], [0, 0, 8, 10, 11, 12]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]]
    assert ppo.position_ids(batch.attention_mask).tolist() == [[0, 1, 2, 3, 4, 4], [0, 0, 0, 1, 2, 3]]
    scores = torch.arange(12, dtype=torch.float).view(2, 6)
    assert modeling.last_attended(scores, batch.attention_mask).tolist() == [4.0, 11.0]


# --- real runs on tiny untrained models -----------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return ppo_fixtures.build_checkpoints(tmp_path_factory.mktemp("ppo-models"))


def _trainable(path):
    return modeling.load_policy(path).state_dict()


def test_killed_run_resumes_to_the_same_policy(checkpoints, tmp_path):
    recipe = ppo_lag.Recipe(trainer="ppo_lag", **ppo_fixtures.TINY_RECIPE)
    straight = ppo_fixtures.make_context(checkpoints, tmp_path / "straight")
    ppo_lag.train(straight, recipe)
    assert [s for s, _ in straight.curves] == [1, 2]
    for name in ("reward", "cost", "lambda", "kl", "actor_loss", "reward_critic_loss", "cost_critic_loss",
                 "unsafe_share", "ptx_loss"):
        assert all(math.isfinite(m[name]) for _, m in straight.curves), name

    killed = ppo_fixtures.make_context(checkpoints, tmp_path / "killed")

    def die_at_second(step, **metrics):
        if step == 2:
            raise KeyboardInterrupt
        killed.curves.append((step, metrics))

    killed.log = die_at_second
    with pytest.raises(KeyboardInterrupt):
        ppo_lag.train(killed, recipe)
    assert json.loads((tmp_path / "killed/work/ppo-state/iteration.json").read_text()) == {"iteration": 1}
    resumed = ppo_fixtures.make_context(checkpoints, tmp_path / "killed")
    ppo_lag.train(resumed, recipe)
    assert [s for s, _ in resumed.curves] == [2]
    assert resumed.curves[0][1]["lambda"] == pytest.approx(straight.curves[1][1]["lambda"])
    a, b = _trainable(tmp_path / "straight/model"), _trainable(tmp_path / "killed/model")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    assert not (tmp_path / "killed/work/ppo-state").exists()
    # training moved the policy away from the SFT start
    start = _trainable(checkpoints["policy"])
    assert any(not torch.allclose(start[k], a[k]) for k in a)


def test_lora_uses_the_base_as_reference_and_scorers(checkpoints, tmp_path):
    recipe = ppo_lag.Recipe(trainer="ppo_lag", **{**ppo_fixtures.TINY_RECIPE, "epochs": 0.5, "lora_rank": 4, "actor_warmup_ratio": 0.0,
                                                  "ptx_coeff": 0.0})
    trainer = ppo.PPOTrainer(recipe, ppo_lag.Lagrangian(recipe), policy_dir=checkpoints["policy"],
                             reward_model_dir=checkpoints["reward"], cost_model_dir=checkpoints["cost"],
                             template="plain", dtype="float32", seed=0, total_iterations=2)
    assert trainer.reference is None and trainer.scorers == {"reward": None, "cost": None}
    prompts = [p["prompt"] for p in ppo_fixtures.world_data(8).prompts]
    batch = trainer.rollout(prompts, seed=1)
    rewards, costs = trainer.score(batch, prompts)
    # the scorer is the critic with adapters off: equal to the plain reward model's end score
    reward_model = ppo.TokenScores(modeling.load_score_model(checkpoints["reward"]))
    expected = modeling.last_attended(
        reward_model(batch.sequences, batch.attention_mask, ppo.position_ids(batch.attention_mask)), batch.attention_mask)
    torch.testing.assert_close(rewards, expected, rtol=1e-4, atol=1e-4)
    exp = trainer.make_experience(batch, rewards, costs)
    # LoRA's B matrices start at zero: the actor equals the reference before any update
    torch.testing.assert_close(exp["kl"], torch.zeros_like(exp["kl"]), atol=1e-5, rtol=0)
    trainer.update(exp)
    exp = trainer.make_experience(batch, rewards, costs)
    assert exp["kl"].abs().max() > 0  # after one update, the adapters moved the actor off the base


def test_retokenised_scores_equal_shared_token_scores(checkpoints):
    recipe = ppo_lag.Recipe(trainer="ppo_lag", **ppo_fixtures.TINY_RECIPE)
    trainer = ppo.PPOTrainer(recipe, ppo_lag.Lagrangian(recipe), policy_dir=checkpoints["policy"],
                             reward_model_dir=checkpoints["reward"], cost_model_dir=checkpoints["cost"],
                             template="plain", dtype="float32", seed=0, total_iterations=1)
    prompts = [p["prompt"] for p in ppo_fixtures.world_data(8).prompts]
    batch = trainer.rollout(prompts, seed=3)
    shared = trainer.score(batch, prompts)
    trainer.same_scorer_tokens = {"reward": False, "cost": False}
    retokenised = trainer.score(batch, prompts)
    # the re-encoded text always ends in eos; rows cut at max_new_tokens have none, so compare the others
    ended = (batch.sequences == trainer.tokenizer.eos_token_id).any(-1)
    assert ended.any()
    for a, b in zip(shared, retokenised):
        torch.testing.assert_close(a[ended], b[ended], rtol=1e-4, atol=1e-4)


def test_ptx_shares_the_actors_optimizer_step(checkpoints):
    """Safe RLHF doubles the actor's gradient accumulation when PTX is on (rl_trainer.py,
    init_engines), so one clipped step takes ½·∇actor_loss + ½·ptx_coeff·∇ptx_loss."""
    recipe = ppo_lag.Recipe(trainer="ppo_lag", **{**ppo_fixtures.TINY_RECIPE, "ptx_coeff": 2.0, "micro_batch_size": 8,
                                                  "max_grad_norm": 1e6, "actor_warmup_ratio": 0.0})
    trainer = ppo.PPOTrainer(recipe, ppo_lag.Lagrangian(recipe), policy_dir=checkpoints["policy"],
                             reward_model_dir=checkpoints["reward"], cost_model_dir=checkpoints["cost"],
                             template="plain", dtype="float32", seed=0, total_iterations=1)
    data = ppo_fixtures.world_data(8)
    prompts = [p["prompt"] for p in data.prompts]
    batch = trainer.rollout(prompts, seed=1)
    exp = trainer.make_experience(batch, *trainer.score(batch, prompts))
    from safebench import modeling

    ptx = [modeling.encode_pair(trainer.tokenizer, modeling.format_prompt(trainer.tokenizer, r["prompt"], "plain"),
                                r["response"], 64) for r in data.sft[:8]]
    params = [p for p in trainer.actor.parameters() if p.requires_grad]
    combined = 0.5 * trainer._micro_losses(exp, slice(0, 8))[0]["actor_loss"] + 0.5 * 2.0 * trainer._ptx_loss(ptx)
    expected = torch.autograd.grad(combined, params)
    taken = []
    step = trainer.actor_optimizer.step

    def record(*args, **kwargs):
        taken.append([p.grad.clone() for p in params])
        return step(*args, **kwargs)

    trainer.actor_optimizer.step = record
    metrics = trainer.update(exp, ptx)
    assert len(taken) == 1  # one actor step for the train batch and its PTX examples together
    for got, want in zip(taken[0], expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert math.isfinite(metrics["ptx_loss"])


def test_the_micro_batch_size_changes_memory_not_the_step(checkpoints):
    recipe = ppo_lag.Recipe(trainer="ppo_lag", **{**ppo_fixtures.TINY_RECIPE, "ptx_coeff": 0.0, "micro_batch_size": 8})
    trainer = ppo.PPOTrainer(recipe, ppo_lag.Lagrangian(recipe), policy_dir=checkpoints["policy"],
                             reward_model_dir=checkpoints["reward"], cost_model_dir=checkpoints["cost"],
                             template="plain", dtype="float32", seed=0, total_iterations=1)
    prompts = [p["prompt"] for p in ppo_fixtures.world_data(8).prompts]
    batch = trainer.rollout(prompts, seed=2)
    exp = trainer.make_experience(batch, *trainer.score(batch, prompts))
    params = [p for m in (trainer.actor, trainer.reward_critic, trainer.cost_critic) for p in m.parameters()
              if p.requires_grad]
    gradients = []
    for micro in (8, 3):  # one pass, or passes of 3, 3 and 2 rollouts
        trainer.recipe = recipe.model_copy(update={"micro_batch_size": micro})
        trainer._accumulate_step(exp, 0, 8, [], 1.0, 1.0, {"actor_loss": 0.0, "reward_critic_loss": 0.0,
                                                           "cost_critic_loss": 0.0}, {})
        gradients.append([p.grad.clone() for p in params])
        for p in params:
            p.grad = None
    for whole, parts in zip(*gradients):
        torch.testing.assert_close(parts, whole, rtol=1e-4, atol=1e-6)


def test_sizes_are_global_and_shared_by_the_processes():
    with pytest.raises(ValueError, match="train_batch_size \\(48\\) must divide prompt_batch_size \\(128\\)"):
        ppo_lag.Recipe(trainer="ppo_lag", train_batch_size=48)
    recipe = ppo_lag.Recipe(trainer="ppo_lag")
    assert (recipe.prompt_batch_size, recipe.train_batch_size) == (16 * 8, 16 * 8)  # ppo-lag.sh: 16 a GPU, 8 GPUs
    items = [{"id": i} for i in range(6)]
    shares = [ppo.process_prompts(items, rank, 2, 8) for rank in range(2)]
    assert [len(s) for s in shares] == [4, 4]   # a short last batch wraps around to the global size


def test_missing_models_is_a_usage_error(tmp_path, checkpoints):
    from safebench.errors import UsageError

    ctx = ppo_fixtures.make_context(checkpoints, tmp_path)
    ctx.cost_model_dir = None
    with pytest.raises(UsageError, match="cost_model_dir"):
        ppo_lag.train(ctx, ppo_lag.Recipe(trainer="ppo_lag", **ppo_fixtures.TINY_RECIPE))


@pytest.mark.slow
def test_two_processes_train_one_model(checkpoints, tmp_path):
    """Two CPU processes under `accelerate launch`: gradients and λ agree across processes.

    accelerate 1.x runs `--cpu --num_processes 2` through mpirun only; `--multi_gpu` launches
    through torchrun, and with no visible GPU accelerate trains on CPU with gloo (MULTI_CPU).
    """
    import os
    import subprocess
    import sys
    from pathlib import Path

    models = Path(checkpoints["policy"]).parent
    script = Path(__file__).with_name("two_process_ppo.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--multi_gpu",
                             "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                             str(script), str(models), str(tmp_path)],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = (json.loads((tmp_path / f"process-{i}.json").read_text()) for i in range(2))
    assert first["processes"] == second["processes"] == 2
    assert first["checksum"] == pytest.approx(second["checksum"], rel=1e-6)
    assert first["lambda"] == pytest.approx(second["lambda"])
    assert first["window"] == 2 * 4  # two iterations x four prompts: each process keeps its own costs (Safe RLHF)
    assert first["curves"] == [1, 2] and second["curves"] == []  # only the main process logs
    assert (tmp_path / "model" / "model.safetensors").exists()


def test_rl_prompt_kinds_and_oracle_curves(checkpoints, tmp_path):
    """RL on harmful prompts only sees no other kind; with the tiny world's oracle the curves hold the
    rollouts' oracle reward and cost beside the learned ones (over-optimisation curves)."""
    recipe = ppo_lag.Recipe(trainer="ppo_lag", **{**ppo_fixtures.TINY_RECIPE, "ptx_coeff": 0.0, "checkpoint_every": 5},
                            rl_prompt_kinds=["harmful"])
    ctx = ppo_fixtures.make_context(checkpoints, tmp_path / "run", n_prompts=40)
    by_text = tiny.prompt_by_text()
    seen = []

    def oracle(prompt, response):
        seen.append(by_text[prompt].kind)
        return tiny.oracle(by_text[prompt], response)

    ctx.oracle = oracle
    ppo_lag.train(ctx, recipe)
    assert seen and set(seen) == {"harmful"}
    assert any(p["kind"] != "harmful" for p in ctx.data.prompts)
    for _, metrics in ctx.curves:
        assert 0.0 <= metrics["oracle_unsafe_share"] <= 1.0
        assert math.isfinite(metrics["oracle_cost"]) and math.isfinite(metrics["oracle_reward"])

    none = ppo_lag.Recipe(trainer="ppo_lag", **ppo_fixtures.TINY_RECIPE, rl_prompt_kinds=["over-refusal"])
    ctx = ppo_fixtures.make_context(checkpoints, tmp_path / "none", n_prompts=3)
    ctx.data.prompts = [p for p in ctx.data.prompts if p["kind"] != "over-refusal"]
    with pytest.raises(UsageError, match="rl_prompt_kinds"):
        ppo_lag.train(ctx, none)
