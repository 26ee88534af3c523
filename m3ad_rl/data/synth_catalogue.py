"""The scene catalogue of the synthetic generator: each category's background, parts layout and defect types.

Four scenes, at least three categories each, so cross-category splits exist. A category's
``defect_types`` are the fine types that make sense on it; ``defect_types()`` is their union.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from m3ad_rl.data.synth_backgrounds import brushed_metal, fabric, pcb_board, photo_texture, plain, wood
from m3ad_rl.data.synth_objects import Item

Rng = np.random.Generator


@dataclass(frozen=True)
class Category:
    """One kind of object or surface: where it belongs, what can go wrong, how to draw it."""

    name: str
    scene: str
    defect_types: tuple[str, ...]
    background: Callable[[Rng, int], np.ndarray]
    layout: Callable[[Rng, int], list[Item]] | None = None


# ------------------------------------------------------------------------------- layouts


def _grid_slots(size: int, rows: int, cols: int, margin: float = 0.15) -> list[tuple[float, float, float, float]]:
    """Centres and cell sizes of a rows x cols layout."""
    m = size * margin
    cw, ch = (size - 2 * m) / cols, (size - 2 * m) / rows
    return [(m + (c + 0.5) * cw, m + (r + 0.5) * ch, cw, ch) for r in range(rows) for c in range(cols)]


def _one(kind: str, color, wf: float, hf: float):
    def layout(rng: Rng, size: int) -> list[Item]:
        s = size * rng.uniform(0.85, 1.1)
        c = size / 2 + rng.uniform(-0.06, 0.06, 2) * size
        col = tuple(int(v * rng.uniform(0.9, 1.1)) for v in color)
        return [Item(kind, c[0], c[1], s * wf, s * hf, rng.uniform(-25, 25), col)]

    return layout


def _pcb_layout(rng: Rng, size: int) -> list[Item]:
    items = [
        Item("chip", size * 0.32, size * 0.35, size * 0.22, size * 0.14, 0, (200, 200, 205)),
        Item("chip", size * 0.7, size * 0.62, size * 0.16, size * 0.12, 90, (200, 200, 205)),
    ]
    for k in range(4):
        items.append(
            Item("resistor", size * (0.25 + 0.12 * k), size * 0.75, size * 0.14, size * 0.035, 90, (150, 60, 30))
        )
    return items


def _resistor_row(rng: Rng, size: int) -> list[Item]:
    return [
        Item("resistor", x, y, size * 0.42, size * 0.07, 0, (150, 60, 30))
        for x, y, _, _ in _grid_slots(size, 5, 1, 0.12)
    ]


def _tray(rng: Rng, size: int) -> list[Item]:
    items = []
    for k, (x, y, cw, ch) in enumerate(_grid_slots(size, 2, 3)):
        if k < 3:
            items.append(Item("screw", x, y, cw * 0.7, ch * 0.22, -60, (175, 175, 180)))
        else:
            items.append(Item("nut", x, y, cw * 0.45, cw * 0.45, 0, (170, 165, 150)))
    return items


def _blister(rng: Rng, size: int) -> list[Item]:
    color = tuple(int(v) for v in rng.choice([(235, 235, 225), (230, 200, 90), (200, 90, 90)]))
    return [Item("pill", x, y, cw * 0.55, ch * 0.35, 0, color) for x, y, cw, ch in _grid_slots(size, 2, 5, 0.1)]


KIT_COLORS = [(200, 40, 40), (40, 160, 60), (40, 80, 200), (230, 200, 40), (240, 240, 240)]


def _kit(rng: Rng, size: int) -> list[Item]:
    return [
        Item("block", x, y, cw * 0.6, ch * 0.5, 0, KIT_COLORS[k])
        for k, (x, y, cw, ch) in enumerate(_grid_slots(size, 1, 5, 0.08))
    ]


TEXTURE_DEFECTS = (
    "debris",
    "contamination",
    "foreign object intrusion",
    "discontinuity",
    "pitting",
    "irregularity",
    "roughness",
    "moisture",
    "scratch",
    "abrasion",
    "scrape",
    "scuff",
    "tear",
    "crack",
    "hole",
    "peeling",
    "corrosion",
    "oxidation corrosion",
    "rusty",
    "dent",
    "indentation",
    "protrusion",
    "delamination",
)

CATEGORIES: dict[str, Category] = {
    c.name: c
    for c in [
        Category("brick", "texture", TEXTURE_DEFECTS, lambda r, s: photo_texture(r, s, "brick", (0.8, 0.5, 0.4))),
        Category("gravel", "texture", TEXTURE_DEFECTS, lambda r, s: photo_texture(r, s, "gravel", (0.8, 0.78, 0.72))),
        Category("grass", "texture", TEXTURE_DEFECTS, lambda r, s: photo_texture(r, s, "grass", (0.45, 0.8, 0.35))),
        Category("fabric", "texture", TEXTURE_DEFECTS, fabric),
        Category("wood", "texture", TEXTURE_DEFECTS, wood),
        Category("brushed metal", "texture", TEXTURE_DEFECTS, brushed_metal),
        Category(
            "screw",
            "workpiece",
            ("bent", "broken", "scratch", "rusty", "contamination", "dent", "corrosion", "fracture", "breakage"),
            plain((0.3, 0.3, 0.32)),
            _one("screw", (180, 180, 185), 0.6, 0.13),
        ),
        Category(
            "nut",
            "workpiece",
            ("breakage", "crack", "scratch", "rusty", "distortion", "gap", "pitting", "oxidation corrosion"),
            plain((0.2, 0.22, 0.25)),
            _one("nut", (175, 170, 155), 0.5, 0.5),
        ),
        Category(
            "plate",
            "workpiece",
            ("dent", "scratch", "warping", "gap", "hole", "abrasion", "discontinuity", "protrusion", "indentation"),
            plain((0.55, 0.55, 0.6)),
            _one("plate", (120, 130, 150), 0.7, 0.45),
        ),
        Category(
            "bottle cap",
            "workpiece",
            ("dent", "breakage", "contamination", "distortion", "scuff", "debris", "fragmentation"),
            plain((0.75, 0.75, 0.72)),
            _one("cap", (200, 40, 40), 0.45, 0.45),
        ),
        Category(
            "pcb",
            "electronic",
            (
                "component missing",
                "displacement",
                "component misalignment",
                "scratch",
                "contamination",
                "bent",
                "protrusion",
            ),
            pcb_board,
            _pcb_layout,
        ),
        Category(
            "ic chip",
            "electronic",
            ("bent", "crack", "scratch", "breakage", "contamination", "debris"),
            plain((0.8, 0.8, 0.78)),
            _one("chip", (200, 200, 205), 0.45, 0.3),
        ),
        Category(
            "resistor row",
            "electronic",
            (
                "color error",
                "component misalignment",
                "displacement",
                "bent",
                "component missing",
                "wrong combination",
                "size errors",
            ),
            plain((0.92, 0.92, 0.88)),
            _resistor_row,
        ),
        Category(
            "parts tray",
            "logical",
            (
                "component missing",
                "quantity errors",
                "wrong combination",
                "layout error",
                "displacement",
                "assembly error",
            ),
            plain((0.25, 0.3, 0.45)),
            _tray,
        ),
        Category(
            "pill blister",
            "logical",
            ("component missing", "color error", "size errors", "fragmentation", "quantity errors", "contamination"),
            plain((0.7, 0.72, 0.75)),
            _blister,
        ),
        Category(
            "colour kit",
            "logical",
            (
                "layout error",
                "color error",
                "component missing",
                "component misalignment",
                "size errors",
                "wrong combination",
            ),
            plain((0.35, 0.33, 0.3)),
            _kit,
        ),
    ]
}


def defect_types() -> set[str]:
    """Every fine type the generator can draw."""
    return {t for c in CATEGORIES.values() for t in c.defect_types}
