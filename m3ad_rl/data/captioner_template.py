"""Offline template captioner: Thinking / Reflective trajectories from the labels alone.

It follows the paper's templates (A.5): the thinking stage names the object and the scene, then
analyses the defect regions (anomalous) or checks integrity, continuity and layout (normal), and
ends with an initial decision; the reflection stage judges that decision against the type
definitions and the visual evidence and keeps or revises it. Wording is drawn from phrase banks
with a per-sample seed, so the same sample always gets the same text and different samples vary.
The ``<type>``, ``<location>`` and ``<answer>`` always come from the ground truth.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from m3ad_rl.core.output_format import render
from m3ad_rl.core.taxonomy import default_taxonomy
from m3ad_rl.data.captions import CaptionJob, CaptionResult
from m3ad_rl.data.schema import Sample

_OPEN = [
    "The image shows {a} {cat} from a {scene} inspection setting.",
    "This is {a} {cat}, photographed for {scene} quality inspection.",
    "I see {a} {cat}; the task is a {scene} inspection.",
    "The test image contains {a} {cat} under {light} lighting.",
]
_LIGHT = ["even", "diffuse", "slightly uneven", "bright", "soft"]
_NORMAL_CHECKS = {
    "texture": [
        "the texture repeats regularly across the surface",
        "the grain and colour stay uniform",
        "no region breaks the pattern",
        "the surface is continuous without marks or stains",
    ],
    "workpiece": [
        "the outline of the part is complete",
        "the surface shows no marks, dents or corrosion",
        "edges and corners are intact",
        "the geometry matches the expected shape",
    ],
    "electronic": [
        "every component sits on its pads",
        "the pins are straight and evenly spaced",
        "markings and colours look as specified",
        "no solder bridges or residues are visible",
    ],
    "logical": [
        "every position holds the expected part",
        "the count of parts is right",
        "parts are in their usual order and orientation",
        "colours and sizes match one another",
    ],
}
_FIND = [
    "In the {where} region there is {desc}, which matches {type}: {definition}",
    "Near the {where} part of the image I notice {desc}; this fits the definition of {type} ({definition})",
    "The {where} area shows {desc}. {Type} means: {definition}",
]
_DESC = [
    "a small localized irregularity",
    "a clearly visible anomaly",
    "a subtle deviation from the rest",
    "an area that differs from its surroundings",
    "a distinct mark",
]
_SIZE = [(0.02, "tiny"), (0.08, "small"), (0.25, "medium-sized"), (1.01, "large")]
_MISS = [
    "At first glance the {cat} looks regular and I do not see anything clearly out of place.",
    "Scanning quickly, the surface and the outline seem consistent.",
    "Nothing stands out on a first pass over the image.",
]
_FALSE_ALARM = [
    "The {where} region looks darker than the rest, which might be a defect such as {guess}.",
    "Something in the {where} area could be {guess}.",
    "I suspect a possible {guess} near the {where} part.",
]
_KEEP = [
    "Re-checking the evidence, my initial judgment holds.",
    "Looking again confirms the first assessment.",
    "A second look supports the initial decision.",
]


def where(box: list[float]) -> str:
    """Words for a box's position: "upper-left", "central", "lower" …"""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    v = "upper" if cy < 1 / 3 else "lower" if cy > 2 / 3 else ""
    h = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else ""
    return f"{v}-{h}" if v and h else (v or h or "central")


def _size(box: list[float]) -> str:
    area = (box[2] - box[0]) * (box[3] - box[1])
    return next(word for limit, word in _SIZE if area < limit)


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


class TemplateCaptioner:
    """``caption(sample, mode, initial)`` -> the full trajectory text (SPEC §2 format)."""

    name = "template"

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.taxonomy = default_taxonomy()

    def caption_samples(self, jobs: Sequence[CaptionJob], progress: bool = False) -> list[CaptionResult]:
        """The ``ft.Captioner`` interface; templates never fail and are fast, so there is no bar."""
        return [CaptionResult(j.sample.id, text=self.caption(j.sample, j.mode, j.initial)) for j in jobs]

    def caption(self, s: Sample, mode: str, initial: str) -> str:
        """One trajectory; the same sample, mode and initial decision always give the same text."""
        rng = random.Random(f"{self.seed}/{s.id}")
        verdict = "yes" if s.anomalous else "no"
        opening = rng.choice(_OPEN).format(
            a=_article(s.category), cat=s.category, scene=s.scene, light=rng.choice(_LIGHT)
        )
        findings = [self._finding(rng, d.type, d.box) for d in s.defects]
        checks = rng.sample(_NORMAL_CHECKS.get(s.scene, _NORMAL_CHECKS["workpiece"]), 2)
        if initial == verdict:
            if s.anomalous:
                body = " ".join(findings) + " These are defects."
            else:
                body = f"I check that {checks[0]} and that {checks[1]}. The {s.category} looks normal."
        elif s.anomalous:  # a miss: the initial "no" is wrong
            body = rng.choice(_MISS).format(cat=s.category) + f" It seems that {checks[0]}."
        else:  # a false alarm: the initial "yes" is wrong
            guess = rng.choice(self.taxonomy.fine_types).name
            body = rng.choice(_FALSE_ALARM).format(where=rng.choice(["upper", "lower", "central", "left"]), guess=guess)
        think = f"{opening} {body}"
        reflection = None
        if mode == "reflective":
            reflection = self._reflection(rng, s, initial, verdict, findings, checks)
        return render(
            think=think,
            reflection=reflection,
            answer=verdict,  # type: ignore[arg-type]
            types=list(dict.fromkeys(d.type for d in s.defects)),
            boxes=[d.box for d in s.defects],
            initial=initial,  # type: ignore[arg-type]
        )

    def _finding(self, rng: random.Random, type_name: str, box: list[float]) -> str:
        node = self.taxonomy.get(type_name)
        definition = node.definition.rstrip(".") + "."
        desc = f"{_article(_size(box))} {_size(box)} {rng.choice(_DESC).split(' ', 1)[1]}"
        return rng.choice(_FIND).format(
            where=where(box), desc=desc, type=node.name, Type=node.name.capitalize(), definition=definition
        )

    def _reflection(self, rng, s: Sample, initial: str, verdict: str, findings: list[str], checks) -> str:
        if initial == verdict:
            evidence = findings[0] if findings else f"Indeed {checks[1]}."
            return f"{rng.choice(_KEEP)} {evidence} So the answer stays '{verdict}'."
        if s.anomalous:
            return (
                f"My initial answer may be wrong: let me examine the image more carefully. {' '.join(findings)} "
                f"The first pass missed {'this defect' if len(findings) == 1 else 'these defects'}, "
                "so I revise the decision to 'yes'."
            )
        return (
            f"Let me verify the suspected defect. On closer inspection, {checks[0]} and {checks[1]}; "
            "the suspicious area is part of the normal appearance (texture, lighting or reflection), "
            "not an anomaly. I revise the decision to 'no'."
        )
