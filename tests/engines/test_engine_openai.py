"""OpenAIEngine and openai_server over real HTTP on 127.0.0.1 (uvicorn on a free port).

The tiny random Qwen3-VL is served through ``make_app(HFEngine)``, so the whole path runs:
client payload, data-URL images, n samples, log-probs, usage. A second, fake server injects
faults (5xx, 401, Retry-After, fewer choices than asked, slow answers) for the client's retries,
rate limiter and concurrency limit.
"""

from __future__ import annotations

import asyncio
import base64
import io
import socket
import threading
import time

import pytest

fastapi = pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("transformers")
import httpx  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402

from m3ad_rl.engines import make_engine  # noqa: E402
from m3ad_rl.engines.base import GenerationRequest, SamplingParams  # noqa: E402
from m3ad_rl.engines.openai import OpenAIEngine  # noqa: E402
from m3ad_rl.engines.openai_server import make_app  # noqa: E402
from tests.helpers import running  # noqa: E402


def image_bytes(color=(90, 90, 90), fmt="PNG", size=32) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(autouse=True)
def _local_only(monkeypatch):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)  # traffic stays on 127.0.0.1
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    F.reset()


@pytest.fixture(scope="module")
def hf_url(tiny_model):
    from m3ad_rl.engines.hf import HFEngine

    engine = HFEngine(str(tiny_model))
    with running(make_app(engine, "tiny")) as url:
        yield url
    engine.close()


# --- the tiny model behind the server -----------------------------------------------------


def test_hf_round_trip_n_samples_logprobs_usage(hf_url):
    engine = OpenAIEngine(model="tiny", base_url=hf_url, max_retries=0, timeout=60)
    reqs = [
        GenerationRequest("a", "Is there a defect?", image_bytes((90, 90, 90))),
        GenerationRequest("b", "Look again.", image_bytes((30, 140, 60))),
    ]
    out = engine.generate(reqs, SamplingParams(n=4, max_new_tokens=16, seed=0))
    assert [len(g) for g in out] == [4, 4]
    for c in (c for g in out for c in g):
        assert c.error is None and c.finish_reason in {"stop", "length"}, c
        assert c.logprobs and 1 <= len(c.logprobs) <= 16 and all(lp <= 0 for lp in c.logprobs)
        assert c.token_ids == []  # ids do not travel over HTTP
        assert c.finish_reason == "stop" or len(c.logprobs) == 16
    assert engine.usage["requests"] == 2
    assert engine.usage["completion_tokens"] == sum(len(c.logprobs) for g in out for c in g)


def test_server_response_shape_with_and_without_logprobs(hf_url):
    url = "data:image/png;base64," + base64.b64encode(image_bytes()).decode()
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Any defect?"}]
    body = {"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": 8, "seed": 1}
    with httpx.Client(base_url=hf_url, timeout=60) as client:
        r = client.post("/chat/completions", json={**body, "n": 2, "logprobs": True})
        assert r.status_code == 200, r.text
        data = r.json()
        assert data["object"] == "chat.completion" and data["model"] == "tiny" and data["id"].startswith("chatcmpl-")
        assert [c["index"] for c in data["choices"]] == [0, 1]
        tokens = 0
        for c in data["choices"]:
            assert c["message"]["role"] == "assistant" and isinstance(c["message"]["content"], str)
            entries = c["logprobs"]["content"]
            assert entries and all(set(e) == {"token", "logprob", "bytes", "top_logprobs"} for e in entries)
            assert all(isinstance(e["token"], str) and e["top_logprobs"] == [] for e in entries)
            assert any(e["token"] for e in entries)  # decoded with the engine's tokenizer
            tokens += len(entries)
        assert data["usage"]["completion_tokens"] == tokens == data["usage"]["total_tokens"]
        r = client.post("/chat/completions", json={**body, "max_completion_tokens": 4, "logprobs": False})
        (choice,) = r.json()["choices"]
        assert r.status_code == 200 and choice.get("logprobs") is None
        assert 1 <= r.json()["usage"]["completion_tokens"] <= 4


