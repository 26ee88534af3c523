"""OpenAICaptioner against a real local chat-completions server (uvicorn on 127.0.0.1, port 0).

The fake model reads the required initial decision and the mode from the prompt, so the tests
exercise the real HTTP path: retries, Retry-After, validation, the cache, the concurrency limit.
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
import time

import pytest

fastapi = pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
from fastapi.responses import JSONResponse  # noqa: E402

from m3ad_rl.core.output_format import parse  # noqa: E402
from m3ad_rl.core.taxonomy import default_taxonomy  # noqa: E402
from m3ad_rl.data.captioner_openai import CaptionRequest, OpenAICaptioner  # noqa: E402
from m3ad_rl.data.schema import DefectRecord, Sample  # noqa: E402
from tests.helpers import running  # noqa: E402


class State:
    """What the server saw and what it should do next; reset before every test."""

    def reset(self) -> None:
        self.count = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.statuses: list[tuple[int, dict]] = []  # served first, one per request
        self.bad: dict[str, str] = {}  # category (or "*") -> missing_think | wrong_initial
        self.delay = 0.0
        self.junk_tail = False
        self.auth: list[str | None] = []
        self.bodies: list[dict] = []


S = State()
S.reset()
app = fastapi.FastAPI()


def compose(prompt: str) -> str:
    initial = re.search(r"Required initial decision: (yes|no)", prompt)[1]
    category = re.search(r"Object: (.+)", prompt)[1]
    bad = S.bad.get(category, S.bad.get("*"))
    if bad == "wrong_initial":
        initial = "no" if initial == "yes" else "yes"
    think = f"The image shows a {category}. I look at the surface and the outline. Initial answer: {initial}."
    text = think if bad == "missing_think" else f"<think>{think}</think>"
    if "Reflection stage:" in prompt:
        text += "\n<reflection>Looking again at the evidence against the definitions, I settle it.</reflection>"
    if S.junk_tail:  # the captioner must ignore whatever labels the LLM adds
        text += "\n<type>stain</type><location>(0.1,0.1)(0.2,0.2)</location><answer>maybe</answer>"
    return text


@app.post("/v1/chat/completions")
async def chat(request: fastapi.Request):
    body = await request.json()
    S.count += 1
    S.in_flight += 1
    S.max_in_flight = max(S.max_in_flight, S.in_flight)
    try:
        S.auth.append(request.headers.get("authorization"))
        S.bodies.append(body)
        if S.delay:
            await asyncio.sleep(S.delay)
        if S.statuses:
            code, headers = S.statuses.pop(0)
            return JSONResponse({"error": {"message": "try later", "code": code}}, status_code=code, headers=headers)
        prompt = next(p["text"] for p in body["messages"][0]["content"] if p["type"] == "text")
        content = compose(prompt)
        return {
            "id": f"chatcmpl-{S.count}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {
                "prompt_tokens": len(prompt.split()),
                "completion_tokens": len(content.split()),
                "total_tokens": 0,
            },
        }
    finally:
        S.in_flight -= 1


@pytest.fixture(scope="module")
def base_url():
    with running(app) as url:
        yield url


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    S.reset()
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)  # traffic stays on 127.0.0.1
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def make(url, tmp_path, **kw) -> OpenAICaptioner:
    kw = {"model": "fake-vlm", "max_retries": 2, "timeout": 5, **kw}
    return OpenAICaptioner(url, cache_dir=kw.pop("cache_dir", str(tmp_path / "cache")), **kw)


def png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 120, 120)).save(buf, format="PNG")
    return buf.getvalue()


def req(sid, label="anomalous", mode="thinking", initial=None, category="metal plate", image=None) -> CaptionRequest:
    tax = default_taxonomy()
    defects = [("scratch", [0.1, 0.2, 0.3, 0.4]), ("dent", [0.6, 0.55, 0.8, 0.9])] if label == "anomalous" else []
    verdict = "yes" if label == "anomalous" else "no"
    defs = {t: tax.get(t).definition for t, _ in defects}
    return CaptionRequest(sid, image, category, "workpiece", label, defects, defs, mode, initial or verdict)


def test_thinking_and_reflective_captions(base_url, tmp_path):
    S.junk_tail = True
    image = png()
    sample = Sample("s-hard", 8, 8, "synthetic", "metal plate", "workpiece", "anomalous", image=image)
    sample.defects = [DefectRecord("scratch", [0.1, 0.2, 0.3, 0.4])]
    reqs = [
        req("a-think"),
        req("n-think", label="normal"),
        CaptionRequest.from_sample(sample, "reflective", "no"),  # hard: a missed defect
        req("n-easy", label="normal", mode="reflective"),
        req("n-hard", label="normal", mode="reflective", initial="yes"),  # hard: a false alarm
    ]
    seen = []
    results = make(base_url, tmp_path).caption_all(reqs, progress=seen.append)
    assert [r.id for r in results] == [r.id for r in reqs] and len(seen) == len(reqs)
    for r, q in zip(results, reqs, strict=True):
        assert r.error is None and r.attempts == 1 and not r.cached, r
        p = parse(r.text)
        assert p.well_formed and p.problems == [], p.problems
        assert p.answer == q.verdict and p.initial == q.initial
        assert p.types == list(dict.fromkeys(t for t, _ in q.defects))
        assert [v for b in p.boxes for v in b.as_list()] == pytest.approx([v for _, b in q.defects for v in b])
        assert (p.reflection is not None) == (q.mode == "reflective")
    parts = [b["messages"][0]["content"] for b in S.bodies]  # arrival order varies
    (prompt, image_part), *_ = (c for c in parts if len(c) == 2)
    assert sum(len(c) == 1 for c in parts) == 4  # no image -> text part only
    assert "Reflection stage:" in prompt["text"] and "is WRONG" in prompt["text"]
    assert default_taxonomy().get("scratch").definition in prompt["text"]
    assert "upper-left" in prompt["text"] and "0.100, 0.200, 0.300, 0.400" in prompt["text"]
    url = image_part["image_url"]["url"]
    assert url.startswith("data:image/png;base64,") and base64.b64decode(url.split(",", 1)[1]) == image
    assert S.auth == [None] * len(reqs)  # no key in the environment -> no header


def test_429_retry_after_is_honoured(base_url, tmp_path):
    S.statuses = [(429, {"Retry-After": "1"})]
    t0 = time.monotonic()
    (r,) = make(base_url, tmp_path).caption_all([req("x")])
    assert r.error is None and r.attempts == 2 and S.count == 2
    assert time.monotonic() - t0 >= 0.9  # waited for Retry-After, not the SDK's shorter first backoff


def test_500_twice_then_ok(base_url, tmp_path):
    S.statuses = [(500, {}), (500, {})]
    (r,) = make(base_url, tmp_path).caption_all([req("x")])
    assert r.error is None and r.text and r.attempts == 3 and S.count == 3


RETRIED = [408, 409, 429, 500, 502, 503, 504]  # the SDK's rule, now the same for the engine and the captioner
NOT_RETRIED = [400, 401, 403, 404, 422]


@pytest.mark.parametrize("code", RETRIED + NOT_RETRIED)
def test_which_statuses_are_retried(base_url, tmp_path, code):
    S.statuses = [(code, {"Retry-After": "0.01"})]  # a server's Retry-After does not make a 4xx retryable
    (r,) = make(base_url, tmp_path, cache_dir=None).caption_all([req("x")])
    if code in RETRIED:
        assert r.error is None and r.attempts == 2 and S.count == 2, r
    else:
        assert r.text is None and r.error.startswith(f"HTTP {code}") and r.attempts == 1 and S.count == 1, r


def test_one_budget_for_http_retries_and_invalid_captions(base_url, tmp_path):
    S.statuses = [(503, {"Retry-After": "0.01"})] * 2
    S.bad = {"*": "missing_think"}
    (r,) = make(base_url, tmp_path, max_retries=2).caption_all([req("x")])
    assert (
        r.error.startswith("invalid caption") and r.attempts == 3 and S.count == 3
    )  # not 3 HTTP tries per caption try


def test_invalid_captions_fail_after_max_retries(base_url, tmp_path):
    S.bad = {"bolt": "missing_think", "nut": "wrong_initial"}
    reqs = [req("a", category="bolt"), req("b", category="nut", mode="reflective"), req("c")]
    results = make(base_url, tmp_path).caption_all(reqs)
    for r in results[:2]:
        assert r.text is None and r.attempts == 3 and r.error.startswith("invalid caption"), r
    assert "initial decision is 'no', requested 'yes'" in results[1].error
    assert results[2].error is None and S.count == 7


def test_unretryable_status_and_bad_request(base_url, tmp_path):
    S.statuses = [(400, {})]
    bad = req("t", mode="thinking", initial="no")  # Thinking Mode with a wrong initial decision
    r400, rbad = make(base_url, tmp_path).caption_all([req("x"), bad])
    assert r400.error.startswith("HTTP 400") and r400.attempts == 1
    assert rbad.error.startswith("bad request") and rbad.attempts == 0 and S.count == 1


def test_cache_asks_only_what_is_missing(base_url, tmp_path):
    S.bad = {"bolt": "missing_think"}
    reqs = [req("a"), req("b", label="normal", mode="reflective"), req("c", category="bolt")]
    first = make(base_url, tmp_path).caption_all(reqs)
    assert [r.error is None for r in first] == [True, True, False] and S.count == 5
    S.reset()
    second = make(base_url, tmp_path).caption_all(reqs)
    assert [r.cached for r in second] == [True, True, False] and S.count == 1  # only the failed one
    assert [r.text for r in second[:2]] == [r.text for r in first[:2]] and second[2].error is None
    S.reset()
    third = make(base_url, tmp_path).caption_all(reqs)
    assert all(r.cached and r.attempts == 0 for r in third) and S.count == 0
    assert len(list((tmp_path / "cache").rglob("*.json"))) == 3
    S.reset()
    make(base_url, tmp_path, model="other").caption_all(reqs[:1])
    assert S.count == 1  # another model is another key


def test_concurrency_limit(base_url, tmp_path):
    S.delay = 0.1
    results = make(base_url, tmp_path, concurrency=3).caption_all([req(f"s{i}") for i in range(12)])
    assert all(r.error is None for r in results)
    assert S.count == 12 and 2 <= S.max_in_flight <= 3


def test_authorization_header_from_env(base_url, tmp_path, monkeypatch):
    monkeypatch.setenv("M3AD_TEST_KEY", "sk-local-123")
    make(base_url, tmp_path, api_key_env="M3AD_TEST_KEY", cache_dir=None).caption_all([req("x")])
    assert S.auth == ["Bearer sk-local-123"]


def test_build_ft_cli_with_the_openai_captioner(base_url, tmp_path, capsys):
    import json as _json

    from m3ad_rl.cli import main
    from m3ad_rl.data.store import iter_samples, write_dataset
    from m3ad_rl.data.synthetic import SynthConfig, generate

    ds = str(tmp_path / "ft_in")
    samples = list(generate(SynthConfig(n=12, seed=4, size=64)))
    write_dataset(ds, samples)
    preds = tmp_path / "preds.jsonl"
    preds.write_text("".join(_json.dumps({"id": s.id, "answer": "no"}) + "\n" for s in samples))
    out = str(tmp_path / "ft_out")
    argv = [
        "data",
        "build-ft",
        "--input",
        ds,
        "--predictions",
        str(preds),
        "--out",
        out,
        "--captioner",
        "openai",
        "--base-url",
        base_url,
        "--model",
        "fake",
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    assert main(argv) == 0
    built = list(iter_samples(f"{out}/samples", with_images=False))
    assert len(built) == 12 and S.count == 12
    for s in built:
        p = parse(s.target)
        assert p.well_formed and p.answer == ("yes" if s.anomalous else "no")
    assert main([*argv, "--overwrite"]) == 0 and S.count == 12  # the rerun is served from the cache
