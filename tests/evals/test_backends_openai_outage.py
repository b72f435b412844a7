"""The openai backend when its endpoint fails after answering at the start: one error line
naming generation.base_url and what happened, exit 2, the finished batches kept, and a
rerun that generates only the rest.

The outage is real: an OpenAI-compatible server process killed with SIGKILL while `safebench
generate` runs against it, then started again at the same URL. The server is the tiny-oracle
judge server (FastAPI + uvicorn, safebench/evals/judge/tiny_oracle_judge.py): it answers any
chat request and starts in about a second, where a vLLM server takes 30 s or more here, twice
per test; the backend's failure handling sees the same dropped connections either way. A 500
that outlasts the client's retries is something no real server does on demand: that case puts
the FAULT INJECTOR proxy (a test fake, tests/evals/judge_fault_injector.py) in front of it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from safebench.cli import main
from safebench.evals.judge.tiny_oracle_judge import MODEL_NAME, serving_tiny_oracle_judge
from tests.evals.backend_helpers import count_rows, samples
from tests.helpers import ROOT

sys.path.insert(0, str(Path(__file__).parent))
from judge_fault_injector import FaultInjectingProxy  # noqa: E402

TOTAL = 288 * 2   # every tiny-harmful prompt, k=2: enough batches of 4 for the kill to land midway


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("safebench: error:")]


def test_server_killed_mid_run_keeps_rows_and_rerun_resumes(tmp_path, capsys):
    from safebench.evals.serve import free_port

    port = free_port()
    run_dir = tmp_path / "run"
    # Sampling settings and k=2: the resumed batches must get the seeds they would have had.
    # max_retries=1 so that the dead server is reported in about a second, not after 15 s of backoff.
    command = ["generate", "--model", MODEL_NAME, "--backend", "openai", "--suite", "tiny-harmful",
               "--out", str(run_dir), "--quiet", "--set", f"generation.base_url=http://127.0.0.1:{port}/v1",
               "--set", "generation.template=chat", "--set", "generation.temperature=1.0",
               "--set", "generation.k=2", "--set", "generation.batch_size=4", "--set", "generation.max_retries=1"]
    with serving_tiny_oracle_judge(port=port) as server:
        process = subprocess.Popen([sys.executable, "-m", "safebench.cli", *command], cwd=ROOT,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while count_rows(run_dir) < 16 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.killpg(server.process.pid, signal.SIGKILL)   # the server dies: no goodbye, requests in flight cut
        server.process.wait()
        stderr = process.communicate(timeout=120)[1]
    assert process.returncode == 2, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    [line] = error_lines(stderr)
    assert f"generation.base_url='http://127.0.0.1:{port}/v1'" in line
    assert "after 1 retry" in line and "APIConnectionError" in line
    assert "rerun the same command to generate the rest" in line
    kept = count_rows(run_dir)
    assert 0 < kept < TOTAL, f"the kill did not land midway ({kept} of {TOTAL} rows)"
    assert kept % 4 == 0   # whole batches: the one in flight is dropped, not half-written
    assert re.search(rf"the {kept} of {TOTAL} samples written so far are kept", line), line
    before = samples(run_dir)

    with serving_tiny_oracle_judge(port=port):   # the same URL, so the same stage key
        assert main(command) == 0
    assert f"{TOTAL - kept} sample(s) generated, {kept} reused" in capsys.readouterr().out
    after = samples(run_dir)
    assert len(after) == TOTAL
    assert all(after[key] == row for key, row in before.items())   # kept rows were not redone


def test_server_errors_past_the_retries(tmp_path, capsys):
    run_dir = tmp_path / "run"
    with serving_tiny_oracle_judge() as server:
        proxy = FaultInjectingProxy(server.url).start()
        try:
            command = ["generate", "--model", MODEL_NAME, "--backend", "openai", "--suite", "tiny-benign",
                       "--limit", "12", "--out", str(run_dir), "--quiet", "--set", f"generation.base_url={proxy.base_url}",
                       "--set", "generation.template=chat", "--set", "generation.batch_size=4",
                       "--set", "generation.k=1", "--set", "generation.max_retries=1"]
            # Batches 1 and 2 pass; batch 3's four requests and their one retry each get 500s
            # (planned in order of arrival, and the four go out together).
            proxy.plan(*["ok"] * 8, *["500"] * 8)
            assert main(command) == 2
            [line] = error_lines(capsys.readouterr().err)
            assert f"generation.base_url={proxy.base_url!r}" in line
            assert "after 1 retry" in line and "InternalServerError" in line and "500" in line
            assert "the 8 of 12 samples written so far are kept" in line
            assert count_rows(run_dir) == 8

            assert main(command) == 0   # the server is well again: only the last batch is asked
            assert "4 sample(s) generated, 8 reused" in capsys.readouterr().out
            # 8 + 4 answered generations, and each run's /models call (describe_endpoint)
            assert proxy.counts["fault:500"] == 8 and proxy.counts["fault:ok"] == 8 + 4 + 2
        finally:
            proxy.stop()
