"""A headless Chromium driven over the DevTools protocol (one page, a websocket), for the report
tests and benchmarks/report_explorer.py: load a page, run JavaScript in it as a user's clicks
would, read values back, take screenshots. Debian's chromium (installed by .ci/run)."""

from __future__ import annotations

import contextlib
import itertools
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

from websockets.sync.client import connect

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
START_TIMEOUT_S = 60


class Chromium:
    def __init__(self, profile: Path, *, width: int = 1280, height: int = 1000):
        assert CHROMIUM, "chromium is not installed (apt-get install -y chromium; .ci/run does it)"
        self.exits = contextlib.ExitStack()
        profile = Path(profile)
        profile.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--hide-scrollbars", f"--window-size={width},{height}", f"--user-data-dir={profile}",
             "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            port = self._port(profile / "DevToolsActivePort")
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as answer:
                pages = [t for t in json.load(answer) if t["type"] == "page"]
            self.socket = self.exits.enter_context(
                connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=30))
        except BaseException:
            self.close()
            raise
        self.ids = itertools.count(1)
        self.events: list[dict] = []
        self.send("Page.enable")
        self.send("Runtime.enable")

    def _port(self, path: Path) -> int:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.process.returncode} before it listened")
            if path.exists() and path.read_text().strip():
                return int(path.read_text().split()[0])
            time.sleep(0.05)
        raise TimeoutError(f"chromium wrote no {path} within {START_TIMEOUT_S} s")

    def send(self, method: str, **params) -> dict:
        message_id = next(self.ids)
        self.socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=120))
            if message.get("id") == message_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, event: str) -> dict:
        while True:
            for i, message in enumerate(self.events):
                if message.get("method") == event:
                    return self.events.pop(i)
            self.events.append(json.loads(self.socket.recv(timeout=120)))

    def open(self, url: str) -> None:
        """Load `url` afresh and wait for its load event (by way of about:blank: a navigation
        that changes only the fragment would not load the page again)."""
        for target in ("about:blank", url):
            self.events.clear()
            self.send("Page.navigate", url=target)
            self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path, selector: str | None = None, max_height: float | None = None) -> None:
        """A PNG of the viewport, or of the element `selector` names (beyond the viewport, its
        top `max_height` pixels when given)."""
        import base64

        params: dict = {"format": "png"}
        if selector is not None:
            box = self.evaluate(f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
                                ".getBoundingClientRect(); return [r.left + scrollX, r.top + scrollY, r.width, r.height]; })()")
            height = box[3] if max_height is None else min(box[3], max_height)
            params.update(clip={"x": box[0], "y": box[1], "width": box[2], "height": height, "scale": 1},
                          captureBeyondViewport=True)
        Path(path).write_bytes(base64.b64decode(self.send("Page.captureScreenshot", **params)["data"]))

    def close(self) -> None:
        self.exits.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
