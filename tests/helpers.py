"""Small helpers shared by the tests."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from m3ad_rl.output_format import render


def out(answer: str, *, initial: str | None = None, reflection: str | None = None, types=(), boxes=()) -> str:
    """A canonical response (built with render, so the tests also exercise the renderer)."""
    return render(
        think="I inspect the part.", answer=answer, reflection=reflection, types=types, boxes=boxes, initial=initial
    )


@contextlib.contextmanager
def running(app):
    """Serve ``app`` on 127.0.0.1 in a daemon thread; yields the /v1 base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "test server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(5)
        sock.close()
