"""Parts drawn with PIL for the workpiece, electronic and logical scenes.

An ``Item`` is one part (screw, nut, pill, block, resistor, chip, cap, plate) at a position, size,
angle and colour; logical defects edit the list of items (missing, extra, shifted, rotated, wrong
kind, colour or size, swapped), structural ones set a flag the drawing honours (bent, distorted)
or cut into the drawn part (broken, breakage, gap, fragmentation, fracture).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import ImageDraw

Box = tuple[int, int, int, int]


@dataclass
class Item:
    kind: str
    cx: float
    cy: float
    w: float
    h: float
    angle: float = 0.0  # degrees
    color: tuple[int, int, int] = (180, 180, 185)
    bend: float = 0.0  # degrees of bend of a long part's far half (bent)
    shear: float = 0.0  # distortion of the outline (warping / distortion)

    def box(self, pad: float = 2.0) -> Box:
        r = math.radians(self.angle)
        c, s = abs(math.cos(r)), abs(math.sin(r))
        hw = (self.w * c + self.h * s) / 2 + pad + abs(self.shear) * self.h / 2
        hh = (self.w * s + self.h * c) / 2 + pad + abs(math.sin(math.radians(self.bend))) * self.w / 2
        return (int(self.cx - hw), int(self.cy - hh), math.ceil(self.cx + hw), math.ceil(self.cy + hh))

    def moved(self, **kw) -> Item:
        return replace(self, **kw)


def _poly(item: Item, pts: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Item-local points (x along the part, y across) to image coordinates, with shear."""
    r = math.radians(item.angle)
    c, s = math.cos(r), math.sin(r)
    out = []
    for x, y in pts:
        x = x + item.shear * y
        out.append((item.cx + x * c - y * s, item.cy + x * s + y * c))
    return out


def _rect(item: Item, x1: float, y1: float, x2: float, y2: float) -> list[tuple[float, float]]:
    return _poly(item, [(x1, y1), (x2, y1), (x2, y2), (x1, y2)])


def _shade(color: tuple[int, int, int], f: float) -> tuple[int, int, int]:
    return tuple(int(max(0, min(255, v * f))) for v in color)  # type: ignore[return-value]


def _bent_segment(item: Item, x0: float, x1: float, half: float) -> list[tuple[float, float]]:
    """A bar from x0 to x1 whose far half turns by ``item.bend`` degrees."""
    mid = (x0 + x1) / 2
    b = math.radians(item.bend)
    length = x1 - mid
    tip = (mid + length * math.cos(b), length * math.sin(b))
    nx, ny = -math.sin(b) * half, math.cos(b) * half
    return _poly(
        item,
        [(x0, -half), (mid, -half), (tip[0] - nx, tip[1] - ny), (tip[0] + nx, tip[1] + ny), (mid, half), (x0, half)],
    )