def test_bad_requests_get_400_and_the_server_keeps_serving(hf_url):
    remote = [{"type": "image_url", "image_url": {"url": "https://example.com/x.png"}}, {"type": "text", "text": "?"}]
    bad64 = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]
    cases = [
        ({"model": "tiny", "messages": [{"role": "user", "content": remote}]}, 400, "remote image"),
        ({"model": "tiny"}, 400, "messages"),
        ({"model": "tiny", "messages": []}, 400, "messages"),
        ({"model": "tiny", "messages": [{"role": "user", "content": bad64}]}, 400, "base64"),
        ({"model": "tiny", "messages": [{"role": "system", "content": "hi"}]}, 400, "user message"),
        ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "n": 0}, 400, "n"),
        ({"model": "other", "messages": [{"role": "user", "content": "hi"}]}, 404, "does not exist"),
    ]
    with httpx.Client(base_url=hf_url, timeout=60) as client:
        for body, status, words in cases:
            r = client.post("/chat/completions", json=body)
            err = r.json()["error"]
            assert r.status_code == status and words in err["message"], (body, r.text)
            assert err["type"] == "invalid_request_error"
        r = client.post("/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["message"]
        r = client.get("/nowhere")
        assert r.status_code == 404 and "error" in r.json()
        assert client.get(hf_url.removesuffix("/v1") + "/health").json()["status"] == "ok"
        assert [m["id"] for m in client.get("/models").json()["data"]] == ["tiny"]
        ok = {"model": "tiny", "messages": [{"role": "user", "content": "Describe."}], "max_tokens": 2}
        r = client.post("/chat/completions", json=ok)  # text only, still served
        assert r.status_code == 200 and len(r.json()["choices"]) == 1


# --- fault injection ------------------------------------------------------------------------


class Fake:
    """What the fake server saw and what it should do next; reset before every test."""

    def reset(self) -> None:
        self.count = self.in_flight = self.max_in_flight = 0
        self.statuses: list[tuple[int, dict]] = []  # served first, one per request
        self.delay = 0.0
        self.cap: int | None = None  # most choices per response (a server that ignores n: 1)
        self.starts: list[float] = []
        self.bodies: list[dict] = []
        self.auth: list[str | None] = []


F = Fake()
F.reset()
fake = fastapi.FastAPI()


@fake.post("/v1/chat/completions")
async def fake_chat(request: fastapi.Request):
    body = await request.json()
    F.count += 1
    F.starts.append(time.monotonic())
    F.in_flight += 1
    F.max_in_flight = max(F.max_in_flight, F.in_flight)
    try:
        F.bodies.append(body)
        F.auth.append(request.headers.get("authorization"))
        if F.delay:
            await asyncio.sleep(F.delay)
        if F.statuses:
            code, headers = F.statuses.pop(0)
            return JSONResponse({"error": {"message": f"fault {code}"}}, status_code=code, headers=headers)
        k = body["n"] if F.cap is None else min(body["n"], F.cap)
        lp = {"content": [{"token": "o", "logprob": -0.5, "bytes": None, "top_logprobs": []}] * 2}
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": f"seed {body.get('seed')} #{i}"},
                "finish_reason": "stop",
                "logprobs": lp if body.get("logprobs") else None,
            }
            for i in range(k)
        ]
        usage = {"prompt_tokens": 3, "completion_tokens": 2 * k}
        return {"object": "chat.completion", "choices": choices, "usage": usage}
    finally:
        F.in_flight -= 1


@pytest.fixture(scope="module")
def fake_url():
    with running(fake) as url:
        yield url


def client(url: str, **kw) -> OpenAIEngine:
    return OpenAIEngine(**{"model": "fake", "base_url": url, "max_retries": 3, "timeout": 5, **kw})


def reqs(k: int) -> list[GenerationRequest]:
    return [GenerationRequest(f"r{i}", f"prompt {i}") for i in range(k)]


def test_503_twice_then_ok(fake_url):
    F.statuses = [(503, {}), (503, {})]
    (group,) = client(fake_url).generate(reqs(1), SamplingParams(n=2))
    assert [c.text for c in group] == ["seed None #0", "seed None #1"] and F.count == 3
    assert all(c.error is None and c.logprobs == [-0.5, -0.5] for c in group)


def test_retry_after_is_honoured(fake_url):
    F.statuses = [(429, {"Retry-After": "0.3"})]
    t0 = time.monotonic()
    (group,) = client(fake_url).generate(reqs(1), SamplingParams())
    assert group[0].error is None and F.count == 2 and time.monotonic() - t0 >= 0.28


def test_401_gives_error_completions_without_raising(fake_url):
    F.statuses = [(401, {}), (401, {})]
    out = client(fake_url).generate(reqs(2), SamplingParams(n=3))
    assert F.count == 2 and [len(g) for g in out] == [3, 3]  # not retried
    for c in (c for g in out for c in g):
        assert c.text == "" and c.finish_reason == "error" and c.error.startswith("HTTP 401")


def test_unreachable_server_gives_error_completions():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    (group,) = client(f"http://127.0.0.1:{port}/v1", max_retries=1).generate(reqs(1), SamplingParams(n=2))
    assert all(c.finish_reason == "error" and "Connect" in c.error and "2 attempts" in c.error for c in group)


def test_missing_choices_are_asked_for_again(fake_url):
    F.cap = 1  # a server that ignores n
    (group,) = client(fake_url).generate(reqs(1), SamplingParams(n=3, seed=7, logprobs=False))
    assert [b["n"] for b in F.bodies] == [3, 2, 1] and [b["seed"] for b in F.bodies] == [7, 8, 9]
    assert [c.text for c in group] == ["seed 7 #0", "seed 8 #0", "seed 9 #0"]
    assert all(c.logprobs is None for c in group) and all("logprobs" not in b for b in F.bodies)


