"""One vLLM OpenAI server for every test under tests/evals that talks to a served model.

Starting the server takes 15-40 s on the shared 2-core machine, so the judge tests and the
openai-backend tests share one: the tiny SFT policy of `tiny_run`, copied with a
2048-token context (the judge's prompts are longer than the 160 positions the tiny world
trains with; RoPE weights do not depend on that setting, so answers within 160 tokens are
the trained model's). The tests that use it run one after another and it stops right after
the last of them, rather than idling (memory, a process per engine) through the session.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from tests.helpers import TINY_SERVED_MODEL

JUDGE_CONTEXT = 2048
# Fixtures that keep the shared server busy: once no later test uses one of them, it stops.
SERVER_FIXTURES = ("tiny_policy_server", "vllm_server")


@pytest.fixture(scope="session")
def long_context_tiny_policy(tiny_checkpoints, tmp_path_factory) -> Path:
    """The tiny SFT checkpoint (read-only) copied with max_position_embeddings = 2048."""
    copy = tmp_path_factory.mktemp("served") / "model"
    shutil.copytree(tiny_checkpoints["policy"], copy)
    config_path = copy / "config.json"
    config = json.loads(config_path.read_text())
    config["max_position_embeddings"] = JUDGE_CONTEXT
    config_path.write_text(json.dumps(config, indent=2))
    return copy


class SharedServer:
    """`serving()` entered once and left early: after the last test that needs it."""

    def __init__(self, checkpoint: Path, log_path: Path):
        from safebench.evals.serve import serving

        self.block = serving(checkpoint, served_name=TINY_SERVED_MODEL, log_path=log_path)
        self.server = self.block.__enter__()
        self.closed = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.block.__exit__(None, None, None)
        # serving() promises to stop the server's whole process group (its engine process
        # too) on leaving the block; an orphaned helper may need a moment to be reaped.
        assert self.server.process.poll() is not None, "the vLLM server outlived its serving() block"
        deadline = time.monotonic() + 15
        while _group_alive(self.server.process.pid):
            assert time.monotonic() < deadline, "processes of the vLLM server outlived its serving() block"
            time.sleep(0.2)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


_shared: SharedServer | None = None


@pytest.fixture(scope="session")
def tiny_policy_server(long_context_tiny_policy, tmp_path_factory):
    """safebench.evals.serve.Server for the long-context tiny SFT policy, on 127.0.0.1."""
    global _shared
    pytest.importorskip("vllm", reason="the vllm extra is not installed (scripts/install-vllm.sh)")
    _shared = SharedServer(long_context_tiny_policy, tmp_path_factory.mktemp("vllm-log") / "server.log")
    try:
        yield _shared.server
    finally:
        _shared.close()
        _shared = None


@pytest.fixture(scope="session")
def vllm_server(request) -> str:
    """Root URL (no /v1) of the shared server, for the judge tests.

    SAFEBENCH_TEST_JUDGE_SERVER=http://127.0.0.1:PORT uses a server you already run instead
    (saves the start-up when iterating): vLLM's OpenAI server for a copy of the tiny SFT
    checkpoint with max_position_embeddings 2048, served as `tiny-sft`.
    """
    if os.environ.get("SAFEBENCH_TEST_JUDGE_SERVER"):
        return os.environ["SAFEBENCH_TEST_JUDGE_SERVER"].rstrip("/")
    return request.getfixturevalue("tiny_policy_server").url


def _uses_server(item) -> bool:
    return any(name in getattr(item, "fixturenames", ()) for name in SERVER_FIXTURES)


def pytest_collection_modifyitems(session, config, items):
    """Run the tests that use the shared server one after another (from where the first of
    them is), so it is up only while they run; the others keep their order."""
    users = [item for item in items if _uses_server(item)]
    if not users:
        return
    first = items.index(users[0])
    others = [item for item in items if not _uses_server(item)]
    items[:] = others[:first] + users + others[first:]


@pytest.hookimpl(trylast=True)   # after pytest's own teardown of the item
def pytest_runtest_teardown(item, nextitem):
    if _shared is None or _shared.closed:
        return
    items = item.session.items
    if not any(_uses_server(later) for later in items[items.index(item) + 1:]):
        _shared.close()
