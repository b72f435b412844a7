"""Bad input and a bad environment through the real command line: exit 2 and one line naming
what is wrong; an internal error exits 3 and points at the log holding its traceback."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, run_cli
from tests.trainers import ppo_fixtures

GOOD_SUITE = "name: {name}\nkind: harmful\nsource:\n  type: jsonl\n  path: {name}.jsonl\n"


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A copy of the project's recipes, suites and reports (SAFEBENCH_HOME) with bad files added."""
    root = tmp_path_factory.mktemp("home")
    for folder in ("trainers", "evals", "reports"):
        shutil.copytree(ROOT / folder, root / folder)
    suites = {
        "non-utf8-yaml": b"name: x\ndescription: \xff\xfe caf\xe9\n",
        "binary-yaml": bytes(range(0, 32)) * 4,
    }
    for name, content in suites.items():
        (root / "evals" / f"{name}.yaml").write_bytes(content)
    records = {
        "malformed-jsonl": b'{"id": "a", "prompt": "hi"}\n{"id": "b", "prompt": \n',
        "non-utf8-jsonl": b'{"id": "a", "prompt": "caf\xe9"}\n',
        "no-prompt-jsonl": b'{"id": "a", "prompt": "hi"}\n{"id": "b", "text": "hi"}\n',
    }
    for name, content in records.items():
        (root / "evals" / f"{name}.yaml").write_text(GOOD_SUITE.format(name=name))
        (root / f"{name}.jsonl").write_bytes(content)
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return ppo_fixtures.build_checkpoints(tmp_path_factory.mktemp("ckpt"))["policy"]


def _truncated_checkpoint(tmp: Path, checkpoint: Path) -> Path:
    copy = Path(shutil.copytree(checkpoint, tmp / "truncated"))
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return copy


def _run_dir(tmp: Path, manifest: bytes, database: bytes | None = None) -> Path:
    run = tmp / "run"
    run.mkdir()
    (run / "manifest.json").write_bytes(manifest)
    if database is not None:
        (run / "results.sqlite").write_bytes(database)
    return run


def _file(tmp: Path, content: bytes, name: str = "file") -> Path:
    path = tmp / name
    path.write_bytes(content)
    return path


# name -> (arguments from (tmp_path, checkpoint), what the one line must name)
CASES = {
    "--out an existing file": (lambda t, c: ["run", "--methods", "sft", "--out", str(_file(t, b"x"))],
                               "exists and is not a directory"),
    "suite YAML not UTF-8": (lambda t, c: ["list", "suites"], "non-utf8-yaml.yaml: not UTF-8 text"),
    "binary suite YAML": (lambda t, c: ["run", "--methods", "sft", "--set", "suites=[binary-yaml]",
                                        "--out", str(t / "r")], "binary-yaml.yaml: invalid YAML"),
    "malformed jsonl line": (lambda t, c: ["generate", "--model", str(c), "--suite", "malformed-jsonl",
                                           "--out", str(t / "g")], "malformed-jsonl.jsonl line 2: not valid JSON"),
    "jsonl not UTF-8": (lambda t, c: ["generate", "--model", str(c), "--suite", "non-utf8-jsonl",
                                      "--out", str(t / "g")], "non-utf8-jsonl.jsonl line 1: not UTF-8"),
    "suite record without a prompt": (lambda t, c: ["generate", "--model", str(c), "--suite", "no-prompt-jsonl",
                                                    "--out", str(t / "g")], "record 2 (id 'b'): field 'prompt'"),
    "truncated safetensors": (lambda t, c: ["generate", "--model", str(_truncated_checkpoint(t, c)), "--suite",
                                            "tiny-harmful", "--limit", "1", "--out", str(t / "g")],
                              "the checkpoint cannot be loaded (SafetensorError"),
    "garbage manifest.json (score)": (lambda t, c: ["score", str(_run_dir(t, b"\x00garbage{"))],
                                      "manifest.json: not a safebench manifest"),
    "manifest.json not a manifest (score)": (lambda t, c: ["score", str(_run_dir(t, b"[1, 2]"))],
                                             "manifest.json: not a safebench manifest"),
    "garbage results.sqlite (report)": (lambda t, c: ["report", str(_run_dir(t, b'{"evaluations": []}',
                                                                            b"not a database" * 100))],
                                        "results.sqlite: not a readable SQLite database"),
    "binary --config (judge)": (lambda t, c: ["judge", str(_run_dir(t, b'{"config": {}, "evaluations": []}')),
                                              "--config", str(_file(t, bytes(range(256)), "j.yaml"))],
                                "j.yaml: not UTF-8 text"),
    "malformed --config (judge)": (lambda t, c: ["judge", str(_run_dir(t, b'{"config": {}, "evaluations": []}')),
                                                 "--config", str(_file(t, b"model: [gpt\nbase_url: {", "j.yaml"))],
                                   "j.yaml: line"),
    "malformed --config (judge-validate)": (lambda t, c: ["judge-validate", "--config",
                                                          str(_file(t, b"model: [gpt\nx: {", "j.yaml"))],
                                            "j.yaml: line"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_with_one_line(case, home, checkpoint, tmp_path):
    arguments, named = CASES[case]
    result = run_cli(*arguments(tmp_path, checkpoint), env={"SAFEBENCH_HOME": str(home)})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("safebench: error:") and named in lines[0], result.stderr[-3000:]


def _injected(fault: str, *arguments: str):
    import subprocess

    return subprocess.run([sys.executable, "-m", "tests.fault_injector_cli", fault, *arguments],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("fault, said", [("ENOSPC", "No space left on device; free some space"),
                                         ("EROFS", "Read-only file system; choose a writable --out")])
def test_a_full_disk_or_read_only_file_system_exits_2_with_one_line(fault, said, tmp_path):
    """Injected (tests/fault_injector_cli.py): every fsync fails as the file system would."""
    out = tmp_path / "run"
    result = _injected(fault, "run", "--methods", "sft", "--quiet", "--out", str(out))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(lines) == 1 and said in lines[0] and str(out / "manifest.json") in lines[0], result.stderr[-3000:]


def test_an_internal_error_exits_3_pointing_at_its_traceback(tmp_path):
    result = _injected("bug", "run", "--methods", "sft", "--quiet", "--out", str(tmp_path / "run"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 3, result.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("safebench: internal error: ZeroDivisionError")
    log = Path(lines[0].split("traceback in ", 1)[1].split(";", 1)[0])
    assert "Traceback" in log.read_text() and "broken_run" in log.read_text()
    log.unlink()
