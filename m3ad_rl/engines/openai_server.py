"""A small OpenAI-compatible chat-completions server over any ``Engine``.

It puts a local model (``HFEngine``, ``VLLMEngine``) behind the protocol that the captioner, the
``OpenAIEngine`` and third-party tools speak. It is meant for offline clusters: images must come
as base64 data URLs (a remote URL is refused). The engine owns one model, so one generate runs at
a time; requests wait their turn. Only the last user message is used (the engines' chat layout is
one user turn: image, then text).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import re
import time
import uuid
from typing import Annotated, Any, Literal

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from m3ad_rl.engines.base import Completion, Engine, GenerationRequest, SamplingParams

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?:;[\w.+-]+=[^;,]*)*;base64,(?P<data>.*)$", re.S)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImageURL(BaseModel):
    url: str
    detail: str | None = None


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageURL


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[Annotated[TextPart | ImagePart, Field(discriminator="type")]] | None = None


class ChatRequest(BaseModel):
    """The request fields this server reads; other OpenAI fields are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    n: int | None = Field(None, ge=1, le=128)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    seed: int | None = None
    logprobs: bool | None = None
    stream: bool | None = None


class APIError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, message: str, status: int = 400, kind: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.message, self.status, self.kind, self.code = message, status, kind, code

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "param": None, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


def decode_image(url: str) -> bytes:
    """The bytes of a base64 data URL, checked to be a readable image (400 otherwise)."""
    if url.startswith(("http://", "https://")):
        raise APIError("remote image URLs are not supported (this server is offline); send a base64 data URL")
    m = _DATA_URL.match(url)
    if m is None:
        raise APIError("image_url.url must be a base64 data URL, e.g. data:image/png;base64,...")
    try:
        data = base64.b64decode("".join(m["data"].split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise APIError(f"image_url.url is not valid base64: {e}") from None
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
    except Exception as e:
        raise APIError(f"the image could not be decoded: {type(e).__name__}") from None
    return data


def to_generation(body: ChatRequest) -> tuple[GenerationRequest, SamplingParams]:
    """The engine's request (last user message: its image and its text parts joined) and sampling params."""
    users = [m for m in body.messages if m.role == "user"]
    if not users:
        raise APIError("messages must contain a user message")
    content = users[-1].content
    parts = [TextPart(type="text", text=content)] if isinstance(content, str) else list(content or [])
    texts = [p.text for p in parts if isinstance(p, TextPart)]
    images = [p.image_url.url for p in parts if isinstance(p, ImagePart)]
    if len(images) > 1:
        raise APIError("at most one image per request is supported")
    text = "\n".join(texts)
    if not text and not images:
        raise APIError("the last user message has no text and no image")
    image = decode_image(images[0]) if images else None
    fields: dict[str, Any] = {
        "n": body.n,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "max_new_tokens": body.max_completion_tokens or body.max_tokens,
        "seed": body.seed,
        "logprobs": bool(body.logprobs),
    }
    try:
        params = SamplingParams(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as e:
        raise APIError(f"invalid sampling parameters: {e.errors()[0]['msg']}") from None
    return GenerationRequest(id=uuid.uuid4().hex, text=text, image=image), params


def _tokenizer(engine: Engine) -> Any:
    """The engine's tokenizer if it exposes one (HFEngine: ``processor.tokenizer``), for token strings."""
    tok = getattr(engine, "tokenizer", None)
    return tok if tok is not None else getattr(getattr(engine, "processor", None), "tokenizer", None)


def _logprobs(c: Completion, tokenizer: Any) -> dict | None:
    if c.logprobs is None:
        return None
    tokens = [""] * len(c.logprobs)
    if tokenizer is not None and len(c.token_ids) == len(c.logprobs):
        tokens = tokenizer.batch_decode([[i] for i in c.token_ids])
    content = [
        {"token": t, "logprob": float(lp), "bytes": None, "top_logprobs": []}
        for t, lp in zip(tokens, c.logprobs, strict=True)
    ]
    return {"content": content}


def chat_completion(completions: list[Completion], model_name: str, logprobs: bool, tokenizer: Any = None) -> dict:
    """A ``chat.completion`` object; prompt tokens are not counted (0), completion tokens are."""
    choices = []
    for k, c in enumerate(completions):
        choice: dict = {
            "index": k,
            "message": {"role": "assistant", "content": c.text},
            "finish_reason": c.finish_reason,
            "logprobs": _logprobs(c, tokenizer) if logprobs else None,
        }
        choices.append(choice)
    completion_tokens = sum(len(c.token_ids) for c in completions)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_name,
        "choices": choices,
        "usage": {"prompt_tokens": 0, "completion_tokens": completion_tokens, "total_tokens": completion_tokens},
    }


def _validation_message(exc: RequestValidationError) -> str:
    msgs = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        msgs.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    return "; ".join(msgs) or "invalid request"


def make_app(engine: Engine, model_name: str) -> FastAPI:
    """The FastAPI app: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``."""
    app = FastAPI(title=f"m3ad-rl OpenAI-compatible server ({model_name})")
    lock = asyncio.Lock()  # one generate at a time: the engine holds one model
    tokenizer = _tokenizer(engine)
    started = int(time.time())

    @app.exception_handler(APIError)
    async def _api_error(_request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request, exc: RequestValidationError) -> JSONResponse:
        return APIError(_validation_message(exc)).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request, exc: StarletteHTTPException) -> JSONResponse:
        return APIError(str(exc.detail), status=exc.status_code).response()

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest) -> JSONResponse:
        if body.stream:
            raise APIError("stream=true is not supported")
        if body.model and body.model != model_name:
            msg = f"the model {body.model!r} does not exist; this server serves {model_name!r}"
            raise APIError(msg, 404, code="model_not_found")
        req, params = to_generation(body)
        async with lock:
            try:
                (completions,) = await asyncio.to_thread(engine.generate, [req], params)
            except Exception as e:
                raise APIError(f"the engine failed: {type(e).__name__}: {e}", 500, "server_error") from None
        failed = [c for c in completions if c.finish_reason == "error"]
        if failed:
            raise APIError(f"the engine failed: {failed[0].error}", 500, "server_error")
        return JSONResponse(chat_completion(completions, model_name, params.logprobs, tokenizer))

    @app.get("/v1/models")
    async def models() -> dict:
        card = {"id": model_name, "object": "model", "created": started, "owned_by": "m3ad-rl"}
        return {"object": "list", "data": [card]}

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": model_name, "engine": getattr(engine, "name", type(engine).__name__)}

    return app


def serve(engine: Engine, model_name: str, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the app with uvicorn until interrupted (the caller closes the engine); a port in use is a
    UsageError before uvicorn starts."""
    import uvicorn

    from m3ad_rl.core.guards import check_port_free

    check_port_free(host, port)
    uvicorn.run(make_app(engine, model_name), host=host, port=port, log_level="info")
