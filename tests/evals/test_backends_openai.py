"""The openai backend against the real vLLM OpenAI-compatible server that `serving()`
(the code behind `safebench serve`) starts on loopback (shared with the judge tests:
tests/evals/conftest.py): greedy answers equal HF's for the same checkpoint, with the plain
template (completions endpoint) and the chat template (chat completions)."""

from __future__ import annotations

import urllib.request

import pytest

from safebench.cli import main
from tests.evals.backend_helpers import samples

pytest.importorskip("vllm", reason="the vllm extra is not installed (scripts/install-vllm.sh)")


@pytest.mark.slow
def test_openai_backend_against_served_checkpoint(tiny_policy_server, long_context_tiny_policy, tmp_path, capsys):
    server, policy = tiny_policy_server, long_context_tiny_policy
    common = ["--suite", "tiny-harmful,tiny-benign", "--limit", "24", "--quiet",
              "--set", "generation.temperature=0", "--set", "generation.k=1", "--set", "generation.max_new_tokens=32"]
    assert server.host == "127.0.0.1" and server.base_url.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(f"{server.base_url}/models", timeout=10) as reply:
        assert server.model in reply.read().decode()
    for template in ("plain", "chat"):
        assert main(["generate", "--model", server.model, "--backend", "openai", "--out", str(tmp_path / f"openai-{template}"),
                     "--set", f"generation.base_url={server.base_url}", "--set", f"generation.template={template}",
                     *common]) == 0
    # a model the server does not serve is a usage error naming what it serves
    assert main(["generate", "--model", "other-model", "--backend", "openai", "--out", str(tmp_path / "x"),
                 "--set", f"generation.base_url={server.base_url}", *common]) == 2
    assert server.model in capsys.readouterr().err

    for template in ("plain", "chat"):
        assert main(["generate", "--model", str(policy), "--backend", "hf", "--out", str(tmp_path / f"hf-{template}"),
                     "--set", f"generation.template={template}", *common]) == 0
        served, local = samples(tmp_path / f"openai-{template}"), samples(tmp_path / f"hf-{template}")
        assert len(served) == len(local) == 48
        differ = [key for key in local if (served[key]["response"], served[key]["n_tokens"])
                  != (local[key]["response"], local[key]["n_tokens"])]
        assert not differ, f"{template}: {len(differ)} answers differ, e.g. {[served[k]['response'] for k in differ[:2]]}"
        assert len({row["response"] for row in local.values()}) >= 3
