"""The one chat-completions client of the project (the OpenAI engine and the LLM captioner use it).

It is the official ``openai`` SDK, which already retries what may pass (408, 409, 429, 5xx,
connection errors, timeouts) with exponential backoff, honours ``Retry-After`` and applies the
timeout. We add only what the SDK lacks: a limit on requests in flight and on request starts per
second. Both sit in the HTTP transport, so every attempt counts (a retry is paced like a first
try) and a request waiting out its backoff holds no slot. The response is the server's JSON as
sent: servers differ (content parts, missing fields) and callers read only what they need.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import io
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx2  # the SDK's HTTP library (an openai dependency)
import openai

_PNG_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"})
# HTTP requests sent by the ``ChatClient.complete`` call running in this task (retries included)
_ATTEMPTS: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("m3ad_chat_attempts", default=None)


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


class RateLimit:
    """Request starts at least ``1 / requests_per_second`` apart, across every client and thread sharing it."""

    def __init__(self, requests_per_second: float | None = None):
        if requests_per_second is not None and requests_per_second <= 0:
            raise ValueError("requests_per_second must be > 0 (or None for no limit)")
        self.interval = 1.0 / requests_per_second if requests_per_second else 0.0
        self._next_start = 0.0  # monotonic time of the next free start slot
        self._lock = threading.Lock()  # engines are called from several threads (each with its own loop)

    async def wait(self) -> None:
        """Sleep until this request's start slot."""
        if not self.interval:
            return
        with self._lock:  # claim a slot without awaiting, so no two requests get the same one
            now = time.monotonic()
            slot = max(now, self._next_start)
            self._next_start = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


@dataclass
class Reply:
    """A chat completion as the server sent it, and what it cost."""

    data: dict  # the response JSON; it has a "choices" list
    attempts: int  # HTTP requests sent for it (1 + retries)


class ChatError(Exception):
    """A request that failed for good: not retryable (400, 401, 404 …), out of retries, or not a completion."""

    def __init__(self, message: str, attempts: int):
        super().__init__(f"{message} (gave up after {attempts} attempts)" if attempts > 1 else message)
        self.attempts = attempts


class _Limited(httpx2.AsyncBaseTransport):
    """``concurrency`` requests in flight (the body read included) and paced starts, per HTTP attempt."""

    def __init__(self, inner: httpx2.AsyncBaseTransport, concurrency: int, rate: RateLimit | None):
        self.inner, self.rate = inner, rate
        self.slots = asyncio.Semaphore(concurrency)
        self.sent = 0

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        async with self.slots:
            if self.rate is not None:
                await self.rate.wait()
            self.sent += 1
            if (box := _ATTEMPTS.get()) is not None:
                box[0] += 1
            response = await self.inner.handle_async_request(request)
            try:
                await response.aread()
            except BaseException:
                await response.aclose()
                raise
            return response

    async def aclose(self) -> None:
        await self.inner.aclose()


class ChatClient:
    """``POST {base_url}/chat/completions`` through the SDK, with our concurrency and rate limits.

    A client belongs to one event loop: open it with ``async with`` inside the loop that uses it.
    The key is read from ``api_key_env`` when it opens; with no key no Authorization header is
    sent (fine for local servers).
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key_env: str | None = "OPENAI_API_KEY",
        concurrency: int = 8,
        max_retries: int = 5,
        timeout: float = 120.0,
        rate: RateLimit | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self.concurrency = max(1, int(concurrency))
        self.max_retries = max(0, int(max_retries))
        self.timeout = timeout
        self.rate = rate
        self._sdk: openai.AsyncOpenAI | None = None
        self._transport: _Limited | None = None
        self._headers: dict = {}  # per request: Omit() drops the Authorization header when there is no key

    async def __aenter__(self) -> ChatClient:
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        self._headers = {} if key else {"Authorization": openai.Omit()}
        limits = httpx2.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        self._transport = _Limited(httpx2.AsyncHTTPTransport(limits=limits), self.concurrency, self.rate)
        self._sdk = openai.AsyncOpenAI(
            api_key=key or "unused",  # the SDK insists on one; the header is omitted per request
            base_url=self.base_url,
            max_retries=self.max_retries,
            timeout=self.timeout,
            http_client=openai.DefaultAsyncHttpx2Client(transport=self._transport),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._sdk is not None:
            await self._sdk.close()
        self._sdk = None

    @property
    def requests(self) -> int:
        """HTTP requests this client has sent (retries included)."""
        return self._transport.sent if self._transport is not None else 0

    async def complete(self, body: dict, *, max_retries: int | None = None) -> Reply:
        """One chat completion for ``body`` (``model``, ``messages`` and any other fields, sent as given).

        ``max_retries`` overrides the client's for this call (a caller with its own budget). A
        failure raises ``ChatError`` with the server's status and text, or the connection error.
        """
        if self._sdk is None:
            raise RuntimeError("open the ChatClient with `async with` first")
        fields = dict(body)
        model, messages = fields.pop("model"), fields.pop("messages")
        sdk = self._sdk if max_retries is None else self._sdk.with_options(max_retries=max(0, max_retries))
        box = [0]
        token = _ATTEMPTS.set(box)
        try:
            raw = await sdk.chat.completions.with_raw_response.create(
                model=model, messages=messages, extra_body=fields, extra_headers=self._headers
            )
            data = raw.http_response.json()
        except openai.APIStatusError as e:
            raise ChatError(f"HTTP {e.status_code}: {e.response.text[:300]}", box[0]) from e
        except openai.APIConnectionError as e:  # refused, reset, timed out
            cause = f" ({type(e.__cause__).__name__}: {e.__cause__})" if e.__cause__ else ""
            raise ChatError(f"{type(e).__name__}: {e}{cause}", box[0]) from e
        except ValueError as e:  # not JSON (a proxy's error page …)
            raise ChatError(f"invalid response: {e}", box[0]) from e
        finally:
            _ATTEMPTS.reset(token)
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            raise ChatError("invalid response: no 'choices' list in the response", box[0])
        return Reply(data, box[0])
