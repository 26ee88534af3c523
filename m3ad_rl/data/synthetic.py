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

This module turns a config into samples (camera effects, boxes, encoding); what each category looks
like is in ``synth_catalogue``, the drawing in ``synth_render`` and the modules it calls.

    from m3ad_rl.data.synthetic import SynthConfig, generate
    samples = list(generate(SynthConfig(n=100, seed=0)))
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from functools import cache

import numpy as np
from PIL import Image, ImageChops
from pydantic import BaseModel, ConfigDict, Field, field_validator

from m3ad_rl.core.errors import UsageError
from m3ad_rl.data.schema import SCENES, DefectRecord, Sample
from m3ad_rl.data.store import WriteReport
from m3ad_rl.data.synth_catalogue import CATEGORIES, KIT_COLORS, TEXTURE_DEFECTS, Category, defect_types
from m3ad_rl.data.synth_render import CUTS, ITEM_EDITS, SURFACE_ON_PARTS, PixBox, render

__all__ = [  # the catalogue and render names are re-exported: callers import them from here
    "CATEGORIES",
    "CUTS",
    "ITEM_EDITS",
    "KIT_COLORS",
    "SURFACE_ON_PARTS",
    "TEXTURE_DEFECTS",
    "Category",
    "PixBox",
    "SynthConfig",
    "categories_for",
    "defect_types",
    "generate",
    "generate_parallel",
    "make_sample",
]

Rng = np.random.Generator


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
    defect_scale: float = Field(
        1.0, gt=0, le=4, description="Size multiplier of painted surface defects (difficulty: >1 is easier to see)."
    )

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
    """The categories ``cfg`` draws; a UsageError before anything is drawn when none is left."""
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
    img, labels = render(cat, rng, cfg.size, kinds, cfg.defect_scale)
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


def synthesize(
    cfg: SynthConfig, out: str, workers: int = 1, progress: bool = True, overwrite: bool = False
) -> WriteReport:
    """``cfg.n`` scenes written as a new dataset at ``out`` (any URL; an earlier dataset there only with
    ``overwrite``), ``workers`` processes drawing; the scenes and categories are checked before anything
    is written."""
    from tqdm import tqdm

    from m3ad_rl.data.store import DatasetWriter

    categories_for(cfg)
    with (
        DatasetWriter(out, overwrite=overwrite) as w,
        tqdm(total=cfg.n, desc="synth", unit="img", disable=not progress) as bar,
    ):  # the checks come first
        for sample in generate_parallel(cfg, workers):
            w.write(sample)
            bar.update()
    return w.report
