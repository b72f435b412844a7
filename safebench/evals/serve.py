"""vLLM's OpenAI-compatible server for a checkpoint, on loopback.

`safebench serve CHECKPOINT` runs it in the foreground and prints its URL; `serving()` is
the same server as a context manager, for tests and for the judge:

    with serving("runs/tiny/stages/sft-KEY/model") as server:
        client = OpenAI(base_url=server.base_url, api_key="EMPTY")
        client.completions.create(model=server.model, prompt="...")

The server gets the same engine settings as the offline vLLM backend (dtype, context
length, no generation_config.json defaults, the same compile rule), so what it answers matches
`--backend vllm`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from safebench.errors import UsageError
from safebench.evals.backends import common

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class Server:
    process: subprocess.Popen
    host: str
    port: int
    model: str                       # the id to send as `model` in requests
    log_path: Path
    command: list[str] = field(default_factory=list)
    watchdog_fd: int | None = None   # see `watch_parent`; closed by `stop_server`

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def server_command(checkpoint: Path, host: str, port: int, served_name: str, dtype: str,
                   max_model_len: int | None, seed: int, extra_args: list[str], compiled: bool) -> list[str]:
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(checkpoint),
               "--served-model-name", served_name, "--host", host, "--port", str(port), "--dtype", dtype,
               "--seed", str(seed), "--generation-config", "vllm"]
    if max_model_len:
        command += ["--max-model-len", str(max_model_len)]
    if not compiled:
        command.append("--enforce-eager")
    return command + list(extra_args)


def start_server(checkpoint: str | Path, port: int | None = None, host: str = "127.0.0.1", *,
                 dtype: str = "float32", served_name: str | None = None, seed: int = 0,
                 startup_timeout: float = 600.0, log_path: str | Path | None = None,
                 extra_args: list[str] = (), compile_choice: str = "auto") -> Server:
    """Start the server and return once /v1/models answers (or raise with the log's tail)."""
    checkpoint = Path(checkpoint)
    model_config = common.check_causal_lm(checkpoint)
    from safebench.evals.backends.vllm import compiles, import_vllm

    import_vllm()   # a clear install hint here rather than a traceback in the server's log
    port = port or free_port(host)
    served_name = served_name or (checkpoint.parent.name if checkpoint.name == "model" else checkpoint.name)
    log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="safebench-serve-", suffix=".log")[1])
    command = server_command(checkpoint, host, port, served_name, dtype, common.context_limit(model_config),
                             seed, list(extra_args), compiles(compile_choice))
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    return launch(command, host, port, served_name, log_path, env, startup_timeout, "the vLLM server")


def launch(command: list[str], host: str, port: int, model: str, log_path: Path, env: dict,
           startup_timeout: float, what: str) -> Server:
    """Start an OpenAI-compatible server process and return once /v1/models answers (or
    raise with the log's tail). Used for vLLM and for the tiny world's oracle judge."""
    with open(log_path, "ab") as log:
        # Its own session, so stopping it also stops any process it spawns (vLLM's engine).
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = Server(process=process, host=host, port=port, model=model, log_path=log_path, command=command,
                    watchdog_fd=watch_parent(process.pid))
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stop_server(server)
            raise UsageError(f"serve: {what} exited with code {process.returncode} before answering; "
                             f"log {log_path}:\n{server.log_tail()}")
        if models_answer(server.base_url):
            return server
        time.sleep(0.2)
    stop_server(server)
    raise UsageError(f"serve: {what} did not answer {server.base_url}/models within {startup_timeout:.0f} s; "
                     f"log {log_path}:\n{server.log_tail()}")


# Blocks until its stdin reaches end of file, then kills the process group named by argv[1].
WATCHDOG = ("import os, signal, sys\n"
            "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
            "while os.read(0, 1):\n    pass\n"
            "try:\n    os.killpg(int(sys.argv[1]), signal.SIGKILL)\n"
            "except ProcessLookupError:\n    pass\n")


def watch_parent(process_group: int) -> int:
    """Start a watchdog that kills `process_group` (a server and whatever it spawned) once this
    process is gone, kill -9 included, and return the pipe end that keeps it waiting.

    A server in its own session outlives its parent; the watchdog reads a pipe whose only
    writer is this process (the descriptor is not inherited by other children), and the kernel
    closes it however this process ends. PR_SET_PDEATHSIG would reach only the server itself,
    not the engine processes vLLM starts, and fires when the forking thread ends."""
    read_end, write_end = os.pipe()
    try:
        subprocess.Popen([sys.executable, "-c", WATCHDOG, str(process_group)], stdin=read_end,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    finally:
        os.close(read_end)
    return write_end


def models_answer(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/models", timeout=2) as reply:
            return reply.status == 200 and "data" in json.loads(reply.read())
    except (urllib.error.URLError, OSError, ValueError):
        return False


def stop_server(server: Server, grace: float = 30.0) -> None:
    try:
        _stop(server, grace)
    finally:
        if server.watchdog_fd is not None:
            os.close(server.watchdog_fd)   # the watchdog exits (the group is gone already)
            server.watchdog_fd = None


def _stop(server: Server, grace: float) -> None:
    if server.process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.process.pid, signal.SIGTERM)
    try:
        server.process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait()


@contextlib.contextmanager
def serving(checkpoint: str | Path, port: int | None = None, host: str = "127.0.0.1", **options) -> Iterator[Server]:
    """The vLLM server for `checkpoint` while the block runs; stopped afterwards, also on error."""
    server = start_server(checkpoint, port, host, **options)
    try:
        yield server
    finally:
        stop_server(server)


def serve_forever(checkpoint: str | Path, port: int | None, host: str, dtype: str, startup_timeout: float,
                  compile_choice: str = "auto") -> int:
    if host not in LOOPBACK:
        print(f"safebench: warning: serving on {host}, reachable from other machines; the server has no "
              "authentication", file=sys.stderr)
    server = start_server(checkpoint, port, host, dtype=dtype, startup_timeout=startup_timeout,
                          compile_choice=compile_choice)
    print(f"serving {checkpoint} as model '{server.model}' at {server.base_url}", flush=True)
    print(f"  e.g. safebench eval --endpoint {server.base_url} --model {server.model} --suite SUITE", flush=True)
    print(f"  server log: {server.log_path}; Ctrl-C stops it", flush=True)
    try:
        while server.process.poll() is None:
            time.sleep(1)
        print(f"safebench: the server exited with code {server.process.returncode}; log {server.log_path}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop_server(server)
