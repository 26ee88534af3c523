"""Label-preserving image augmentation, so a detector learns *defect against context*, not a category's look.

A vision tower trained from nothing on a handful of categories learns what *their* defects look like:
on a new part (another colour, size, orientation) it answers "no" whatever it sees. Each transform here
changes the context and keeps the defect a defect, with its box moved exactly as the pixels move:

- ``flips``: horizontal / vertical flip and a quarter turn (boxes follow);
- ``scale``: a random zoom-in crop of side ``1 - scale … 1`` that keeps every defect box inside it
  (object-scale jitter; boxes are re-normalised to the crop);
- ``hue``: a random permutation of the RGB channels and a hue rotation (what colour a part is stops
  mattering);
- ``contrast``: contrast × ``1 ± contrast`` and a gamma in ``[1/(1+contrast), 1+contrast]``;
- ``invert``: the negative image, with this probability (a dark scratch on a light part and a light one
  on a dark part);
- ``grayscale``: with this probability.

Deterministic given the ``numpy`` generator, so a resumed trainer draws the same views.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

Box = list[float]  # [x1, y1, x2, y2], normalised to the image


class AugmentConfig(BaseModel):
    """Which transforms to apply (all off by default: ``active`` is False)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    flips: bool = Field(False, description="Random horizontal/vertical flip and quarter turn.")
    scale: float = Field(0.0, ge=0, lt=0.9, description="Zoom-in crop of side 1-scale..1 keeping every defect box.")
    hue: bool = Field(False, description="Random RGB channel permutation and hue rotation.")
    contrast: float = Field(0.0, ge=0, le=0.9, description="Contrast x (1 ± c) and gamma in [1/(1+c), 1+c].")
    invert: float = Field(0.0, ge=0, le=1, description="Probability of the negative image.")
    grayscale: float = Field(0.0, ge=0, le=1, description="Probability of a grey image.")
    p: float = Field(1.0, ge=0, le=1, description="Share of images augmented at all (the rest stay as drawn).")

    @property
    def active(self) -> bool:
        return self.flips or self.scale > 0 or self.hue or self.contrast > 0 or self.invert > 0 or self.grayscale > 0


def augment(image, boxes: list[Box], rng: np.random.Generator, cfg: AugmentConfig):
    """``(image, boxes)`` → an augmented RGB PIL image and its boxes (same order, still normalised)."""
    from PIL import Image

    img = image.convert("RGB")
    boxes = [list(map(float, b)) for b in boxes]
    if cfg.p < 1 and rng.random() >= cfg.p:
        return img, boxes
    if cfg.scale > 0:
        img, boxes = _zoom(img, boxes, rng, cfg.scale)
    if cfg.flips:
        if rng.random() < 0.5:
            img, boxes = (
                img.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
                [[1 - b[2], b[1], 1 - b[0], b[3]] for b in boxes],
            )
        if rng.random() < 0.5:
            img, boxes = (
                img.transpose(Image.Transpose.FLIP_TOP_BOTTOM),
                [[b[0], 1 - b[3], b[2], 1 - b[1]] for b in boxes],
            )
        if rng.random() < 0.5:  # a quarter turn clockwise: (x, y) -> (1 - y, x)
            img, boxes = img.transpose(Image.Transpose.ROTATE_270), [[1 - b[3], b[0], 1 - b[1], b[2]] for b in boxes]
    if cfg.hue or cfg.contrast > 0 or cfg.invert > 0 or cfg.grayscale > 0:
        img = _photometric(img, rng, cfg)
    return img, [[round(min(1.0, max(0.0, v)), 4) for v in b] for b in boxes]


def _zoom(img, boxes: list[Box], rng: np.random.Generator, scale: float):
    """A crop of side s ∈ [1 - scale, 1] of the image's sides holding every box, resized back."""
    w, h = img.size
    s = rng.uniform(1 - scale, 1.0)
    lo_x = lo_y = 0.0
    hi_x = hi_y = 1.0
    if boxes:  # the crop must hold the union of the boxes
        ux1, uy1 = min(b[0] for b in boxes), min(b[1] for b in boxes)
        ux2, uy2 = max(b[2] for b in boxes), max(b[3] for b in boxes)
        s = max(s, ux2 - ux1, uy2 - uy1)
        lo_x, hi_x, lo_y, hi_y = ux2, ux1 + s, uy2, uy1 + s  # bounds on the crop's far edge
    cw, ch = max(1, round(s * w)), max(1, round(s * h))
    # the crop's corner in pixels: inside the image, and the crop covers the boxes' union
    x0 = _corner(rng, w, cw, lo_x * w, hi_x * w)
    y0 = _corner(rng, h, ch, lo_y * h, hi_y * h)
    crop = img.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h))
    fx, fy, sx, sy = x0 / w, y0 / h, cw / w, ch / h
    return crop, [[(b[0] - fx) / sx, (b[1] - fy) / sy, (b[2] - fx) / sx, (b[3] - fy) / sy] for b in boxes]


def _corner(rng: np.random.Generator, side: int, crop: int, far_lo: float, far_hi: float) -> int:
    """A corner c in [0, side - crop] with c + crop in [far_lo, far_hi] (rounded inwards where it can be)."""
    lo = max(0, int(np.ceil(far_lo - 1e-6)) - crop)
    hi = min(side - crop, int(np.floor(far_hi + 1e-6)) - crop)
    return int(rng.integers(lo, hi + 1)) if hi >= lo else max(0, min(side - crop, lo))


def _photometric(img, rng: np.random.Generator, cfg: AugmentConfig):
    from PIL import Image

    if cfg.hue:
        bands = img.split()
        img = Image.merge("RGB", [bands[i] for i in rng.permutation(3)])
        hsv = np.asarray(img.convert("HSV")).copy()
        hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(rng.integers(256))) % 256
        img = Image.fromarray(hsv, "HSV").convert("RGB")
    if cfg.grayscale > 0 and rng.random() < cfg.grayscale:
        img = img.convert("L").convert("RGB")
    if cfg.contrast > 0:
        c = rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)
        gamma = float(np.exp(rng.uniform(-1, 1) * np.log1p(cfg.contrast)))
        v = np.arange(256, dtype=np.float64) / 255
        mean = float(np.asarray(img.convert("L")).mean()) / 255
        lut = np.clip((v - mean) * c + mean, 0, 1) ** gamma
        img = img.point((np.round(255 * lut).astype(np.uint8).tolist()) * 3)
    if cfg.invert > 0 and rng.random() < cfg.invert:
        img = img.point([255 - k for k in range(256)] * 3)
    return img
