"""PPO-Lagrangian's multiplier and advantage (algorithms.md §4)."""

from __future__ import annotations

import math

import pytest
import torch

from safebench.trainers import ppo_lag


def method(**fields) -> ppo_lag.Lagrangian:
    return ppo_lag.Lagrangian(ppo_lag.Recipe(trainer="ppo_lag", **fields))


def test_lambda_rises_when_the_windowed_cost_is_above_the_threshold():
    lag = method(threshold=0.0, lambda_init=1.0, lambda_lr=0.1)
    lag.update_multiplier(torch.tensor([2.0, 0.0]), step=0)   # J_c = 1
    assert lag.log_lambda == pytest.approx(0.1 * 1.0 * 1.0)    # log λ += lr·λ·(J_c − d)
    assert lag.multiplier > 1.0


def test_lambda_falls_when_the_windowed_cost_is_below_the_threshold():
    lag = method(threshold=0.5, lambda_init=2.0, lambda_lr=0.1)
    lag.update_multiplier(torch.tensor([-1.0, 0.0]), step=0)  # J_c − d = −1
    assert lag.log_lambda == pytest.approx(math.log(2.0) - 0.1 * 2.0)
    assert lag.multiplier < 2.0


def test_lambda_stops_at_lambda_max():
    lag = method(lambda_init=1.0, lambda_lr=1.0, lambda_max=3.0)
    for step in range(20):
        lag.update_multiplier(torch.tensor([5.0]), step)
    assert lag.multiplier == pytest.approx(3.0)


def test_window_keeps_the_last_rollouts_only():
    lag = method(lambda_lr=0.0, episode_cost_window_size=4)
    lag.update_multiplier(torch.tensor([100.0, 100.0, 100.0]), 0)
    lag.update_multiplier(torch.tensor([1.0, 2.0, 3.0]), 1)
    assert lag.metrics()["windowed_cost"] == pytest.approx((100 + 1 + 2 + 3) / 4)
    lag.load_state_dict(lag.state_dict())
    assert list(lag.window) == [100.0, 1.0, 2.0, 3.0]


def test_no_update_before_the_delay():
    lag = method(lambda_update_delay_steps=3)
    for step in range(3):
        lag.update_multiplier(torch.tensor([4.0]), step)
    assert lag.multiplier == 1.0
    lag.update_multiplier(torch.tensor([4.0]), 3)
    assert lag.multiplier > 1.0


def test_advantage_combines_reward_and_cost():
    lag = method(lambda_init=3.0)
    reward_adv = torch.tensor([[1.0, 2.0]])
    cost_adv = torch.tensor([[0.5, -1.0]])
    out = lag.advantages(reward_adv, cost_adv, torch.tensor([-1.0]))  # applied whatever the sign of C
    torch.testing.assert_close(out, torch.tensor([[(1 - 1.5) / 4, (2 + 3) / 4]]))
