"""The FSDP2 engine (safebench/trainers/engine.py) in two CPU processes under the paper preset's
launch file, and the launch settings `safebench run` accepts (safebench/launch.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from safebench import launch, modeling
from safebench.errors import UsageError
from tests.helpers import ROOT
from tests.trainers import ppo_fixtures


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return ppo_fixtures.build_checkpoints(tmp_path_factory.mktemp("engine-models"))


def test_sharded_stages_resume_to_the_weights_of_an_uninterrupted_run(checkpoints, tmp_path):
    """SFT and PPO-Lag sharded over two processes: a run started again from the state saved half-way
    trains only the steps after it and ends where the straight run ended; the checkpoints are
    ordinary from_pretrained directories, and the weights a vLLM rollout engine is pushed are whole."""
    models = Path(checkpoints["policy"]).parent
    script = Path(__file__).with_name("two_process_resume.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [*launch.Launcher(plan_file(), 2).accelerate_command(), str(script), str(models), str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    first, second = (json.loads((tmp_path / f"process-{i}.json").read_text()) for i in range(2))
    assert first["processes"] == 2 and first["engine_sharded"] and first["sharded"]
    assert first["sft-straight"] == [1, 2, 3, 4] and first["sft-resumed"] == [3, 4]
    assert first["ppo-straight"] == [1, 2] and first["ppo-resumed"] == [2]
    assert second["sft-straight"] == []   # only the main process logs
    for name in ("sft", "ppo"):
        straight = modeling.load_policy(tmp_path / f"{name}-straight").state_dict()
        resumed = modeling.load_policy(tmp_path / f"{name}-resumed").state_dict()
        assert straight.keys() == resumed.keys()
        for key in straight:
            torch.testing.assert_close(resumed[key], straight[key], rtol=1e-5, atol=1e-6, msg=key)
        if name == "ppo":  # each process gathers the whole actor to push into its own vLLM engine
            assert first["pushed_plain"] and second["pushed_plain"]
            assert first["pushed"] == second["pushed"]
            assert first["pushed"] == pytest.approx({k: float(v.double().sum()) for k, v in resumed.items()})
        config = json.loads((tmp_path / f"{name}-straight" / "config.json").read_text())
        assert config["architectures"] == ["LlamaForCausalLM"]   # not FSDP2's wrapper class


def plan_file() -> Path:
    return ROOT / "trainers" / "launch" / "paper.yaml"


@pytest.mark.parametrize("text, field", [
    ("distributed_type: DEEPSPEED\n", "distributed_type"),
    ("distributed_type: FSDP\nfsdp_config: {fsdp_version: 1}\n", "fsdp_config.fsdp_version"),
    ("distributed_type: FSDP\nnum_processes: 0\nfsdp_config: {fsdp_version: 2}\n", "num_processes"),
])
def test_a_launch_file_the_stages_cannot_run_is_refused_naming_the_field(tmp_path, text, field):
    path = tmp_path / "launch.yaml"
    path.write_text(text)
    with pytest.raises(UsageError, match=field):
        launch.launcher(path, None, None)


def test_num_processes_alone_launches_with_the_presets_file():
    found = launch.launcher(None, 2, plan_file())
    command = found.command(Path("spec.json"))
    assert command[command.index("--config_file") + 1] == str(plan_file())
    assert command[command.index("--num_processes") + 1] == "2"
    assert launch.launcher(None, None, plan_file()) is None   # no option: every stage in this process
    assert "--multi_gpu" in launch.launcher(None, 2, None).command(Path("spec.json"))
