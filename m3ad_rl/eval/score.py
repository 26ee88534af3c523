"""Score a file of predictions (``m3ad-rl eval score``): the SPEC §4 report from ``{id, scene, response,
ground_truth[, source]}`` lines; bad lines are skipped by number, nothing is written on a data error."""

from __future__ import annotations

import json

from m3ad_rl.core.ground_truth import GroundTruth
from m3ad_rl.core.guards import refuse_overwrite, replaced_when_done, require_file, require_output_file
from m3ad_rl.core.jsonl import LineErrors, read_records, require
from m3ad_rl.eval.metrics import EvalConfig, Prediction, evaluate, unique_predictions
from m3ad_rl.eval.report import markdown_report


def _prediction(obj: dict) -> Prediction:
    source = obj.get("source")
    if source is not None and not isinstance(source, str):
        raise TypeError("field 'source' must be str")
    return Prediction(id=require(obj, "id"), scene=require(obj, "scene"), response=require(obj, "response"),
                      ground_truth=GroundTruth.from_obj(require(obj, "ground_truth", dict)), source=source)  # fmt: skip


def score_file(
    input: str, output: str, markdown: str | None = None, cfg: EvalConfig | None = None, config_file: str | None = None
) -> tuple[dict, LineErrors]:
    """The report (also written as JSON to ``output`` and, if given, as Markdown) and the skipped lines."""
    require_file(input)
    require_output_file(output)
    if markdown:
        require_output_file(markdown, "--markdown")
    refuse_overwrite([input, config_file], [output, markdown])
    errors = LineErrors(input)
    records = read_records(input, _prediction, errors)
    report = evaluate(unique_predictions(records, errors.add, input), cfg or EvalConfig())
    report["skipped_lines"] = sorted(n for n, _ in errors.skipped)
    with replaced_when_done(output) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    if markdown:
        with replaced_when_done(markdown) as tmp:
            tmp.write_text(markdown_report(report))
    return report, errors
