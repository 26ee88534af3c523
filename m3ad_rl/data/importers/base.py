"""What every importer shares: the file system, the mapping tables, masks to boxes, skips, the registry.

An ``Importer`` holds one import's state; a dataset module walks its layout and turns each image
into a ``Sample`` through it (``attempt`` reports a failed image in the ``ImportReport`` and goes
on). Each dataset registers an entry in ``IMPORTERS`` under its ``--dataset`` name.
"""

from __future__ import annotations

import csv
import posixpath
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Protocol

import fsspec
import numpy as np
import yaml
from fsspec.implementations.local import LocalFileSystem
from PIL import Image, UnidentifiedImageError
from scipy import ndimage

from m3ad_rl.core.errors import DataError, UsageError
from m3ad_rl.core.registry import Registry
from m3ad_rl.core.taxonomy import default_taxonomy, normalize
from m3ad_rl.data.schema import SCENES, DefectRecord, Sample

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_RAW_MODES = ("1", "L", "P", "I", "I;16", "I;16L", "I;16B")  # pixel values kept as stored (VisA ids)
_EIGHT = np.ones((3, 3), dtype=bool)

LAYOUTS = {
    "mvtec-ad": "<root>/<category>/{train,test}/<defect or good>/*.png, masks in "
    "<category>/ground_truth/<defect>/*_mask.png",
    "mvtec-loco": "<root>/<category>/{train,validation,test}/good/*.png and test/{logical,structural}_anomalies/*.png, "
    "masks in <category>/ground_truth/<kind>/<image>/000.png",
    "visa": "<root>/<category>/image_anno.csv (image,label,mask) with <category>/Data/Images and Data/Masks",
    "real-iad": "<root>/realiad_jsons[/realiad_jsons]/<category>.json with <root>/realiad_<resolution>/<category>/",
    "folder": "<root>/images/*.png|jpg, masks in <root>/masks/<stem>.png, types in labels.csv or --defect-type",
}


@dataclass
class ImportReport:
    """What an import skipped and why; echoed on stderr unless ``quiet``."""

    skipped: list[tuple[str, str]] = field(default_factory=list)
    imported: int = 0
    quiet: bool = False

    def skip(self, path: str, reason: str) -> None:
        self.skipped.append((path, reason))
        if not self.quiet:
            print(f"skipped {path}: {reason}", file=sys.stderr)


class Skip(Exception):
    """An image that cannot be imported; the message says why."""


def masks_to_boxes(mask: np.ndarray, min_area_frac: float = 0.0005, min_pixels: int = 4) -> list[list[float]]:
    """One normalised [x1, y1, x2, y2] box per 8-connected region of ``mask > 0``, raster order.

    Regions with fewer than ``max(min_pixels, min_area_frac * H * W)`` pixels are annotation specks
    and dropped. x2/y2 are exclusive pixel edges, so the box covers the region exactly.
    """
    binary = np.asarray(mask) > 0
    if binary.ndim == 3:
        binary = binary.any(axis=2)
    h, w = binary.shape
    labels, n = ndimage.label(binary, structure=_EIGHT)
    if n == 0:
        return []
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    floor = max(min_pixels, min_area_frac * h * w)
    boxes = []
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is not None and sizes[i] >= floor:
            rows, cols = sl
            boxes.append([cols.start / w, rows.start / h, cols.stop / w, rows.stop / h])
    return boxes


