"""PPO-Lagrangian's multiplier and advantage (docs/methods.md §4)."""

from __future__ import annotations

import math
import threading
from collections import deque

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


class SimulatedProcesses:
    """Threads that stand for training processes, with the mean-over-processes collective."""

    def __init__(self, count: int):
        self.barrier = threading.Barrier(count)
        self.values = [0.0] * count

    def mean_for(self, rank: int):
        def mean(value: float) -> float:
            self.values[rank] = value
            self.barrier.wait()
            result = sum(self.values) / len(self.values)
            self.barrier.wait()
            return result
        return mean


def test_each_process_keeps_its_own_window_and_the_window_means_are_averaged():
    """Safe RLHF's rule: a deque of this process's costs, its mean reduced with ReduceOp.AVG.
    A window of 6 over 2 processes keeps 3 costs a process; one pooled window of the gathered
    costs would hold another 6 (here: J_c = 0 at the second iteration instead of 4/3)."""
    streams = [[[8.0, 8.0], [0.0, 0.0], [1.0, -3.0]],   # process 0, three iterations of 2 rollouts
               [[0.0, 0.0], [0.0, 0.0], [2.0, 2.0]]]    # process 1
    expected, log_lambda = [], 0.0
    windows = [deque(maxlen=3), deque(maxlen=3)]
    for step in range(3):
        for window, stream in zip(windows, streams):
            window.extend(stream[step])
        windowed = sum(sum(w) / len(w) for w in windows) / 2
        log_lambda += 0.1 * math.exp(log_lambda) * windowed
        expected.extend([windowed, log_lambda])
    assert expected[2] == pytest.approx(4 / 3)

    processes = SimulatedProcesses(2)
    seen: dict[int, list] = {}

    def run(rank: int) -> None:
        lag = method(lambda_lr=0.1, episode_cost_window_size=6)
        lag.distribute(2, processes.mean_for(rank))
        seen[rank] = []
        for step, costs in enumerate(streams[rank]):
            lag.update_multiplier(torch.tensor(costs), step)
            seen[rank].extend([lag.metrics()["windowed_cost"], lag.log_lambda])

    threads = [threading.Thread(target=run, args=(rank,)) for rank in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    for rank in range(2):
        assert seen[rank] == pytest.approx(expected)


def test_a_window_that_processes_cannot_share_equally_is_a_usage_error():
    from safebench.errors import UsageError

    with pytest.raises(UsageError, match="episode_cost_window_size = 5: expected a multiple of the number of processes"):
        method(episode_cost_window_size=5).distribute(2, lambda value: value)
