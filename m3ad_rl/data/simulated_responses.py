"""Synthetic model outputs with known ground truth, for the demo, the benchmarks and tests.

A seeded "simulated inspector" writes responses in the SPEC §2 format: Thinking or Reflective
Mode, right or wrong first judgments, reflections that correct, fail or break a decision, types
that are exact, near (same group) or wrong, boxes jittered around the truth, and a share of
malformed outputs. Think text runs to ``think_tokens`` (roughly 1.3 tokens per word), so the
responses have the 300-800-token length of real rollouts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from m3ad_rl.core.output_format import Box, format_box, render
from m3ad_rl.core.taxonomy import Node, default_taxonomy

SCENES = {
    "texture": (["carpet", "leather", "wood", "tile", "fabric"], ["mvtec-ad", "aitex", "dagm"]),
    "workpiece": (["screw", "metal nut", "bottle cap", "hazelnut", "plate"], ["mvtec-ad", "real-iad", "visa"]),
    "electronic": (["pcb", "transistor", "capacitor", "chip"], ["visa", "real-iad", "mvtec-ad"]),
    "logical": (["juice bottle", "screw bag", "breakfast box"], ["mvtec-loco"]),
}

_OPENERS = [
    "The image shows a {cat} from an industrial {scene} inspection line.",
    "This is a close-up photograph of a {cat} captured under uniform lighting.",
    "I am looking at a {cat}; the scene is a typical {scene} inspection setting.",
]
_SCAN = [
    "I examine the {region} region carefully, comparing texture, edges and colour with what a normal {cat} looks like.",
    "Looking at the {region} part of the image, the surface continuity and the geometry appear {state}.",
    "The {region} area shows {state} structure, and the boundaries of the object are consistent with its design.",
    "Scanning along the {region} edge, I check for breaks, stains, deformation or missing parts.",
    "Contrast and reflections in the {region} region are {state}, without sudden changes in intensity.",
]
_REGIONS = ["upper-left", "upper", "upper-right", "left", "central", "right", "lower-left", "lower", "lower-right"]
_STATES = ["regular", "uniform", "consistent", "expected", "smooth"]


@dataclass(frozen=True)
class Quality:
    """How good the simulated inspector is."""

    accuracy: float = 0.75
    reflect_rate: float = 0.3
    fix_rate: float = 0.6
    exact_type: float = 0.6
    near_type: float = 0.25
    box_jitter: float = 0.06
    malformed: float = 0.05
    anomalous_ratio: float = 0.5


def _region(box: Box) -> str:
    cx, cy = (box.x1 + box.x2) / 2, (box.y1 + box.y2) / 2
    return _REGIONS[min(int(cy * 3), 2) * 3 + min(int(cx * 3), 2)]


def _think(rng: random.Random, cat: str, scene: str, tokens: int, findings: list[str]) -> str:
    parts = [rng.choice(_OPENERS).format(cat=cat, scene=scene)]
    words = len(parts[0].split())
    while words * 1.3 < tokens:
        s = rng.choice(_SCAN).format(region=rng.choice(_REGIONS), cat=cat, state=rng.choice(_STATES))
        if findings and rng.random() < 0.3:
            s = findings[rng.randrange(len(findings))]
        parts.append(s)
        words += len(s.split())
    return " ".join(parts)


def _jitter(rng: random.Random, b: Box, amount: float) -> list[float]:
    v = [c + rng.uniform(-amount, amount) for c in b.as_list()]
    return [min(max(c, 0.0), 1.0) for c in v]


def _truth(rng: random.Random, types: list[Node], anomalous: bool) -> dict:
    if not anomalous:
        return {"label": "normal", "defects": []}
    defects = []
    for _ in range(rng.choice([1, 1, 2, 3])):
        w, h = rng.uniform(0.05, 0.3), rng.uniform(0.05, 0.3)
        x, y = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
        box = [round(x, 3), round(y, 3), round(x + w, 3), round(y + h, 3)]
        defects.append({"type": rng.choice(types).name, "box": box})
    return {"label": "anomalous", "defects": defects}


def _pred_types(rng: random.Random, gt_types: list[str], q: Quality) -> list[str]:
    tax = default_taxonomy()
    out = []
    for name in gt_types:
        r = rng.random()
        node = tax.types[name]
        if r < q.exact_type:
            out.append(name)
        elif r < q.exact_type + q.near_type:
            out.append(rng.choice(tax.group(node.level2)).name)
        else:
            out.append(rng.choice(tax.fine_types).name)
    return out or [rng.choice(tax.fine_types).name]


def make_record(i: int, rng: random.Random, q: Quality = Quality(), think_tokens: tuple[int, int] = (250, 700)) -> dict:
    """One ``{id, scene, source, response, ground_truth}`` record."""
    tax = default_taxonomy()
    scene = rng.choice(list(SCENES))
    cats, sources = SCENES[scene]
    cat = rng.choice(cats)
    types = [n for n in tax.fine_types if (n.level1 == "logical anomaly") == (scene == "logical")]
    gt = _truth(rng, types, rng.random() < q.anomalous_ratio)
    y = "yes" if gt["label"] == "anomalous" else "no"
    flip = {"yes": "no", "no": "yes"}
    initial = y if rng.random() < q.accuracy else flip[y]
    reflect = rng.random() < (q.reflect_rate * (2.0 if initial != y else 0.6))
    final = initial
    if reflect:
        final = y if (initial != y and rng.random() < q.fix_rate) or (initial == y and rng.random() > 0.1) else flip[y]
    gboxes = [Box(*d["box"]) for d in gt["defects"]]
    findings = [
        f"In the {_region(b)} region there is a visible irregularity that looks like {d['type']}."
        for b, d in zip(gboxes, gt["defects"], strict=True)
    ]
    think = _think(rng, cat, scene, rng.randint(*think_tokens), findings if initial == "yes" else [])
    reflection = None
    if reflect:
        reflection = (
            f"Let me re-check my initial judgment of '{initial}'. "
            + _think(rng, cat, scene, rng.randint(40, 160), findings)
            + f" After this second look, the final decision is '{final}'."
        )
    if final == "yes":
        ptypes = _pred_types(rng, [d["type"] for d in gt["defects"]], q)
        boxes = [_jitter(rng, b, q.box_jitter) for b in gboxes] or [[0.2, 0.2, 0.5, 0.5]]
        boxes = [b for b in boxes if b[2] > b[0] and b[3] > b[1]] or [[0.2, 0.2, 0.5, 0.5]]
    else:
        ptypes, boxes = [], []
    text = render(think=think, answer=final, reflection=reflection, types=ptypes, boxes=boxes, initial=initial)
    if rng.random() < q.malformed:
        text = _break(rng, text, boxes)
    return {"id": f"s{i:06d}", "scene": scene, "source": rng.choice(sources), "response": text, "ground_truth": gt}


def _break(rng: random.Random, text: str, boxes: list[list[float]]) -> str:
    """Typical failures of sampled outputs."""
    kind = rng.randrange(5)
    if kind == 0:
        return text.replace("</think>", "", 1)
    if kind == 1:
        return text.replace("<answer>yes</answer>", "<answer>maybe</answer>").replace(
            "<answer>no</answer>", "<answer>probably not</answer>"
        )
    if kind == 2:
        return text[: rng.randrange(len(text))]
    if kind == 3 and boxes:
        return text.replace(format_box(boxes[0]), "(0.5,0.5)(0.5,0.5)")
    return "<answer>yes</answer>" + text


def make_records(
    n: int, seed: int = 0, q: Quality = Quality(), think_tokens: tuple[int, int] = (250, 700)
) -> list[dict]:
    """``n`` records, the same for the same seed."""
    rng = random.Random(seed)
    return [make_record(i, rng, q, think_tokens) for i in range(n)]
