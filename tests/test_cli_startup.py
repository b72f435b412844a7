"""Commands that load no model must not import the heavy libraries (about 2-3 s a process):
plugin command modules and trainer modules import them inside their functions, and
transformers' logging is set when something imports it (safebench/cli.py `quiet_libraries`)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT

HEAVY = ("torch", "transformers", "scipy", "pandas", "trl", "matplotlib")

# Runs the real entry point in a fresh interpreter and prints which heavy modules it imported.
PROBE = """
import json, sys
from safebench import cli
try:
    code = cli.main(json.loads(sys.argv[1]))
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in json.loads(sys.argv[2]) if m in sys.modules)
print(json.dumps({"code": code, "heavy": heavy}))
"""


def probe(argv: list[str]) -> dict:
    result = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv), json.dumps(HEAVY)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("argv, code", [
    (["--help"], 0),
    (["list", "methods"], 0),
    (["list", "presets"], 0),
    (["report", "--help"], 0),
    (["export", "--help"], 0),
    (["judge", "--help"], 0),
    (["run", "--preset", "tiny", "--methods", "bogus"], 2),
    (["run", "--preset", "nope"], 2),
    # config validation imports every method's trainer module for its Recipe
    (["run", "--preset", "tiny", "--methods", "sft,sacpo,p-sacpo,dpo-h,ppo-lag,repo",
      "--set", "trainers.repo.lambda_lr=abc"], 2),
])
def test_commands_that_load_no_model_import_no_heavy_library(argv, code):
    assert probe(argv) == {"code": code, "heavy": []}


def test_transformers_imported_later_is_still_quiet():
    # Libraries look transformers up (importlib.util.find_spec) before anything imports it.
    script = ("import importlib.util, sys\nfrom safebench import cli\ncli.quiet_libraries()\n"
              "assert importlib.util.find_spec('transformers') and 'transformers' not in sys.modules\n"
              "from transformers.utils import logging\n"
              "print(logging.get_verbosity() == logging.ERROR, logging.is_progress_bar_enabled())")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["True", "False"]
