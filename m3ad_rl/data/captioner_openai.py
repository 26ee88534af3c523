"""LLM captioner over any OpenAI-compatible chat-completions server (paper §3, A.4/A.5).

The LLM is shown the image and its ground truth and writes only the reasoning (``<think>`` and,
in Reflective Mode, ``<reflection>``). A validator checks that the think ends with the requested
initial decision; the final trajectory is then rendered here with ``<type>``, ``<location>`` and
``<answer>`` taken from the ground truth, so an LLM can never put a wrong label into a target.
Every good caption is cached as one JSON file, so a rerun asks only for what is missing; a
failed caption comes back as a ``CaptionResult`` with its error and never stops the batch.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import fsspec

from m3ad_rl.core.chat import ChatClient, ChatError, RateLimit, image_data_url
from m3ad_rl.core.output_format import parse, render
from m3ad_rl.core.taxonomy import Taxonomy, default_taxonomy
from m3ad_rl.data.captioner_template import where
from m3ad_rl.data.captions import CaptionJob, CaptionResult
from m3ad_rl.data.schema import Sample, read_uri

_FORMAT_RULES = """Rules:
- Write as the inspector, in the first person, as if the evidence came from the image alone: never mention \
annotations, ground truth, boxes or coordinates; say where things are in words ("upper-left", "near the centre").
- Write ONLY the tags below and nothing else; do not write <type>, <location> or <answer> tags (they are added \
afterwards from the annotation).
- The text inside <think> must end with exactly "Initial answer: X." where X is the required initial decision \
("yes" means anomalous, "no" means normal).
- At most about 200 words in all."""

THINKING_INSTRUCTION = f"""You write training data for an industrial visual inspection model. You get an \
industrial image and its verified annotation. Write the reasoning an expert inspector would write while looking \
at the image and reaching the correct decision.

Thinking stage:
1. Identify the object type and the industrial scene.
2. If the image is anomalous, analyse each defect region: where it is, what it looks like, and why it fits the \
definition of its anomaly type. If it is normal, verify the structural integrity, the surface continuity and the \
layout of the parts, and say why nothing is anomalous.
3. Conclude with a concise decision.

{_FORMAT_RULES}

Output format:
<think>your reasoning ... Initial answer: X.</think>"""

REFLECTIVE_INSTRUCTION = f"""You write training data for an industrial visual inspection model that learns to \
check and revise its own first judgment. You get an industrial image, its verified annotation and a required \
initial decision, which may be wrong. Write a thinking stage that reaches that initial decision, then a \
reflection stage.

Thinking stage: identify the object type and the industrial scene, analyse the image and conclude with the \
required initial decision. If that decision is wrong, make the thinking a plausible first-pass mistake: for a \
missed defect, a quick look that overlooks the subtle anomaly (do not describe the defect yet); for a false \
alarm, a quick look that mistakes a normal feature (texture, lighting, a reflection) for a defect. If it is \
right, reason as an expert would: analyse the defect regions, or verify structural integrity, surface continuity \
and layout for a normal image.

Reflection stage: evaluate whether the initial decision is correct; analyse the reasons, referring to the \
anomaly type definitions and to the visual evidence; then decide to keep the decision (when it was right) or to \
revise it (when it was wrong), and end with the final decision.

{_FORMAT_RULES}

