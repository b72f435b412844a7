"""Training stages in several processes: `safebench run --launch FILE` / `--num-processes N`.

The pipeline stays one process (data, generation, scoring, reports, the stage records of
safebench/stages.py); each training stage it builds is started as

    accelerate launch --config_file FILE [--num_processes N] -m safebench.trainers.launch_stage SPEC

with SPEC a JSON file in the stage's work directory naming everything the trainer's context holds
(`stage_spec`). The launched processes write the checkpoint into the stage's temporary model
directory and the main one appends its training curves to `curves.jsonl` beside SPEC; the pipeline
copies those into the run database once the launch succeeded. A launch that fails (or is killed)
leaves the stage unrecorded, and the next run relaunches it: the trainers resume from the state
they saved in the work directory (safebench/trainers/engine.py: gathered model and optimizer).

Without a launch file `--num-processes N` starts N data-parallel processes (accelerate's
`--multi_gpu`, gloo on a machine without GPUs). On a machine without GPUs a file written for GPUs
runs as it is: accelerate starts the processes through torchrun and they join a gloo group on the
CPU (engine.make_accelerator); only the process count may need `--num-processes`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from safebench.errors import UsageError

SPEC = "launch-spec.json"
CURVES = "curves.jsonl"
ERROR = "error.txt"  # a launched stage's one-line UsageError
DISTRIBUTED_TYPES = ("FSDP", "MULTI_GPU", "MULTI_CPU", "NO")


@dataclass(frozen=True)
class Launcher:
    """How training stages start: an accelerate config file and/or a process count."""

    config_file: Path | None
    num_processes: int | None

    def command(self, spec: Path) -> list[str]:
        return self.accelerate_command() + ["-m", "safebench.trainers.launch_stage", str(spec)]

    def accelerate_command(self) -> list[str]:
        """`accelerate launch` with this launcher's options, before the program to run."""
        command = [sys.executable, "-m", "accelerate.commands.launch"]
        if self.config_file is not None:
            command += ["--config_file", str(self.config_file)]
        else:
            command += ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        if self.num_processes is not None:
            command += ["--num_processes", str(self.num_processes)]
        if self.single_machine():
            # a free port of this machine: two runs (or a test beside a run) must not meet on 29500
            command += ["--main_process_port", str(_free_port())]
        return command

    def single_machine(self) -> bool:
        if self.config_file is None:
            return True
        return int(_read_config(self.config_file).get("num_machines", 1)) == 1

    def run(self, spec: Path, log) -> None:
        """Launch the stage described by `spec`; a UsageError when a process fails."""
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        (spec.parent / ERROR).unlink(missing_ok=True)
        result = subprocess.run(self.command(spec), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        if (spec.parent / ERROR).exists():
            raise UsageError((spec.parent / ERROR).read_text())
        if result.returncode != 0:
            log(result.stdout[-4000:])
            raise UsageError(f"{spec.parent}: the launched training stage failed (exit {result.returncode}; its "
                             "output is above); rerun the same command to resume it from its last saved state")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _read_config(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise UsageError(f"--launch {str(path)!r}: cannot read it ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected an accelerate config (a mapping of fields)")
    return data


def check_config(path: Path) -> None:
    """Refuse, with one line naming the field, a launch file the stages cannot run with."""
    data = _read_config(path)
    kind = data.get("distributed_type", "NO")
    if kind not in DISTRIBUTED_TYPES:
        raise UsageError(f"{path}: field 'distributed_type' = {kind!r}: expected one of {', '.join(DISTRIBUTED_TYPES)} "
                         "(the training stages shard with FSDP2; DeepSpeed is not wired in)")
    if kind == "FSDP":
        version = (data.get("fsdp_config") or {}).get("fsdp_version", 1)
        if str(version) != "2":
            raise UsageError(f"{path}: field 'fsdp_config.fsdp_version' = {version!r}: expected 2")
    processes = data.get("num_processes", 1)
    if not isinstance(processes, int) or processes < 1:
        raise UsageError(f"{path}: field 'num_processes' = {processes!r}: expected a positive integer")


def launcher(config_file: Path | None, num_processes: int | None, preset_file: Path | None) -> Launcher | None:
    """The launcher `--launch` / `--num-processes` ask for (None: every stage in this process).
    `--num-processes` alone uses the preset's launch file (`preset_file`) when it has one."""
    if num_processes is not None and num_processes < 1:
        raise UsageError(f"--num-processes {num_processes}: expected a positive integer")
    if config_file is None and num_processes is None:
        return None
    if config_file is None and preset_file is not None and preset_file.is_file():
        config_file = preset_file
    if config_file is not None:
        if not config_file.is_file():
            raise UsageError(f"--launch {str(config_file)!r}: no such file")
        check_config(config_file)
    return Launcher(config_file, num_processes)


def write_spec(directory: Path, spec: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / SPEC
    path.write_text(json.dumps(spec, indent=1))
    return path


def read_curves(directory: Path) -> dict[int, dict[str, float]]:
    """The curves a launched stage logged, the last line of each step winning (a resumed stage logs
    again the steps after its saved state)."""
    path = directory / CURVES
    curves: dict[int, dict[str, float]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:  # the last line of a process killed while writing it
                continue
            curves[int(entry["step"])] = entry["metrics"]
    return curves


def clear(directory: Path) -> None:
    """Remove the spec and curves of a launch whose curves are recorded."""
    for name in (SPEC, CURVES, ERROR):
        (directory / name).unlink(missing_ok=True)
