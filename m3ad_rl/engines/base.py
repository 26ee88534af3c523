"""One interface over the inference engines: n samples per prompt, with text, ids and log-probs.

Every engine takes ``GenerationRequest`` objects (an image and the user text) and returns, per
request, ``n`` ``Completion`` objects. The chat layout is the same everywhere: one user turn
with the image first, then the text (SPEC §2's question).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field


class SamplingParams(BaseModel):
    """How to sample (defaults: the paper's RCRL rollout, SPEC §6)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n: int = Field(1, ge=1, description="Samples per prompt (GRPO uses 4).")
    temperature: float = Field(1.0, ge=0, description="0 means greedy.")
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(512, ge=1)
    seed: int | None = Field(None, description="Seed of the sampler (per request where the engine allows).")
    logprobs: bool = Field(True, description="Return the log-probability of every sampled token.")


@dataclass
class GenerationRequest:
    """One prompt: an image (encoded bytes or a PIL image) and the user text."""

    id: str
    text: str
    image: Any = None  # bytes | PIL.Image.Image | None

    def pil_image(self):
        """The image as an RGB PIL image (or None)."""
        if self.image is None:
            return None
        from PIL import Image

        img = Image.open(io.BytesIO(self.image)) if isinstance(self.image, (bytes, bytearray)) else self.image
        return img.convert("RGB")

    def messages(self) -> list[dict]:
        """The chat turn, image first (Qwen-VL's order)."""
        content: list[dict] = [{"type": "image"}] if self.image is not None else []
        content.append({"type": "text", "text": self.text})
        return [{"role": "user", "content": content}]


@dataclass
class Completion:
    """One sampled response."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] | None = None  # one per token of token_ids (None if not requested/available)
    finish_reason: str = "stop"  # stop | length | error
    error: str | None = None


class Engine(Protocol):
    """What the evaluation job and the rollout workers need from an inference engine."""

    name: str

    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[list[Completion]]:
        """``params.n`` completions per request, in request order."""
        ...

    def close(self) -> None: ...
