"""Importers for public industrial anomaly datasets: folders of images and masks -> ``Sample``.

Images are referenced, not copied (``image_uri`` is the absolute path or fsspec URL); width and
height come from the image header. Boxes come from the ground-truth masks: one box per
8-connected region, specks under a size threshold dropped. Dataset vocabularies (defect folder
names, labels, category -> scene) map onto the taxonomy through ``resources/dataset_labels.yaml``,
so a mapping is changed in data, not code; ``defect_types``/``category_scene`` override it per call.

Layouts (one module each, registered in ``IMPORTERS`` under the ``--dataset`` name): MVTec AD,
MVTec LOCO AD, VisA, Real-IAD and a generic ``images/`` + ``masks/`` folder.

An image that cannot be imported (undecodable image or mask, a mask of another size than its
image, anomalous image without a region above the threshold, unmapped defect name) is recorded
in the ``ImportReport`` and skipped. A root that is missing (``UsageError``), or empty, not laid
out as the dataset or without one importable image (``DataError`` quoting ``LAYOUTS``), is an
error: an import never yields an empty dataset. The layout is checked when the importer is
called, before a writer opens its output. ``import_dataset`` runs a whole import into a dataset.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field

from m3ad_rl.core.errors import DataError
from m3ad_rl.core.guards import refuse_overwrite
from m3ad_rl.data.importers.base import (
    IMAGE_EXTS,
    IMPORTERS,
    LAYOUTS,
    ImportReport,
    dataset_labels,
    fit,
    masks_to_boxes,
)
from m3ad_rl.data.importers.folder import import_mask_folder
from m3ad_rl.data.importers.mvtec import import_mvtec_ad, import_mvtec_loco
from m3ad_rl.data.importers.real_iad import import_real_iad
from m3ad_rl.data.importers.visa import import_visa
from m3ad_rl.data.store import DatasetWriter, WriteReport

DATASETS = IMPORTERS.names()  # the dataset modules imported above registered themselves


@dataclass
class ImportResult:
    """What ``import_dataset`` wrote and what it left out."""

    written: WriteReport  # rows, shards and the samples the writer rejected (with reasons)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (image, reason) the importer could not import
    imported: int = 0  # samples the importer produced (written + rejected)


def import_dataset(
    dataset: str,
    root: str,
    out: str,
    *,
    source: str | None = None,
    scene: str | None = None,
    category: str | None = None,
    defect_type: str | None = None,
    category_scene: dict[str, str] | None = None,
    embed_images: bool = False,
    progress: bool = True,
    overwrite: bool = False,
) -> ImportResult:
    """Import the dataset at ``root`` (a ``DATASETS`` name) into a new dataset at ``out``.

    ``source`` (default ``custom``), ``scene``, ``category`` and ``defect_type`` (the type of an
    anomalous image ``labels.csv`` does not name) describe a ``folder`` dataset and are ignored for
    the public datasets, which name their own (``mvtec-ad/<category>/…`` ids); ``category_scene``
    ({category: scene}) adds or overrides a public dataset's scenes and is ignored for a folder.
    ``embed_images`` stores the image bytes instead of their paths. Skips and rejections are
    echoed on stderr as they happen and returned; the summary is the caller's to print. A bad
    ``out`` (over ``root``), a folder without scene/category, a missing root or one not laid out
    as the dataset raise before anything is written.
    """
    entry = IMPORTERS.get(dataset)
    refuse_overwrite([root], [out])
    report = ImportReport()
    samples = entry(  # checks the layout
        root,
        report=report,
        source=source,
        scene=scene,
        category=category,
        defect_type=defect_type,
        category_scene=category_scene,
    )
    from tqdm import tqdm

    with (
        DatasetWriter(out, overwrite=overwrite, inputs=[root]) as w,  # the output contract's checks come first
        tqdm(desc=f"import {dataset}", unit="img", dynamic_ncols=True, file=sys.stderr, disable=not progress) as bar,
    ):
        for sample in samples:
            if embed_images and sample.image_uri:
                with contextlib.suppress(DataError):  # if not, the writer rejects it with the reason, by id
                    sample.image, sample.image_uri = sample.image_bytes(), None
            w.write(sample)
            bar.update()
    return ImportResult(written=w.report, skipped=report.skipped, imported=report.imported)


__all__ = [
    "DATASETS",
    "IMAGE_EXTS",
    "IMPORTERS",
    "LAYOUTS",
    "ImportReport",
    "ImportResult",
    "dataset_labels",
    "fit",
    "import_dataset",
    "import_mask_folder",
    "import_mvtec_ad",
    "import_mvtec_loco",
    "import_real_iad",
    "import_visa",
    "masks_to_boxes",
]
