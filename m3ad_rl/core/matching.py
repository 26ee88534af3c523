"""One-to-one greedy matching, shared by the rewards (R_type, R_loc) and the F1 metrics.

SPEC §3/§4 say "one-to-one greedy matching": take the highest-scoring (prediction, truth) pair,
remove both, repeat. Ties go to the earlier prediction, then the earlier truth, so results are
deterministic. Pairs scoring 0 are never matched. Inputs are score matrices
(``scores[i][j]`` = score of prediction i against truth j), built by the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

P = TypeVar("P")
G = TypeVar("G")


def score_matrix(preds: Sequence[P], truths: Sequence[G], score: Callable[[P, G], float]) -> list[list[float]]:
    """``[[score(p, g) for g in truths] for p in preds]``."""
    return [[score(p, g) for g in truths] for p in preds]


def greedy_pairs(scores: list[list[float]]) -> list[tuple[int, int, float]]:
    """Matched ``(pred_index, truth_index, score)`` triples, highest score first."""
    if not scores or not scores[0]:
        return []
    if len(scores) == 1 or len(scores[0]) == 1:  # greedy = the single best pair; no sort needed
        best, bi, bj = 0.0, -1, -1
        for i, row in enumerate(scores):
            for j, s in enumerate(row):
                if s > best:
                    best, bi, bj = s, i, j
        return [(bi, bj, best)] if bi >= 0 else []
    pairs = []
    for i, row in enumerate(scores):
        for j, s in enumerate(row):
            if s > 0:
                pairs.append((-s, i, j))
    pairs.sort()
    used_p = [False] * len(scores)
    used_g = [False] * len(scores[0])
    out = []
    for neg, i, j in pairs:
        if used_p[i] or used_g[j]:
            continue
        used_p[i] = used_g[j] = True
        out.append((i, j, -neg))
    return out


def greedy_sum(scores: list[list[float]]) -> float:
    """Σ of the greedily matched scores (the same matching as ``greedy_pairs``, summed)."""
    if not scores or not scores[0]:
        return 0.0
    if len(scores) == 1:
        best = max(scores[0])
    elif len(scores[0]) == 1:
        best = max([row[0] for row in scores])
    else:
        return sum([s for _, _, s in greedy_pairs(scores)])
    return best if best > 0 else 0.0


def matched_mean(scores: list[list[float]], n_truths: int) -> float:
    """Σ matched score / max(|P|, |G|), the form of R_type and R_loc; 0 when both are empty."""
    denom = len(scores) if len(scores) > n_truths else n_truths
    return greedy_sum(scores) / denom if denom else 0.0
