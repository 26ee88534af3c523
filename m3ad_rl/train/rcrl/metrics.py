"""RCRL's per-step reward metrics: the mean score and each reward part, and the same before/after-
reflection tally the evaluation report uses (``AnswerTally``), over the step's responses."""

from __future__ import annotations

import numpy as np

from m3ad_rl.core.ground_truth import AnswerTally, GroundTruth
from m3ad_rl.core.output_format import parse
from rewards.scorer import PART_NAMES


def reward_metrics(texts: list[str], gts: list[dict], parts: list[dict]) -> dict[str, float]:
    """``reward/*`` (score mean and std, each part's mean), ``reflection/*`` (rate and outcome counts)
    and ``acc/before_reflection`` / ``acc/after_reflection``."""
    scores = np.array([p["score"] for p in parts], dtype=np.float64)
    m = {"reward/score": float(scores.mean()), "reward/score_std": float(scores.std())}
    m.update({f"reward/{k}": float(np.mean([p[k] for p in parts])) for k in PART_NAMES})
    tally = AnswerTally()
    for text, gt in zip(texts, gts, strict=True):
        tally.add(parse(text), GroundTruth.from_obj(gt))
    n = max(tally.n, 1)
    m.update({f"reflection/{k}": float(v) for k, v in tally.outcomes.items()})
    m.update({"reflection/rate": tally.reflected / n, "acc/before_reflection": tally.pre_correct / n,
              "acc/after_reflection": tally.correct / n})  # fmt: skip
    return m
