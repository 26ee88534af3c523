"""Importers for public industrial anomaly datasets: folders of images and masks -> ``Sample``.

Images are referenced, not copied (``image_uri`` is the absolute path or fsspec URL); width and
height come from the image header. Boxes come from the ground-truth masks: one box per
8-connected region, specks under a size threshold dropped. Dataset vocabularies (defect folder
names, labels, category -> scene) map onto the taxonomy through ``resources/dataset_labels.yaml``,
so a mapping is changed in data, not code; ``defect_types``/``category_scene`` override it per call.

Layouts: MVTec AD, MVTec LOCO AD, VisA, Real-IAD and a generic ``images/`` + ``masks/`` folder.
Real-IAD's layout (``realiad_<res>/<category>/{OK,NG}/…`` images and masks, per-category JSON
``{"meta", "train", "test"}`` lists of ``{category, anomaly_class, image_path, mask_path}``) is as
documented in anomalib's ``data/datasets/image/realiad.py`` and read by the Real-IAD authors'
ADer loader; the class codes (AK pit, BX deformation, …) are the Real-IAD project page's.

An image that cannot be imported (undecodable image or mask, a mask of another size than its
image, anomalous image without a region above the threshold, unmapped defect name) is recorded
in the ``ImportReport`` and skipped. A root that is missing (``UsageError``), or empty, not laid
out as the dataset or without one importable image (``DataError`` quoting ``LAYOUTS``), is an
error: an import never yields an empty dataset. The layout is checked when the importer is
called, before a writer opens its output.
"""

from __future__ import annotations

import csv
import json
import posixpath
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from os import PathLike
from typing import Any

import fsspec
import numpy as np
import yaml
from fsspec.implementations.local import LocalFileSystem
from PIL import Image, UnidentifiedImageError
from scipy import ndimage

from m3ad_rl.core.errors import DataError, UsageError
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


class _Skip(Exception):
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


class _Importer:
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
            raise _Skip("not a decodable image") from None

    def load_mask(self, path: str) -> np.ndarray:
        if not self.fs.exists(path):
            raise _Skip(f"mask not found: {self.uri(path)}")
        try:
            with self.fs.open(path, "rb") as fh, Image.open(fh) as img:
                return np.asarray(img if img.mode in _RAW_MODES else img.convert("L"))
        except UnidentifiedImageError:
            raise _Skip(f"mask is not a decodable image: {self.uri(path)}") from None

    def union(self, paths: list[str], size: tuple[int, int]) -> np.ndarray:
        if not paths:
            raise _Skip("no ground-truth mask")
        return np.logical_or.reduce([fit(self.load_mask(p) > 0, size, self.uri(p)) for p in paths])

    # -- labels -------------------------------------------------------------------------------
    def scene(self, category: str, path: str) -> str | None:
        scene = self.scenes.get(category)
        if scene not in SCENES:
            self.report.skip(self.uri(path), f"no scene for category {category!r}; pass category_scene")
            return None
        return scene

    def fine_type(self, category: str, name: str, free_text: bool = False) -> str:
        """The fine type a dataset name maps to (table, then free text if allowed), else _Skip."""
        key = normalize(name)
        for cat in (category, "*"):
            if key in self.defects.get(cat, {}):
                target = self.defects[cat][key]
                if target is None:
                    raise _Skip(f"defect {name!r} is deliberately unmapped")
                break
        else:
            if not free_text:
                raise _Skip(f"unknown defect {name!r} for category {category!r}")
            target = name
        node = self.tax.lookup(target)
        if node is None or not node.is_fine:
            raise _Skip(f"defect {name!r} maps to no fine type of the taxonomy")
        return node.name

    def boxes(self, mask: np.ndarray) -> list[list[float]]:
        boxes = masks_to_boxes(mask, self.min_area_frac, self.min_pixels)
        if not boxes:
            raise _Skip("the mask has no region above the size threshold")
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
        except _Skip as e:
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
        raise _Skip(f"mask {where} is {w}x{h} pixels, the image {size[0]}x{size[1]}")
    return mask


