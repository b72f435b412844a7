"""`generation.vllm_compile`: when the vLLM engine compiles the model, and why changing it
never regenerates or flags samples (it changes speed, not answers)."""

from __future__ import annotations

import pytest

from safebench.cli import main
from safebench.evals.backends import vllm as vllm_backend
from safebench.evals.generation import GenerationConfig
from safebench.evals.serve import server_command


@pytest.fixture
def on_cpu(monkeypatch):
    monkeypatch.setattr(vllm_backend, "_has_gpu", lambda: False)


def test_auto_runs_eagerly_on_a_cpu(on_cpu):
    # Compiling adds about a minute to every engine start there (benchmarks/results/generation.json).
    assert not vllm_backend.compiles("auto")


def test_auto_compiles_on_a_gpu(monkeypatch):
    monkeypatch.setattr(vllm_backend, "_has_gpu", lambda: True)
    assert vllm_backend.compiles("auto")


def test_explicit_choice_wins(on_cpu, monkeypatch):
    assert vllm_backend.compiles("on")
    monkeypatch.setattr(vllm_backend, "_has_gpu", lambda: True)
    assert not vllm_backend.compiles("off")


def test_server_runs_eagerly_exactly_when_not_compiled(tmp_path):
    def command(compiled):
        return server_command(tmp_path, "127.0.0.1", 8000, "m", "float32", 160, 0, [], compiled)

    assert "--enforce-eager" in command(False)
    assert "--enforce-eager" not in command(True)


def test_compile_choice_is_not_part_of_the_samples_identity():
    base = GenerationConfig(backend="vllm")
    assert GenerationConfig(backend="vllm", vllm_compile="on").settings_hash() == base.settings_hash()
    assert GenerationConfig(backend="vllm", temperature=0.5).settings_hash() != base.settings_hash()


def test_bad_compile_choice_is_one_line(tmp_path, capsys):
    from safebench.world import tiny

    model = tiny.make_tiny_policy_checkpoint(tmp_path / "model")
    assert main(["generate", "--quiet", "--model", str(model), "--suite", "tiny-harmful", "--out", str(tmp_path / "run"),
                 "--set", "generation.vllm_compile=maybe"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "vllm_compile" in line and "maybe" in line
