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
    assert pairs_for("reward", [record]) == [{"prompt": "p", "high": "b", "low": "a", "high_first": False}]
    assert pairs_for("cost", [record]) == [{"prompt": "p", "high": "b", "low": "a", "high_first": False, "high_sign": 1.0,
                                            "low_sign": -1.0}]


# --- held-out accuracy and the frozen lower layers (the smol preset uses both) ---------------
class LengthScorer(torch.nn.Module):
    """A stand-in score model whose score at a position is the number of real tokens up to it
    minus `offset`: at the end, the sequence's real length minus `offset`."""

    base_model_prefix = "model"

    class Backbone(torch.nn.Module):
        def forward(self, input_ids, attention_mask, position_ids=None):
            from types import SimpleNamespace

            return SimpleNamespace(last_hidden_state=attention_mask.cumsum(-1).unsqueeze(-1).float())

    def __init__(self, offset: int = 3):
        super().__init__()
        self.model = self.Backbone()
        self.offset = offset

    def score(self, hidden):
        return hidden - self.offset


def test_heldout_metrics_count_ordered_pairs_and_sides_of_zero():
    from types import SimpleNamespace

    from safebench.trainers.score_model import evaluate

    items = [  # lengths 5 vs 2: ordered, both scores on their labelled side (2 > 0, -1 <= 0)
        {"high_ids": [1] * 5, "low_ids": [1] * 2, "high_sign": 1.0, "low_sign": -1.0, "high_first": True},
        # lengths 1 vs 4: misordered; -2 is on the safe side (sign says unsafe), 1 on the unsafe side
        {"high_ids": [1] * 1, "low_ids": [1] * 4, "high_sign": 1.0, "low_sign": -1.0, "high_first": True},
        # lengths 4 vs 3: ordered; 1 labelled safe is wrong, 0 labelled safe is right (cost <= 0 is safe)
        {"high_ids": [1] * 4, "low_ids": [1] * 3, "high_sign": -1.0, "low_sign": -1.0, "high_first": False},
    ]
    tokenizer = SimpleNamespace(pad_token_id=0)
    metrics = evaluate(LengthScorer(), tokenizer, "cost", items, batch_size=2)
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["sign_accuracy"] == pytest.approx(3 / 6)
    # in each record's order (label, prediction: response_0 is the high one): (1, 1), (1, 0), (0, 0)
    assert {k: v for k, v in metrics.items() if k.startswith("order_")} == {
        "order_11": 1.0, "order_10": 1.0, "order_01": 0.0, "order_00": 1.0}
    # (labelled unsafe, score > 0) per response: (1, 1) (0, 0) / (1, 0) (0, 1) / (0, 1) (0, 0)
    assert {k: v for k, v in metrics.items() if k.startswith("sign_") and k[-1].isdigit()} == {
        "sign_11": 1.0, "sign_10": 1.0, "sign_01": 2.0, "sign_00": 2.0}
    reward = evaluate(LengthScorer(), tokenizer, "reward", items, batch_size=3)
    assert reward == {"accuracy": pytest.approx(2 / 3), "order_11": 1.0, "order_10": 1.0, "order_01": 0.0,
                      "order_00": 1.0}


def record(prompt: str, safe: str, unsafe: str) -> dict:
    return {"prompt": prompt, "response_0": unsafe, "response_1": safe, "better_response_id": 0,
            "safer_response_id": 1, "is_response_0_safe": False, "is_response_1_safe": True}


@pytest.fixture()
def tiny_three_layer(tmp_path):
    from safebench.world import tiny

    return tiny.make_tiny_policy_checkpoint(tmp_path / "policy", seed=0, num_layers=3)


