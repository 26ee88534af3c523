"""Ground truth of one image: its label and its defects (fine type + normalised box).

The wire form, used by the reward CLI, the reward service and verl's ``ground_truth``::

    {"label": "anomalous" | "normal", "defects": [{"type": "bent", "box": [x1, y1, x2, y2]}]}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from m3ad_rl.core.output_format import Box, ParsedOutput
from m3ad_rl.core.taxonomy import Node, Taxonomy, default_taxonomy

LABELS = ("anomalous", "normal")
Outcome = Literal["none", "correct", "ineffective", "erroneous"]


@dataclass(slots=True)
class Defect:
    type: Node
    box: Box | None


@dataclass(slots=True)
class GroundTruth:
    anomalous: bool
    defects: list[Defect] = field(default_factory=list)
    types: list[Node] = field(init=False)
    """Distinct fine types, in order of first appearance (a set, as the paper's T(y))."""
    boxes: list[Box] = field(init=False)

    def __post_init__(self) -> None:
        seen: dict[str, Node] = {}
        for d in self.defects:
            seen.setdefault(d.type.name, d.type)
        self.types = list(seen.values())
        self.boxes = [d.box for d in self.defects if d.box is not None]

    @property
    def label(self) -> str:
        return "anomalous" if self.anomalous else "normal"

    @property
    def verdict(self) -> str:
        return "yes" if self.anomalous else "no"

    @classmethod
    def from_obj(cls, obj: Any, taxonomy: Taxonomy | None = None) -> GroundTruth:
        """Validate the wire form (a dict or its JSON string); ValueError says what is wrong."""
        tax = taxonomy or default_taxonomy()
        if isinstance(obj, str):
            try:
                obj = json.loads(obj)
            except json.JSONDecodeError as e:
                raise ValueError(f"ground_truth is not valid JSON: {e}") from None
        if not isinstance(obj, dict):
            raise ValueError(f"ground_truth must be an object, got {type(obj).__name__}")
        label = obj.get("label")
        if label not in LABELS:
            raise ValueError(f"ground_truth.label must be one of {list(LABELS)}, got {label!r}")
        raw = obj.get("defects") or []
        if not isinstance(raw, list):
            raise ValueError("ground_truth.defects must be a list")
        defects = []
        for i, d in enumerate(raw):
            where = f"ground_truth.defects[{i}]"
            if not isinstance(d, dict):
                raise ValueError(f"{where} must be an object with 'type' and 'box'")
            node = tax.lookup(d.get("type", ""))
            if node is None or not node.is_fine:
                raise ValueError(f"{where}.type {d.get('type')!r} is not a fine type of the taxonomy")
            defects.append(Defect(node, _box(d.get("box"), where)))
        if label == "normal" and defects:
            raise ValueError("ground_truth: a normal image cannot have defects")
        return cls(label == "anomalous", defects)

    def to_obj(self) -> dict:
        return {
            "label": self.label,
            "defects": [{"type": d.type.name, "box": d.box.as_list() if d.box else None} for d in self.defects],
        }


def _box(raw: Any, where: str) -> Box | None:
    if raw is None:
        return None
    ok = isinstance(raw, (list, tuple)) and len(raw) == 4
    if ok:
        try:
            x1, y1, x2, y2 = (float(v) for v in raw)
        except (TypeError, ValueError):
            ok = False
    if not ok or not (0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1):
        raise ValueError(f"{where}.box must be [x1, y1, x2, y2] in [0,1] with x1<x2, y1<y2; got {raw!r}")
    return Box(x1, y1, x2, y2)


def reflection_outcome(parsed: ParsedOutput, gt: GroundTruth) -> Outcome:
    """How reflection changed correctness: none / correct / ineffective / erroneous.

    The initial decision is the one read from ``<think>``; when it is undetermined the outcome is
    "ineffective". A missing or unreadable final answer counts as wrong.
    """
    if parsed.reflection is None:
        return "none"
    if parsed.initial is None:
        return "ineffective"
    pre_ok = parsed.initial == gt.verdict
    post_ok = parsed.answer == gt.verdict
    if not pre_ok and post_ok:
        return "correct"
    if pre_ok and not post_ok:
        return "erroneous"
    return "ineffective"


@dataclass
class AnswerTally:
    """Yes/no answers before and after reflection, split by the truth, and what each reflection did.

    The counts behind accuracy and balanced accuracy before vs after reflection (the paper's Figure 5):
    the evaluation report and RCRL's step metrics both read them, so the two cannot disagree. The answer
    "before" is the ``<think>`` decision when the response reflects, else the final answer.
    """

    n: int = 0
    pos: int = 0
    correct: int = 0
    pos_correct: int = 0
    neg_correct: int = 0
    pre_correct: int = 0
    pre_pos_correct: int = 0
    pre_neg_correct: int = 0
    reflected: int = 0
    outcomes: dict[str, int] = field(default_factory=lambda: {"correct": 0, "ineffective": 0, "erroneous": 0})

    def add(self, parsed: ParsedOutput, gt: GroundTruth) -> None:
        y = gt.verdict
        ok = parsed.answer == y
        pre = (parsed.initial if parsed.reflection is not None else parsed.answer) == y
        self.n += 1
        self.correct += ok
        self.pre_correct += pre
        if gt.anomalous:
            self.pos += 1
            self.pos_correct += ok
            self.pre_pos_correct += pre
        else:
            self.neg_correct += ok
            self.pre_neg_correct += pre
        if parsed.reflection is not None:
            self.reflected += 1
            self.outcomes[reflection_outcome(parsed, gt)] += 1
