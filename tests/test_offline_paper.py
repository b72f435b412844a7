"""The paper preset's loading code and distributed engine, rehearsed offline: scripts/build_offline_hub.py
builds stand-ins of its hub assets (PKU-SafeRLHF v0, alpaca-7b-reproduced, the beaver score models with
their `score_head` keys) in a local HF cache, and `safebench run --preset paper --num-processes 2` with
size overrides reads them with HF_HUB_OFFLINE=1 and trains every method end to end, each training stage
in two processes launched with the paper's own launch file (trainers/launch/paper.yaml: FSDP2, here on
gloo): SFT, a reward model trained from it, PPO-Lag (six models, all sharded; the cost model and its
critic from the beaver cost model's `score_head` format), SACPO (TRL's trainers, data parallel on CPU)
and P-SACPO (a merge, in the parent process). RePO shares PPO-Lag's trainer and is left out to keep
the test cheap; tests/trainers/test_engine.py resumes sharded stages."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys

import pytest

from tests.helpers import ROOT, run_cli

pytestmark = pytest.mark.slow

# Sizes small enough for a CPU: the preset's recipes otherwise (beaver score models used as published).
# Batch sizes are global: 8 rows a step are 4 in each of the two processes.
OVERRIDES = [
    "judge=null", "suites=[pku-saferlhf-test]", "generation.backend=hf", "generation.max_new_tokens=8",
    "generation.batch_size=16",
    "trainers.sft.keep_base=false",  # the preset keeps alpaca-7b-reproduced as is; here SFT trains, to rehearse it
    "trainers.sft.epochs=1", "trainers.sft.batch_size=8", "trainers.sft.micro_batch_size=8", "trainers.sft.max_length=48",
    "trainers.reward-model.epochs=1", "trainers.reward-model.batch_size=8", "trainers.reward-model.micro_batch_size=4",
    "trainers.reward-model.max_length=48",
    "trainers.cost-model.pretrained=PKU-Alignment/beaver-7b-v1.0-cost",
    "trainers.ppo-lag.epochs=0.5", "trainers.ppo-lag.prompt_batch_size=8", "trainers.ppo-lag.train_batch_size=8",
    "trainers.ppo-lag.micro_batch_size=8", "trainers.ppo-lag.max_new_tokens=6",
    "trainers.sacpo.epochs=1", "trainers.sacpo.batch_size=8", "trainers.sacpo.second_batch_size=8",
    "trainers.sacpo.micro_batch_size=4", "trainers.sacpo.max_length=48", "trainers.sacpo.max_prompt_length=24",
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
    methods = ("sft", "ppo-lag", "sacpo", "p-sacpo")
    args = ["run", "--preset", "paper", "--methods", ",".join(methods), "--out", str(run), "--quiet",
            "--num-processes", "2"]
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
    assert samples == set(methods)
    with contextlib.closing(sqlite3.connect(run / "results.sqlite")) as db:
        curves = {m for m, in db.execute("SELECT DISTINCT method FROM curves")}
    assert curves >= {"sft", "reward-model", "ppo-lag", "sacpo"}   # the launched stages' curves, recorded
    # the checkpoints are ordinary from_pretrained directories
    from transformers import AutoModelForCausalLM

    for method in methods:
        model = AutoModelForCausalLM.from_pretrained(run / manifest["methods"][method]["checkpoint"])
        assert model.config.vocab_size == 601   # the stand-in's 600 sentencepiece pieces + <pad>
