"""Backgrounds for the synthetic industrial scenes: photographs, procedural textures and plain boards.

Images are float32 arrays ``[H, W, 3]`` in [0, 1]. Each background takes ``(rng, size)`` and draws
its own colour and pattern jitter, so two images of one category never share a background.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import numpy as np
from PIL import Image, ImageDraw

Img = np.ndarray
Rng = np.random.Generator


@cache
def _skimage_texture(name: str) -> np.ndarray:
    """scikit-image's CC0 photographs (brick, gravel, grass) as float32 grey in [0,1]."""
    import skimage.data

    img = getattr(skimage.data, name)().astype(np.float32) / 255.0
    return img if img.ndim == 2 else img.mean(axis=2)


def smooth_noise(rng: Rng, h: int, w: int, scale: int) -> np.ndarray:
    """Low-frequency noise in [0,1]: a coarse random grid upsampled bilinearly (by PIL, fast)."""
    gh, gw = max(2, h // scale + 2), max(2, w // scale + 2)
    grid = Image.fromarray(rng.random((gh, gw), dtype=np.float32), mode="F")
    return np.asarray(grid.resize((w, h), Image.BILINEAR))


@cache
def _noise_bank(side: int = 1024) -> np.ndarray:
    """A fixed block of Gaussian noise; images take random crops of it (cheaper than drawing)."""
    return np.random.default_rng(12345).standard_normal((side, side), np.float32)


def gaussian(rng: Rng, h: int, w: int) -> np.ndarray:
    """``[h, w]`` standard-normal noise: a random crop (and flip) of the noise bank."""
    bank = _noise_bank(max(1024, 2 * max(h, w)))
    y, x = rng.integers(0, bank.shape[0] - h + 1), rng.integers(0, bank.shape[1] - w + 1)
    crop = bank[y : y + h, x : x + w]
    return crop[::-1] if rng.random() < 0.5 else crop


def tint(grey: np.ndarray, color: tuple[float, float, float]) -> Img:
    """``grey[..., None] * color``, one channel at a time: numpy broadcasts over a last axis of
    size 3 several times slower than it fills three planes."""
    out = np.empty((*grey.shape, 3), np.float32)
    for c in range(3):
        np.multiply(grey, np.float32(color[c]), out=out[:, :, c])
    return out


def photo_texture(rng: Rng, size: int, name: str, color: tuple[float, float, float]) -> Img:
    """A random crop of a scikit-image photograph, flipped/rotated, tinted."""
    src = _skimage_texture(name)
    h, w = src.shape
    if h < size or w < size:
        reps = (size // h + 1, size // w + 1)
        src = np.tile(src, reps)
        h, w = src.shape
    y, x = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
    crop = np.rot90(src[y : y + size, x : x + size], k=int(rng.integers(4)))
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    jitter = np.asarray(color, dtype=np.float32) * rng.uniform(0.85, 1.15, 3).astype(np.float32)
    img = tint(np.ascontiguousarray(crop), tuple(jitter * np.float32(rng.uniform(0.9, 1.2))))
    return np.clip(img, 0, 1, out=img)


def fabric(rng: Rng, size: int) -> Img:
    """Plain weave: crossing sinusoidal threads with yarn noise (built from 1-D profiles)."""
    period = rng.uniform(5, 9)
    t = np.arange(size, dtype=np.float32)
    wave = (0.5 + 0.5 * np.sin(2 * np.pi * t / period)).astype(np.float32)
    cell = np.floor(t / period).astype(np.int32)
    checker = ((cell[:, None] + cell[None, :]) % 2).astype(bool)
    grey = np.where(checker, wave[None, :], wave[:, None]) * np.float32(0.25) + np.float32(0.55)
    grey += np.float32(0.08) * gaussian(rng, size, size)
    color = rng.choice([(0.75, 0.7, 0.6), (0.45, 0.5, 0.7), (0.7, 0.45, 0.45), (0.55, 0.65, 0.5)])
    img = tint(grey, tuple(color))
    return np.clip(img, 0, 1, out=img)


def wood(rng: Rng, size: int) -> Img:
    """Growth rings: sine of distance to an off-image centre, warped by smooth noise."""
    t = np.arange(size, dtype=np.float32)
    cy, cx = rng.uniform(-2, 3) * size, rng.uniform(-1, 2) * size
    r2 = ((t - cy) ** 2)[:, None] + (((t - cx) * 0.15) ** 2)[None, :]
    r = np.sqrt(r2) + np.float32(25) * smooth_noise(rng, size, size, 64)
    grey = np.sin(r * np.float32(1 / rng.uniform(3, 6))) * np.float32(0.125) + np.float32(0.725)
    grey += np.float32(0.04) * gaussian(rng, size, size)
    img = tint(grey, (0.78, 0.55, 0.32))
    return np.clip(img, 0, 1, out=img)


def brushed_metal(rng: Rng, size: int) -> Img:
    """Fine streaks along one direction over a soft gradient."""
    streaks = np.convolve(rng.standard_normal(size + 8).astype(np.float32), np.ones(9, np.float32) / 9, "valid")
    ramp = np.linspace(-1, 1, size, dtype=np.float32) * np.float32(0.12 * rng.uniform(-1, 1))
    grey = (np.float32(0.06) * streaks[:size])[None, :] + (ramp + np.float32(0.62))[:, None]
    grey += np.float32(0.02) * gaussian(rng, size, size)
    if rng.random() < 0.5:
        grey = np.ascontiguousarray(grey.T)
    img = tint(grey, (0.86, 0.87, 0.9))
    return np.clip(img, 0, 1, out=img)


def plain(color: tuple[float, float, float], noise: float = 0.03) -> Callable[[Rng, int], Img]:
    """A matte backdrop for parts: the colour under soft shading and fine noise, exposure jittered."""

    def bg(rng: Rng, size: int) -> np.ndarray:
        base = np.asarray(color, np.float32) * np.float32(rng.uniform(0.85, 1.1))
        shade = 0.9 + 0.2 * smooth_noise(rng, size, size, 128) + np.float32(noise) * gaussian(rng, size, size)
        img = tint(shade, tuple(base))
        return np.clip(img, 0, 1, out=img)

    return bg


def pcb_board(rng: Rng, size: int) -> Img:
    """Green solder mask with random copper traces and pads, so parts sit on a busy board."""
    img = plain((0.12, 0.42, 0.2), 0.02)(rng, size)
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
