"""Score a file of predictions (``m3ad-rl eval score``): the SPEC §4 report from ``{id, scene, response,
ground_truth[, source]}`` lines; bad lines are skipped by number, nothing is written on a data error."""

from __future__ import annotations

import json

from m3ad_rl.core.errors import DataError
from m3ad_rl.core.ground_truth import GroundTruth
from m3ad_rl.core.guards import refuse_overwrite, require_file
from m3ad_rl.core.jsonl import LineErrors, read_records, require
from m3ad_rl.core.outputs import check_file, publish_file
from m3ad_rl.eval.metrics import EvalConfig, Prediction, check_excluded, evaluate, unique_predictions
from m3ad_rl.eval.report import markdown_report


def _prediction(obj: dict, pixels: bool = False) -> Prediction:
    source = obj.get("source")
    if source is not None and not isinstance(source, str):
        raise TypeError("field 'source' must be str")
    size = obj.get("image_size")
    if size is not None and not (isinstance(size, list) and len(size) == 2 and all(
            isinstance(v, int) and v > 0 for v in size)):  # fmt: skip
        raise ValueError(f"image_size must be [width, height] in pixels, got {size!r}")
    if pixels and size is None:
        raise ValueError("box_scale=pixels needs the line's image_size [width, height]")
    return Prediction(id=require(obj, "id"), scene=require(obj, "scene"), response=require(obj, "response"),
                      ground_truth=GroundTruth.from_obj(require(obj, "ground_truth", dict)), source=source,
                      image_size=tuple(size) if size else None)  # fmt: skip


def score_file(
    input: str,
    output: str,
    markdown: str | None = None,
    cfg: EvalConfig | None = None,
    config_file: str | None = None,
    overwrite: bool = False,
) -> tuple[dict, LineErrors]:
    """The report (also written as JSON to ``output`` and, if given, as Markdown) and the skipped lines.

    The outputs are new files (existing ones only with ``overwrite``: ``core.outputs``); an input with
    nothing to score, or ``exclude_sources`` that name no source of it or leave nothing, is a DataError
    and writes nothing."""
    cfg = cfg or EvalConfig()
    require_file(input)
    for path, option in ((output, "--output"), (markdown, "--markdown")):
        check_file(path, inputs=[input, config_file], overwrite=overwrite, option=option)
    refuse_overwrite([output], [markdown])
    errors = LineErrors(input)
    pixels = cfg.parse.box_scale == "pixels"
    rows = list(unique_predictions(read_records(input, lambda o: _prediction(o, pixels), errors), errors.add, input))
    if not rows:
        raise DataError(f"{input}: no prediction to score ({len(errors.skipped)} line(s) skipped)",
                        "give {id, scene, response, ground_truth} lines")  # fmt: skip
    check_excluded(cfg.exclude_sources, [r.source or "" for r in rows], input)
    report = evaluate(rows, cfg)
    report["skipped_lines"] = sorted(n for n, _ in errors.skipped)
    with publish_file(output) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    if markdown:
        with publish_file(markdown) as tmp:
            tmp.write_text(markdown_report(report))
    return report, errors
