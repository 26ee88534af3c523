"""Small helpers shared by the tests."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from m3ad_rl.core.output_format import render


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


@contextlib.contextmanager
def shaped_reward_service(config=None, per_char: float = 0.01):
    """The reward service's HTTP protocol (POST /score {items} → {results}) on 127.0.0.1, scoring with the
    real RewardFunction plus ``per_char`` × the response's length: distinct samples of a group then get
    distinct rewards, so a GRPO step on a barely trained model is guaranteed a learning signal (the
    policy provably moves, as the fault tests need). Yields the base URL for ``reward_service.url``."""
    import json
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from rewards.config import RewardConfig
    from rewards.scorer import RewardFunction
    from rewards.service import score_items

    fn = RewardFunction(config or RewardConfig())

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            items = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["items"]
            results = score_items(fn, items)
            for item, r in zip(items, results, strict=True):
                r["score"] += per_char * len(item["response"])
            body = json.dumps({"results": results}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join(5)


def two_image_prompts(proc, second_suffix: str = "") -> tuple[list[str], list]:
    """Two chat prompts for ``proc``, one noise image each (96×64 and 64×64, through PNG), the second prompt's
    text ending in ``second_suffix``: (texts, images), as the processor takes them."""
    import io

    from PIL import Image

    images = []
    for size in ((96, 64), (64, 64)):
        buf = io.BytesIO()
        Image.effect_noise(size, 40).convert("RGB").save(buf, "PNG")
        images.append(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    text = proc.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Any defect?"}]}],
        add_generation_prompt=True, tokenize=False,
    )  # fmt: skip
    return [text, text + second_suffix], images
