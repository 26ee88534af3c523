"""RewardFunction: parse a response once, compute every term, and weight them by the config.

>>> fn = RewardFunction()
>>> r = fn("<think>Looks clean. Initial answer: no.</think><answer>no</answer>",
...        {"label": "normal", "defects": []})
>>> r.score, r.consistency, r.answer, r.reflection_outcome
(2.0, 1.0, 1.0, 'none')
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from m3ad_rl.core.ground_truth import GroundTruth
from m3ad_rl.core.output_format import ParsedOutput, parse
from m3ad_rl.core.taxonomy import Taxonomy, default_taxonomy
from rewards.config import RewardConfig
from rewards.terms import Outcome, consistency, gated_accuracy, reflection_outcome, reflection_reward


@dataclass(slots=True)
class RewardResult:
    """The total and every part, unweighted, so each can be logged."""

    score: float
    consistency: float
    answer: float
    type: float
    location: float
    reflection: float
    reflection_outcome: Outcome

    @property
    def accuracy(self) -> float:
        """R_acc = R_ans + R_type + R_loc."""
        return self.answer + self.type + self.location

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# The weighted parts, in the order of the dataclass: the one list every log, metric and CLI output uses.
PART_NAMES: tuple[str, ...] = tuple(
    f.name for f in fields(RewardResult) if f.name not in ("score", "reflection_outcome")
)


class RewardFunction:
    """R = λc·R_con + λa·R_acc + λr·R_ref, with terms switched off by ``cfg.enabled``."""

    def __init__(self, cfg: RewardConfig | None = None, taxonomy: Taxonomy | None = None):
        self.cfg = cfg or RewardConfig()
        self.taxonomy = taxonomy or default_taxonomy()
        self._values = self.cfg.reflection.values()
        w, on = self.cfg.weights, self.cfg.enabled
        self._wc = w.consistency if on.consistency else 0.0
        self._wa = w.accuracy if on.accuracy else 0.0
        self._wr = w.reflection if on.reflection else 0.0

    def __call__(
        self, response: str, ground_truth: GroundTruth | dict | str, image_size: tuple[int, int] | None = None
    ) -> RewardResult:
        """Score one response. ``ground_truth`` may be a GroundTruth or its wire form."""
        gt = ground_truth
        if not isinstance(gt, GroundTruth):
            gt = GroundTruth.from_obj(gt, self.taxonomy)
        return self.score_parsed(parse(response, self.cfg.parse, image_size), gt)

    def score_parsed(self, parsed: ParsedOutput, gt: GroundTruth) -> RewardResult:
        con = consistency(parsed, gt, self.cfg.consistency.reference)
        ans, typ, loc = gated_accuracy(parsed, gt, self.taxonomy, self.cfg.similarity)
        outcome = reflection_outcome(parsed, gt)
        ref = reflection_reward(outcome, self._values)
        score = self._wc * con + self._wa * (ans + typ + loc) + self._wr * ref
        return RewardResult(score, con, ans, typ, loc, ref, outcome)

    def score_batch(
        self,
        responses: Sequence[str],
        ground_truths: Sequence[GroundTruth | dict | str],
        image_sizes: Iterable[tuple[int, int] | None] | None = None,
    ) -> list[RewardResult]:
        """Score aligned lists; a GRPO group is simply n consecutive entries."""
        if len(responses) != len(ground_truths):
            raise ValueError(f"{len(responses)} responses but {len(ground_truths)} ground truths")
        sizes = list(image_sizes) if image_sizes is not None else [None] * len(responses)
        return [self(r, g, s) for r, g, s in zip(responses, ground_truths, sizes, strict=True)]
