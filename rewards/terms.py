"""The three reward terms of SPEC §3 as pure functions of a parsed output and its ground truth.

Readings of SPEC where it is silent are listed in docs/spec-readings.md.
"""

from __future__ import annotations

from m3ad_rl.core.ground_truth import GroundTruth, Outcome, reflection_outcome
from m3ad_rl.core.matching import matched_mean
from m3ad_rl.core.output_format import ParsedOutput, iou
from m3ad_rl.core.taxonomy import SimilarityConfig, Taxonomy
from rewards.presets import ReflectionValues

__all__ = ["consistency", "gated_accuracy", "reflection_outcome", "reflection_reward"]


def consistency(parsed: ParsedOutput, gt: GroundTruth, reference: str = "prediction") -> float:
    """R_con ∈ {0,1}: well-formed tags, a yes/no answer, and the fields the verdict requires.

    "yes" needs a non-empty ``<type>`` and a ``<location>`` with at least one valid box;
    "no" must have neither tag. ``reference`` picks whose verdict sets that pattern.
    """
    if not parsed.well_formed or parsed.answer is None:
        return 0.0
    verdict = parsed.answer if reference == "prediction" else gt.verdict
    if verdict == "yes":
        return 1.0 if parsed.types and parsed.boxes else 0.0
    return 1.0 if parsed.type_text is None and parsed.location_text is None else 0.0


def gated_accuracy(
    parsed: ParsedOutput, gt: GroundTruth, taxonomy: Taxonomy, similarity: SimilarityConfig
) -> tuple[float, float, float]:
    """(R_ans, R_type, R_loc). Type and location count only for a correct "yes" on an anomaly."""
    if parsed.answer != gt.verdict:
        return 0.0, 0.0, 0.0
    if not gt.anomalous:
        return 1.0, 0.0, 0.0
    rows = taxonomy.similarity_rows(similarity)
    r_type = matched_mean(taxonomy.type_scores(taxonomy.resolve_set(parsed.types), gt.types, rows), len(gt.types))
    r_loc = matched_mean([[iou(p, g) for g in gt.boxes] for p in parsed.boxes], len(gt.boxes))
    return 1.0, r_type, r_loc


def reflection_reward(outcome: Outcome, values: ReflectionValues) -> float:
    """R_ref for an outcome under a preset; 0 when there is no reflection."""
    if outcome == "none":
        return 0.0
    return getattr(values, outcome)
