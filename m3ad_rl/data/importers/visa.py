"""VisA: per-category ``image_anno.csv`` over ``Data/Images`` and ``Data/Masks`` (mask values are defect ids)."""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from os import PathLike
from typing import Any

import numpy as np

from m3ad_rl.core.taxonomy import normalize
from m3ad_rl.data.importers.base import IMPORTERS, Importer, ImportReport, Skip, fit, masks_to_boxes, read_csv
from m3ad_rl.data.schema import Sample


def import_visa(
    root: str | PathLike, category_scene: dict | None = None, *, source: str = "visa", **opts: Any
) -> Iterator[Sample]:
    """VisA: ``<cat>/image_anno.csv`` (image,label,mask) over ``<cat>/Data/{Images,Masks}/…``.

    Mask pixel values are defect ids (the table's ``mask_ids``); when they agree with the CSV labels
    each region gets its own type. Otherwise (binarised masks) every region gets the CSV label's type,
    and an image whose labels name several types is skipped: nothing says which region is which.
    Labels not in the table fall back to the taxonomy's free-text lookup.
    """
    imp = Importer(root, source, "visa", category_scene, **opts, kind="visa")
    isdir, exists = imp.fs.isdir, imp.fs.exists
    cats = [
        d
        for d in imp.listdir(imp.root)[0]
        if exists(posixpath.join(d, "image_anno.csv")) or isdir(posixpath.join(d, "Data"))
    ]
    return imp.checked(_visa(imp, imp.require(cats, "<category>/image_anno.csv or <category>/Data")))


def _visa(imp: Importer, cats: list[str]) -> Iterator[Sample]:
    for cat_dir in cats:
        category = posixpath.basename(cat_dir)
        anno = posixpath.join(cat_dir, "image_anno.csv")
        if not imp.fs.exists(anno):
            imp.report.skip(imp.uri(anno), "no image_anno.csv: labels unknown")
            continue
        if (scene := imp.scene(category, cat_dir)) is None:
            continue
        for row in read_csv(imp, anno):
            image = _visa_path(imp, cat_dir, row.get("image") or "")
            yield from imp.attempt(image, _visa_sample, imp, image, cat_dir, category, scene, row)


def _visa_path(imp: Importer, cat_dir: str, rel: str) -> str:
    """CSV paths are relative to the VisA root (``candle/Data/…``); accept category-relative too."""
    rel = rel.strip().lstrip("/")
    in_root = posixpath.join(posixpath.dirname(cat_dir), rel)
    return in_root if imp.fs.exists(in_root) else posixpath.join(cat_dir, rel)


def _visa_sample(imp: Importer, image: str, cat_dir: str, category: str, scene: str, row: dict) -> Sample:
    label = (row.get("label") or "").strip()
    size = imp.image_size(image)
    if normalize(label) == "normal":
        return imp.sample(image, cat_dir, category, scene, [], size)
    names = [p.strip() for p in label.split(",") if p.strip()]
    if not names:
        raise Skip("empty label")
    if not (row.get("mask") or "").strip():
        raise Skip("anomalous but no mask in image_anno.csv")
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
            raise Skip("the mask has no region above the size threshold")
        regions.sort(key=lambda r: (r[1][1], r[1][0]))
        return imp.sample(image, cat_dir, category, scene, regions, size)
    types = {imp.fine_type(category, n, free_text=True) for n in names}
    if len(types) > 1:
        raise Skip(f"labels {names} name several types and the mask does not say which region is which")
    return imp.sample(image, cat_dir, category, scene, [(types.pop(), b) for b in imp.boxes(mask)], size)


@IMPORTERS.register("visa")
def _visa_entry(
    root: str, *, report: ImportReport, category_scene: dict[str, str] | None = None, **_: object
) -> Iterator[Sample]:
    """The dataset names its own source, categories and (through the table) scenes; ``category_scene``
    adds or overrides scenes, the folder options of ``import_dataset`` do not apply."""
    return import_visa(root, category_scene, report=report)