Output format:
<think>your reasoning ... Initial answer: X.</think>
<reflection>your re-examination ... final decision.</reflection>"""

_MARKER_AT_END = re.compile(r"\s*initial answer\s*[:：=\-]?\s*[*\"'`]*\s*(yes|no)\b[*\"'`]*\s*\.?\s*$", re.I)


@dataclass(slots=True)
class CaptionRequest:
    """Everything the LLM is told about one sample, plus the mode and the required initial decision."""

    id: str
    image: bytes | None
    category: str
    scene: str
    label: str  # anomalous | normal
    defects: list[tuple[str, list[float]]] = field(default_factory=list)
    definitions: dict[str, str] = field(default_factory=dict)
    mode: str = "thinking"  # thinking | reflective
    initial: str = "no"  # yes | no

    @property
    def verdict(self) -> str:
        return "yes" if self.label == "anomalous" else "no"

    @classmethod
    def from_sample(cls, s: Sample, mode: str, initial: str, taxonomy: Taxonomy | None = None) -> CaptionRequest:
        """The request for a Sample, with definitions from the taxonomy (FT construction's input)."""
        tax = taxonomy or default_taxonomy()
        image = s.image if s.image is not None else (read_uri(s.image_uri) if s.image_uri else None)
        defs = {d.type: tax.get(d.type).definition for d in s.defects}
        defects = [(d.type, [float(v) for v in d.box]) for d in s.defects]
        return cls(s.id, image, s.category, s.scene, s.label, defects, defs, mode, initial)

    def problems(self) -> list[str]:
        """Why this request cannot be captioned (empty when it can)."""
        checks = [
            (self.label in ("anomalous", "normal"), f"label {self.label!r} is not anomalous/normal"),
            (self.mode in ("thinking", "reflective"), f"mode {self.mode!r} is not thinking/reflective"),
            (self.initial in ("yes", "no"), f"initial {self.initial!r} is not yes/no"),
            (self.mode != "thinking" or self.initial == self.verdict, "Thinking Mode needs initial == ground truth"),
            ((self.label == "anomalous") == bool(self.defects), "anomalous needs defects and normal none"),
        ]
        return [msg for ok, msg in checks if not ok]

    def facts(self) -> str:
        """The per-sample part of the prompt: the ground truth in words and numbers."""
        lines = [f"Object: {self.category}", f"Industrial scene: {self.scene}", f"Ground truth: {self.label}"]
        for i, (t, b) in enumerate(self.defects, 1):
            area = 100 * (b[2] - b[0]) * (b[3] - b[1])
            lines.append(
                f"Defect {i}: {t} ({self.definitions.get(t, '').strip() or 'no definition'}), in the {where(b)} "
                f"region, box [x1, y1, x2, y2] = [{b[0]:.3f}, {b[1]:.3f}, {b[2]:.3f}, {b[3]:.3f}] "
                f"(fractions of image width/height), covering about {area:.1f}% of the image"
            )
        lines.append(f"Required initial decision: {self.initial}")
        if self.mode == "reflective" and self.initial == self.verdict:
            lines.append("The initial decision is CORRECT: the reflection re-examines the evidence and keeps it.")
        elif self.mode == "reflective":
            lines.append(
                f"The initial decision is WRONG: the reflection finds the error and revises it to {self.verdict!r}."
            )
        return "\n".join(lines)


class CaptionInvalid(ValueError):
    """The LLM's text does not fit the request (retried like a server error)."""


def finish(req: CaptionRequest, content: str) -> str:
    """Validate the LLM's reasoning and render the final trajectory from it and the ground truth."""
    p = parse(content)
    broken = [q for q in p.problems if "think>" in q or "reflection>" in q]
    if p.think is None or broken:
        raise CaptionInvalid("; ".join(broken) or "no <think>")
    m = _MARKER_AT_END.search(p.think)
    if m is None or p.initial_source != "marker":
        raise CaptionInvalid('<think> does not end with "Initial answer: yes|no."')
    if p.initial != req.initial:
        raise CaptionInvalid(f"initial decision is {p.initial!r}, requested {req.initial!r}")
    body = p.think[: m.start()].strip()
    if not body:
        raise CaptionInvalid("<think> holds nothing but the initial answer")
    if req.mode == "reflective" and not (p.reflection or "").strip():
        raise CaptionInvalid("Reflective Mode needs a non-empty <reflection>")
    if req.mode == "thinking" and p.reflection is not None:
        raise CaptionInvalid("Thinking Mode must not have a <reflection>")
    return render(
        think=body,
        reflection=p.reflection if req.mode == "reflective" else None,
        answer=req.verdict,  # type: ignore[arg-type]
        types=list(dict.fromkeys(t for t, _ in req.defects)),
        boxes=[b for _, b in req.defects],
        initial=req.initial,  # type: ignore[arg-type]
    )


class OpenAICaptioner:
    """Batch captioner: ``caption_all(requests)`` -> one ``CaptionResult`` per request, in order.

    HTTP goes through ``core.chat.ChatClient`` (the SDK's retries, our concurrency and rate limits).
    ``max_retries`` is one budget per caption: HTTP retries and asking again after an invalid
    caption both spend it, so a caption costs at most ``max_retries + 1`` requests.
    """

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        concurrency: int = 8,
        max_retries: int = 5,
        timeout: float = 60.0,
        cache_dir: str | None = ".cache/captions",
        temperature: float | None = 0.7,
        max_tokens: int | None = None,
        extra_body: dict | None = None,
        requests_per_second: float | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.concurrency = max(1, concurrency)
        self.max_retries = max(0, max_retries)
        self.timeout = timeout
        self.rate = RateLimit(requests_per_second)
        self.temperature, self.max_tokens, self.extra_body = temperature, max_tokens, dict(extra_body or {})
        self.fs, self.root = fsspec.core.url_to_fs(cache_dir) if cache_dir else (None, "")

    # --- prompt and cache key ---------------------------------------------------------------

    def prompt(self, req: CaptionRequest) -> str:
        """Instruction for the mode, then the sample's facts."""
        instruction = REFLECTIVE_INSTRUCTION if req.mode == "reflective" else THINKING_INSTRUCTION
        return f"{instruction}\n\nAnnotation of this image:\n{req.facts()}"

    def key(self, req: CaptionRequest) -> str:
        """sha256 of everything that shapes the answer: model, prompt, image, sampling settings."""
        blob = {
            "model": self.model,
            "id": req.id,
            "prompt": self.prompt(req),
            "image": hashlib.sha256(req.image).hexdigest() if req.image is not None else None,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "extra_body": self.extra_body,
        }
        return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()

    def _path(self, key: str) -> str:
        return f"{self.root.rstrip('/')}/{key[:2]}/{key}.json"

    def _cache_read(self, req: CaptionRequest, key: str) -> str | None:
        try:
            entry = json.loads(self.fs.cat_file(self._path(key)))
            return finish(req, entry["content"])  # re-validated: a bad entry counts as missing
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    def _cache_write(self, req: CaptionRequest, key: str, content: str, text: str) -> None:
        path = self._path(key)
        entry = {"key": key, "id": req.id, "model": self.model, "content": content, "text": text}
        data = json.dumps(entry, ensure_ascii=False).encode()
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        if "file" in self.fs.protocol or "local" in self.fs.protocol:  # write-then-rename: no torn files
            tmp = f"{path}.{uuid.uuid4().hex}.tmp"
            self.fs.pipe_file(tmp, data)
            self.fs.mv(tmp, path)
        else:
            self.fs.pipe_file(path, data)

    # --- requests ---------------------------------------------------------------------------

    def _payload(self, req: CaptionRequest) -> dict:
        content: list[dict] = [{"type": "text", "text": self.prompt(req)}]
        if req.image is not None:
            content.append({"type": "image_url", "image_url": {"url": image_data_url(req.image)}})
        body: dict = {"model": self.model, "messages": [{"role": "user", "content": content}]}
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        return {**body, **self.extra_body}

    async def _one(self, chat: ChatClient, req: CaptionRequest) -> CaptionResult:
        res = CaptionResult(req.id)
        if problems := req.problems():
            res.error = "bad request: " + "; ".join(problems)
            return res
        key = self.key(req)
        if self.fs is not None and (text := await asyncio.to_thread(self._cache_read, req, key)) is not None:
            res.text, res.cached = text, True
            return res
        payload = self._payload(req)
        while res.attempts <= self.max_retries:
            try:
                reply = await chat.complete(payload, max_retries=self.max_retries - res.attempts)
            except ChatError as e:  # not retryable, or the SDK spent the rest of the budget
                res.attempts += e.attempts
                res.error = str(e)
                return res
            res.attempts += reply.attempts
            try:
                msg = reply.data["choices"][0]["message"]["content"]
                if isinstance(msg, list):  # some servers return content parts
                    msg = "".join(part.get("text", "") for part in msg if isinstance(part, dict))
                if not isinstance(msg, str):
                    raise CaptionInvalid("response has no text content")
                res.text, res.error = finish(req, msg), None
            except (CaptionInvalid, ValueError, KeyError, IndexError, TypeError) as e:
                res.error = f"invalid caption: {e}"  # the LLM may do better on another try
                continue
            if self.fs is not None:
                await asyncio.to_thread(self._cache_write, req, key, msg, res.text)
            return res
        return res

    async def acaption_all(
        self, requests: Sequence[CaptionRequest], progress: bool | Callable[[CaptionResult], None] = False
    ) -> list[CaptionResult]:
        """Caption every request, ``concurrency`` at a time; never raises for a single failure."""
        bar = None
        if progress is True:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(requests), desc="captions", unit="img")

        async def run(chat: ChatClient, req: CaptionRequest) -> CaptionResult:
            try:
                res = await self._one(chat, req)
            except Exception as e:  # a bug or a cache outage must not sink the whole batch
                res = CaptionResult(req.id, error=f"{type(e).__name__}: {e}")
            if bar is not None:
                bar.update(1)
            elif callable(progress):
                progress(res)
            return res

        chat = ChatClient(
            self.base_url,
            api_key_env=self.api_key_env,
            concurrency=self.concurrency,
            max_retries=self.max_retries,
            timeout=self.timeout,
            rate=self.rate,
        )
        try:
            async with chat:
                return list(await asyncio.gather(*(run(chat, r) for r in requests)))
        finally:
            if bar is not None:
                bar.close()

    def caption_all(
        self, requests: Sequence[CaptionRequest], progress: bool | Callable[[CaptionResult], None] = False
    ) -> list[CaptionResult]:
        """Synchronous ``acaption_all`` (not from inside a running event loop)."""
        return asyncio.run(self.acaption_all(requests, progress))

    def caption_samples(self, jobs: Sequence[CaptionJob], progress: bool = False) -> list[CaptionResult]:
        """The ``ft.Captioner`` interface: one result per job, in order; a failure has ``error`` set."""
        return self.caption_all([CaptionRequest.from_sample(j.sample, j.mode, j.initial) for j in jobs], progress)
