"""The dry run (safebench/plan.py): parameter counts from configs, ZeRO memory arithmetic, the
printed plan and the refusal of a plan that cannot fit."""

from __future__ import annotations

from safebench import plan
from safebench.cli import main


def test_llama_7b_parameters_match_the_published_count():
    # LLaMA-7B has 6,738,415,616 parameters (32000 tokens); alpaca-7b-reproduced adds one pad
    # token to the embeddings and the LM head: 2 x 4096 more.
    shape = plan.KNOWN_SHAPES["PKU-Alignment/alpaca-7b-reproduced"]
    assert shape.parameters("lm") == 6_738_415_616 + 2 * 4096
    # a score model has a one-unit head instead of the LM head
    assert shape.parameters("score") == 6_738_415_616 + 2 * 4096 - 32001 * 4096 + 4096


def _one_model_stage(launch: plan.Launch) -> plan.StagePlan:
    shape = plan.KNOWN_SHAPES["PKU-Alignment/alpaca-7b-reproduced"]
    stage = plan.StagePlan("sft", [plan.Held("policy", shape, "lm", True)], 1, 8, 0, 0)
    stage.memory = plan.stage_memory(stage, launch, "bfloat16")
    return stage


def test_mixed_precision_adam_holds_16_bytes_per_parameter_and_zero3_divides_them():
    # ZeRO (Rajbhandari et al. 2020, §3): bf16 weights and gradients + fp32 master and Adam moments
    device = plan.DEVICES["a100-80gb"]
    one = _one_model_stage(plan.Launch(1, "zero3", False, device, "test"))
    eight = _one_model_stage(plan.Launch(8, "zero3", False, device, "test"))
    states = ("weights", "gradients", "fp32 master", "optimizer")
    p = one.models[0].parameters
    assert sum(one.memory[k] for k in states) == 16 * p
    assert sum(eight.memory[k] for k in states) == 16 * p / 8
    zero2 = _one_model_stage(plan.Launch(8, "zero2", False, device, "test"))
    assert zero2.memory["weights"] == 2 * p                 # ZeRO-2 keeps whole weights
    offload = _one_model_stage(plan.Launch(8, "zero3", True, device, "test"))
    assert offload.memory["optimizer"] == offload.memory["fp32 master"] == 0


def test_tiny_dry_run_prints_every_stage_and_runs_nothing(tmp_path, capsys):
    code = main(["run", "--preset", "tiny", "--methods", "sft,ppo-lag", "--dry-run", "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert code == 0
    for stage in ("sft", "reward-model", "cost-model", "ppo-lag"):
        assert any(line.startswith(stage) for line in out.splitlines())
    assert "reference" in out and "cost model" in out   # PPO's six models
    assert not (tmp_path / "run").exists()


def test_a_plan_that_cannot_fit_is_refused_in_one_line(tmp_path, capsys):
    single = tmp_path / "one-gpu.yaml"
    single.write_text("distributed_type: 'NO'\nnum_processes: 1\nmixed_precision: bf16\n")
    code = main(["run", "--preset", "paper", "--methods", "sft,ppo-lag", "--dry-run", "--launch", str(single)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1
    # the paper preset keeps alpaca-7b-reproduced as its SFT model, so the reward model is the
    # first stage that trains
    assert "stage 'reward-model'" in err[0] and "80 GiB" in err[0] and "FSDP2" in err[0]


def test_launch_options_without_dry_run_are_refused(capsys):
    assert main(["run", "--preset", "tiny", "--device", "h200"]) == 2
    assert "--dry-run" in capsys.readouterr().err


def test_the_paper_launch_file_is_an_accelerate_config_and_the_plan_reads_it():
    from accelerate.commands.config.config_args import load_config_from_file

    path = plan.launch_path("paper")
    config = load_config_from_file(str(path))   # accelerate refuses unknown or malformed fields
    launch = plan.read_launch(path, None)
    assert (launch.processes, launch.sharding, launch.offload) == (config.num_processes, "fsdp", False)
    assert config.fsdp_config["fsdp_version"] == 2
    assert config.mixed_precision == "bf16" and launch.checkpointing


def test_num_processes_overrides_the_launch_files_count(capsys):
    path = plan.launch_path("paper")
    assert main(["run", "--preset", "tiny", "--methods", "sft", "--dry-run", "--launch", str(path),
                 "--num-processes", "2", "--device", "cpu"]) == 0
    assert "2 x cpu" in capsys.readouterr().out
    assert main(["run", "--preset", "tiny", "--dry-run", "--num-processes", "0"]) == 2
    assert "--num-processes 0" in capsys.readouterr().err