def import_mvtec_ad(
    root: str | PathLike, category_scene: dict | None = None, *, source: str = "mvtec-ad", **opts: Any
) -> Iterator[Sample]:
    """MVTec AD: ``<cat>/{train,test}/<defect|good>/NNN.png``, masks ``<cat>/ground_truth/<defect>/NNN_mask.png``.

    Options (every importer): ``defect_types`` {category or "*": {name: type}} overrides the table,
    ``report`` an ``ImportReport`` to collect skips in, ``min_area_frac``/``min_pixels`` the speck size.
    """
    imp = _Importer(root, source, "mvtec-ad", category_scene, **opts, kind="mvtec-ad")
    isdir = imp.fs.isdir
    cats = [
        d for d in imp.listdir(imp.root)[0] if isdir(posixpath.join(d, "test")) or isdir(posixpath.join(d, "train"))
    ]
    return imp.checked(_mvtec_ad(imp, imp.require(cats, "<category>/train or <category>/test folder")))


def _mvtec_ad(imp: _Importer, cats: list[str]) -> Iterator[Sample]:
    for cat_dir in cats:
        category = posixpath.basename(cat_dir)
        if (scene := imp.scene(category, cat_dir)) is None:
            continue
        for split in ("train", "test"):
            for kind_dir in imp.listdir(posixpath.join(cat_dir, split))[0]:
                kind = posixpath.basename(kind_dir)
                defect = None if kind == "good" else kind
                for image in imp.images(kind_dir):
                    stem = posixpath.splitext(posixpath.basename(image))[0]
                    masks = [posixpath.join(cat_dir, "ground_truth", kind, f"{stem}_mask.png")]
                    yield from imp.attempt(image, imp.masked, image, cat_dir, category, scene, defect, masks)


def import_mvtec_loco(
    root: str | PathLike, category_scene: dict | None = None, *, source: str = "mvtec-loco", **opts: Any
) -> Iterator[Sample]:
    """MVTec LOCO AD: ``<cat>/{train,validation,test}/good``, ``test/{logical,structural}_anomalies``.

    Ground truth is a folder per image (``ground_truth/<kind>/NNN/000.png, 001.png …``, one mask per
    defect); the masks are unioned. LOCO names no defect per image, so the type is the table's per
    category and kind.
    """
    imp = _Importer(root, source, "mvtec-loco", category_scene, **opts, kind="mvtec-loco")
    cats = [d for d in imp.listdir(imp.root)[0] if imp.fs.isdir(posixpath.join(d, "test"))]
    return imp.checked(_mvtec_loco(imp, imp.require(cats, "<category>/test folder")))


def _mvtec_loco(imp: _Importer, cats: list[str]) -> Iterator[Sample]:
    for cat_dir in cats:
        category = posixpath.basename(cat_dir)
        if (scene := imp.scene(category, cat_dir)) is None:
            continue
        for split in ("train", "validation", "test"):
            for kind_dir in imp.listdir(posixpath.join(cat_dir, split))[0]:
                kind = posixpath.basename(kind_dir)
                defect = None if kind == "good" else kind
                for image in imp.images(kind_dir):
                    stem = posixpath.splitext(posixpath.basename(image))[0]
                    masks = imp.images(posixpath.join(cat_dir, "ground_truth", kind, stem)) if defect else []
                    yield from imp.attempt(image, imp.masked, image, cat_dir, category, scene, defect, masks)


def import_visa(
    root: str | PathLike, category_scene: dict | None = None, *, source: str = "visa", **opts: Any
) -> Iterator[Sample]:
    """VisA: ``<cat>/image_anno.csv`` (image,label,mask) over ``<cat>/Data/{Images,Masks}/…``.

    Mask pixel values are defect ids (the table's ``mask_ids``); when they agree with the CSV labels
    each region gets its own type. Otherwise (binarised masks) every region gets the CSV label's type,
    and an image whose labels name several types is skipped: nothing says which region is which.
    Labels not in the table fall back to the taxonomy's free-text lookup.
    """
    imp = _Importer(root, source, "visa", category_scene, **opts, kind="visa")
    isdir, exists = imp.fs.isdir, imp.fs.exists
    cats = [
        d
        for d in imp.listdir(imp.root)[0]
        if exists(posixpath.join(d, "image_anno.csv")) or isdir(posixpath.join(d, "Data"))
    ]
    return imp.checked(_visa(imp, imp.require(cats, "<category>/image_anno.csv or <category>/Data")))


