"""One-to-one greedy matching, shared by the rewards (R_type, R_loc) and the F1 metrics.

SPEC §3/§4 say "one-to-one greedy matching": take the highest-scoring (prediction, truth) pair,
remove both, repeat. Ties go to the earlier prediction, then the earlier truth, so results are
deterministic. Pairs scoring 0 are never matched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

P = TypeVar("P")
G = TypeVar("G")


def greedy_match(
    preds: Sequence[P], truths: Sequence[G], score: Callable[[P, G], float]
) -> list[tuple[int, int, float]]:
    """Matched ``(pred_index, truth_index, score)`` triples, highest score first."""
    if not preds or not truths:
        return []
    if len(preds) == 1 and len(truths) == 1:  # the common case, without the sort
        s = score(preds[0], truths[0])
        return [(0, 0, s)] if s > 0 else []
    pairs = []
    for i, p in enumerate(preds):
        for j, g in enumerate(truths):
            s = score(p, g)
            if s > 0:
                pairs.append((-s, i, j))
    pairs.sort()
    used_p = [False] * len(preds)
    used_g = [False] * len(truths)
    out = []
    for neg, i, j in pairs:
        if used_p[i] or used_g[j]:
            continue
        used_p[i] = used_g[j] = True
        out.append((i, j, -neg))
    return out


def matched_mean(preds: Sequence[P], truths: Sequence[G], score: Callable[[P, G], float]) -> float:
    """Σ matched score / max(|P|, |G|), the form of R_type and R_loc; 0 when both are empty."""
    denom = max(len(preds), len(truths))
    if denom == 0:
        return 0.0
    return sum(s for _, _, s in greedy_match(preds, truths, score)) / denom


def hard_counts(
    preds: Sequence[P], truths: Sequence[G], score: Callable[[P, G], float], threshold: float
) -> tuple[int, int, int]:
    """(TP, FP, FN) for a Hard-F1: a matched pair with score >= threshold is a true positive."""
    tp = sum(1 for _, _, s in greedy_match(preds, truths, score) if s >= threshold)
    return tp, len(preds) - tp, len(truths) - tp
