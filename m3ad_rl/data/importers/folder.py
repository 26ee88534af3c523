"""A generic folder: ``images/`` with same-stem ``masks/`` and an optional ``labels.csv``."""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from os import PathLike
from typing import Any

from m3ad_rl.core.errors import UsageError
from m3ad_rl.data.importers.base import IMPORTERS, Importer, ImportReport, Skip, fit, read_csv
from m3ad_rl.data.schema import SCENES, Sample


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
    imp = Importer(root, source, None, None, **opts, kind="folder")
    images = imp.require(imp.images(posixpath.join(imp.root, "images")), "images/*.png|jpg")
    return imp.checked(_mask_folder(imp, images, scene, category or posixpath.basename(imp.root), defect_type))


def _mask_folder(imp: Importer, images: list[str], scene: str, category: str, defect_type: str | None):
    types: dict[str, str] = {}
    labels = posixpath.join(imp.root, "labels.csv")
    for row in read_csv(imp, labels) if imp.fs.exists(labels) else []:
        name, dtype = (row.get("image") or "").strip(), (row.get("type") or "").strip()
        types[name] = types[posixpath.splitext(name)[0]] = dtype
    for image in images:
        name = posixpath.basename(image)
        dtype = types.get(name) or types.get(posixpath.splitext(name)[0]) or defect_type
        mask = posixpath.join(imp.root, "masks", posixpath.splitext(name)[0] + ".png")
        yield from imp.attempt(image, _folder_sample, imp, image, category, scene, dtype, mask)


def _folder_sample(imp: Importer, image: str, category: str, scene: str, dtype: str | None, mask: str) -> Sample:
    size = imp.image_size(image)
    if not imp.fs.exists(mask) or not (m := fit(imp.load_mask(mask), size, imp.uri(mask))).any():
        return imp.sample(image, imp.root, category, scene, [], size)
    if not dtype:
        raise Skip("anomalous mask but no defect type (labels.csv, or --defect-type / defect_type)")
    dtype = imp.fine_type(category, dtype, free_text=True)
    return imp.sample(image, imp.root, category, scene, [(dtype, b) for b in imp.boxes(m)], size)


@IMPORTERS.register("folder")
def _folder_entry(
    root: str,
    *,
    report: ImportReport,
    source: str | None = None,
    scene: str | None = None,
    category: str | None = None,
    defect_type: str | None = None,
    **_: object,
) -> Iterator[Sample]:
    """A folder says nothing about itself: the scene and the category must be given."""
    if not (scene and category):
        raise UsageError("--dataset folder needs --scene and --category", "add both")
    return import_mask_folder(
        root, source or "custom", scene=scene, category=category, defect_type=defect_type, report=report
    )
