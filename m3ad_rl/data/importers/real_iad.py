"""Real-IAD: per-category JSON lists over ``realiad_<resolution>/<category>/`` images and masks.

The layout (``realiad_<res>/<category>/{OK,NG}/…`` images and masks, per-category JSON
``{"meta", "train", "test"}`` lists of ``{category, anomaly_class, image_path, mask_path}``) is as
documented in anomalib's ``data/datasets/image/realiad.py`` and read by the Real-IAD authors'
ADer loader; the class codes (AK pit, BX deformation, …) are the Real-IAD project page's.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterator
from os import PathLike
from typing import Any

from m3ad_rl.data.importers.base import IMPORTERS, Importer, ImportReport
from m3ad_rl.data.schema import Sample


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
    imp = Importer(root, source, "real-iad", category_scene, **opts, kind="real-iad")
    candidates = [json_dir] if json_dir else ["realiad_jsons/realiad_jsons", "realiad_jsons"]
    jdir = next((posixpath.join(imp.root, d) for d in candidates if imp.fs.isdir(posixpath.join(imp.root, d))), None)
    if jdir is None:
        raise imp.wrong_layout(f"no JSON folder among {candidates}")
    jsons = [p for p in imp.listdir(jdir)[1] if p.endswith(".json")]
    return imp.checked(_real_iad(imp, imp.require(jsons, f"<category>.json in {jdir}"), resolution))


def _real_iad(imp: Importer, jsons: list[str], resolution: str | int) -> Iterator[Sample]:
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


@IMPORTERS.register("real-iad")
def _real_iad_entry(
    root: str, *, report: ImportReport, category_scene: dict[str, str] | None = None, **_: object
) -> Iterator[Sample]:
    """The dataset names its own source, categories and (through the table) scenes; ``category_scene``
    adds or overrides scenes, the folder options of ``import_dataset`` do not apply."""
    return import_real_iad(root, category_scene, report=report)