def test_rate_limiter_spaces_request_starts(fake_url):
    t0 = time.monotonic()
    out = client(fake_url, requests_per_second=20).generate(reqs(6), SamplingParams())
    assert all(g[0].error is None for g in out) and time.monotonic() - t0 >= 0.25
    assert F.starts[-1] - F.starts[0] >= 0.2  # five 50 ms slots (less arrival jitter) between the starts


def test_concurrency_limit(fake_url):
    F.delay = 0.1
    out = client(fake_url, concurrency=2).generate(reqs(8), SamplingParams())
    assert all(g[0].error is None for g in out) and F.count == 8 and F.max_in_flight == 2


def test_retries_wait_for_their_start_slot(fake_url):
    F.statuses = [(503, {"Retry-After": "0.01"})] * 2
    engine = client(fake_url, requests_per_second=10)
    (group,) = engine.generate(reqs(1), SamplingParams())
    assert group[0].error is None and F.count == 3 and engine.usage["requests"] == 3
    assert F.starts[2] - F.starts[1] >= 0.08 and F.starts[1] - F.starts[0] >= 0.08  # a retry is paced like a first try


def test_a_request_backing_off_holds_no_slot(fake_url):
    F.statuses = [(429, {"Retry-After": "0.5"})]
    out = client(fake_url, concurrency=1).generate(reqs(2), SamplingParams())
    assert all(g[0].error is None for g in out) and F.count == 3 and F.max_in_flight == 1
    assert F.starts[1] - F.starts[0] < 0.3  # the other prompt went while the first waited out its Retry-After


def test_payload_images_and_authorization(fake_url, monkeypatch):
    from PIL import Image

    jpeg = image_bytes(fmt="JPEG")
    batch = [GenerationRequest("j", "jpeg?", jpeg), GenerationRequest("p", "pil?", Image.new("RGB", (8, 8)))]
    params = SamplingParams(n=2, temperature=0.7, top_p=0.9, max_new_tokens=33, seed=3)
    client(fake_url, concurrency=1).generate(batch, params)
    assert F.auth == [None, None]  # no key in the environment -> no header
    first = F.bodies[0]
    want = {"model": "fake", "n": 2, "temperature": 0.7, "top_p": 0.9, "max_tokens": 33, "seed": 3, "logprobs": True}
    assert {k: first[k] for k in want} == want
    (msg,) = first["messages"]
    assert msg["role"] == "user" and [p["type"] for p in msg["content"]] == ["image_url", "text"]
    url = msg["content"][0]["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,") and base64.b64decode(url.split(",", 1)[1]) == jpeg
    assert F.bodies[1]["messages"][0]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    monkeypatch.setenv("M3AD_TEST_KEY", "sk-local-1")
    client(fake_url, api_key_env="M3AD_TEST_KEY").generate(reqs(1), SamplingParams())
    assert F.auth[-1] == "Bearer sk-local-1"


def test_generate_from_a_thread_and_inside_a_running_loop(fake_url, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", fake_url + "/")
    engine = make_engine("openai", "fake", max_retries=0)
    assert isinstance(engine, OpenAIEngine) and engine.base_url == fake_url
    box = []
    t = threading.Thread(target=lambda: box.append(engine.generate(reqs(2), SamplingParams())))
    t.start()
    t.join(10)

    async def inside():
        return engine.generate(reqs(1), SamplingParams()), await engine.agenerate(reqs(1), SamplingParams())

    in_loop, awaited = asyncio.run(inside())
    assert [g[0].text for g in box[0]] == ["seed None #0"] * 2
    assert in_loop[0][0].error is None and awaited[0][0].error is None and engine.generate([], SamplingParams()) == []
    engine.close()


def test_serve_openai_cli(monkeypatch):
    import m3ad_rl.engines
    import m3ad_rl.engines.openai_server as srv
    from m3ad_rl.cli import main

    calls = {}

    class Dummy:
        name = "dummy"

        def close(self):
            calls["closed"] = True

    def fake_make(kind, model):
        calls["engine"] = (kind, model)
        return Dummy()

    monkeypatch.setattr(m3ad_rl.engines, "make_engine", fake_make)
    monkeypatch.setattr(srv, "serve", lambda engine, name, host, port: calls.update(serve=(name, host, port)))
    assert main(["serve", "openai", "--model", "models/tiny", "--port", "8123", "--served-name", "m3ad"]) == 0
    assert calls == {"engine": ("hf", "models/tiny"), "serve": ("m3ad", "127.0.0.1", 8123), "closed": True}