def _visa(imp: _Importer, cats: list[str]) -> Iterator[Sample]:
    for cat_dir in cats:
        category = posixpath.basename(cat_dir)
        anno = posixpath.join(cat_dir, "image_anno.csv")
        if not imp.fs.exists(anno):
            imp.report.skip(imp.uri(anno), "no image_anno.csv: labels unknown")
            continue
        if (scene := imp.scene(category, cat_dir)) is None:
            continue
        for row in _read_csv(imp, anno):
            image = _visa_path(imp, cat_dir, row.get("image") or "")
            yield from imp.attempt(image, _visa_sample, imp, image, cat_dir, category, scene, row)


def _read_csv(imp: _Importer, path: str) -> list[dict]:
    """The rows of a CSV file; an unreadable file is reported and reads as empty."""
    try:
        with imp.fs.open(path, "r", encoding="utf-8-sig", newline="") as fh:
            return list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        imp.report.skip(imp.uri(path), f"unreadable CSV: {e}")
        return []


def _visa_path(imp: _Importer, cat_dir: str, rel: str) -> str:
    """CSV paths are relative to the VisA root (``candle/Data/…``); accept category-relative too."""
    rel = rel.strip().lstrip("/")
    in_root = posixpath.join(posixpath.dirname(cat_dir), rel)
    return in_root if imp.fs.exists(in_root) else posixpath.join(cat_dir, rel)


def _visa_sample(imp: _Importer, image: str, cat_dir: str, category: str, scene: str, row: dict) -> Sample:
    label = (row.get("label") or "").strip()
    size = imp.image_size(image)
    if normalize(label) == "normal":
        return imp.sample(image, cat_dir, category, scene, [], size)
    names = [p.strip() for p in label.split(",") if p.strip()]
    if not names:
        raise _Skip("empty label")
    if not (row.get("mask") or "").strip():
        raise _Skip("anomalous but no mask in image_anno.csv")
    mask_path = _visa_path(imp, cat_dir, row["mask"])
    mask = fit(imp.load_mask(mask_path), size, imp.uri(mask_path))
    ids = {int(k): v for k, v in (imp.mask_ids.get(category) or {}).items()}
    values = [int(v) for v in np.unique(mask) if v != 0]
    if values and all(v in ids and normalize(ids[v]) in {normalize(n) for n in names} for v in values):
        regions = []
        for v in values:
            dtype = imp.fine_type(category, ids[v], free_text=True)
            regions += [(dtype, b) for b in masks_to_boxes(mask == v, imp.min_area_frac, imp.min_pixels)]
        if not regions:
            raise _Skip("the mask has no region above the size threshold")
        regions.sort(key=lambda r: (r[1][1], r[1][0]))
        return imp.sample(image, cat_dir, category, scene, regions, size)
    types = {imp.fine_type(category, n, free_text=True) for n in names}
    if len(types) > 1:
        raise _Skip(f"labels {names} name several types and the mask does not say which region is which")
    return imp.sample(image, cat_dir, category, scene, [(types.pop(), b) for b in imp.boxes(mask)], size)


def import_real_iad(
    root: str | PathLike,
    category_scene: dict | None = None,
    *,
    resolution: str | int = 1024,
    json_dir: str | None = None,
    source: str = "real-iad",
    **opts: Any,
) -> Iterator[Sample]:
    """Real-IAD: ``realiad_<resolution>/<cat>/…`` with ``realiad_jsons[/realiad_jsons]/<cat>.json``.

    Train and test lists are both imported. An NG view without a mask is normal (the defect is not
    visible from that camera), as the Real-IAD evaluation code treats it.
    """
    imp = _Importer(root, source, "real-iad", category_scene, **opts, kind="real-iad")
    candidates = [json_dir] if json_dir else ["realiad_jsons/realiad_jsons", "realiad_jsons"]
    jdir = next((posixpath.join(imp.root, d) for d in candidates if imp.fs.isdir(posixpath.join(imp.root, d))), None)
    if jdir is None:
        raise imp.wrong_layout(f"no JSON folder among {candidates}")
    jsons = [p for p in imp.listdir(jdir)[1] if p.endswith(".json")]
    return imp.checked(_real_iad(imp, imp.require(jsons, f"<category>.json in {jdir}"), resolution))


