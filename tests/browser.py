"""A headless Chromium tab driven over the DevTools protocol (websocket-client), for the gallery's test
and the docs' screenshots:

    python -m tests.browser runs/demo/gallery.html docs/images/gallery-demo.png [--width 1400 --height 1000]
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def chromium() -> str:
    """Debian's chromium; installed with apt when missing and we may (CI runs as root on Debian)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "install", "-y", "-q", "chromium"], ["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", "chromium"]):  # fmt: skip
            subprocess.run(cmd, env=env, capture_output=True, timeout=600)
            if found := shutil.which("chromium"):
                return found
    import pytest

    pytest.skip("no chromium and no apt-get as root to install Debian's package")


class Page:
    """One headless Chromium tab over the DevTools protocol (websocket-client)."""

    def __init__(self, binary: str, profile: Path, width: int = 1400, height: int = 1000):
        import websocket

        self.proc = subprocess.Popen(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )  # fmt: skip: its own process group, so close() ends its zygote, GPU and renderer children too
        deadline, url = time.time() + 60, None
        while url is None and time.time() < deadline:
            line = self.proc.stderr.readline()
            if "DevTools listening on" in line:
                url = line.split("DevTools listening on", 1)[1].strip()
        assert url, "chromium did not open its DevTools port"
        port = url.split(":")[2].split("/")[0]
        import urllib.request

        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
        page = next(t for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self.n, self.events = 0, []

    def call(self, method: str, **params):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.n:
                assert "error" not in msg, msg
                return msg.get("result", {})
            self.events.append(msg)

    def wait_for(self, event: str, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(e.get("method") == event for e in self.events):
                return
            self.events.append(json.loads(self.ws.recv()))
        raise AssertionError(f"no {event}")

    def js(self, expression: str):
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in res, res
        return res["result"].get("value")

    def close(self) -> None:
        import signal

        self.ws.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the browser and every process it started
        self.proc.wait(timeout=30)

    def open(self, path: Path) -> None:
        self.call("Network.enable")
        self.call("Page.enable")
        self.call("Page.navigate", url=Path(path).resolve().as_uri())
        self.wait_for("Page.loadEventFired")

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description="screenshot a local HTML page in headless Chromium")
    p.add_argument("page")
    p.add_argument("out")
    p.add_argument("--width", type=int, default=1400)
    p.add_argument("--height", type=int, default=1000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as profile:
        page = Page(chromium(), Path(profile), args.width, args.height)
        try:
            page.open(Path(args.page))
            Path(args.out).write_bytes(page.screenshot())
        finally:
            page.close()
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
