"""Surface defects for the synthetic industrial scenes (the backgrounds are in ``synth_backgrounds``).

Images are float32 arrays ``[H, W, 3]`` in [0, 1]. Every painter changes the image in place
inside a region it picks around a centre and returns the pixel box ``(x1, y1, x2, y2)`` it
touched, so the label is the truth of what was drawn. Strength (contrast) and size are drawn at
random per defect, from subtle to obvious, so classes are not trivially separable.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

import numpy as np

from m3ad_rl.data.synth_backgrounds import smooth_noise

Img = np.ndarray
Box = tuple[int, int, int, int]
Rng = np.random.Generator


# ------------------------------------------------------------------------------- helpers


def _region(rng: Rng, img: Img, center: tuple[int, int], rx: float, ry: float) -> tuple[slice, slice, Box]:
    h, w = img.shape[:2]
    cx, cy = center
    x1, x2 = int(max(0, cx - rx)), int(min(w, cx + rx + 1))
    y1, y2 = int(max(0, cy - ry)), int(min(h, cy + ry + 1))
    return slice(y1, y2), slice(x1, x2), (x1, y1, x2, y2)


def _blob_mask(rng: Rng, hh: int, ww: int, roughness: float = 0.35) -> np.ndarray:
    """A soft irregular blob filling a box: ellipse with a noisy radius, values in [0,1]."""
    yy, xx = np.mgrid[0:hh, 0:ww].astype(np.float32)
    ny = (yy - (hh - 1) / 2) / max(hh / 2, 1)
    nx = (xx - (ww - 1) / 2) / max(ww / 2, 1)
    r = np.sqrt(nx**2 + ny**2)
    noise = smooth_noise(rng, hh, ww, max(4, min(hh, ww) // 3)) - 0.5
    return np.clip((1.0 - r + roughness * noise) * 3.0, 0, 1)


def _blend(img: Img, ys: slice, xs: slice, mask: np.ndarray, color, alpha: float) -> None:
    patch = img[ys, xs]
    m = (mask * alpha)[:, :, None]
    img[ys, xs] = patch * (1 - m) + np.asarray(color, np.float32) * m


def _polyline(rng: Rng, start: tuple[float, float], n: int, step: float, wiggle: float) -> np.ndarray:
    angle = rng.uniform(0, 2 * np.pi)
    pts = [np.asarray(start, np.float32)]
    for _ in range(n):
        angle += rng.normal(0, wiggle)
        pts.append(pts[-1] + step * np.asarray([np.cos(angle), np.sin(angle)], np.float32))
    return np.stack(pts)


def _draw_line(img: Img, pts: np.ndarray, color, width: float, alpha: float) -> Box:
    """Anti-aliased polyline by distance to segments, limited to its bounding box."""
    h, w = img.shape[:2]
    pad = width + 2
    x1, y1 = np.floor(pts.min(0) - pad).astype(int)
    x2, y2 = np.ceil(pts.max(0) + pad).astype(int)
    x1, y1, x2, y2 = max(0, x1), max(0, y1), min(w, x2), min(h, y2)
    if x2 <= x1 or y2 <= y1:
        return (0, 0, 0, 0)
    yy, xx = np.mgrid[y1:y2, x1:x2].astype(np.float32)
    dist = np.full(yy.shape, 1e9, np.float32)
    for a, b in pairwise(pts):
        d = b - a
        t = np.clip(((xx - a[0]) * d[0] + (yy - a[1]) * d[1]) / max(float(d @ d), 1e-6), 0, 1)
        dist = np.minimum(dist, np.hypot(xx - a[0] - t * d[0], yy - a[1] - t * d[1]))
    mask = np.clip(width / 2 + 0.5 - dist, 0, 1)
    _blend(img, slice(y1, y2), slice(x1, x2), mask, color, alpha)
    ys, xs = np.nonzero(mask > 0.05)
    if len(xs) == 0:
        return (0, 0, 0, 0)
    return (x1 + int(xs.min()), y1 + int(ys.min()), x1 + int(xs.max()) + 1, y1 + int(ys.max()) + 1)


def _mean_color(img: Img, ys: slice, xs: slice) -> np.ndarray:
    return img[ys, xs].reshape(-1, 3).mean(0)


# ------------------------------------------------------------------------------- surface defects
# Each takes (img, rng, center, size) where size is a typical extent in pixels.


def debris(img: Img, rng: Rng, c, size: float) -> Box:
    ys, xs, box = _region(rng, img, c, size, size)
    hh, ww = img[ys, xs].shape[:2]
    n = int(rng.integers(6, 25))
    tone = rng.choice([0.08, 0.95])
    for _ in range(n):
        py, px = rng.integers(0, hh), rng.integers(0, ww)
        r = int(rng.integers(1, 3))
        img[ys, xs][max(0, py - r) : py + r, max(0, px - r) : px + r] = tone * rng.uniform(0.8, 1.2)
    return box


def contamination(img: Img, rng: Rng, c, size: float) -> Box:
    ys, xs, box = _region(rng, img, c, size, size * rng.uniform(0.5, 1.0))
    hh, ww = img[ys, xs].shape[:2]
    color = rng.choice([(0.35, 0.25, 0.1), (0.15, 0.15, 0.12), (0.55, 0.5, 0.2), (0.9, 0.9, 0.8)])
    _blend(img, ys, xs, _blob_mask(rng, hh, ww, 0.6), color, rng.uniform(0.35, 0.8))
    return box


def foreign_object(img: Img, rng: Rng, c, size: float) -> Box:
    pts = _polyline(rng, c, int(rng.integers(6, 14)), size / 5, 0.35)
    color = rng.choice([(0.05, 0.05, 0.05), (0.85, 0.8, 0.7), (0.6, 0.6, 0.65)])
    return _draw_line(img, pts, color, rng.uniform(1.2, 3.0), rng.uniform(0.7, 1.0))


def _shade(img: Img, rng: Rng, c, rx: float, ry: float, depth: float, sunken: bool) -> Box:
    """A dent or bump: light on one side, shadow on the other, as under oblique light."""
    ys, xs, box = _region(rng, img, c, rx, ry)
    hh, ww = img[ys, xs].shape[:2]
    yy, xx = np.mgrid[0:hh, 0:ww].astype(np.float32)
    ny, nx = (yy - hh / 2) / max(hh / 2, 1), (xx - ww / 2) / max(ww / 2, 1)
    inside = np.clip(1 - np.sqrt(nx**2 + ny**2), 0, 1)
    slope = (nx + ny) * inside * (1 if sunken else -1)
    img[ys, xs] = np.clip(img[ys, xs] * (1 + depth * slope[:, :, None]), 0, 1)
    return box


def indentation(img, rng, c, size):
    return _shade(img, rng, c, size * 0.5, size * 0.5, rng.uniform(0.4, 0.9), True)


def dent(img, rng, c, size):
    return _shade(img, rng, c, size, size * rng.uniform(0.6, 1.0), rng.uniform(0.5, 1.1), True)


def protrusion(img, rng, c, size):
    return _shade(img, rng, c, size * 0.6, size * 0.6, rng.uniform(0.5, 1.0), False)


def pitting(img: Img, rng: Rng, c, size: float) -> Box:
    ys, xs, box = _region(rng, img, c, size, size)
    hh, ww = img[ys, xs].shape[:2]
    sub = img[ys, xs]
    for _ in range(int(rng.integers(12, 40))):
        py, px = rng.integers(1, max(2, hh - 1)), rng.integers(1, max(2, ww - 1))
        sub[py - 1 : py + 1, px - 1 : px + 1] *= rng.uniform(0.15, 0.5)
    return box


def discontinuity(img: Img, rng: Rng, c, size: float) -> Box:
    """A notch: a sharp-edged wedge of shadow."""
    ys, xs, box = _region(rng, img, c, size * 0.6, size * 0.3)
    hh, ww = img[ys, xs].shape[:2]
    yy, xx = np.mgrid[0:hh, 0:ww].astype(np.float32)
    wedge = (np.abs(xx - ww / 2) < (yy + 1) * ww / (2 * hh)).astype(np.float32)
    img[ys, xs] = img[ys, xs] * (1 - 0.7 * wedge[:, :, None])
    return box


def irregularity(img: Img, rng: Rng, c, size: float) -> Box:
    """The pattern is locally shifted and smeared."""
    ys, xs, box = _region(rng, img, c, size, size * 0.7)
    patch = img[ys, xs]
    shift = int(rng.integers(3, 9))
    img[ys, xs] = 0.5 * patch + 0.5 * np.roll(patch, shift, axis=int(rng.integers(2)))
    return box


def roughness(img: Img, rng: Rng, c, size: float) -> Box:
    ys, xs, box = _region(rng, img, c, size, size)
    hh, ww = img[ys, xs].shape[:2]
    mask = _blob_mask(rng, hh, ww)
    grain = rng.standard_normal((hh, ww), np.float32) * rng.uniform(0.12, 0.3)
    img[ys, xs] = np.clip(img[ys, xs] + (grain * mask)[:, :, None], 0, 1)
    return box


def _colour_patch(color_fn: Callable[[Rng], tuple], noisy: float):
    def paint(img: Img, rng: Rng, c, size: float) -> Box:
        ys, xs, box = _region(rng, img, c, size, size * rng.uniform(0.5, 1.0))
        hh, ww = img[ys, xs].shape[:2]
        mask = _blob_mask(rng, hh, ww, 0.8)
        if noisy:
            mask = mask * np.clip(0.6 + noisy * rng.standard_normal((hh, ww), np.float32), 0, 1)
        _blend(img, ys, xs, mask, color_fn(rng), rng.uniform(0.45, 0.9))
        return box

    return paint


corrosion = _colour_patch(lambda r: (0.3 + 0.2 * r.random(), 0.4, 0.25), 0.5)
oxidation = _colour_patch(lambda r: (0.85, 0.86, 0.82) if r.random() < 0.5 else (0.25, 0.25, 0.28), 0.3)
rusty = _colour_patch(lambda r: (0.6 + 0.15 * r.random(), 0.28, 0.08), 0.6)


def moisture(img: Img, rng: Rng, c, size: float) -> Box:
    ys, xs, box = _region(rng, img, c, size, size)
    hh, ww = img[ys, xs].shape[:2]
    sub = img[ys, xs]
    for _ in range(int(rng.integers(3, 12))):
        r = float(rng.uniform(2, max(3, size / 5)))
        py, px = rng.uniform(r, max(r + 1, hh - r)), rng.uniform(r, max(r + 1, ww - r))
        yy, xx = np.mgrid[0:hh, 0:ww].astype(np.float32)
        d = np.sqrt((yy - py) ** 2 + (xx - px) ** 2) / r
        drop = (d < 1).astype(np.float32)
        rim = ((d > 0.75) & (d < 1)).astype(np.float32)
        sub[:] = sub * (1 - 0.25 * drop[:, :, None]) * (1 - 0.35 * rim[:, :, None])
        sub[:] = np.clip(sub + 0.5 * ((d < 0.25) * drop)[:, :, None], 0, 1)
    return box


def scratch(img: Img, rng: Rng, c, size: float) -> Box:
    pts = _polyline(rng, c, int(rng.integers(2, 5)), size / 2, 0.08)
    tone = rng.choice([0.95, 0.1])
    return _draw_line(img, pts, (tone, tone, tone), rng.uniform(0.8, 2.0), rng.uniform(0.45, 0.95))


def crack(img: Img, rng: Rng, c, size: float) -> Box:
    pts = _polyline(rng, c, int(rng.integers(5, 12)), size / 5, 0.6)
    box = _draw_line(img, pts, (0.05, 0.04, 0.03), rng.uniform(1.0, 2.2), rng.uniform(0.7, 1.0))
    if rng.random() < 0.6:  # a branch
        k = int(rng.integers(1, len(pts) - 1))
        b2 = _draw_line(img, _polyline(rng, tuple(pts[k]), 4, size / 6, 0.5), (0.05, 0.04, 0.03), 1.0, 0.8)
        box = _union(box, b2)
    return box


def tear(img: Img, rng: Rng, c, size: float) -> Box:
    pts = _polyline(rng, c, int(rng.integers(4, 8)), size / 4, 0.5)
    pts = pts + rng.normal(0, 1.0, pts.shape).astype(np.float32)
    return _draw_line(img, pts, (0.06, 0.05, 0.05), rng.uniform(2.5, 5.0), 0.95)


def abrasion(img: Img, rng: Rng, c, size: float) -> Box:
    ys, xs, box = _region(rng, img, c, size, size * 0.7)
    hh, ww = img[ys, xs].shape[:2]
    mask = _blob_mask(rng, hh, ww, 0.5)
    streaks = np.convolve(rng.standard_normal(ww).astype(np.float32), np.ones(3) / 3, "same")[None, :]
    lighter = np.clip(img[ys, xs] * 1.25 + 0.08 + 0.05 * streaks[:, :, None], 0, 1)
    m = (mask * rng.uniform(0.4, 0.8))[:, :, None]
    img[ys, xs] = img[ys, xs] * (1 - m) + lighter * m
    return box


def scrape(img: Img, rng: Rng, c, size: float) -> Box:
    pts = _polyline(rng, c, 2, size * 0.8, 0.05)
    base = _mean_color(img, *_region(rng, img, c, 2, 2)[:2])
    color = np.clip(base * 1.4 + 0.1, 0, 1)
    return _draw_line(img, pts, tuple(color), rng.uniform(5, 12), rng.uniform(0.4, 0.75))


def scuff(img: Img, rng: Rng, c, size: float) -> Box:
    ys, xs, box = _region(rng, img, c, size, size * 0.6)
    hh, ww = img[ys, xs].shape[:2]
    mask = _blob_mask(rng, hh, ww, 0.3) ** 2
    _blend(img, ys, xs, mask, (0.45, 0.45, 0.45), rng.uniform(0.25, 0.5))
    return box


def hole(img: Img, rng: Rng, c, size: float) -> Box:
    r = size * rng.uniform(0.25, 0.6)
    ys, xs, box = _region(rng, img, c, r, r)
    hh, ww = img[ys, xs].shape[:2]
    yy, xx = np.mgrid[0:hh, 0:ww].astype(np.float32)
    d = np.sqrt((yy - hh / 2) ** 2 + (xx - ww / 2) ** 2) / max(r, 1)
    inside = np.clip((1 - d) * 4, 0, 1)
    rim = np.clip(1 - np.abs(d - 1) * 5, 0, 1)
    img[ys, xs] = img[ys, xs] * (1 - 0.9 * inside[:, :, None]) * (1 - 0.3 * rim[:, :, None]) + 0.02 * inside[:, :, None]
    return box


def peeling(img: Img, rng: Rng, c, size: float) -> Box:
    ys, xs, box = _region(rng, img, c, size, size * 0.7)
    hh, ww = img[ys, xs].shape[:2]
    mask = (_blob_mask(rng, hh, ww, 0.9) > 0.5).astype(np.float32)
    under = np.asarray(rng.choice([(0.75, 0.72, 0.68), (0.5, 0.45, 0.4)]), np.float32)
    edge = np.clip(mask - np.roll(mask, 2, axis=0), 0, 1)
    img[ys, xs] = img[ys, xs] * (1 - mask[:, :, None]) + under * mask[:, :, None]
    img[ys, xs] *= 1 - 0.5 * edge[:, :, None]
    return box


def delamination(img: Img, rng: Rng, c, size: float) -> Box:
    box = _shade(img, rng, c, size * 0.8, size * 0.5, rng.uniform(0.3, 0.6), False)
    ys, xs, _ = _region(rng, img, c, size * 0.8, size * 0.5)
    img[ys, xs] = np.clip(img[ys, xs] * 1.1, 0, 1)
    return box


def _union(a: Box, b: Box) -> Box:
    if a[2] <= a[0]:
        return b
    if b[2] <= b[0]:
        return a
    return (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


SURFACE_PAINTERS: dict[str, Callable[[Img, Rng, tuple[int, int], float], Box]] = {
    "debris": debris,
    "contamination": contamination,
    "foreign object intrusion": foreign_object,
    "discontinuity": discontinuity,
    "indentation": indentation,
    "dent": dent,
    "pitting": pitting,
    "protrusion": protrusion,
    "irregularity": irregularity,
    "roughness": roughness,
    "corrosion": corrosion,
    "moisture": moisture,
    "oxidation corrosion": oxidation,
    "rusty": rusty,
    "scratch": scratch,
    "abrasion": abrasion,
    "scrape": scrape,
    "scuff": scuff,
    "tear": tear,
    "crack": crack,
    "hole": hole,
    "peeling": peeling,
    "delamination": delamination,
}
"""Fine type -> painter; every key is a fine type of the taxonomy (a test checks)."""
