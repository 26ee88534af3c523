"""OpenAI-compatible HTTP engine: ``n`` samples per prompt from any chat-completions endpoint.

It lets evaluation and rollouts use a model served elsewhere (vLLM's server, our
``openai_server``, a hosted API) through the same ``Engine`` interface as the local engines.
Token ids do not travel over HTTP, so ``Completion.token_ids`` is empty; log-probs come from the
response's ``logprobs`` field when asked for. A request that fails for good never raises: it
becomes ``n`` completions with ``finish_reason="error"``, so one bad prompt cannot sink a batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from typing import Any

from m3ad_rl.core.chat import ChatClient, ChatError, RateLimit, image_data_url
from m3ad_rl.engines.base import Completion, GenerationRequest, SamplingParams

DEFAULT_BASE_URL = "https://api.openai.com/v1"  # what the official client falls back to


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
    """``Engine`` over ``POST {base_url}/chat/completions`` (``core.chat.ChatClient``: SDK retries, our limits)."""

    name = "openai"

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        max_retries: int = 5,
        timeout: float = 120,
        requests_per_second: float | None = None,
        extra_body: dict | None = None,
    ):
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.api_key_env = api_key_env
        self.concurrency = max(1, int(concurrency))
        self.max_retries = max(0, int(max_retries))
        self.timeout = timeout
        self.rate = RateLimit(requests_per_second)  # shared by every call, from any thread
        self.extra_body = dict(extra_body or {})  # vendor fields (top_k, …), merged last
        self._lock = threading.Lock()  # generate() may be called from several threads at once
        self.usage = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}  # HTTP requests sent, tokens

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

    def _count(self, usage: Any, requests: int = 0) -> None:
        with self._lock:
            self.usage["requests"] += requests
            if isinstance(usage, dict):
                for key in ("prompt_tokens", "completion_tokens"):
                    if isinstance(usage.get(key), int):
                        self.usage[key] += usage[key]

    async def _one(self, chat: ChatClient, req: GenerationRequest, params: SamplingParams) -> list[Completion]:
        """``params.n`` completions; asks again for the choices a server left out (some ignore ``n``)."""
        messages = chat_messages(req)
        out: list[Completion] = []
        error = ""
        while len(out) < params.n:
            need = params.n - len(out)
            seed = None if params.seed is None else params.seed + len(out)  # the same seed would repeat a sample
            try:
                data = (await chat.complete(self.payload(messages, params, need, seed))).data
            except ChatError as e:
                error = str(e)
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

        async def run(chat: ChatClient, req: GenerationRequest) -> list[Completion]:
            try:
                return await self._one(chat, req, params)
            except Exception as e:  # a malformed choice or an unreadable image: this prompt fails, not the batch
                return [_failed(f"{type(e).__name__}: {e}") for _ in range(params.n)]

        chat = ChatClient(
            self.base_url,
            api_key_env=self.api_key_env,
            concurrency=self.concurrency,
            max_retries=self.max_retries,
            timeout=self.timeout,
            rate=self.rate,
        )
        async with chat:
            try:
                return list(await asyncio.gather(*(run(chat, r) for r in requests)))
            finally:
                self._count(None, requests=chat.requests)

    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[list[Completion]]:
        """Synchronous ``agenerate``; inside a running event loop it runs on a helper thread."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # the usual case: a script or a worker thread with no loop
            return asyncio.run(self.agenerate(requests, params))
        with concurrent.futures.ThreadPoolExecutor(1) as pool:  # a notebook, an async server
            return pool.submit(lambda: asyncio.run(self.agenerate(requests, params))).result()

    def close(self) -> None:
        """Nothing to release: each call opens and closes its own client (clients are bound to a loop)."""
