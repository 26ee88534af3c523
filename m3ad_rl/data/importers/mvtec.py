"""MVTec AD and MVTec LOCO AD: category folders with ``train``/``test`` splits and mask folders."""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from os import PathLike
from typing import Any

from m3ad_rl.data.importers.base import IMPORTERS, Importer, ImportReport
from m3ad_rl.data.schema import Sample


def import_mvtec_ad(
    root: str | PathLike, category_scene: dict | None = None, *, source: str = "mvtec-ad", **opts: Any
) -> Iterator[Sample]:
    """MVTec AD: ``<cat>/{train,test}/<defect|good>/NNN.png``, masks ``<cat>/ground_truth/<defect>/NNN_mask.png``.

    Options (every importer): ``defect_types`` {category or "*": {name: type}} overrides the table,
    ``report`` an ``ImportReport`` to collect skips in, ``min_area_frac``/``min_pixels`` the speck size.
    """
    imp = Importer(root, source, "mvtec-ad", category_scene, **opts, kind="mvtec-ad")
    isdir = imp.fs.isdir
    cats = [
        d for d in imp.listdir(imp.root)[0] if isdir(posixpath.join(d, "test")) or isdir(posixpath.join(d, "train"))
    ]
    return imp.checked(_mvtec_ad(imp, imp.require(cats, "<category>/train or <category>/test folder")))


def _mvtec_ad(imp: Importer, cats: list[str]) -> Iterator[Sample]:
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
    imp = Importer(root, source, "mvtec-loco", category_scene, **opts, kind="mvtec-loco")
    cats = [d for d in imp.listdir(imp.root)[0] if imp.fs.isdir(posixpath.join(d, "test"))]
    return imp.checked(_mvtec_loco(imp, imp.require(cats, "<category>/test folder")))


def _mvtec_loco(imp: Importer, cats: list[str]) -> Iterator[Sample]:
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


@IMPORTERS.register("mvtec-ad")
def _mvtec_ad_entry(
    root: str, *, report: ImportReport, category_scene: dict[str, str] | None = None, **_: object
) -> Iterator[Sample]:
    """The dataset names its own source, categories and (through the table) scenes; ``category_scene``
    adds or overrides scenes, the folder options of ``import_dataset`` do not apply."""
    return import_mvtec_ad(root, category_scene, report=report)


@IMPORTERS.register("mvtec-loco")
def _mvtec_loco_entry(
    root: str, *, report: ImportReport, category_scene: dict[str, str] | None = None, **_: object
) -> Iterator[Sample]:
    """The dataset names its own source, categories and (through the table) scenes; ``category_scene``
    adds or overrides scenes, the folder options of ``import_dataset`` do not apply."""
    return import_mvtec_loco(root, category_scene, report=report)
