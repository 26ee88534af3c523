"""Score a JSONL file of responses (``m3ad-rl reward score``): one output line per valid input line; a bad
line is skipped with its line number and reason, and the output is replaced only when complete."""

from __future__ import annotations

import time
from dataclasses import dataclass

from m3ad_rl.core.ground_truth import GroundTruth
from m3ad_rl.core.guards import refuse_overwrite, replaced_when_done, require_file, require_output_file
from m3ad_rl.core.jsonl import LineErrors, read_records, require, write_jsonl
from rewards.scorer import RewardFunction


@dataclass
class ScoreSummary:
    n: int
    mean: float
    seconds: float
    errors: LineErrors


def score_file(
    input: str, output: str, fn: RewardFunction | None = None, config_file: str | None = None
) -> ScoreSummary:
    """``{id, response, ground_truth}`` lines in, ``{id, score, <every part>, reflection_outcome}`` lines out."""
    require_file(input)
    require_output_file(output)
    refuse_overwrite([input, config_file], [output])
    fn = fn or RewardFunction()

    def convert(obj: dict) -> tuple[str, str, GroundTruth]:
        return require(obj, "id"), require(obj, "response"), GroundTruth.from_obj(require(obj, "ground_truth", dict))

    errors = LineErrors(input)
    n, total, t0 = 0, 0.0, time.perf_counter()
    with replaced_when_done(output) as tmp, open(tmp, "wb") as out:
        for _, (rid, response, gt) in read_records(input, convert, errors):
            r = fn(response, gt)
            write_jsonl(out, {"id": rid, **r.to_dict()})
            n, total = n + 1, total + r.score
    return ScoreSummary(n, total / n if n else 0.0, time.perf_counter() - t0, errors)
