"""Each plug-in registry: a throwaway entry, registered as a plug-in would be, shows in config
validation, in `safebench list` and where the pipeline looks it up; an unknown name is refused
with the list of what exists."""

from __future__ import annotations

import shutil

import pytest
from pydantic import ValidationError

from safebench import cli, config as config_module
from safebench.errors import UsageError
from safebench.evals.generation import BACKENDS, GenerationConfig, Generated, get_backend
from safebench.evals.judge import templates
from safebench.evals.judge.config import parse_judge_config
from safebench.evals.judge.protocol import PROTOCOLS, ChoiceProtocol, PointwiseProtocol, Verdict, get_protocol
from tests.helpers import ROOT


def listed(capsys, what: str) -> list[str]:
    assert cli.main(["list", what]) == 0
    return [line.split()[0] for line in capsys.readouterr().out.splitlines()]


def test_a_new_method_is_one_recipe_file(tmp_path, monkeypatch, capsys):
    for folder in ("trainers", "evals"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    monkeypatch.setenv("SAFEBENCH_HOME", str(tmp_path))
    (tmp_path / "trainers" / "sft-long.yaml").write_text(
        "trainer: sft\nrole: method\ndescription: SFT for more epochs\nepochs: 9\n")
    assert "sft-long" in listed(capsys, "methods")
    config, recipes = config_module.resolve("tiny", ["sft", "sft-long"])
    assert recipes["sft-long"].epochs == 9 and "sft-long" in config.methods
    with pytest.raises(UsageError, match="sft-longer"):
        config_module.resolve("tiny", ["sft-longer"])


class EchoBackend:
    """Answers every prompt with the prompt itself (a throwaway backend)."""

    def __init__(self, model_dir, config, template):
        self.config = config

    def generate(self, prompts, seed):
        return [Generated(response=p, n_tokens=len(p.split())) for p in prompts]

    def close(self):
        pass


def test_a_new_backend_is_registered_by_name(monkeypatch, capsys):
    with pytest.raises(ValidationError, match="unknown backend 'echo'; available: hf, openai, vllm"):
        GenerationConfig(backend="echo")
    monkeypatch.setitem(BACKENDS.registered, "echo", EchoBackend)
    config = GenerationConfig(backend="echo")
    assert "echo" in listed(capsys, "backends")
    backend = get_backend("echo", "unused", config, "plain")
    assert [g.response for g in backend.generate(["hi there"], seed=0)] == ["hi there"]


class PolitenessVerdict(ChoiceProtocol, PointwiseProtocol):
    """Polite or rude (a throwaway protocol)."""

    name = "politeness"
    label = "tone"
    options = ("polite", "rude")
    criterion = "politeness"

    def template(self):
        return templates.JudgeTemplate("politeness", "0" * 16, templates.jinja2.Template(
            "Is this reply polite? {{ prompt }} / {{ response }} ({{ fence }})\nTone: <polite or rude>"))

    def verdicts(self, row, value):
        return [Verdict(self.criterion, None if value is None else float(value == "polite"))]


def test_a_new_judge_protocol_is_registered_by_name(monkeypatch, capsys):
    with pytest.raises(UsageError, match="unknown judge protocol 'politeness'; available: harmful_verdict, pairwise"):
        parse_judge_config({"protocols": ["politeness"]})
    protocol = PolitenessVerdict()
    monkeypatch.setitem(PROTOCOLS.registered, "politeness", protocol)
    config = parse_judge_config({"protocols": ["harmful_verdict", "politeness"], "repeats": 2})
    assert "politeness" in listed(capsys, "protocols")
    assert get_protocol("politeness") is protocol
    samples = {"g": [{"suite": "s", "prompt_id": "p", "sample_idx": 0, "prompt": "hello", "response": "go away"}]}
    requests, notes = protocol.requests([{"gen_key": "g", "method": "m"}], samples, config)
    assert [r.item_id for r in requests] == ["politeness|g|p|0|r0", "politeness|g|p|0|r1"] and notes == []
    assert "go away" in requests[0].messages[0]["content"]
    assert protocol.parse("Tone: rude").value == "rude"
    # the reports read its verdicts through it
    import pandas as pd

    from safebench import metrics

    judgments = pd.DataFrame([{"method": "m", "suite": "s", "prompt_id": "p", "sample_idx": 0, "protocol": "politeness",
                               "status": "scored", "value": '"polite"', "criterion": "politeness", "order_ab": "-"}])
    verdicts = metrics._verdicts_from_judgments(judgments)
    assert verdicts[["criterion", "value", "status"]].to_dict("records") == [
        {"criterion": "politeness", "value": 1.0, "status": "ok"}]
