"""Draws one scene of a category with the defects asked for, and the box of each defect as drawn.

Surface defects are painted on the texture or on one part; logical and structural ones edit the
list of parts before drawing (at most one edit per image, so boxes stay true); cuts remove
material from a drawn part. Each box is the region actually painted or the part actually edited.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from m3ad_rl.data import synth_surface as sf
from m3ad_rl.data.synth_catalogue import KIT_COLORS, Category
from m3ad_rl.data.synth_objects import Item, cut, draw_item

Rng = np.random.Generator
PixBox = tuple[int, int, int, int]

SURFACE_ON_PARTS = (
    "scratch",
    "dent",
    "contamination",
    "rusty",
    "corrosion",
    "crack",
    "scuff",
    "pitting",
    "oxidation corrosion",
    "debris",
    "protrusion",
    "indentation",
    "abrasion",
    "discontinuity",
)
CUTS = ("broken", "breakage", "gap", "fragmentation")
ITEM_EDITS = (
    "component missing",
    "quantity errors",
    "displacement",
    "component misalignment",
    "wrong combination",
    "color error",
    "size errors",
    "layout error",
    "assembly error",
    "bent",
    "distortion",
    "warping",
)


def _edit(items: list[Item], kind: str, rng: Rng, size: int) -> tuple[list[Item], list[int], PixBox | None]:
    """Apply a logical/structural defect by editing the parts; returns items, touched indices, box."""
    items = list(items)
    i = int(rng.integers(len(items)))
    if kind in ("assembly error", "bent"):  # only visible on a long, asymmetric part
        long_parts = [k for k, it in enumerate(items) if it.kind in ("screw", "resistor", "chip")]
        i = long_parts[int(rng.integers(len(long_parts)))] if long_parts else i
    it = items[i]
    if kind == "component missing":
        box = it.box()
        del items[i]
        return items, [], box
    if kind == "quantity errors":
        extra = it.moved(
            cx=it.cx + it.w * rng.uniform(0.25, 0.4),
            cy=it.cy + it.h * rng.uniform(0.3, 0.6),
            angle=it.angle + rng.uniform(-30, 30),
        )
        items.append(extra)
        return items, [len(items) - 1], None
    if kind == "layout error" and len(items) > 1:
        j = (i + 1 + int(rng.integers(len(items) - 1))) % len(items)
        a, b = items[i], items[j]
        items[i] = a.moved(kind=b.kind, color=b.color, w=b.w, h=b.h, angle=b.angle)
        items[j] = b.moved(kind=a.kind, color=a.color, w=a.w, h=a.h, angle=a.angle)
        if items[i].kind == a.kind and items[i].color == a.color:  # identical parts: swap is invisible
            items[i] = items[i].moved(
                color=KIT_COLORS[(KIT_COLORS.index(a.color) + 2) % 5] if a.color in KIT_COLORS else (90, 90, 200)
            )
        return items, [i, j], None
    edits = {
        "displacement": lambda: it.moved(
            cx=it.cx + rng.choice([-1, 1]) * rng.uniform(0.2, 0.4) * max(it.w, it.h) * 0.6,
            cy=it.cy + rng.uniform(-0.3, 0.3) * it.h,
        ),
        "component misalignment": lambda: it.moved(angle=it.angle + rng.choice([-1, 1]) * rng.uniform(20, 55)),
        "wrong combination": lambda: it.moved(
            kind={
                "screw": "nut",
                "nut": "screw",
                "resistor": "chip",
                "chip": "resistor",
                "pill": "cap",
                "block": "cap",
            }.get(it.kind, "nut"),
            w=min(it.w, it.h * 3) if it.kind == "screw" else it.w,
            h=min(it.w, it.h * 3) if it.kind == "screw" else it.h,
        ),
        "color error": lambda: it.moved(
            color=tuple(int(v) for v in rng.choice([(60, 120, 220), (230, 120, 30), (120, 200, 90), (150, 60, 160)]))
        ),
        "size errors": lambda: it.moved(w=it.w * (s := rng.choice([0.6, 1.35])), h=it.h * s),
        "assembly error": lambda: it.moved(angle=it.angle + 180 + rng.uniform(-10, 10)),
        "bent": lambda: it.moved(bend=rng.choice([-1, 1]) * rng.uniform(18, 40)),
        "distortion": lambda: it.moved(
            w=it.w * rng.uniform(1.15, 1.35), h=it.h * rng.uniform(0.65, 0.8), shear=rng.uniform(-0.3, 0.3)
        ),
        "warping": lambda: it.moved(shear=rng.choice([-1, 1]) * rng.uniform(0.25, 0.5)),
    }
    items[i] = edits[kind]()
    if kind == "bent" and it.kind == "chip":  # only the first pin of the lower row bends
        n = max(3, int(it.w // 9))
        px, py = _poly_point(items[i], -it.w / 2 + 0.5 * it.w / n, it.h / 2 + 12)
        return items, [i], (int(px - 16), int(py - 16), int(px + 17), int(py + 17))
    return items, [i], None


def _poly_point(it: Item, x: float, y: float) -> tuple[float, float]:
    from m3ad_rl.data.synth_objects import _poly

    return _poly(it, [(x, y)])[0]


def render(
    cat: Category, rng: Rng, size: int, kinds: list[str], scale: float = 1.0
) -> tuple[np.ndarray | Image.Image, list[tuple[str, PixBox]]]:
    """The image (float array, or a PIL image when nothing needed float painting) and its labels;
    ``scale`` multiplies the size of painted surface defects (1: as drawn; the random draws are the same)."""
    bg = cat.background(rng, size)
    if cat.layout is None:  # texture: paint on the background
        labels = []
        for kind in kinds:
            c = tuple(int(v) for v in rng.uniform(0.15, 0.85, 2) * size)
            labels.append((kind, sf.SURFACE_PAINTERS[kind](bg, rng, c, scale * size * rng.uniform(0.04, 0.14))))
        return bg, labels
    items = cat.layout(rng, size)
    pending: list[tuple[str, PixBox | None, list[int]]] = []
    for kind in [k for k in kinds if k in ITEM_EDITS][:1]:  # one edit per image: boxes stay true
        items, touched, box = _edit(items, kind, rng, size)
        if box is None:
            boxes = [items[t].box() for t in touched]
            box = (
                min(b[0] for b in boxes),
                min(b[1] for b in boxes),
                max(b[2] for b in boxes),
                max(b[3] for b in boxes),
            )
        pending.append((kind, box, touched))
    for kind in kinds:
        if kind not in ITEM_EDITS:
            pending.append((kind, None, [int(rng.integers(len(items)))]))
    canvas = Image.fromarray((bg * 255).astype(np.uint8))
    d = ImageDraw.Draw(canvas)
    for it in items:
        draw_item(d, it)
    if all(kind in ITEM_EDITS for kind, _, _ in pending):
        return canvas, [(kind, box) for kind, box, _ in pending]  # type: ignore[misc]
    img = np.asarray(canvas).astype(np.float32)  # (asarray with a float dtype is several times slower)
    img *= np.float32(1 / 255)
    labels = []
    for kind, box, touched in pending:
        if kind in ITEM_EDITS:
            pass  # box computed when the parts were edited
        elif kind in CUTS:
            box = cut(img, items[touched[0]], rng, kind, bg)
        else:
            it = items[touched[0]]
            painter = sf.SURFACE_PAINTERS["crack" if kind == "fracture" else kind]
            r = 0.3 * min(it.w, it.h)
            c = (int(it.cx + rng.uniform(-r, r)), int(it.cy + rng.uniform(-r, r) * 0.5))
            box = painter(img, rng, c, scale * max(4.0, min(it.w, it.h) * rng.uniform(0.25, 0.5)))
            if kind == "fracture":  # wider than a crack: a second, parallel break
                box = sf._union(box, painter(img, rng, (c[0] + 3, c[1] + 2), min(it.w, it.h) * 0.4))
        labels.append((kind, box))
    return img, labels
