"""Resume state is data only: it round-trips every part the trainers save, and a planted pickle
(the format `torch.save` writes) is never executed."""

from __future__ import annotations

import json
import math

import pytest
import torch

from safebench.errors import UsageError
from safebench.trainers import engine, loop, resume_state


class Payload:
    """Unpickling this creates `marker`: proof that loading ran code from the file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def accelerator():
    """One process's, as `train_supervised` makes it (the loop saves and restores through it)."""
    return engine.make_accelerator("no")


def _trained_parts(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10, bias=False))
    model[1].weight = model[0].weight  # tied, as in the policies: two names, one storage
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.99))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (step + 1))
    for _ in range(2):
        model(torch.tensor([1, 2, 3])).sum().backward()
        optimizer.step()
        scheduler.step()
    return model, optimizer, scheduler


def test_state_round_trips_models_optimizers_schedulers_and_plain_values(tmp_path):
    model, optimizer, scheduler = _trained_parts()
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "method": {"log_lambda": -0.5, "window": [1.0, float("inf")], "flag": True, "none": None}, "step": 7}
    resume_state.write_state(tmp_path, state)
    back = resume_state.read_state(tmp_path)
    assert back["step"] == 7 and back["method"] == state["method"]
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.8, 0.99)  # tuples stay tuples
    assert set(back["optimizer"]["state"]) == set(state["optimizer"]["state"])  # integer keys stay integers
    for key, value in state["model"].items():
        torch.testing.assert_close(back["model"][key], value)
    fresh_model, fresh_optimizer, fresh_scheduler = _trained_parts(seed=1)
    fresh_optimizer.load_state_dict(back["optimizer"])
    fresh_scheduler.load_state_dict(back["scheduler"])
    assert fresh_scheduler.last_epoch == scheduler.last_epoch


def test_a_planted_pickle_is_never_executed(tmp_path, capsys, accelerator):
    """A `torch.save` file in every place resume state lives: none of it runs; the stage starts over."""
    marker = tmp_path / "payload-ran"
    state_dir = tmp_path / "work" / "state"
    state_dir.mkdir(parents=True)
    torch.save({"model": Payload(marker), "step": 5}, state_dir / "state.pt")
    torch.save({"model": Payload(marker), "step": 5}, state_dir / resume_state.TENSORS)
    (state_dir / resume_state.STRUCTURE).write_text(json.dumps({"dict": [["step", {"value": 5}]]}))
    model, optimizer, scheduler = _trained_parts()
    assert loop._restore(accelerator, state_dir, model, optimizer, scheduler) == 0
    assert not marker.exists()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "starting this stage over" in err


def test_a_state_of_another_model_is_refused_with_one_line(tmp_path, accelerator):
    model, optimizer, scheduler = _trained_parts()
    loop._save(accelerator, tmp_path / "state", 3, model, optimizer, scheduler)
    other = torch.nn.Linear(3, 3)
    other_optimizer = torch.optim.AdamW(other.parameters())
    other_scheduler = torch.optim.lr_scheduler.LambdaLR(other_optimizer, lambda step: 1.0)
    with pytest.raises(UsageError, match="delete that directory") as info:
        loop._restore(accelerator, tmp_path / "state", other, other_optimizer, other_scheduler)
    assert "\n" not in str(info.value)


def test_resume_gives_the_saved_step_and_weights(tmp_path, accelerator):
    model, optimizer, scheduler = _trained_parts()
    loop._save(accelerator, tmp_path / "state", 3, model, optimizer, scheduler)
    fresh, fresh_optimizer, fresh_scheduler = _trained_parts(seed=1)
    assert loop._restore(accelerator, tmp_path / "state", fresh, fresh_optimizer, fresh_scheduler) == 3
    assert math.isclose(fresh_scheduler.get_last_lr()[0], scheduler.get_last_lr()[0])
    for key, value in model.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value)
