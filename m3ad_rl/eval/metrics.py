"""M3-AD-Bench metrics (SPEC §4): per scene, then the unweighted mean over scenes.

Accuracy, balanced accuracy, Type Hard micro-F1 (s >= τ), Loc Hard micro-F1 (IoU >= 0.3) with
its IoU sweep, and the reflection report (Figure 5). ``evaluate`` takes parsed-able predictions
and returns the REPORT dict that ``m3ad-rl eval score`` writes.

Inputs are checked, never guessed at (docs/spec-readings.md §4): scene names match SPEC's four
scenes case-insensitively and any other name is an error listing them; an id may be scored once.
``unique_predictions`` applies the same rules to numbered input lines, naming the lines.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, field_validator

from m3ad_rl.core.errors import DataError, UsageError
from m3ad_rl.core.ground_truth import AnswerTally, GroundTruth
from m3ad_rl.core.matching import greedy_pairs
from m3ad_rl.core.output_format import ParseConfig, iou, parse
from m3ad_rl.core.taxonomy import SimilarityConfig, Taxonomy, default_taxonomy

SCENE_ORDER = ("texture", "workpiece", "electronic", "logical")  # SPEC §1's scenes, in table order
_EPS = 1e-9  # thresholds are inclusive; absorb float error such as IoU 0.29999999999999993


class EvalConfig(BaseModel):
    """How a benchmark run is scored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type_threshold: float = Field(0.5, ge=0, le=1, description="τ of Type Hard-F1 (SPEC §4).")
    iou_threshold: float = Field(0.3, gt=0, le=1, description="IoU of Loc Hard-F1 (SPEC §4).")
    iou_sweep: tuple[float, ...] = Field((0.1, 0.2, 0.3, 0.4, 0.5), description="Table 5 thresholds.")
    exclude_sources: tuple[str, ...] = Field((), description="Source datasets left out (e.g. real-iad).")
    scenes: tuple[str, ...] | None = Field(
        None, description="Scenes to report, in order; default: every scene present."
    )
    similarity: SimilarityConfig = SimilarityConfig()
    parse: ParseConfig = ParseConfig()

    @field_validator("scenes")
    @classmethod
    def _known_scenes(cls, scenes: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if scenes is None:
            return None
        unknown = [s for s in scenes if canonical_scene(s) is None]
        if unknown:
            raise ValueError(f"unknown scene(s) {unknown}; the scenes are {', '.join(SCENE_ORDER)}")
        return tuple(dict.fromkeys(canonical_scene(s) for s in scenes))


def canonical_scene(name: object) -> str | None:
    """One of SCENE_ORDER for ``name`` in any case and spacing ("Texture " -> "texture"), else None."""
    key = name.strip().lower() if isinstance(name, str) else None
    return key if key in SCENE_ORDER else None


@dataclass(slots=True)
class Prediction:
    """One benchmark sample with the model's response."""

    id: str
    scene: str
    response: str
    ground_truth: GroundTruth
    source: str | None = None
    image_size: tuple[int, int] | None = None


@dataclass
class _Tally(AnswerTally):
    """A scene's answer counts (before/after reflection) plus its type and box matches."""

    type_counts: list[int] = field(default_factory=lambda: [0, 0, 0])
    loc_counts: dict[float, list[int]] = field(default_factory=dict)


def f1(tp: int, fp: int, fn: int) -> float:
    """Micro-F1 = 2TP / (2TP + FP + FN); 0 when nothing was predicted or expected (as sklearn)."""
    d = 2 * tp + fp + fn
    return 2 * tp / d if d else 0.0


def balanced(pos: int, pos_correct: int, neg: int, neg_correct: int) -> float:
    """Mean recall over the classes present in the truth (sklearn's balanced_accuracy_score)."""
    recalls = [c / t for c, t in ((pos_correct, pos), (neg_correct, neg)) if t]
    return sum(recalls) / len(recalls) if recalls else 0.0


def evaluate(preds: Iterable[Prediction], cfg: EvalConfig | None = None, taxonomy: Taxonomy | None = None) -> dict:
    """The REPORT of SPEC §4 / ``eval score``: per-scene metrics, averages, IoU sweep, reflection."""
    cfg = cfg or EvalConfig()
    tax = taxonomy or default_taxonomy()
    thresholds = sorted({*cfg.iou_sweep, cfg.iou_threshold})
    excluded = {s.lower() for s in cfg.exclude_sources}
    tallies: dict[str, _Tally] = defaultdict(_Tally)
    rows = tax.similarity_rows(cfg.similarity)
    seen: set[str] = set()
    repeated: list[str] = []
    unknown: set[str] = set()
    for pr in preds:
        scene = canonical_scene(pr.scene)
        if scene is None:
            unknown.add(str(pr.scene))
            continue
        if pr.id in seen:
            repeated.append(pr.id)
            continue
        seen.add(pr.id)
        if pr.source is not None and pr.source.lower() in excluded:
            continue
        t = tallies[scene]
        if not t.loc_counts:
            t.loc_counts = {th: [0, 0, 0] for th in thresholds}
        _add(t, pr, cfg, tax, rows, thresholds)
    if unknown:
        raise unknown_scenes([repr(x) for x in sorted(unknown)])
    if repeated:
        raise DataError(f"ids scored more than once: {_some([repr(x) for x in repeated])}", "keep one per id")
    scenes = _scene_order(tallies, cfg.scenes)
    return _report(tallies, scenes, cfg, thresholds)


def unknown_scenes(names: list[str], where: str = "") -> DataError:
    return DataError(
        f"{where}unknown scene(s) {_some(names)}; the scenes are {', '.join(SCENE_ORDER)} (any case)",
        "fix the scene names",
    )


def _some(items: list, n: int = 5) -> str:
    """The first ``n`` items, and how many more."""
    shown = ", ".join(str(x) for x in items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


def unique_predictions(
    numbered: Iterable[tuple[int, Prediction]], skip: Callable[[int, str], None], where: str = "input"
) -> Iterator[Prediction]:
    """Predictions from numbered input lines, each id once and its scene canonical.

    A line that repeats an earlier one exactly (same id, scene, source, response and truth) goes
    to ``skip(line, reason)`` and is left out. An id repeated with other content, or a scene
    that is not one of SPEC's four, is a DataError naming the lines; it is raised once the whole
    input was read, so it lists every case.
    """
    first: dict[str, tuple[int, bytes]] = {}
    conflicts: list[str] = []
    unknown: dict[str, list[int]] = {}
    for lineno, pr in numbered:
        scene = canonical_scene(pr.scene)
        if scene is None:
            unknown.setdefault(str(pr.scene), []).append(lineno)
            continue
        pr.scene = scene
        digest = hashlib.blake2b(repr((scene, pr.source, pr.response, pr.ground_truth)).encode(), digest_size=16)
        if pr.id in first:
            line0, digest0 = first[pr.id]
            if digest0 == digest.digest():
                skip(lineno, f"repeats line {line0} (id {pr.id!r}); counted once")
            else:
                conflicts.append(f"{pr.id!r} (lines {line0} and {lineno})")
            continue
        first[pr.id] = (lineno, digest.digest())
        yield pr
    if unknown:
        names = [f"{name!r} (line {_some(lines, 3)})" for name, lines in unknown.items()]
        raise unknown_scenes(names, f"{where}: ")
    if conflicts:
        raise DataError(f"{where}: ids repeated with different content: {_some(conflicts)}", "keep one line per id")


def _add(t: _Tally, pr: Prediction, cfg: EvalConfig, tax: Taxonomy, rows: dict, thresholds: list[float]) -> None:
    gt = pr.ground_truth
    p = parse(pr.response, cfg.parse, pr.image_size)
    t.add(p, gt)
    says_yes = p.answer == "yes"
    ptypes = tax.resolve_set(p.types) if says_yes else []
    type_pairs = greedy_pairs(tax.type_scores(ptypes, gt.types, rows))
    tp = sum(1 for _, _, s in type_pairs if s >= cfg.type_threshold - _EPS)
    tc = t.type_counts
    tc[0] += tp
    tc[1] += len(ptypes) - tp
    tc[2] += len(gt.types) - tp
    pboxes = p.boxes if says_yes else []
    gboxes = gt.boxes
    matches = greedy_pairs([[iou(b, g) for g in gboxes] for b in pboxes])
    for th in thresholds:
        ltp = sum(1 for _, _, s in matches if s >= th - _EPS)
        lc = t.loc_counts[th]
        lc[0] += ltp
        lc[1] += len(pboxes) - ltp
        lc[2] += len(gboxes) - ltp


def _scene_order(tallies: dict[str, _Tally], wanted: tuple[str, ...] | None) -> list[str]:
    if wanted is not None:
        return [s for s in wanted if s in tallies]
    known = [s for s in SCENE_ORDER if s in tallies]
    return known + sorted(s for s in tallies if s not in SCENE_ORDER)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _report(tallies: dict[str, _Tally], scenes: list[str], cfg: EvalConfig, thresholds: list[float]) -> dict:
    per_scene: dict[str, dict] = {}
    sweep: dict[str, dict[str, float]] = {}
    refl: dict[str, dict] = {}
    for s in scenes:
        t = tallies[s]
        neg = t.n - t.pos
        per_scene[s] = {
            "n": t.n,
            "accuracy": t.correct / t.n,
            "balanced_accuracy": balanced(t.pos, t.pos_correct, neg, t.neg_correct),
            "type_f1": f1(*t.type_counts),
            "loc_f1": f1(*t.loc_counts[cfg.iou_threshold]),
        }
        sweep[s] = {_key(th): f1(*t.loc_counts[th]) for th in cfg.iou_sweep}
        reflected = t.reflected
        refl[s] = {
            "rate": reflected / t.n,
            "accuracy_before": t.pre_correct / t.n,
            "accuracy_after": t.correct / t.n,
            "balanced_accuracy_before": balanced(t.pos, t.pre_pos_correct, neg, t.pre_neg_correct),
            "balanced_accuracy_after": per_scene[s]["balanced_accuracy"],
            **{k: (v / reflected if reflected else 0.0) for k, v in t.outcomes.items()},
        }
    metric_keys = ("accuracy", "balanced_accuracy", "type_f1", "loc_f1")
    average = {k: _mean([per_scene[s][k] for s in scenes]) for k in metric_keys}
    refl_keys = ("rate", "accuracy_before", "accuracy_after", "balanced_accuracy_before", "balanced_accuracy_after")
    counts = {k: sum(tallies[s].outcomes[k] for s in scenes) for k in ("correct", "ineffective", "erroneous")}
    n_reflected = sum(tallies[s].reflected for s in scenes)
    reflection = {
        **{k: _mean([refl[s][k] for s in scenes]) for k in refl_keys},
        **{k: (v / n_reflected if n_reflected else 0.0) for k, v in counts.items()},
        "scenes": refl,
        "counts": {"reflected": n_reflected, **counts, "n": sum(tallies[s].n for s in scenes)},
    }
    return {
        "scenes": per_scene,
        "average": average,
        "loc_f1_by_iou": {_key(th): _mean([sweep[s][_key(th)] for s in scenes]) for th in cfg.iou_sweep},
        "loc_f1_by_iou_per_scene": sweep,
        "reflection": reflection,
        "config": cfg.model_dump(mode="json"),
    }


def _key(th: float) -> str:
    """JSON key of a threshold: 0.1 -> "0.1"."""
    return f"{th:g}"


def check_excluded(excluded: tuple[str, ...], sources: list[str], where: str) -> None:
    """``exclude_sources`` must name sources the data has, and leave something to score."""
    present = {s.lower() for s in sources if s}
    unknown = [s for s in excluded if s.lower() not in present]
    if unknown:
        have = ", ".join(sorted(present)) or "none"
        raise UsageError(f"exclude_sources {unknown}: no such source in {where} (it has: {have})",
                         "name sources the data has")  # fmt: skip
    if excluded and all((s or "").lower() in {e.lower() for e in excluded} for s in sources):
        raise DataError(f"exclude_sources {list(excluded)} leaves nothing of {where} to score",
                        "exclude fewer sources")  # fmt: skip
