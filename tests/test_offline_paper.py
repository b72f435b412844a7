"""The paper preset's loading code, rehearsed offline: scripts/build_offline_hub.py builds stand-ins
of its hub assets (PKU-SafeRLHF v0, alpaca-7b-reproduced, the beaver score models with their
`score_head` keys) in a local HF cache, and `safebench run --preset paper` with size overrides reads
them with HF_HUB_OFFLINE=1 and trains SFT, PPO-Lag (six models: critics from the beaver models) and
SACPO end to end. RePO and P-SACPO share these loading paths (ppo.py, sacpo.py) and are left out to
keep the test cheap; `safebench run` with every method was run by hand (README, "Paper preset")."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT, run_cli

pytestmark = pytest.mark.slow

# Sizes small enough for a CPU: the preset's recipes otherwise (beaver score models used as published).
OVERRIDES = [
    "judge=null", "suites=[pku-saferlhf-test]", "generation.backend=hf", "generation.max_new_tokens=8",
    "generation.batch_size=16",
    "trainers.sft.epochs=1", "trainers.sft.batch_size=8", "trainers.sft.micro_batch_size=8", "trainers.sft.max_length=48",
    "trainers.reward-model.pretrained=PKU-Alignment/beaver-7b-v1.0-reward",
    "trainers.cost-model.pretrained=PKU-Alignment/beaver-7b-v1.0-cost",
    "trainers.ppo-lag.epochs=0.5", "trainers.ppo-lag.prompt_batch_size=8", "trainers.ppo-lag.train_batch_size=8",
    "trainers.ppo-lag.micro_batch_size=8", "trainers.ppo-lag.max_new_tokens=6",
    "trainers.sacpo.epochs=1", "trainers.sacpo.batch_size=8", "trainers.sacpo.second_batch_size=8",
    "trainers.sacpo.micro_batch_size=8", "trainers.sacpo.max_length=48", "trainers.sacpo.max_prompt_length=24",
]
# A cache location set in the environment would win over HF_HOME.
CACHE_VARIABLES = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_DATASETS_CACHE", "TRANSFORMERS_CACHE")


def test_paper_preset_runs_offline_on_stand_ins(tmp_path):
    home = tmp_path / "hf"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "build_offline_hub.py"), str(home), "--rows", "16"],
                   check=True, capture_output=True, text=True, cwd=ROOT)
    env = {"HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    # the dry run reads the cached config and the prepared dataset's row count, not published figures
    plan = run_cli("run", "--preset", "paper", "--methods", "sft", "--dry-run", check=True, env=env,
                   unset=CACHE_VARIABLES).stdout
    assert "HF cache: PKU-Alignment/alpaca-7b-reproduced@main" in plan and "16 preference pairs" in plan
    run = tmp_path / "run"
    args = ["run", "--preset", "paper", "--methods", "sft,ppo-lag,sacpo", "--out", str(run), "--quiet"]
    for override in OVERRIDES:
        args += ["--set", override]
    run_cli(*args, check=True, env=env, unset=CACHE_VARIABLES)

    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    commit = (home / "hub" / "models--PKU-Alignment--alpaca-7b-reproduced" / "refs" / "main").read_text()
    assert manifest["assets"]["hub:PKU-Alignment/alpaca-7b-reproduced"] == commit
    preference = (run / manifest["stages"]["data"]["dir"] / "preference.jsonl").read_text().splitlines()
    assert len(preference) == 16   # the stand-in's v0 train split: one pair for each of 16 prompts
    samples = {e["method"] for e in manifest["evaluations"] if e["suite"] == "pku-saferlhf-test"}
    assert samples == {"sft", "ppo-lag", "sacpo"}
    # the checkpoints are ordinary from_pretrained directories
    from transformers import AutoModelForCausalLM

    for method in ("sft", "ppo-lag", "sacpo"):
        model = AutoModelForCausalLM.from_pretrained(run / manifest["methods"][method]["checkpoint"])
        assert model.config.vocab_size == 601   # the stand-in's 600 sentencepiece pieces + <pad>
