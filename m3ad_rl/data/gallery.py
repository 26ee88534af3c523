"""Contact sheet of samples with their boxes and labels drawn, for people to look at."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from PIL import Image, ImageDraw

from m3ad_rl.core.errors import DataError
from m3ad_rl.data.schema import Sample

BOX_COLORS = [(255, 40, 40), (255, 220, 0), (0, 200, 255), (255, 0, 200)]


def contact_sheet(
    samples: Iterable[Sample],
    cols: int = 6,
    thumb: int = 224,
    on_error: Callable[[Sample, DataError], None] | None = None,
) -> Image.Image:
    """A grid of thumbnails; each shows the category, the label and every box with its type.

    An image that does not decode raises a DataError naming the sample, or, with ``on_error``, is
    passed to it and left out."""
    tiles = []
    for s in samples:
        try:
            img = s.load_image().resize((thumb, thumb))
        except DataError as e:
            if on_error is None:
                raise
            on_error(s, e)
            continue
        d = ImageDraw.Draw(img)
        for k, defect in enumerate(s.defects):
            x1, y1, x2, y2 = (v * thumb for v in defect.box)
            color = BOX_COLORS[k % len(BOX_COLORS)]
            d.rectangle([x1, y1, x2, y2], outline=color, width=2)
            d.text((x1 + 2, max(0, y1 - 11)), defect.type, fill=color)
        d.rectangle([0, thumb - 14, thumb, thumb], fill=(0, 0, 0))
        d.text((3, thumb - 13), f"{s.category} | {s.label}", fill=(255, 255, 255))
        tiles.append(img)
    if not tiles:
        raise DataError("no sample could be drawn: every image failed to decode", "check the dataset")
    rows = (len(tiles) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * (thumb + 4), rows * (thumb + 4)), (255, 255, 255))
    for i, t in enumerate(tiles):
        sheet.paste(t, ((i % cols) * (thumb + 4) + 2, (i // cols) * (thumb + 4) + 2))
    return sheet


def write_gallery(
    input: str, out: str, n: int = 24, cols: int = 6, seed: int = 0, anomalous_only: bool = False,
    on_error: Callable[[Sample, DataError], None] | None = None, overwrite: bool = False,
) -> tuple[int, list[str]]:  # fmt: skip
    """A contact sheet of ``n`` random samples of ``input`` saved as ``out`` (.png/.jpg, replaced only
    when complete); returns (samples drawn, ids left out because their image did not decode)."""
    import random
    from pathlib import Path

    from m3ad_rl.core.errors import UsageError
    from m3ad_rl.core.outputs import check_file, publish_file
    from m3ad_rl.data.store import iter_samples

    if Path(out).suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise UsageError(f"--out {out} must end in .png or .jpg", "name the image file")
    check_file(out, inputs=[input], overwrite=overwrite, option="--out")
    pool = [s for s in iter_samples(input) if s.anomalous or not anomalous_only]
    if not pool:
        what = "no anomalous samples" if anomalous_only else "no samples"
        todo = "drop --anomalous-only or choose another dataset" if anomalous_only else "choose a dataset with samples"
        raise UsageError(f"{what} to show in {input}", todo)
    chosen = random.Random(seed).sample(pool, min(n, len(pool)))
    broken: list[str] = []

    def left_out(sample: Sample, error: DataError) -> None:
        broken.append(sample.id)
        if on_error:
            on_error(sample, error)

    sheet = contact_sheet(chosen, cols=cols, on_error=left_out)
    with publish_file(out) as tmp:
        sheet.save(tmp, format="PNG" if Path(out).suffix.lower() == ".png" else "JPEG")
    return len(chosen) - len(broken), broken
