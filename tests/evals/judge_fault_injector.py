"""FAULT INJECTOR (a test fake): an HTTP proxy in front of the real vLLM server.

A real server does not produce a 429 with Retry-After, a 500, a stall, a dropped
connection or an empty 200 body on demand; this proxy does, for the requests we choose,
and passes everything else through to the real server unchanged. It counts what it saw
so tests can prove how many calls went over the wire.
"""

from __future__ import annotations

import asyncio
import collections
import random
import threading

import aiohttp
from aiohttp import web

FAULTS = ("429", "500", "timeout", "drop", "empty")


class FaultInjectingProxy:
    def __init__(self, upstream: str, retry_after: float = 1.0, stall_seconds: float = 5.0):
        self.upstream = upstream.rstrip("/")
        self.retry_after = retry_after
        self.stall_seconds = stall_seconds
        self.planned: collections.deque[str] = collections.deque()
        self.fault_rate = 0.0
        self.rng = random.Random(0)
        self.latency = 0.0  # added to every forwarded request (to make a run slow enough to kill)
        self.lock = threading.Lock()
        self.counts: collections.Counter[str] = collections.Counter()
        self.authorizations: list[str] = []  # what clients sent, to prove a key was used
        self.port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None

    # --- control from the test thread -----------------------------------------------
    def plan(self, *faults: str) -> None:
        """The next len(faults) chat requests get these faults, in order ('ok' passes one)."""
        with self.lock:
            self.planned.extend(faults)

    def reset(self) -> None:
        with self.lock:
            self.planned.clear()
            self.counts.clear()
            self.fault_rate = 0.0
            self.latency = 0.0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _next_fault(self) -> str:
        with self.lock:
            if self.planned:
                return self.planned.popleft()
            if self.fault_rate and self.rng.random() < self.fault_rate:
                return self.rng.choice(FAULTS)
            return "ok"

    # --- the proxy ------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        fault = self._next_fault() if request.path.endswith("/chat/completions") else "ok"
        with self.lock:
            self.counts["requests"] += 1
            self.authorizations.append(request.headers.get("Authorization", ""))
            self.counts[f"fault:{fault}"] += 1
        if fault == "429":
            return web.json_response({"error": {"message": "rate limited (injected)"}}, status=429,
                                     headers={"Retry-After": str(self.retry_after)})
        if fault == "500":
            return web.json_response({"error": {"message": "server error (injected)"}}, status=500)
        if fault == "drop":
            request.transport.abort()  # hang up without a response
            return web.Response()
        if fault == "empty":
            return web.Response(status=200, body=b"", content_type="application/json")
        if fault == "timeout":
            await asyncio.sleep(self.stall_seconds)  # longer than the client's timeout
        if self.latency:
            await asyncio.sleep(self.latency)
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "authorization")}
        async with self._session.request(request.method, self.upstream + request.path_qs,
                                         data=body, headers=headers) as upstream:
            payload = await upstream.read()
            with self.lock:
                self.counts[f"upstream:{upstream.status}"] += 1
            return web.Response(status=upstream.status, body=payload,
                                content_type=upstream.content_type)

    def start(self) -> "FaultInjectingProxy":
        ready = threading.Event()

        def serve():
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)

            async def setup():
                self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))
                app = web.Application(client_max_size=16 * 1024 * 1024)
                app.router.add_route("*", "/{tail:.*}", self._handle)
                self._runner = web.AppRunner(app, access_log=None)
                await self._runner.setup()
                site = web.TCPSite(self._runner, "127.0.0.1", 0)
                await site.start()
                self.port = site._server.sockets[0].getsockname()[1]

            self._loop.run_until_complete(setup())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, name="fault-injector", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is None:
            return

        async def teardown():
            await self._session.close()
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(teardown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
