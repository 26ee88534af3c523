"""One Arrow schema for every sample (SPEC §5), and the checks a row must pass to be written.

A sample carries its image either as encoded bytes (``image``) or as any fsspec URL
(``image_uri``: a local path, ``s3://…``, ``memory://…``). Boxes are normalised [x1, y1, x2, y2].
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from m3ad_rl.core.errors import DataError
from m3ad_rl.core.taxonomy import Taxonomy, default_taxonomy

SCHEMA_VERSION = 1
SCENES = ("texture", "workpiece", "electronic", "logical")
LABELS = ("anomalous", "normal")
SPLITS = ("ft", "bench")
DIFFICULTIES = ("easy", "hard")
MODES = ("thinking", "reflective")

DEFECT_TYPE = pa.struct(
    [
        pa.field("type", pa.string(), nullable=False),
        pa.field("level2", pa.string(), nullable=False),
        pa.field("level1", pa.string(), nullable=False),
        pa.field("box", pa.list_(pa.float64(), 4), nullable=False),
    ]
)

SAMPLE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("image", pa.binary()),  # encoded PNG/JPEG bytes, or null when image_uri is set
        pa.field("image_uri", pa.string()),  # any fsspec URL, or null when image is set
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("source", pa.string(), nullable=False),  # source dataset, e.g. mvtec-ad, synthetic
        pa.field("category", pa.string(), nullable=False),
        pa.field("scene", pa.string(), nullable=False),
        pa.field("label", pa.string(), nullable=False),
        pa.field("defects", pa.list_(DEFECT_TYPE), nullable=False),
        pa.field("split", pa.string()),  # ft | bench | null
        pa.field("difficulty", pa.string()),  # easy | hard | null (set by FT construction)
        pa.field("mode", pa.string()),  # thinking | reflective | null
        pa.field("target", pa.string()),  # the trajectory text (SFT target) or null
    ],
    metadata={"m3ad_rl.schema_version": str(SCHEMA_VERSION)},
)


@dataclass(slots=True)
class DefectRecord:
    type: str
    box: list[float]
    level2: str = ""
    level1: str = ""


@dataclass(slots=True)
class Sample:
    """One image with its labels; ``to_row``/``from_row`` convert to and from the Arrow schema."""

    id: str
    width: int
    height: int
    source: str
    category: str
    scene: str
    label: str
    defects: list[DefectRecord] = field(default_factory=list)
    image: bytes | None = None
    image_uri: str | None = None
    split: str | None = None
    difficulty: str | None = None
    mode: str | None = None
    target: str | None = None

    @property
    def anomalous(self) -> bool:
        return self.label == "anomalous"

    def ground_truth(self) -> dict:
        """The wire form of the label, as the rewards and metrics take it."""
        return {"label": self.label, "defects": [{"type": d.type, "box": list(d.box)} for d in self.defects]}

    def to_row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "image": self.image,
            "image_uri": self.image_uri,
            "width": self.width,
            "height": self.height,
            "source": self.source,
            "category": self.category,
            "scene": self.scene,
            "label": self.label,
            "defects": [
                {"type": d.type, "level2": d.level2, "level1": d.level1, "box": [float(v) for v in d.box]}
                for d in self.defects
            ],
            "split": self.split,
            "difficulty": self.difficulty,
            "mode": self.mode,
            "target": self.target,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Sample:
        defects = [
            DefectRecord(d["type"], [float(v) for v in d["box"]], d.get("level2", ""), d.get("level1", ""))
            for d in row.get("defects") or []
        ]
        return cls(
            id=row["id"],
            width=int(row["width"]),
            height=int(row["height"]),
            source=row["source"],
            category=row["category"],
            scene=row["scene"],
            label=row["label"],
            defects=defects,
            image=row.get("image"),
            image_uri=row.get("image_uri"),
            split=row.get("split"),
            difficulty=row.get("difficulty"),
            mode=row.get("mode"),
            target=row.get("target"),
        )

    def image_bytes(self) -> bytes:
        """The encoded image (the bytes, or read from the URL); a DataError names the sample."""
        data, why = _image_bytes(self)
        if data is None:
            raise DataError(f"sample {self.id!r}: {why}", "check that the image is where the dataset says")
        return data

    def load_image(self):
        """The image as an RGB PIL image (from the bytes or the URL); a DataError names the sample."""
        return decode_image(self.id, self.image_bytes())


def read_uri(uri: str) -> bytes:
    """Bytes of any fsspec URL."""
    import fsspec

    with fsspec.open(uri, "rb") as fh:
        return fh.read()


def validate(sample: Sample, taxonomy: Taxonomy | None = None, check_image: bool = True) -> list[str]:
    """Why ``sample`` cannot be written (empty when it can). Canonicalises types in place."""
    tax = taxonomy or default_taxonomy()
    errors: list[str] = []
    if not sample.id:
        errors.append("empty id")
    if sample.scene not in SCENES:
        errors.append(f"scene {sample.scene!r} not one of {list(SCENES)}")
    if sample.label not in LABELS:
        errors.append(f"label {sample.label!r} not one of {list(LABELS)}")
    for name, value, allowed in (
        ("split", sample.split, SPLITS),
        ("difficulty", sample.difficulty, DIFFICULTIES),
        ("mode", sample.mode, MODES),
    ):
        if value is not None and value not in allowed:
            errors.append(f"{name} {value!r} not one of {list(allowed)}")
    if sample.label == "normal" and sample.defects:
        errors.append("a normal image has defects")
    if sample.label == "anomalous" and not sample.defects:
        errors.append("an anomalous image has no defects")
    for i, d in enumerate(sample.defects):
        node = tax.lookup(d.type)
        if node is None or not node.is_fine:
            errors.append(f"defects[{i}]: unknown anomaly type {d.type!r}")
        else:
            d.type, d.level2, d.level1 = node.name, node.level2 or "", node.level1
        b = d.box
        if len(b) != 4 or not (0 <= b[0] < b[2] <= 1 and 0 <= b[1] < b[3] <= 1):
            errors.append(f"defects[{i}]: box {list(b)} is outside the image or empty")
    if (sample.image is None) == (sample.image_uri is None):
        errors.append("exactly one of image and image_uri must be set")
    elif check_image:
        errors.extend(_check_image(sample))
    return errors


def decode_image(sample_id: str, data: bytes, mode: str | None = "RGB"):
    """The fully decoded PIL image of one sample's encoded bytes (converted to ``mode`` unless None).

    A corrupt or truncated image raises a DataError naming the sample, for every reader to reuse
    (gallery, FT construction, training and evaluation workers).
    """
    img, why = _decode(data)
    if img is None:
        raise DataError(f"sample {sample_id!r}: {why}", "re-import or re-create the dataset, or leave the sample out")
    return img.convert(mode) if mode is not None and img.mode != mode else img


def _image_bytes(sample: Sample) -> tuple[bytes | None, str]:
    if sample.image is not None:
        return sample.image, ""
    try:
        return read_uri(sample.image_uri or ""), ""
    except (OSError, ValueError) as e:
        return None, f"image {sample.image_uri} cannot be read ({type(e).__name__}: {e})"


def _decode(data: bytes):
    """(decoded PIL image, "") or (None, why not)."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data))
        img.load()  # decodes the whole image: truncated files fail here
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        return None, f"image does not decode ({type(e).__name__}: {e})"
    return img, ""


def _check_image(sample: Sample) -> list[str]:
    data, why = _image_bytes(sample)
    img, why = _decode(data) if data is not None else (None, why)
    if img is None:
        return [why]
    if img.size != (sample.width, sample.height):
        return [f"image is {img.size[0]}x{img.size[1]}, row says {sample.width}x{sample.height}"]
    return []
