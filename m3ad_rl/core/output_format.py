"""The model's output format (SPEC §2): a renderer for targets and a parser that never raises.

Canonical anomalous output::

    <think>… Initial answer: no.</think>
    <reflection>…</reflection>
    <type>bent, scratch</type>
    <location>(0.383,0.706)(0.409,0.801); (0.10,0.20)(0.30,0.41)</location>
    <answer>yes</answer>

A normal verdict has no ``<type>`` or ``<location>``. ``parse`` turns any string into a
``ParsedOutput`` holding what it found plus a list of problems; it is on the hot path of reward
scoring, so it scans the text once with one compiled pattern.

>>> p = parse("<think>Dent at top. Initial answer: yes.</think><type>dent</type>"
...           "<location>[0.1,0.2,0.3,0.4]</location><answer>yes</answer>")
>>> p.answer, p.initial, p.types, p.boxes[0].as_list(), p.well_formed
('yes', 'yes', ['dent'], [0.1, 0.2, 0.3, 0.4], True)
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Verdict = Literal["yes", "no"]
TAGS = ("think", "reflection", "type", "location", "answer")


class ParseConfig(BaseModel):
    """How boxes in ``<location>`` are read."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    box_scale: Literal["normalized", "grid1000", "pixels"] = Field(
        "normalized",
        description="normalized: coordinates in [0,1]; grid1000: Qwen3-VL's 0-1000 grid; "
        "pixels: absolute pixels of the original image (needs the image size).",
    )