def _real_iad(imp: _Importer, jsons: list[str], resolution: str | int) -> Iterator[Sample]:
    for jpath in jsons:
        category = posixpath.splitext(posixpath.basename(jpath))[0]
        cat_dir = posixpath.join(imp.root, f"realiad_{resolution}", category)
        if (scene := imp.scene(category, cat_dir)) is None:
            continue
        try:
            with imp.fs.open(jpath, "r", encoding="utf-8") as fh:
                info = json.load(fh)
            normal = (info.get("meta") or {}).get("normal_class", "OK")
            entries = [e for split in ("train", "test") for e in info.get(split) or [] if isinstance(e, dict)]
        except (OSError, ValueError, AttributeError) as e:
            imp.report.skip(imp.uri(jpath), f"unreadable JSON: {e}")
            continue
        for e in entries:
            image = posixpath.join(cat_dir, str(e.get("image_path", "")))
            mask = e.get("mask_path")
            defect = None if e.get("anomaly_class") == normal or not mask else str(e.get("anomaly_class"))
            masks = [posixpath.join(cat_dir, str(mask))] if defect else []
            yield from imp.attempt(image, imp.masked, image, cat_dir, category, scene, defect, masks)


def import_mask_folder(
    root: str | PathLike,
    source: str = "custom",
    *,
    scene: str,
    category: str | None = None,
    defect_type: str | None = None,
    **opts: Any,
) -> Iterator[Sample]:
    """Generic: ``images/<stem>.png|jpg`` with ``masks/<stem>.png`` (absent or all-zero = normal).

    The type is the sidecar ``labels.csv`` (image,type; image by file name or stem) row, else
    ``defect_type``; either is free text for the taxonomy.
    """
    if scene not in SCENES:
        raise UsageError(f"scene {scene!r} is not one of {', '.join(SCENES)}", "give one of them")
    imp = _Importer(root, source, None, None, **opts, kind="folder")
    images = imp.require(imp.images(posixpath.join(imp.root, "images")), "images/*.png|jpg")
    return imp.checked(_mask_folder(imp, images, scene, category or posixpath.basename(imp.root), defect_type))


def _mask_folder(imp: _Importer, images: list[str], scene: str, category: str, defect_type: str | None):
    types: dict[str, str] = {}
    labels = posixpath.join(imp.root, "labels.csv")
    for row in _read_csv(imp, labels) if imp.fs.exists(labels) else []:
        name, dtype = (row.get("image") or "").strip(), (row.get("type") or "").strip()
        types[name] = types[posixpath.splitext(name)[0]] = dtype
    for image in images:
        name = posixpath.basename(image)
        dtype = types.get(name) or types.get(posixpath.splitext(name)[0]) or defect_type
        mask = posixpath.join(imp.root, "masks", posixpath.splitext(name)[0] + ".png")
        yield from imp.attempt(image, _folder_sample, imp, image, category, scene, dtype, mask)


def _folder_sample(imp: _Importer, image: str, category: str, scene: str, dtype: str | None, mask: str) -> Sample:
    size = imp.image_size(image)
    if not imp.fs.exists(mask) or not (m := fit(imp.load_mask(mask), size, imp.uri(mask))).any():
        return imp.sample(image, imp.root, category, scene, [], size)
    if not dtype:
        raise _Skip("anomalous mask but no defect type (labels.csv or defect_type)")
    dtype = imp.fine_type(category, dtype, free_text=True)
    return imp.sample(image, imp.root, category, scene, [(dtype, b) for b in imp.boxes(m)], size)