def test_train_layers_trains_only_the_top_layers_and_logs_heldout_accuracy(tmp_path, tiny_three_layer):
    from safetensors.torch import load_file

    from safebench.trainers import score_model
    from safebench.trainers.base import TrainContext, WorldData

    preference = [record(f"tell me thing {i}", "i will not", "sure here is how") for i in range(8)]
    heldout = [record("another thing", "no", "yes here")]
    logged = []
    ctx = TrainContext(name="cost-model", stage_key="k", out_dir=tmp_path / "out", work_dir=tmp_path / "work",
                       seed=0, data=WorldData(sft=[], preference=preference, prompts=[], heldout=heldout),
                       template="plain", dtype="float32", policy_dir=tiny_three_layer, quiet=True)
    ctx.log = lambda step, **metrics: logged.append((step, metrics))
    recipe = score_model.Recipe(trainer="score_model", kind="cost", epochs=1, batch_size=4, micro_batch_size=4,
                                lr=1e-2, max_length=32, train_layers=1)
    score_model.train(ctx, recipe)

    before = load_file(tiny_three_layer / "model.safetensors")
    after = load_file(tmp_path / "out" / "model.safetensors")
    changed = {name for name, value in before.items()
               if name.startswith("model.") and not torch.equal(value, after[name])}
    assert changed and all(n.startswith(("model.layers.2.", "model.norm.")) for n in changed), changed
    assert after["score.weight"].abs().sum() > 0
    last_step, final = logged[-1]
    assert last_step == 2 and final["heldout_pairs"] == 1.0
    assert set(final) == {"heldout_accuracy", "heldout_sign_accuracy", "heldout_unsafer_sign_accuracy",
                          "heldout_safer_sign_accuracy", "heldout_pairs",
                          *(f"heldout_{n}_{cell}" for n in ("order", "sign") for cell in ("11", "10", "01", "00"))}
    assert sum(final[f"heldout_sign_{cell}"] for cell in ("11", "10", "01", "00")) == 2  # both responses


def test_heldout_metrics_of_each_kind_and_pooled(tiny_three_layer):
    """Held-out pairs of several kinds: each kind's metrics, and the pooled ones weighted by pairs."""
    from safebench import modeling
    from safebench.trainers import score_model

    tokenizer = modeling.load_tokenizer(tiny_three_layer)
    benign = [{**record(f"benign {i}", "no", "sure, here is a long and harmless answer"), "kind": "benign",
               "is_response_0_safe": True} for i in range(3)]
    red_team = [{**record("red team", "a long refusal that goes on and on and on", "ok"), "kind": "red-team"}]
    recipe = score_model.Recipe(trainer="score_model", kind="cost", max_length=32)
    # the longer response is the costlier one, and the short refusal "no" sits exactly at 0
    shortest = len(score_model.encode_pairs(tokenizer, score_model.pairs_for("cost", benign), "plain", 32)[0]["low_ids"])
    metrics = score_model.heldout_metrics(LengthScorer(shortest), tokenizer, recipe, benign + red_team, "plain")
    assert metrics["heldout_benign_pairs"] == 3.0 and metrics["heldout_red_team_pairs"] == 1.0
    assert metrics["heldout_benign_accuracy"] == 1.0 and metrics["heldout_red_team_accuracy"] == 0.0
    assert metrics["heldout_accuracy"] == pytest.approx(3 / 4)
    # benign answers are labelled safe but score above 0: only their refusals are on the right side
    assert metrics["heldout_benign_unsafer_sign_accuracy"] == 0.0
    assert metrics["heldout_benign_safer_sign_accuracy"] == 1.0
    assert metrics["heldout_pairs"] == 4.0
    # confusion counts add up over kinds (shares are pair-weighted means)
    cells = ("11", "10", "01", "00")
    assert sum(metrics[f"heldout_order_{c}"] for c in cells) == 4.0
    assert all(metrics[f"heldout_sign_{c}"] == metrics[f"heldout_benign_sign_{c}"] + metrics[f"heldout_red_team_sign_{c}"]
               for c in cells)


def test_train_layers_beyond_the_model_is_a_usage_error(tiny_three_layer):
    from safebench import modeling
    from safebench.errors import UsageError
    from safebench.trainers.score_model import freeze_below

    with pytest.raises(UsageError, match=r"train_layers = 4: the model has only 3 layers"):
        freeze_below(modeling.load_score_model(tiny_three_layer), 4)


def test_heldout_split_keeps_each_prompt_on_one_side():
    from safebench.data import split_heldout

    records = [record(f"prompt {i % 10}", f"safe {i}", f"unsafe {i}") for i in range(40)]
    train, heldout = split_heldout(records, 0.3, seed=0)
    assert len(train) + len(heldout) == 40
    assert len({r["prompt"] for r in heldout}) == 3
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in heldout}
    assert split_heldout(records, 0.3, seed=0) == (train, heldout)
    assert split_heldout(records, 0.0, seed=0) == (records, [])


def test_heldout_fraction_is_refused_for_the_tiny_world(tmp_path):
    from safebench import data
    from safebench.config import DataConfig
    from safebench.errors import UsageError

    with pytest.raises(UsageError, match=r"data.heldout_fraction = 0.2: not supported for source 'tiny-world'"):
        data.prepare(DataConfig(source="tiny-world", heldout_fraction=0.2), 0, tmp_path)