@dataclass(slots=True)
class Box:
    """An axis-aligned box, corners normalised to [0,1] of the image, x1 <= x2, y1 <= y2."""

    x1: float
    y1: float
    x2: float
    y2: float

    def as_list(self) -> list[float]:
        return [self.x1, self.y1, self.x2, self.y2]

    @property
    def area(self) -> float:
        return (self.x2 - self.x1) * (self.y2 - self.y1)


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (0 when they do not overlap)."""
    # Plain comparisons: min()/max() calls dominate this hot function otherwise.
    w = (a.x2 if a.x2 < b.x2 else b.x2) - (a.x1 if a.x1 > b.x1 else b.x1)
    if w <= 0:
        return 0.0
    h = (a.y2 if a.y2 < b.y2 else b.y2) - (a.y1 if a.y1 > b.y1 else b.y1)
    if h <= 0:
        return 0.0
    inter = w * h
    return inter / ((a.x2 - a.x1) * (a.y2 - a.y1) + (b.x2 - b.x1) * (b.y2 - b.y1) - inter)


@dataclass(slots=True)
class ParsedOutput:
    """What ``parse`` found. Fields are None when their tag is absent."""

    think: str | None = None
    reflection: str | None = None
    type_text: str | None = None
    location_text: str | None = None
    answer_text: str | None = None
    answer: Verdict | None = None
    """Final decision from ``<answer>``; None when missing or not yes/no."""
    initial: Verdict | None = None
    """Initial decision read from ``<think>``; None when undetermined."""
    initial_source: Literal["marker", "keyword"] | None = None
    types: list[str] = field(default_factory=list)
    boxes: list[Box] = field(default_factory=list)
    tag_order: list[str] = field(default_factory=list)
    well_formed: bool = False
    """Every tag closed, none nested or repeated, <think> first, <reflection> right after it,
    <answer> last."""
    problems: list[str] = field(default_factory=list)

    @property
    def has_reflection(self) -> bool:
        return self.reflection is not None


# ---------------------------------------------------------------------------------------------
# Rendering


def format_box(box: Box | Sequence[float], digits: int = 3) -> str:
    """``(x1,y1)(x2,y2)`` with ``digits`` decimals, the canonical location syntax."""
    x1, y1, x2, y2 = box.as_list() if isinstance(box, Box) else box
    return f"({x1:.{digits}f},{y1:.{digits}f})({x2:.{digits}f},{y2:.{digits}f})"


def render(
    *,
    think: str,
    answer: Verdict,
    reflection: str | None = None,
    types: Iterable[str] = (),
    boxes: Iterable[Box | Sequence[float]] = (),
    initial: Verdict | None = None,
) -> str:
    """Canonical output text. ``initial`` appends "Initial answer: X." to the think text.

    A "no" verdict never carries ``<type>``/``<location>``; a "yes" verdict must have both.
    """
    if answer not in ("yes", "no"):
        raise ValueError(f"answer must be 'yes' or 'no', got {answer!r}")
    types, boxes = list(types), list(boxes)
    if answer == "yes" and (not types or not boxes):
        raise ValueError("a 'yes' verdict needs at least one type and one box")
    think = think.strip()
    if initial is not None:
        think = f"{think} Initial answer: {initial}.".strip()
    parts = [f"<think>{think}</think>"]
    if reflection is not None:
        parts.append(f"<reflection>{reflection.strip()}</reflection>")
    if answer == "yes":
        parts.append(f"<type>{', '.join(types)}</type>")
        parts.append(f"<location>{'; '.join(format_box(b) for b in boxes)}</location>")
    parts.append(f"<answer>{answer}</answer>")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# Parsing

_TAG_RE = re.compile(r"<(/?(?:think|reflection|type|location|answer))>")
_TYPE_SPLIT = re.compile(r"[,;\n|]|\band\b|\s/\s")
_INITIAL_RE = re.compile(r"\s*(?:is|was)?\s*[:：=\-]?\s*[*\"'`]*\s*(yes|no)\b", re.IGNORECASE)
_TYPE_STRIP = " \t\r\n.*\"'`"
_ANSWER_STRIP = " \t\r\n.!*\"'`:"
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?\n])\s+")
# Keyword rule for the initial decision when no "Initial answer:" marker exists (documented in
# docs/spec-readings.md): read sentences from the last; a negated defect phrase means "no", a
# remaining defect word means "yes"; the first sentence that decides wins.
_DEFECT_WORDS = (
    r"(?:defects?|defective|anomal(?:y|ies|ous)|abnormal(?:ity|ities)?|damaged?|flaws?|scratch(?:es)?"
    r"|cracks?|cracked|dents?|holes?|stains?|broken|bent|missing|contaminat(?:ion|ed)|rust(?:y)?|deformed|issues?)"
)
_NEG_RE = re.compile(
    rf"\b(?:no|not any|without|free of|absence of|nor|neither)\s+(?:\w+\s+){{0,2}}?{_DEFECT_WORDS}\b"
    r"|\b(?:is|are|appears?|looks?|seems?)\s+(?:to be\s+)?(?:completely\s+|entirely\s+)?"
    r"(?:normal|defect[- ]free|intact|flawless|fine|good)\b"
    r"|\bdefect[- ]free\b|\bnot\s+(?:anomalous|defective|abnormal|damaged|broken|bent|missing)\b"
)
_POS_RE = re.compile(rf"\b{_DEFECT_WORDS}\b")


def _initial_from_think(think: str) -> tuple[Verdict | None, str | None]:
    # Fast path: the canonical spelling is the last marker (the tail after it is short).
    pos = think.rfind("Initial answer")
    if pos >= 0:
        tail = think[pos + 14 :]
        if "initial answer" not in tail.lower():
            word = tail.lstrip(" \t:：=-*\"'`")[:4].lower()
            for verdict in ("yes", "no"):
                if word.startswith(verdict) and not word[len(verdict) : len(verdict) + 1].isalnum():
                    return verdict, "marker"  # type: ignore[return-value]
    low = think.lower()
    pos = low.rfind("initial answer")
    while pos >= 0:
        m = _INITIAL_RE.match(low, pos + 14)
        if m:
            return m[1], "marker"  # type: ignore[return-value]
        pos = low.rfind("initial answer", 0, pos)
    for sentence in reversed(_SENTENCE_SPLIT.split(low)):
        if _NEG_RE.search(sentence):
            return "no", "keyword"
        if _POS_RE.search(sentence):
            return "yes", "keyword"
    return None, None


def _scale(v: float, size: float | None, cfg_scale: str) -> float:
    if cfg_scale == "grid1000":
        return v / 1000.0
    if cfg_scale == "pixels":
        return v / size  # type: ignore[operator]
    return v


def parse_boxes(
    text: str,
    cfg: ParseConfig | None = None,
    image_size: tuple[int, int] | None = None,
    problems: list[str] | None = None,
) -> list[Box]:
    """Boxes in a ``<location>`` body, scaled to [0,1], clamped, corners ordered.

    Degenerate (zero-area) boxes are dropped; every repair or drop is noted in ``problems``.
    """
    scale = cfg.box_scale if cfg is not None else "normalized"
    problems = problems if problems is not None else []
    if scale == "pixels" and (not image_size or image_size[0] <= 0 or image_size[1] <= 0):
        problems.append("box_scale=pixels needs the image size; boxes dropped")
        return []
    w, h = image_size if image_size else (None, None)
    boxes: list[Box] = []
    # Boxes are separated by ";" (or new lines); inside a segment brackets, commas and spaces
    # only separate numbers, and a segment may hold several boxes (4 numbers each).
    clean = text.replace("(", " ").replace(")", " ").replace(",", " ").replace("[", " ").replace("]", " ")
    normalized = scale == "normalized"
    for seg in clean.replace("\n", ";").split(";"):
        try:
            nums = list(map(float, seg.split()))
        except ValueError:
            problems.append(f"unreadable text in <location>: {seg.strip()[:40]!r}")
            continue
        if normalized and len(nums) == 4:  # the common case, inline
            x1, y1, x2, y2 = nums
            if x1 > x2:
                x1, x2 = x2, x1
            if y1 > y2:
                y1, y2 = y2, y1
            if 0.0 <= x1 < x2 <= 1.0 and 0.0 <= y1 < y2 <= 1.0:
                boxes.append(Box(x1, y1, x2, y2))
                continue
        if not nums:
            continue
        if not math.isfinite(sum(nums)):  # float() also reads "nan" and "inf"
            problems.append(f"unreadable text in <location>: {seg.strip()[:40]!r}")
            continue
        if len(nums) % 4:
            problems.append(f"<location> segment {seg.strip()[:40]!r} does not hold 4 numbers per box")
            continue
        for k in range(0, len(nums), 4):
            box = _make_box(nums[k], nums[k + 1], nums[k + 2], nums[k + 3], scale, w, h, problems)
            if box is not None:
                boxes.append(box)
    return boxes


def _make_box(
    x1: float, y1: float, x2: float, y2: float, scale: str, w: float | None, h: float | None, problems: list[str]
) -> Box | None:
    if scale != "normalized":
        x1, x2 = _scale(x1, w, scale), _scale(x2, w, scale)
        y1, y2 = _scale(y1, h, scale), _scale(y2, h, scale)
    if x1 > x2:
        x1, x2 = x2, x1
    if y1 > y2:
        y1, y2 = y2, y1
    if x1 < 0.0 or y1 < 0.0 or x2 > 1.0 or y2 > 1.0:
        problems.append(f"box {format_box((x1, y1, x2, y2))} outside the image; clamped")
        x1, y1 = max(x1, 0.0), max(y1, 0.0)
        x2, y2 = min(x2, 1.0), min(y2, 1.0)
    if x2 <= x1 or y2 <= y1:
        problems.append(f"degenerate box {format_box((x1, y1, x2, y2))} dropped")
        return None
    return Box(x1, y1, x2, y2)


def parse_types(text: str) -> list[str]:
    """Type items of a ``<type>`` body: split on commas, semicolons, newlines, "and"."""
    if " and " in text or "|" in text or "/" in text:
        parts = _TYPE_SPLIT.split(text)
    else:  # the common case, without the regex
        parts = text.replace(";", ",").replace("\n", ",").split(",")
    return [p for p in (part.strip(_TYPE_STRIP) for part in parts) if p]


def parse(text: object, cfg: ParseConfig | None = None, image_size: tuple[int, int] | None = None) -> ParsedOutput:
    """Parse model output. Never raises: anything unexpected becomes a problem string.

    Repeated tags: the first ``<think>`` and the last of every other tag are used.
    """
    out = ParsedOutput()
    if not isinstance(text, str):
        out.problems.append(f"response is {type(text).__name__}, not text")
        return out
    problems = out.problems
    bodies: dict[str, str] = {}
    order = out.tag_order
    structure_ok = True
    # split() yields [before, tag, after, tag, after, ...]: the bodies without match objects.
    pieces = _TAG_RE.split(text)
    outside = bool(pieces[0]) and not pieces[0].isspace()
    open_tag: str | None = None
    body = ""
    for k in range(1, len(pieces), 2):
        tag, after = pieces[k], pieces[k + 1]
        if tag[0] != "/":
            if open_tag is not None:
                problems.append(f"<{open_tag}> not closed before <{tag}>")
                structure_ok = False
                if open_tag != "think" or "think" not in bodies:
                    bodies[open_tag] = body
            if tag in order:
                problems.append(f"<{tag}> appears more than once")
                structure_ok = False
            order.append(tag)
            open_tag, body = tag, after
            continue
        if open_tag == tag[1:]:
            if open_tag != "think" or "think" not in bodies:  # the first <think> is the initial reasoning
                bodies[open_tag] = body
            open_tag = None
        else:
            problems.append(f"stray <{tag}>")
            structure_ok = False
            if open_tag is not None:  # the stray tag is part of the open body
                body = f"{body}<{tag}>{after}"
                continue
        if after and not after.isspace():
            outside = True
    if open_tag is not None:
        problems.append(f"<{open_tag}> not closed")
        structure_ok = False
        if open_tag != "think" or "think" not in bodies:
            bodies[open_tag] = body
    if outside:
        problems.append("text outside the tags")

    if "think" in bodies:
        out.think = bodies["think"].strip()
        out.initial, out.initial_source = _initial_from_think(out.think)
    if "reflection" in bodies:
        out.reflection = bodies["reflection"].strip()
    if "answer" in bodies:
        out.answer_text = bodies["answer"]
        word = out.answer_text.strip(_ANSWER_STRIP).lower()
        if word in ("yes", "no"):
            out.answer = word  # type: ignore[assignment]
        else:
            problems.append(f"<answer> is {out.answer_text.strip()[:20]!r}, not yes/no")
    if "type" in bodies:
        out.type_text = bodies["type"]
        out.types = parse_types(out.type_text)
    if "location" in bodies:
        out.location_text = bodies["location"]
        out.boxes = parse_boxes(out.location_text, cfg, image_size, problems)

    if "think" not in bodies:
        problems.append("no <think>")
    if "answer" not in bodies:
        problems.append("no <answer>")
    if structure_ok and order:
        if order[0] != "think":
            structure_ok = False
            problems.append("<think> is not the first tag")
        if "reflection" in order and order.index("reflection") != 1:
            structure_ok = False
            problems.append("<reflection> does not follow <think>")
        if order[-1] != "answer":
            structure_ok = False
            problems.append("<answer> is not the last tag")
    out.well_formed = structure_ok and "think" in bodies and "answer" in bodies
    return out
