"""Importers for public industrial anomaly datasets (the code is in ``base``; split by dataset next)."""

from m3ad_rl.data.importers.base import (
    IMAGE_EXTS,
    LAYOUTS,
    ImportReport,
    dataset_labels,
    fit,
    import_mask_folder,
    import_mvtec_ad,
    import_mvtec_loco,
    import_real_iad,
    import_visa,
    masks_to_boxes,
)

__all__ = [
    "IMAGE_EXTS",
    "LAYOUTS",
    "ImportReport",
    "dataset_labels",
    "fit",
    "import_mask_folder",
    "import_mvtec_ad",
    "import_mvtec_loco",
    "import_real_iad",
    "import_visa",
    "masks_to_boxes",
]
