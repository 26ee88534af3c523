"""Score a JSONL file of responses (``m3ad-rl reward score``): one output line per valid input line; a bad
line is skipped with its line number and reason, and the output is replaced only when complete."""

from __future__ import annotations

import time
from dataclasses import dataclass

from m3ad_rl.core.ground_truth import GroundTruth
from m3ad_rl.core.guards import require_file
from m3ad_rl.core.jsonl import LineErrors, read_records, require, write_jsonl
from rewards.scorer import RewardFunction


@dataclass
class ScoreSummary:
    n: int
    mean: float
    seconds: float
    errors: LineErrors


def score_file(
    input: str,
    output: str,
    fn: RewardFunction | None = None,
    config_file: str | None = None,
    overwrite: bool = False,
) -> ScoreSummary:
    """``{id, response, ground_truth[, image_size]}`` lines in, ``{id, score, <every part>, reflection_outcome}``
    lines out. The output is new (an existing file only with ``overwrite``: ``core.outputs``) and replaced
    only when complete; an input with no scorable line is a DataError and writes nothing."""
    from m3ad_rl.core.errors import DataError
    from m3ad_rl.core.outputs import check_file, publish_file

    require_file(input)
    check_file(output, inputs=[input, config_file], overwrite=overwrite)
    fn = fn or RewardFunction()
    pixels = fn.cfg.parse.box_scale == "pixels"

    def convert(obj: dict) -> tuple[str, str, GroundTruth, tuple[int, int] | None]:
        size = obj.get("image_size")
        if size is not None and not (isinstance(size, list) and len(size) == 2 and all(
                isinstance(v, int) and v > 0 for v in size)):  # fmt: skip
            raise ValueError(f"image_size must be [width, height] in pixels, got {size!r}")
        if pixels and size is None:
            raise ValueError("box_scale=pixels needs the line's image_size [width, height]")
        gt = GroundTruth.from_obj(require(obj, "ground_truth", dict))
        return require(obj, "id"), require(obj, "response"), gt, tuple(size) if size else None

    errors = LineErrors(input)
    n, total, t0 = 0, 0.0, time.perf_counter()
    with publish_file(output) as tmp, open(tmp, "wb") as out:
        for _, (rid, response, gt, size) in read_records(input, convert, errors):
            r = fn(response, gt, size)
            write_jsonl(out, {"id": rid, **r.to_dict()})
            n, total = n + 1, total + r.score
        if n == 0:
            raise DataError(f"{input}: no line to score ({len(errors.skipped)} skipped)",
                            "give {id, response, ground_truth} lines")  # fmt: skip
    return ScoreSummary(n, total / n, time.perf_counter() - t0, errors)
