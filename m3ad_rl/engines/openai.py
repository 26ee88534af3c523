"""OpenAI-compatible HTTP engine: ``n`` samples per prompt from any chat-completions endpoint.

It lets evaluation and rollouts use a model served elsewhere (vLLM's server, our
``openai_server``, a hosted API) through the same ``Engine`` interface as the local engines.
Token ids do not travel over HTTP, so ``Completion.token_ids`` is empty; log-probs come from the
response's ``logprobs`` field when asked for. A request that fails for good never raises: it
becomes ``n`` completions with ``finish_reason="error"``, so one bad prompt cannot sink a batch.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import io
import os
import random
import threading
import time
from typing import Any

import httpx

from m3ad_rl.core.http_retry import retry_after_seconds
from m3ad_rl.engines.base import Completion, GenerationRequest, SamplingParams

DEFAULT_BASE_URL = "https://api.openai.com/v1"  # what the official client falls back to
_RETRY_STATUS = frozenset({408, 409, 425, 429})  # and every 5xx
_PNG_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"})


def _retryable(status: int) -> bool:
    return status in _RETRY_STATUS or status >= 500


def image_data_url(image: Any) -> str:
    """A base64 data URL: JPEG/PNG bytes as they are (by magic bytes), anything else re-encoded as PNG."""
    if isinstance(image, (bytes, bytearray)):
        data = bytes(image)
        if data[:3] == b"\xff\xd8\xff":
            return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")
        if data[:8] == b"\x89PNG\r\n\x1a\n":
            return "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        from PIL import Image

        image = Image.open(io.BytesIO(data))  # WebP, BMP, …: not every server reads them
    buf = io.BytesIO()
    (image if image.mode in _PNG_MODES else image.convert("RGB")).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def chat_messages(req: GenerationRequest) -> list[dict]:
    """The OpenAI form of ``GenerationRequest.messages()``: one user turn, image first, then the text."""
    content: list[dict] = []
    if req.image is not None:
        content.append({"type": "image_url", "image_url": {"url": image_data_url(req.image)}})
    content.append({"type": "text", "text": req.text})
    return [{"role": "user", "content": content}]


def _failed(error: str | None) -> Completion:
    return Completion(text="", finish_reason="error", error=error or "unknown error")


def _completion(choice: dict, want_logprobs: bool) -> Completion:
    """One ``choices[k]`` as a Completion (content parts joined; a missing content is empty text)."""
    text = (choice.get("message") or {}).get("content")
    if isinstance(text, list):  # some servers return content parts
        text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
    lps = None
    if want_logprobs:
        content = (choice.get("logprobs") or {}).get("content")
        lps = None if content is None else [float(tok["logprob"]) for tok in content]
    return Completion(text=text or "", token_ids=[], logprobs=lps, finish_reason=choice.get("finish_reason") or "stop")


class OpenAIEngine:
    """``Engine`` over ``POST {base_url}/chat/completions``: ``concurrency`` requests in flight, retries, pacing."""

    name = "openai"

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        max_retries: int = 5,
        backoff: float = 0.5,
        timeout: float = 120,
        requests_per_second: float | None = None,
        max_delay: float = 60,
        extra_body: dict | None = None,
    ):
        if requests_per_second is not None and requests_per_second <= 0:
            raise ValueError("requests_per_second must be > 0 (or None for no limit)")
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.api_key_env = api_key_env
        self.concurrency = max(1, int(concurrency))
        self.max_retries = max(0, int(max_retries))
        self.backoff, self.timeout, self.max_delay = backoff, timeout, max_delay
        self.extra_body = dict(extra_body or {})  # vendor fields (top_k, …), merged last
        self._interval = 1.0 / requests_per_second if requests_per_second else 0.0
        self._next_start = 0.0  # monotonic time of the next free start slot, shared by every call
        self._lock = threading.Lock()  # generate() may be called from several threads at once
        self.usage = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}  # HTTP requests sent, tokens

    # --- one HTTP request ----------------------------------------------------------------

    def payload(self, messages: list[dict], params: SamplingParams, n: int, seed: int | None) -> dict:
        """The JSON body of one request asking for ``n`` choices."""
        body: dict = {
            "model": self.model,
            "messages": messages,
            "n": n,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_new_tokens,
        }
        if seed is not None:
            body["seed"] = seed
        if params.logprobs:
            body["logprobs"] = True
        return {**body, **self.extra_body}

    async def _pace(self) -> None:
        """Wait for the next start slot: request starts are at least 1/requests_per_second apart."""
        if not self._interval:
            return
        with self._lock:  # claim a slot without awaiting, so no two requests get the same one
            now = time.monotonic()
            slot = max(now, self._next_start)
            self._next_start = slot + self._interval
        if slot > now:
            await asyncio.sleep(slot - now)

    def _count(self, usage: Any, requests: int = 0) -> None:
        with self._lock:
            self.usage["requests"] += requests
            if isinstance(usage, dict):
                for key in ("prompt_tokens", "completion_tokens"):
                    if isinstance(usage.get(key), int):
                        self.usage[key] += usage[key]

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_delay)
        return min(self.backoff * 2 ** (attempt - 1) * random.uniform(0.5, 1.5), self.max_delay)

    async def _post(self, client: httpx.AsyncClient, sem: asyncio.Semaphore, body: dict) -> tuple[dict | None, str]:
        """The parsed response, or None and why (after retrying what may pass)."""
        error = ""
        for attempt in range(1, self.max_retries + 2):
            retry_after = None
            try:
                async with sem:  # held while in flight (and while paced), not while backing off
                    await self._pace()
                    self._count(None, requests=1)
                    resp = await client.post(f"{self.base_url}/chat/completions", json=body)
                if resp.status_code == 200:
                    data = resp.json()
                    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
                        raise ValueError("no 'choices' list in the response")
                    return data, ""
                error = f"HTTP {resp.status_code}: {resp.text[:300]}"
                if not _retryable(resp.status_code):
                    return None, error  # 400/401/404…: asking again will not help
                retry_after = retry_after_seconds(resp)
            except httpx.HTTPError as e:  # connection refused, reset, timeouts
                error = f"{type(e).__name__}: {e}".rstrip(": ")
            except ValueError as e:  # not JSON, or not a chat completion (a proxy's error page…)
                error = f"invalid response: {e}"
            if attempt <= self.max_retries:
                await asyncio.sleep(self._delay(attempt, retry_after))
        return None, f"{error} (gave up after {self.max_retries + 1} attempts)"

    # --- one prompt, a batch ---------------------------------------------------------------

    async def _one(
        self, client: httpx.AsyncClient, sem: asyncio.Semaphore, req: GenerationRequest, params: SamplingParams
    ) -> list[Completion]:
        """``params.n`` completions; asks again for the choices a server left out (some ignore ``n``)."""
        messages = chat_messages(req)
        out: list[Completion] = []
        error = ""
        while len(out) < params.n:
            need = params.n - len(out)
            seed = None if params.seed is None else params.seed + len(out)  # the same seed would repeat a sample
            data, error = await self._post(client, sem, self.payload(messages, params, need, seed))
            if data is None:
                break
            self._count(data.get("usage"))
            choices = sorted(data["choices"], key=lambda c: c.get("index") if isinstance(c.get("index"), int) else 0)
            choices = choices[:need]
            if not choices:
                error = "the server returned no choices"
                break
            out.extend(_completion(c, params.logprobs) for c in choices)
        return out + [_failed(error) for _ in range(params.n - len(out))]

    async def agenerate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[list[Completion]]:
        """``params.n`` completions per request, in request order; never raises for a failed request."""
        if not requests:
            return []
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        headers = {"Authorization": f"Bearer {key}"} if key else {}  # no key: fine for local servers
        sem = asyncio.Semaphore(self.concurrency)
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)

        async def run(client: httpx.AsyncClient, req: GenerationRequest) -> list[Completion]:
            try:
                return await self._one(client, sem, req, params)
            except Exception as e:  # a malformed choice or an unreadable image: this prompt fails, not the batch
                return [_failed(f"{type(e).__name__}: {e}") for _ in range(params.n)]

        async with httpx.AsyncClient(headers=headers, timeout=self.timeout, limits=limits) as client:
            return list(await asyncio.gather(*(run(client, r) for r in requests)))

    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[list[Completion]]:
        """Synchronous ``agenerate``; inside a running event loop it runs on a helper thread."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # the usual case: a script or a worker thread with no loop
            return asyncio.run(self.agenerate(requests, params))
        with concurrent.futures.ThreadPoolExecutor(1) as pool:  # a notebook, an async server
            return pool.submit(lambda: asyncio.run(self.agenerate(requests, params))).result()

    def close(self) -> None:
        """Nothing to release: each call opens and closes its own HTTP client (clients are bound to a loop)."""
