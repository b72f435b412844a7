"""Score-model losses against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from safebench.trainers.score_model import cost_loss, pairs_for, reward_loss


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_reward_loss_matches_hand_computation():
    better = torch.tensor([2.0, 0.5])
    worse = torch.tensor([1.0, 1.5])
    # pairs: diff 1.0 and -1.0; reg over all four scores: (4 + .25 + 1 + 2.25)/4 = 1.875
    expected = -(log_sigmoid(1.0) + log_sigmoid(-1.0)) / 2 + 0.001 * 1.875
    assert reward_loss(better, worse, 0.001).item() == pytest.approx(expected, rel=1e-6)


def test_cost_loss_matches_hand_computation():
    safer = torch.tensor([-1.0, 0.5])
    unsafer = torch.tensor([2.0, 1.0])
    safer_sign = torch.tensor([-1.0, -1.0])   # both safer responses labelled safe
    unsafer_sign = torch.tensor([1.0, -1.0])  # second "unsafer" response is labelled safe too
    pairwise = -(log_sigmoid(3.0) + log_sigmoid(0.5)) / 2
    safer_terms = -(log_sigmoid(1.0) + log_sigmoid(-0.5)) / 2
    unsafer_terms = -(log_sigmoid(2.0) + log_sigmoid(-1.0)) / 2
    reg = 0.01 * (1 + 0.25 + 4 + 1) / 4
    expected = pairwise + safer_terms + unsafer_terms + reg
    assert cost_loss(safer, unsafer, safer_sign, unsafer_sign, 0.01).item() == pytest.approx(expected, rel=1e-6)


def test_cost_sign_terms_push_scores_across_zero():
    """With the pairwise term equal, a safe response scored above 0 costs more than one below 0."""
    sign = torch.tensor([-1.0])
    on_wrong_side = cost_loss(torch.tensor([0.5]), torch.tensor([1.5]), sign, torch.tensor([1.0]), 0.0)
    on_right_side = cost_loss(torch.tensor([-0.5]), torch.tensor([0.5]), sign, torch.tensor([1.0]), 0.0)
    assert on_right_side < on_wrong_side


def test_pairs_follow_the_preference_labels():
    record = {"prompt": "p", "response_0": "a", "response_1": "b", "better_response_id": 1,
              "safer_response_id": 0, "is_response_0_safe": True, "is_response_1_safe": False}
    assert pairs_for("reward", [record]) == [{"prompt": "p", "high": "b", "low": "a"}]
    assert pairs_for("cost", [record]) == [{"prompt": "p", "high": "b", "low": "a", "high_sign": 1.0,
                                            "low_sign": -1.0}]
