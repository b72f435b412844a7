"""VLLMRollout, the RL trainers' vLLM rollout engine: weights pushed into the running engine
take effect (greedy output changes) and equal HF's with the new weights."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytest.importorskip("vllm", reason="the vllm extra is not installed (scripts/install-vllm.sh)")


@pytest.mark.slow
def test_pushed_weights_change_greedy_output_to_hf(tiny_checkpoints):
    result = subprocess.run([sys.executable, "-m", "tests.evals.vllm_rollout_check", str(tiny_checkpoints["policy"])],
                            cwd=ROOT, capture_output=True, text=True, timeout=900,
                            env={**__import__("os").environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
                                 "VLLM_CPU_KVCACHE_SPACE": "1"})
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    report = json.loads(lines[-1][len("RESULT "):])
    assert report["vllm_before"] == report["hf_before"]
    assert report["vllm_after"] != report["vllm_before"], "the pushed weights did not change the engine's output"
    assert report["vllm_after"] == report["hf_after"]
    first, same_seed, other_seed = report["sampled"]
    assert first == same_seed and first != other_seed
