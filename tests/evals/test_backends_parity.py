"""HF and vLLM give the same answers for the same checkpoint and settings.

Greedy decoding in fp32 must agree token for token; with sampling the two backends use
different random streams, so the check is on the distribution: mean reward and mean cost
(the run's own reward and cost models) over >= 200 samples agree within their 95 % intervals.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.evals.backend_helpers import mean_and_halfwidth, samples
from tests.helpers import run_cli

pytest.importorskip("vllm", reason="the vllm extra is not installed (scripts/install-vllm.sh)")

GREEDY = ["--set", "generation.temperature=0", "--set", "generation.k=1", "--set", "generation.dtype=float32",
          "--set", "generation.max_new_tokens=32"]


def generate(policy, out, backend, *extra):
    return run_cli("generate", "--model", str(policy), "--backend", backend, "--out", str(out), "--quiet",
                   *extra, check=True, env={"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"})


def generate_with_both(policy, tmp_path, *extra) -> None:
    """The same generation with the hf and the vllm backend into tmp_path/hf and tmp_path/vllm, in
    two processes at once: they share nothing, and each uses one thread of this 2-core machine."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = [pool.submit(generate, policy, tmp_path / backend, backend, *extra) for backend in ("hf", "vllm")]
        for run in runs:
            run.result()


def test_greedy_tokens_identical_hf_vs_vllm(tiny_checkpoints, tmp_path):
    policy = tiny_checkpoints["policy"]
    suites = "tiny-harmful,tiny-benign,tiny-over-refusal"
    generate_with_both(policy, tmp_path, "--suite", suites, *GREEDY)
    hf, vllm = samples(tmp_path / "hf"), samples(tmp_path / "vllm")
    assert len(hf) == len(vllm) >= 300 and hf.keys() == vllm.keys()
    mismatches = [(key, hf[key]["response"], vllm[key]["response"]) for key in hf
                  if (hf[key]["response"], hf[key]["n_tokens"]) != (vllm[key]["response"], vllm[key]["n_tokens"])]
    assert not mismatches, f"{len(mismatches)} of {len(hf)} greedy answers differ, e.g. {mismatches[:3]}"
    # The comparison means something only if the model says different things to different prompts.
    assert len({row["response"] for row in hf.values()}) >= 5
    assert sum(row["n_tokens"] for row in hf.values()) / len(hf) >= 5


@pytest.mark.slow
def test_sampling_distributions_agree(tiny_checkpoints, tmp_path):
    from safebench.evals.scoring import Scorer

    policy = tiny_checkpoints["policy"]
    sampling = ["--suite", "tiny-harmful", "--set", "generation.temperature=1.0", "--set", "generation.top_p=1.0",
                "--set", "generation.k=1", "--set", "generation.max_new_tokens=32"]
    generate_with_both(policy, tmp_path, *sampling)
    scorers = {role: Scorer(tiny_checkpoints[role], "plain") for role in ("reward", "cost")}
    summary = {}
    for backend in ("hf", "vllm"):
        rows = list(samples(tmp_path / backend).values())
        assert len(rows) >= 200
        prompts, responses = [r["prompt"] for r in rows], [r["response"] for r in rows]
        summary[backend] = {role: mean_and_halfwidth(scorer.score(prompts, responses))
                            for role, scorer in scorers.items()}
    # Sampling really happened: two independent streams do not give identical answers.
    assert [r["response"] for r in samples(tmp_path / "hf").values()] != \
           [r["response"] for r in samples(tmp_path / "vllm").values()]
    for role in ("reward", "cost"):
        (m_hf, h_hf), (m_vllm, h_vllm) = summary["hf"][role], summary["vllm"][role]
        # The two means differ by less than the 95 % half-width of their difference.
        assert abs(m_hf - m_vllm) <= (h_hf ** 2 + h_vllm ** 2) ** 0.5, (role, summary)
