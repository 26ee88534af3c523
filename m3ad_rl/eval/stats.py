"""Intervals a reader can trust: the paired difference of two models' balanced accuracy over seeds.

Two models evaluated on the same images with several training seeds (RAWS and RCRL of seed s share
seed s's SFT) differ by ``Δ = mean over seeds of (Bal_new(s) − Bal_base(s))``, where Bal is SPEC §4's
balanced accuracy per scene averaged over the scenes. Its uncertainty has two sources, the images
(a finite test set) and the seeds (training randomness), and they are crossed: every seed is scored on
the same images. So the bootstrap resamples both: each replicate draws the images once, with replacement
within each scene (scene sizes kept), and applies that draw to every seed and to both models (paired),
and draws the seeds with replacement. The 95 % interval is the replicates' 2.5 and 97.5 percentiles.

    from m3ad_rl.eval.stats import load_outcomes, paired_difference
    base = [load_outcomes(f"runs/reproduce/seed-{s}/eval/raws/ft-heldout/predictions.jsonl") for s in (0, 1, 2)]
    new = [load_outcomes(f"runs/reproduce/seed-{s}/eval/rcrl/ft-heldout/predictions.jsonl") for s in (0, 1, 2)]
    paired_difference(base, new)  # {"mean": …, "lo": …, "hi": …, "per_seed": […], …}
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Outcomes:
    """One model's per-image results on one test set, sorted by id: the scene, the truth, whether the
    final answer was right, whether it reflected, and the reflection's outcome (or "")."""

    ids: tuple[str, ...]
    scene: np.ndarray  # [N] str
    anomalous: np.ndarray  # [N] bool
    correct: np.ndarray  # [N] bool
    reflected: np.ndarray  # [N] bool
    outcome: np.ndarray  # [N] str: correct | ineffective | erroneous | ""


def load_outcomes(predictions: str) -> Outcomes:
    """Per-image results of an ``eval run``'s predictions.jsonl (any URL), scored as ``eval/metrics`` does."""
    from m3ad_rl.core import storage
    from m3ad_rl.core.ground_truth import GroundTruth, reflection_outcome
    from m3ad_rl.core.output_format import parse
    from m3ad_rl.eval.metrics import canonical_scene

    rows = {}
    for line in storage.read_text(predictions).splitlines():
        if line.strip():
            r = json.loads(line)
            rows[r["id"]] = r
    ids = tuple(sorted(rows))
    scene, pos, ok, refl, outc = [], [], [], [], []
    for i in ids:
        r = rows[i]
        gt = GroundTruth.from_obj(r["ground_truth"])
        p = parse(r["response"])
        truth = "yes" if gt.anomalous else "no"
        scene.append(canonical_scene(r["scene"]) or r["scene"])
        pos.append(gt.anomalous)
        ok.append(p.answer == truth)
        refl.append(p.reflection is not None)
        outc.append(reflection_outcome(p, gt) if p.reflection is not None else "")
    return Outcomes(ids, np.array(scene), np.array(pos), np.array(ok), np.array(refl), np.array(outc))


def balanced_accuracy(o: Outcomes, weights: np.ndarray | None = None) -> float:
    """SPEC §4's average balanced accuracy (per scene, then the unweighted mean), optionally with image weights."""
    w = np.ones(len(o.ids)) if weights is None else weights
    return float(_bal(w[None, :], o.correct[None, :], o.anomalous, o.scene)[0, 0])


def _bal(w: np.ndarray, correct: np.ndarray, anomalous: np.ndarray, scene: np.ndarray) -> np.ndarray:
    """[B, S] average balanced accuracy for image weights ``w`` [B, N] and correctness ``correct`` [S, N]."""
    per_scene = []
    for sc in dict.fromkeys(scene.tolist()):
        recalls = []
        for cls in (True, False):
            m = (scene == sc) & (anomalous == cls)
            if not m.any():
                continue
            total = w[:, m].sum(1, keepdims=True)  # [B, 1]
            hits = w[:, m] @ correct[:, m].T.astype(float)  # [B, S]
            recalls.append(hits / np.maximum(total, 1e-12))
        per_scene.append(sum(recalls) / len(recalls))
    return sum(per_scene) / len(per_scene)


def _aligned(base: list[Outcomes], new: list[Outcomes]) -> None:
    if len(base) != len(new) or not base:
        raise ValueError(f"need the same seeds for both models ({len(base)} vs {len(new)} result sets)")
    for b, n in zip(base, new, strict=True):
        if b.ids != base[0].ids or n.ids != base[0].ids:
            raise ValueError("paired comparison needs every model and seed scored on the same images")


def paired_difference(
    base: list[Outcomes], new: list[Outcomes], n_boot: int = 4000, seed: int = 0, level: float = 0.95
) -> dict:
    """Δ Bal = mean over seeds of Bal(new_s) − Bal(base_s), with a bootstrap interval over images and seeds.

    ``base[s]`` and ``new[s]`` are seed s's two models on the same images. Returns ``mean``, ``lo``, ``hi``
    (the ``level`` percentile interval), ``per_seed`` (Δ of each seed), ``n_images``, ``n_seeds``."""
    _aligned(base, new)
    ref = base[0]
    n, k = len(ref.ids), len(base)
    cb = np.stack([b.correct for b in base])  # [S, N]
    cn = np.stack([x.correct for x in new])
    per_seed = (_bal(np.ones((1, n)), cn, ref.anomalous, ref.scene) - _bal(np.ones((1, n)), cb, ref.anomalous,
                                                                            ref.scene))[0]  # fmt: skip
    rng = np.random.default_rng(seed)
    w = np.zeros((n_boot, n))
    for sc in dict.fromkeys(ref.scene.tolist()):  # images: resampled within each scene, shared by seeds and models
        idx = np.flatnonzero(ref.scene == sc)
        draws = rng.integers(0, len(idx), size=(n_boot, len(idx)))
        np.add.at(w, (np.arange(n_boot)[:, None], idx[draws]), 1.0)
    seeds = rng.multinomial(k, np.full(k, 1 / k), size=n_boot) / k  # [B, S] weight of each seed
    diff = _bal(w, cn, ref.anomalous, ref.scene) - _bal(w, cb, ref.anomalous, ref.scene)  # [B, S]
    reps = (diff * seeds).sum(1)
    tail = (1 - level) / 2
    return {
        "mean": float(per_seed.mean()),
        "lo": float(np.quantile(reps, tail)),
        "hi": float(np.quantile(reps, 1 - tail)),
        "per_seed": [float(x) for x in per_seed],
        "n_images": n,
        "n_seeds": k,
        "level": level,
    }


def interval(values: list[float], n_boot: int = 4000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean of per-seed values with a bootstrap interval over the seeds alone (for numbers with no images)."""
    v = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    reps = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(1)
    tail = (1 - level) / 2
    return {"mean": float(v.mean()), "lo": float(np.quantile(reps, tail)), "hi": float(np.quantile(reps, 1 - tail))}


def reflection_totals(results: list[Outcomes]) -> dict[str, int]:
    """Reflection counts summed over result sets, with their totals (responses, reflections)."""
    out = {"responses": 0, "reflected": 0, "correct": 0, "ineffective": 0, "erroneous": 0}
    for o in results:
        out["responses"] += len(o.ids)
        out["reflected"] += int(o.reflected.sum())
        for k in ("correct", "ineffective", "erroneous"):
            out[k] += int((o.outcome == k).sum())
    return out
