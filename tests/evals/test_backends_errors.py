"""`safebench generate`'s input errors (exit 2, one line) and its settings-mismatch warning.

These run the command in-process with the HF backend on an untrained tiny checkpoint and a
handful of prompts, so they take seconds."""

from __future__ import annotations

import builtins
import json
import sys

import pytest

from safebench.cli import main


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    from safebench.world import tiny

    return tiny.make_tiny_policy_checkpoint(tmp_path_factory.mktemp("untrained") / "model")


def generate(*args: str) -> int:
    return main(["generate", "--quiet", *args])


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "expected an error message"
    return err[-1]


def test_unknown_backend(untrained, tmp_path, capsys):
    assert generate("--model", str(untrained), "--suite", "tiny-harmful", "--backend", "tgi",
                    "--out", str(tmp_path)) == 2
    line = error_line(capsys)
    assert "unknown backend 'tgi'" in line and "hf, openai, vllm" in line


def test_missing_model_path(tmp_path, capsys):
    assert generate("--model", str(tmp_path / "nowhere"), "--suite", "tiny-harmful", "--out", str(tmp_path)) == 2
    assert "does not exist" in error_line(capsys)


def test_not_a_causal_lm(tmp_path, capsys):
    scorer = tmp_path / "reward"
    scorer.mkdir()
    (scorer / "config.json").write_text(json.dumps({"architectures": ["LlamaForSequenceClassification"],
                                                    "model_type": "llama"}))
    assert generate("--model", str(scorer), "--suite", "tiny-harmful", "--out", str(tmp_path / "run")) == 2
    line = error_line(capsys)
    assert "not a causal LM" in line and "LlamaForSequenceClassification" in line


def test_directory_without_config(tmp_path, capsys):
    assert generate("--model", str(tmp_path), "--suite", "tiny-harmful", "--out", str(tmp_path / "run")) == 2
    assert "no config.json" in error_line(capsys)


def test_context_too_short(untrained, tmp_path, capsys):
    # The tiny Llama has 160 positions; a 200-token answer cannot fit after any prompt.
    assert generate("--model", str(untrained), "--suite", "tiny-harmful", "--out", str(tmp_path),
                    "--set", "generation.max_new_tokens=200") == 2
    line = error_line(capsys)
    assert "exceeds the model's context of 160 tokens" in line and "max_new_tokens (200)" in line
    assert not (tmp_path / "results.sqlite").exists() or _rows(tmp_path) == 0


def test_vllm_not_installed(untrained, tmp_path, capsys, monkeypatch):
    real_import = builtins.__import__

    def no_vllm(name, *args, **kwargs):
        if name == "vllm" or name.startswith("vllm."):
            raise ImportError("No module named 'vllm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_vllm)
    assert generate("--model", str(untrained), "--suite", "tiny-harmful", "--backend", "vllm",
                    "--out", str(tmp_path)) == 2
    line = error_line(capsys)
    assert "pip install -e '.[vllm]'" in line and "pip uninstall -y torchvision torchaudio torchcodec" in line


def test_openai_needs_base_url(tmp_path, capsys):
    assert generate("--model", "some-model", "--suite", "tiny-harmful", "--backend", "openai",
                    "--out", str(tmp_path)) == 2
    assert "generation.base_url" in error_line(capsys)


def test_openai_unreachable_endpoint(tmp_path, capsys):
    from safebench.evals.serve import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"   # nothing listens there
    # No retries: with the default 5 the client's backoff alone takes about 15 s.
    assert generate("--model", "m", "--suite", "tiny-harmful", "--backend", "openai", "--out", str(tmp_path),
                    "--set", f"generation.base_url={url}", "--set", "generation.max_retries=0") == 2
    line = error_line(capsys)
    assert "cannot reach" in line and url in line


def test_openai_retries_come_from_the_generation_config(capsys, tmp_path):
    from safebench.evals.backends.openai import make_client
    from safebench.evals.generation import GenerationConfig

    url = "http://127.0.0.1:1/v1"
    assert make_client(GenerationConfig(backend="openai", base_url=url)).max_retries == 5
    assert make_client(GenerationConfig(backend="openai", base_url=url, max_retries=1)).max_retries == 1
    # how often to retry does not change what is generated: earlier samples stay valid
    assert GenerationConfig(max_retries=0).settings_hash() == GenerationConfig().settings_hash()
    assert generate("--model", "m", "--suite", "tiny-harmful", "--backend", "openai", "--out", str(tmp_path),
                    "--set", f"generation.base_url={url}", "--set", "generation.max_retries=-1") == 2
    line = error_line(capsys)
    assert "generation.max_retries" in line and "-1" in line


def test_bad_generation_field(untrained, tmp_path, capsys):
    assert generate("--model", str(untrained), "--suite", "tiny-harmful", "--out", str(tmp_path),
                    "--set", "generation.top_p=1.5") == 2
    line = error_line(capsys)
    assert "generation.top_p" in line and "1.5" in line


def test_unknown_suite(untrained, tmp_path, capsys):
    assert generate("--model", str(untrained), "--suite", "no-such-suite", "--out", str(tmp_path)) == 2
    assert "unknown suite 'no-such-suite'" in error_line(capsys)


def _rows(run_dir) -> int:
    import sqlite3

    with sqlite3.connect(run_dir / "results.sqlite") as db:
        return db.execute("SELECT COUNT(*) FROM samples").fetchone()[0]


def test_warns_when_settings_differ(untrained, tmp_path, capsys):
    common = ["--model", str(untrained), "--suite", "tiny-benign", "--limit", "3", "--set", "generation.k=1",
              "--set", "generation.max_new_tokens=4"]
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    assert generate(*common, "--out", str(run_a), "--set", "generation.temperature=0") == 0
    assert "warning" not in capsys.readouterr().err
    # Same settings again into the same run: nothing to warn about, nothing regenerated.
    assert generate(*common, "--out", str(run_a), "--set", "generation.temperature=0") == 0
    captured = capsys.readouterr()
    assert "warning" not in captured.err and "already generated" in captured.out

    # Another temperature in the same run directory, then compared with the first run.
    assert generate(*common, "--out", str(run_a), "--set", "generation.temperature=0.7") == 0
    err = capsys.readouterr().err
    assert "other settings" in err and "temperature 0.0 vs 0.7" in err
    assert generate(*common, "--out", str(run_b), "--set", "generation.temperature=0.7",
                    "--compare", str(run_a)) == 0
    err = capsys.readouterr().err
    assert str(run_a) in err and "temperature 0.0 vs 0.7" in err
    assert _rows(run_a) == 6 and _rows(run_b) == 3
