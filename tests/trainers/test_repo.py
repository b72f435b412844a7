"""RePO's rectified penalty and multiplier (docs/methods.md §5)."""

from __future__ import annotations

import random

import pytest
import torch

from safebench.trainers import repo


def method(**fields) -> repo.Rectified:
    return repo.Rectified(repo.Recipe(trainer="repo", **fields))


def test_penalty_is_exactly_zero_for_a_batch_of_safe_responses():
    costs = torch.tensor([-0.5, 0.0, -3.0, -0.01])  # C ≤ 0: all safe
    reward_adv, cost_adv = torch.randn(4, 5), torch.randn(4, 5)
    for estimator in ("rectified-critic", "batching"):
        rect = method(lambda_init=2.0, penalty_estimator=estimator)
        rect.update_multiplier(costs, step=0)
        assert rect.multiplier == 2.0
        if estimator == "rectified-critic":   # the cost stream the critic learns is {C}^+ = 0
            assert torch.equal(rect.cost_signal(costs), torch.zeros(4))
        else:                                 # safe responses carry A^r and nothing else
            assert torch.equal(rect.advantages(reward_adv, cost_adv, costs), reward_adv)


def test_batching_puts_the_cost_term_on_unsafe_responses_only():
    rect = method(lambda_init=1.0, penalty_estimator="batching")
    reward_adv = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    cost_adv = torch.tensor([[2.0, 2.0], [2.0, 2.0]])
    out = rect.advantages(reward_adv, cost_adv, torch.tensor([0.3, -0.3]))
    torch.testing.assert_close(out, torch.tensor([[(1 - 2) / 2, (1 - 2) / 2], [1.0, 1.0]]))


def test_lambda_grows_by_the_mean_rectified_cost_and_never_decreases():
    rect = method(lambda_init=1.0, lambda_lr=0.5, lambda_max=None, margin=0.0)
    rect.update_multiplier(torch.tensor([2.0, -4.0, 0.0, 1.0]), step=0)
    assert rect.multiplier == pytest.approx(1.0 + 0.5 * (2.0 + 1.0) / 4)
    rng = random.Random(0)
    previous = rect.multiplier
    for step in range(1, 50):
        rect.update_multiplier(torch.tensor([rng.uniform(-5, 1) for _ in range(8)]), step)
        assert rect.multiplier >= previous
        previous = rect.multiplier


def test_margin_and_lambda_max():
    rect = method(lambda_init=0.0, lambda_lr=1.0, margin=0.5, lambda_max=0.75)
    rect.update_multiplier(torch.tensor([-0.25]), 0)   # {−.25 + .5}^+ = .25
    assert rect.multiplier == pytest.approx(0.25)
    for step in range(1, 10):
        rect.update_multiplier(torch.tensor([3.0]), step)
    assert rect.multiplier == pytest.approx(0.75)


def test_the_two_method_files_stay_small_and_close():
    """The methods hold only their advantage and multiplier; the core holds the rest."""
    import difflib
    from pathlib import Path

    folder = Path(repo.__file__).parent
    a = (folder / "ppo_lag.py").read_text().splitlines()
    b = (folder / "repo.py").read_text().splitlines()
    changed = sum(1 for line in difflib.unified_diff(a, b, n=0) if line[:1] in "+-" and line[:3] not in ("+++", "---"))
    assert max(len(a), len(b)) < 90
    assert changed < 2 * 50  # "+" and "-" lines each count: under 50 lines differ


def test_rectified_critic_estimator_learns_the_rectified_cost_and_penalises_every_response():
    rect = method(lambda_init=1.0, margin=0.0, penalty_estimator="rectified-critic")
    costs = torch.tensor([-2.0, 0.5])
    assert rect.cost_signal(costs).tolist() == [0.0, 0.5]   # {C + δ}^+: no safe response is "extra safe"
    out = rect.advantages(torch.tensor([[1.0], [1.0]]), torch.tensor([[-0.5], [0.5]]), costs)
    torch.testing.assert_close(out, torch.tensor([[(1 + 0.5) / 2], [(1 - 0.5) / 2]]))
    assert torch.equal(method(penalty_estimator="batching").cost_signal(costs), costs)  # batching keeps raw C
