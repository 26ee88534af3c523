"""Offline synthetic industrial scenes with labelled defects, deterministic by seed.

Four scenes, at least three categories each, so cross-category splits exist:

- texture: brick, gravel, grass (scikit-image's CC0 photographs), fabric, wood, brushed metal
- workpiece: screw, nut, plate, bottle cap
- electronic: pcb, ic chip, resistor row
- logical: parts tray, pill blister, colour kit (count, position, combination, colour can be wrong)

Defects cover 40 of the taxonomy's 41 fine types (all but deviation); each sample's boxes are the regions that were
actually painted. Normal and anomalous images come in a configurable ratio. Every image gets a
random exposure, contrast, tint and sensor noise, and defects vary in size and strength, so a
classifier cannot separate the classes by a global statistic.

    from m3ad_rl.data.synthetic import SynthConfig, generate
    samples = list(generate(SynthConfig(n=100, seed=0)))
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image, ImageChops, ImageDraw
from pydantic import BaseModel, ConfigDict, Field, field_validator

from m3ad_rl.core.errors import UsageError
from m3ad_rl.data import synth_surface as sf
from m3ad_rl.data.schema import SCENES, DefectRecord, Sample
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


@dataclass(frozen=True)
class Category:
    name: str
    scene: str
    defect_types: tuple[str, ...]
    background: Callable[[Rng, int], np.ndarray]
    layout: Callable[[Rng, int], list[Item]] | None = None


class SynthConfig(BaseModel):
    """What to synthesize."""

    model_config = ConfigDict(extra="forbid")

    n: int = Field(1000, ge=1, description="Number of images.")
    seed: int = Field(0, description="Same seed, same images and labels.")
    size: int = Field(448, ge=64, le=2048, description="Square image side in pixels.")
    anomaly_ratio: float = Field(0.5, ge=0, le=1, description="Share of anomalous images.")
    scenes: tuple[str, ...] = Field(("texture", "workpiece", "electronic", "logical"), description="Scenes to draw.")
    categories: tuple[str, ...] | None = Field(None, description="Restrict to these categories.")
    image_format: str = Field(
        "jpeg", pattern="^(png|jpeg)$", description="Encoding of the stored image: jpeg (quality 92, fast) or png."
    )
    max_defects: int = Field(2, ge=1, le=4, description="Most defects on one anomalous image.")

    @field_validator("scenes")
    @classmethod
    def _known_scenes(cls, scenes: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(scenes) - set(SCENES))
        if unknown:
            raise ValueError(f"unknown scenes {unknown}; the scenes are {', '.join(SCENES)}")
        return scenes

    @field_validator("categories")
    @classmethod
    def _known_categories(cls, categories: tuple[str, ...] | None) -> tuple[str, ...] | None:
        unknown = sorted(set(categories or ()) - set(CATEGORIES))
        if unknown:
            raise ValueError(f"unknown categories {unknown}; known: {', '.join(CATEGORIES)}")
        return categories


# ------------------------------------------------------------------------------- backgrounds


def _plain(color: tuple[float, float, float], noise: float = 0.03):
    def bg(rng: Rng, size: int) -> np.ndarray:
        base = np.asarray(color, np.float32) * np.float32(rng.uniform(0.85, 1.1))
        shade = 0.9 + 0.2 * sf._smooth_noise(rng, size, size, 128) + np.float32(noise) * sf.gaussian(rng, size, size)
        img = sf._tint(shade, tuple(base))
        return np.clip(img, 0, 1, out=img)

    return bg


def _pcb_background(rng: Rng, size: int) -> np.ndarray:
    img = _plain((0.12, 0.42, 0.2), 0.02)(rng, size)
    canvas = Image.fromarray((img * 255).astype(np.uint8))
    d = ImageDraw.Draw(canvas)
    for _ in range(14):  # copper traces
        y = int(rng.integers(0, size))
        x1, x2 = sorted(rng.integers(0, size, 2))
        d.line([(x1, y), (x2, y), (x2 + 20, y + 20)], fill=(190, 150, 70), width=3)
    for _ in range(20):  # pads and vias
        x, y = rng.integers(10, size - 10, 2)
        d.ellipse([x - 4, y - 4, x + 4, y + 4], fill=(200, 180, 110))
    img = np.asarray(canvas).astype(np.float32)
    img *= np.float32(1 / 255)
    return img


def _grid_slots(size: int, rows: int, cols: int, margin: float = 0.15) -> list[tuple[float, float, float, float]]:
    """Centres and cell sizes of a rows x cols layout."""
    m = size * margin
    cw, ch = (size - 2 * m) / cols, (size - 2 * m) / rows
    return [(m + (c + 0.5) * cw, m + (r + 0.5) * ch, cw, ch) for r in range(rows) for c in range(cols)]


# ------------------------------------------------------------------------------- layouts


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
        Category("brick", "texture", TEXTURE_DEFECTS, lambda r, s: sf.photo_texture(r, s, "brick", (0.8, 0.5, 0.4))),
        Category(
            "gravel", "texture", TEXTURE_DEFECTS, lambda r, s: sf.photo_texture(r, s, "gravel", (0.8, 0.78, 0.72))
        ),
        Category("grass", "texture", TEXTURE_DEFECTS, lambda r, s: sf.photo_texture(r, s, "grass", (0.45, 0.8, 0.35))),
        Category("fabric", "texture", TEXTURE_DEFECTS, sf.fabric),
        Category("wood", "texture", TEXTURE_DEFECTS, sf.wood),
        Category("brushed metal", "texture", TEXTURE_DEFECTS, sf.brushed_metal),
        Category(
            "screw",
            "workpiece",
            ("bent", "broken", "scratch", "rusty", "contamination", "dent", "corrosion", "fracture", "breakage"),
            _plain((0.3, 0.3, 0.32)),
            _one("screw", (180, 180, 185), 0.6, 0.13),
        ),
        Category(
            "nut",
            "workpiece",
            ("breakage", "crack", "scratch", "rusty", "distortion", "gap", "pitting", "oxidation corrosion"),
            _plain((0.2, 0.22, 0.25)),
            _one("nut", (175, 170, 155), 0.5, 0.5),
        ),
        Category(
            "plate",
            "workpiece",
            ("dent", "scratch", "warping", "gap", "hole", "abrasion", "discontinuity", "protrusion", "indentation"),
            _plain((0.55, 0.55, 0.6)),
            _one("plate", (120, 130, 150), 0.7, 0.45),
        ),
        Category(
            "bottle cap",
            "workpiece",
            ("dent", "breakage", "contamination", "distortion", "scuff", "debris", "fragmentation"),
            _plain((0.75, 0.75, 0.72)),
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
            _pcb_background,
            _pcb_layout,
        ),
        Category(
            "ic chip",
            "electronic",
            ("bent", "crack", "scratch", "breakage", "contamination", "debris"),
            _plain((0.8, 0.8, 0.78)),
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
            _plain((0.92, 0.92, 0.88)),
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
            _plain((0.25, 0.3, 0.45)),
            _tray,
        ),
        Category(
            "pill blister",
            "logical",
            ("component missing", "color error", "size errors", "fragmentation", "quantity errors", "contamination"),
            _plain((0.7, 0.72, 0.75)),
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
            _plain((0.35, 0.33, 0.3)),
            _kit,
        ),
    ]
}


# ------------------------------------------------------------------------------- defects on parts


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


def _render(
    cat: Category, rng: Rng, size: int, kinds: list[str]
) -> tuple[np.ndarray | Image.Image, list[tuple[str, PixBox]]]:
    """The image (float array, or a PIL image when nothing needed float painting) and its labels."""
    bg = cat.background(rng, size)
    if cat.layout is None:  # texture: paint on the background
        labels = []
        for kind in kinds:
            c = tuple(int(v) for v in rng.uniform(0.15, 0.85, 2) * size)
            labels.append((kind, sf.SURFACE_PAINTERS[kind](bg, rng, c, size * rng.uniform(0.04, 0.14))))
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
            box = painter(img, rng, c, max(4.0, min(it.w, it.h) * rng.uniform(0.25, 0.5)))
            if kind == "fracture":  # wider than a crack: a second, parallel break
                box = sf._union(box, painter(img, rng, (c[0] + 3, c[1] + 2), min(it.w, it.h) * 0.4))
        labels.append((kind, box))
    return img, labels


def _to_pil(img: np.ndarray | Image.Image) -> Image.Image:
    if isinstance(img, Image.Image):
        return img
    np.multiply(img, np.float32(255), out=img)
    img += np.float32(0.5)
    return Image.fromarray(img.astype(np.uint8))


@cache
def _noise_planes(side: int = 1024, level: int = 0) -> Image.Image:
    """Fixed sensor noise around 128 as an RGB image (std 1.6, 3.2 or 4.8 for level 0, 1, 2);
    images take random crops of one of them."""
    rng = np.random.default_rng(777 + level)
    n = np.clip(128 + 1.6 * (level + 1) * rng.standard_normal((side, side, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(n)


def _photometric(pil: Image.Image, rng: Rng) -> Image.Image:
    """Exposure, contrast, white balance (one lookup table) and sensor noise, the same for normal
    and anomalous images, on 8-bit data where PIL does it in C."""
    contrast = rng.uniform(0.85, 1.15)
    mean = float(np.asarray(pil.resize((32, 32), Image.NEAREST)).mean())
    gains = rng.uniform(0.85, 1.15) * rng.uniform(0.95, 1.05, 3)
    v = np.arange(256, dtype=np.float64)
    lut = np.clip(((v - mean) * contrast + mean)[None, :] * gains[:, None] + 0.5, 0, 255).astype(np.uint8)
    out = pil.point(lut.ravel().tolist())
    w, h = out.size
    bank = _noise_planes(max(1024, 2 * max(w, h)), int(rng.integers(3)))
    x, y = (int(k) for k in rng.integers(0, bank.size[0] - max(w, h) + 1, 2))
    return ImageChops.add(out, bank.crop((x, y, x + w, y + h)), scale=1.0, offset=-128)


def _encode(pil: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpeg":
        pil.save(buf, "JPEG", quality=92)
    else:
        pil.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def categories_for(cfg: SynthConfig) -> list[Category]:
    cats = [c for c in CATEGORIES.values() if c.scene in cfg.scenes]
    if cfg.categories is not None:
        unknown = set(cfg.categories) - set(CATEGORIES)
        if unknown:
            raise ValueError(f"unknown categories {sorted(unknown)}; known: {', '.join(CATEGORIES)}")
        cats = [c for c in cats if c.name in cfg.categories]
    if not cats:
        raise UsageError(
            f"no category of scenes {list(cfg.scenes)} is among categories {list(cfg.categories or [])}",
            "choose categories of the scenes drawn",
        )
    return cats


def make_sample(cfg: SynthConfig, index: int, cats: list[Category] | None = None) -> Sample:
    """Sample number ``index`` of the set ``cfg`` describes (independent of the others)."""
    cats = cats or categories_for(cfg)
    rng = np.random.default_rng([cfg.seed, index])
    cat = cats[int(rng.integers(len(cats)))]
    kinds: list[str] = []
    if rng.random() < cfg.anomaly_ratio:
        n = 1 + int(rng.random() < 0.25) * int(rng.integers(1, cfg.max_defects)) if cfg.max_defects > 1 else 1
        kinds = list(dict.fromkeys(str(k) for k in rng.choice(cat.defect_types, size=n)))
        edits = [k for k in kinds if k in ITEM_EDITS]
        kinds = [k for k in kinds if k not in ITEM_EDITS or k == (edits[0] if edits else None)]
    img, labels = _render(cat, rng, cfg.size, kinds)
    pil = _photometric(_to_pil(img), rng)
    defects = []
    for kind, (x1, y1, x2, y2) in labels:
        x1, y1, x2, y2 = max(0, x1), max(0, y1), min(cfg.size, x2), min(cfg.size, y2)
        if x2 - x1 < 2 or y2 - y1 < 2:  # grow a sliver to a visible box
            cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
            x1, y1, x2, y2 = max(0, cx - 2), max(0, cy - 2), min(cfg.size, cx + 3), min(cfg.size, cy + 3)
        defects.append(DefectRecord(kind, [round(v / cfg.size, 4) for v in (x1, y1, x2, y2)]))
    return Sample(
        id=f"synthetic/{cfg.seed}/{index:07d}",
        width=cfg.size,
        height=cfg.size,
        source="synthetic",
        category=cat.name,
        scene=cat.scene,
        label="anomalous" if defects else "normal",
        defects=defects,
        image=_encode(pil, cfg.image_format),
    )


def generate(cfg: SynthConfig, start: int = 0, stop: int | None = None) -> Iterator[Sample]:
    """Samples ``start`` … ``stop`` (default: all ``cfg.n``); any slice is reproducible alone."""
    cats = categories_for(cfg)
    for i in range(start, cfg.n if stop is None else min(stop, cfg.n)):
        yield make_sample(cfg, i, cats)


def defect_types() -> set[str]:
    """Every fine type the generator can draw."""
    return {t for c in CATEGORIES.values() for t in c.defect_types}


def _chunk(args: tuple[dict, int, int]) -> list[Sample]:
    cfg, start, stop = args
    return list(generate(SynthConfig(**cfg), start, stop))


def generate_parallel(cfg: SynthConfig, workers: int = 1, chunk: int = 64) -> Iterator[Sample]:
    """``generate`` spread over processes, in index order (so the output is the same)."""
    if workers <= 1:
        yield from generate(cfg)
        return
    from concurrent.futures import ProcessPoolExecutor

    jobs = [(cfg.model_dump(), s, min(s + chunk, cfg.n)) for s in range(0, cfg.n, chunk)]
    with ProcessPoolExecutor(workers) as pool:
        for batch in pool.map(_chunk, jobs):
            yield from batch