def draw_item(d: ImageDraw.ImageDraw, it: Item) -> None:
    """Draw one part onto a PIL RGB canvas."""
    hw, hh = it.w / 2, it.h / 2
    dark, light = _shade(it.color, 0.55), _shade(it.color, 1.2)
    if it.kind == "screw":
        head = hw * 0.3
        d.polygon(_rect(it, -hw, -hh, -hw + head, hh), fill=light, outline=dark)
        d.polygon(_bent_segment(it, -hw + head, hw, hh * 0.45), fill=it.color, outline=dark)
        if it.bend == 0:
            for k in range(1, 9):  # thread
                x = -hw + head + k * (it.w - head) / 9
                d.line(_poly(it, [(x, -hh * 0.45), (x + 3, hh * 0.45)]), fill=dark, width=1)
    elif it.kind == "nut":
        pts = [(hw * math.cos(math.pi / 3 * k), hh * math.sin(math.pi / 3 * k)) for k in range(6)]
        d.polygon(_poly(it, pts), fill=it.color, outline=dark)
        hole = [(hw * 0.45 * math.cos(a), hh * 0.45 * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 16)]
        d.polygon(_poly(it, hole), fill=(40, 40, 45), outline=dark)
    elif it.kind in ("pill", "cap"):
        pts = [(hw * math.cos(a), hh * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 28)]
        d.polygon(_poly(it, pts), fill=it.color, outline=dark)
        if it.kind == "cap":
            ring = [(hw * 0.7 * math.cos(a), hh * 0.7 * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 28)]
            d.polygon(_poly(it, ring), outline=dark)
        else:
            d.line(_poly(it, [(0, -hh * 0.8), (0, hh * 0.8)]), fill=dark, width=1)
    elif it.kind == "resistor":
        d.line(_poly(it, [(-hw, 0), (-hw * 0.55, 0)]), fill=(170, 170, 170), width=2)
        d.polygon(_bent_segment(it, hw * 0.55, hw, 1.2), fill=(170, 170, 170))
        d.polygon(_rect(it, -hw * 0.55, -hh, hw * 0.55, hh), fill=(215, 190, 140), outline=(120, 100, 70))
        for k, band in enumerate(_bands(it.color)):
            x = -hw * 0.4 + k * hw * 0.22
            d.polygon(_rect(it, x, -hh, x + hw * 0.1, hh), fill=band)
    elif it.kind == "chip":
        d.polygon(_rect(it, -hw, -hh, hw, hh), fill=(30, 30, 34), outline=(80, 80, 85))
        n = max(3, int(it.w // 9))
        for k in range(n):
            x = -hw + (k + 0.5) * it.w / n
            for side in (-1, 1):
                pin = Item("pin", 0, 0, 0, 0, it.angle, it.color, it.bend if (k == 0 and side == 1) else 0)
                pin.cx, pin.cy = _poly(it, [(x, side * (hh + 6))])[0]
                pin.angle = it.angle + 90 * side
                pin.w, pin.h = 8, 3
                tip = 16 if pin.bend else 6  # a bent pin also sticks out further
                if pin.bend:
                    pin.bend = math.copysign(max(abs(pin.bend), 45), pin.bend)
                d.polygon(_bent_segment(pin, -6, tip, 2.2), fill=(150, 150, 158), outline=(90, 90, 95))
        d.ellipse(
            [(x := _poly(it, [(-hw * 0.7, -hh * 0.5)])[0])[0] - 2, x[1] - 2, x[0] + 2, x[1] + 2], fill=(70, 70, 75)
        )
    else:  # block / plate
        d.polygon(_rect(it, -hw, -hh, hw, hh), fill=it.color, outline=dark)
        if it.kind == "plate":
            for px in (-hw * 0.7, hw * 0.7):
                for py in (-hh * 0.6, hh * 0.6):
                    q = _poly(it, [(px, py)])[0]
                    r = min(it.w, it.h) * 0.07
                    d.ellipse([q[0] - r, q[1] - r, q[0] + r, q[1] + r], fill=(60, 60, 65))


def _bands(color: tuple[int, int, int]) -> list[tuple[int, int, int]]:
    """Colour bands of a resistor: the item colour picks the first band."""
    return [color, (30, 30, 30), (200, 40, 40), (200, 170, 50)]


def cut(canvas: np.ndarray, it: Item, rng: np.random.Generator, kind: str, background: np.ndarray) -> Box:
    """Remove material from a drawn part (broken, breakage, gap, fragmentation); returns the box.

    ``canvas`` is the float image after drawing; ``background`` the image before the parts.
    """
    h, w = canvas.shape[:2]
    x1, y1, x2, y2 = it.box(0)
    if kind == "fragmentation":
        box = it.box(2)
        for _ in range(int(rng.integers(2, 4))):  # background-coloured cuts split the part
            t = rng.uniform(-0.35, 0.35)
            a = _poly(it, [(t * it.w, -it.h)])[0]
            b = _poly(it, [(t * it.w + rng.uniform(-6, 6), it.h)])[0]
            _strip(canvas, background, a, b, rng.uniform(2.5, 4.5))
        return _clip(box, w, h)
    # a chunk out of one end or an edge of the part
    frac = {"broken": rng.uniform(0.3, 0.45), "breakage": rng.uniform(0.15, 0.25), "gap": rng.uniform(0.06, 0.1)}[kind]
    side = 1 if rng.random() < 0.5 else -1
    if kind == "gap":
        x = rng.uniform(-0.3, 0.3) * it.w
        pts = _poly(
            it,
            [
                (x - frac * it.w, side * it.h / 2 * 1.2),
                (x + frac * it.w, side * it.h / 2 * 1.2),
                (x, side * it.h * 0.15),
            ],
        )
    else:
        x0 = side * it.w / 2
        xm = side * (it.w / 2 - frac * it.w)
        pts = _poly(
            it, [(x0 * 1.15, -it.h), (xm, -it.h), (xm + side * rng.uniform(-3, 3), 0), (xm, it.h), (x0 * 1.15, it.h)]
        )
    mask = _poly_mask(pts, w, h)
    canvas[mask] = background[mask]
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return (x1, y1, x2, y2)
    # the box is the part's material that went missing: intersect with the part's box
    bx = (max(int(xs.min()), x1), max(int(ys.min()), y1), min(int(xs.max()) + 1, x2), min(int(ys.max()) + 1, y2))
    return _clip(bx, w, h)


def _clip(b: Box, w: int, h: int) -> Box:
    return (max(0, b[0]), max(0, b[1]), min(w, b[2]), min(h, b[3]))


def _poly_mask(pts: list[tuple[float, float]], w: int, h: int) -> np.ndarray:
    from PIL import Image

    m = Image.new("L", (w, h), 0)
    ImageDraw.Draw(m).polygon(pts, fill=255)
    return np.asarray(m) > 0


def _strip(canvas: np.ndarray, background: np.ndarray, a, b, width: float) -> None:
    from PIL import Image

    h, w = canvas.shape[:2]
    m = Image.new("L", (w, h), 0)
    ImageDraw.Draw(m).line([a, b], fill=255, width=round(width))
    mask = np.asarray(m) > 0
    canvas[mask] = background[mask]