@cache
def dataset_labels() -> dict:
    """The shipped mapping tables (``resources/dataset_labels.yaml``)."""
    text = resources.files("m3ad_rl").joinpath("resources/dataset_labels.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


class Importer:
    """Shared state of one import: file system, mapping tables, thresholds and the report."""

    def __init__(
        self,
        root,
        source: str,
        table: str | None,
        category_scene: dict | None = None,
        defect_types: dict | None = None,
        report: ImportReport | None = None,
        min_area_frac: float = 0.0005,
        min_pixels: int = 4,
        *,
        kind: str,
    ):
        self.fs, self.root = fsspec.core.url_to_fs(str(root))
        self.root = self.root.rstrip("/") or "/"
        self.given, self.kind, self.layout = str(root), kind, LAYOUTS[kind]
        if not self.fs.exists(self.root):
            raise UsageError(f"--root {root} does not exist", "check the path")
        if not self.fs.isdir(self.root):
            raise UsageError(f"--root {root} is a file, the dataset's folder was expected", "give its folder")
        self.source = source
        spec = dataset_labels().get(table, {}) if table else {}
        self.scenes = {**(spec.get("scenes") or {}), **(category_scene or {})}
        self.defects: dict[str, dict[str, str | None]] = {}
        for tables in (spec.get("defects") or {}, defect_types or {}):
            for cat, names in tables.items():
                self.defects.setdefault(cat, {}).update({normalize(str(k)): v for k, v in names.items()})
        self.mask_ids = spec.get("mask_ids") or {}
        self.report = report if report is not None else ImportReport()
        self.min_area_frac, self.min_pixels = min_area_frac, min_pixels
        self.tax = default_taxonomy()

    # -- layout -------------------------------------------------------------------------------
    def wrong_layout(self, found: str) -> DataError:
        return DataError(
            f"--root {self.given} is not laid out as {self.kind} ({found}); expected {self.layout}",
            "point --root at the dataset's top folder, or choose the --dataset kind that matches it",
        )

    def require(self, found: list, what: str) -> list:
        """``found`` (the category folders or files of the layout); a DataError if there are none."""
        if not found:
            raise self.wrong_layout(f"no {what} found")
        return found

    def checked(self, samples: Iterator[Sample]) -> Iterator[Sample]:
        """``samples``, and a DataError at the end if none could be imported: an empty dataset is
        never the result of an import."""
        before = self.report.imported
        yield from samples
        if self.report.imported == before:
            n = len(self.report.skipped)
            raise self.wrong_layout(f"no image could be imported, {n} skipped" if n else "no images found")

    # -- files --------------------------------------------------------------------------------
    def listdir(self, path: str) -> tuple[list[str], list[str]]:
        """Sorted (directories, files) directly under ``path``; empty when it does not exist."""
        if not self.fs.isdir(path):
            return [], []
        entries = sorted(self.fs.ls(path, detail=True), key=lambda e: e["name"])
        dirs = [e["name"].rstrip("/") for e in entries if e["type"] == "directory"]
        return dirs, [e["name"] for e in entries if e["type"] != "directory"]

    def images(self, path: str) -> list[str]:
        return [f for f in self.listdir(path)[1] if f.lower().endswith(IMAGE_EXTS)]

    def uri(self, path: str) -> str:
        return path if isinstance(self.fs, LocalFileSystem) else self.fs.unstrip_protocol(path)

    def image_size(self, path: str) -> tuple[int, int]:
        """Width and height from the header (the pixels are not decoded)."""
        try:
            with self.fs.open(path, "rb") as fh, Image.open(fh) as img:
                return img.size
        except UnidentifiedImageError:
            raise Skip("not a decodable image") from None

    def load_mask(self, path: str) -> np.ndarray:
        if not self.fs.exists(path):
            raise Skip(f"mask not found: {self.uri(path)}")
        try:
            with self.fs.open(path, "rb") as fh, Image.open(fh) as img:
                return np.asarray(img if img.mode in _RAW_MODES else img.convert("L"))
        except UnidentifiedImageError:
            raise Skip(f"mask is not a decodable image: {self.uri(path)}") from None

    def union(self, paths: list[str], size: tuple[int, int]) -> np.ndarray:
        if not paths:
            raise Skip("no ground-truth mask")
        return np.logical_or.reduce([fit(self.load_mask(p) > 0, size, self.uri(p)) for p in paths])

    # -- labels -------------------------------------------------------------------------------
    def scene(self, category: str, path: str) -> str | None:
        scene = self.scenes.get(category)
        if scene not in SCENES:
            self.report.skip(self.uri(path), f"no scene for category {category!r}; give it one with "
                             f"--category-scene {category}=<scene> (category_scene in Python)")  # fmt: skip
            return None
        return scene

    def fine_type(self, category: str, name: str, free_text: bool = False) -> str:
        """The fine type a dataset name maps to (table, then free text if allowed), else Skip."""
        key = normalize(name)
        for cat in (category, "*"):
            if key in self.defects.get(cat, {}):
                target = self.defects[cat][key]
                if target is None:
                    raise Skip(f"defect {name!r} is deliberately unmapped")
                break
        else:
            if not free_text:
                raise Skip(f"unknown defect {name!r} for category {category!r}")
            target = name
        node = self.tax.lookup(target)
        if node is None or not node.is_fine:
            raise Skip(f"defect {name!r} maps to no fine type of the taxonomy")
        return node.name

    def boxes(self, mask: np.ndarray) -> list[list[float]]:
        boxes = masks_to_boxes(mask, self.min_area_frac, self.min_pixels)
        if not boxes:
            raise Skip("the mask has no region above the size threshold")
        return boxes

    # -- samples ------------------------------------------------------------------------------
    def sample(self, image: str, base: str, category: str, scene: str, regions: list[tuple], size=None) -> Sample:
        """The sample of ``image`` with ``regions`` [(fine type, box)]; ``size`` is read if not given."""
        width, height = size or self.image_size(image)
        rel = posixpath.splitext(posixpath.relpath(image, base))[0]
        defects = []
        for name, box in regions:
            node = self.tax.get(name)
            defects.append(DefectRecord(node.name, box, node.level2 or "", node.level1))
        return Sample(
            id=f"{self.source}/{category}/{rel}",
            width=width,
            height=height,
            source=self.source,
            category=category,
            scene=scene,
            label="anomalous" if defects else "normal",
            defects=defects,
            image_uri=self.uri(image),
        )

    def attempt(self, image: str, fn, *args) -> Iterator[Sample]:
        """Run one image's import; a failure is reported with the image and skipped, never raised."""
        try:
            sample = fn(*args)
        except Skip as e:
            self.report.skip(self.uri(image), str(e))
            return
        except Exception as e:  # a broken file must not end a long import
            self.report.skip(self.uri(image), f"{type(e).__name__}: {e}")
            return
        self.report.imported += 1
        yield sample

    def masked(self, image, base, category, scene, defect: str | None, masks: list[str], free_text=False):
        """A normal sample (``defect`` None) or one box per mask region, all of the defect's type."""
        size = self.image_size(image)
        if defect is None:
            return self.sample(image, base, category, scene, [], size)
        dtype = self.fine_type(category, defect, free_text)
        boxes = self.boxes(self.union(masks, size))
        return self.sample(image, base, category, scene, [(dtype, b) for b in boxes], size)


def fit(mask: np.ndarray, size: tuple[int, int], where: str) -> np.ndarray:
    """``mask`` if it has the image's (width, height); otherwise the image is skipped: boxes from a
    mask of another size would land in the wrong place (a resize would guess)."""
    h, w = mask.shape[:2]
    if (w, h) != tuple(size):
        raise Skip(f"mask {where} is {w}x{h} pixels, the image {size[0]}x{size[1]}")
    return mask


def read_csv(imp: Importer, path: str) -> list[dict]:
    """The rows of a CSV file; an unreadable file is reported and reads as empty."""
    try:
        with imp.fs.open(path, "r", encoding="utf-8-sig", newline="") as fh:
            return list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        imp.report.skip(imp.uri(path), f"unreadable CSV: {e}")
        return []


class Entry(Protocol):
    """How ``import_dataset`` calls a dataset's importer; an option the dataset does not take is ignored."""

    def __call__(
        self,
        root: str,
        *,
        report: ImportReport,
        source: str | None,
        scene: str | None,
        category: str | None,
        defect_type: str | None,
        category_scene: dict[str, str] | None,
    ) -> Iterator[Sample]: ...


IMPORTERS: Registry[Entry] = Registry("dataset")
