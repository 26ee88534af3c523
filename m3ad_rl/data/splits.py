"""Cross-category splits (SPEC §5): within each scene some categories are FT-only, the rest are
held out for the benchmark, by explicit lists or a seeded fraction. A category is never on both
sides: ``check_disjoint`` refuses such a split."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, Field


class SplitConfig(BaseModel):
    """How categories are divided between M3-AD-FT and M3-AD-Bench."""

    model_config = ConfigDict(extra="forbid")

    seed: int = Field(0, description="Seed of the random choice of benchmark categories.")
    bench_fraction: float = Field(
        0.34, gt=0, lt=1, description="Share of each scene's categories held out (at least one, never all)."
    )
    bench: dict[str, list[str]] = Field(
        default_factory=dict, description="Explicit benchmark categories per scene (overrides the fraction)."
    )
    ft: dict[str, list[str]] = Field(
        default_factory=dict, description="Explicit FT categories per scene (the rest of the scene is bench)."
    )


class SplitError(ValueError):
    """A split that would leak a category into both sets, or leave a set empty."""


def assign(categories: Iterable[tuple[str, str]], cfg: SplitConfig) -> dict[tuple[str, str], str]:
    """(scene, category) -> "ft" | "bench" for every category seen."""
    by_scene: dict[str, list[str]] = defaultdict(list)
    for scene, cat in sorted(set(categories)):
        by_scene[scene].append(cat)
    out: dict[tuple[str, str], str] = {}
    for scene, cats in by_scene.items():
        bench_list, ft_list = cfg.bench.get(scene), cfg.ft.get(scene)
        if bench_list is not None and ft_list is not None:
            both = set(bench_list) & set(ft_list)
            if both:
                raise SplitError(f"scene {scene}: categories {sorted(both)} are listed for both ft and bench")
        if bench_list is not None:
            bench = set(bench_list)
        elif ft_list is not None:
            bench = set(cats) - set(ft_list)
        elif len(cats) < 2:
            bench = set()  # one category: nothing to hold out
        else:
            k = min(len(cats) - 1, max(1, round(cfg.bench_fraction * len(cats))))
            bench = set(random.Random(f"{cfg.seed}/{scene}").sample(cats, k))
        unknown = bench - set(cats)
        if unknown:
            raise SplitError(f"scene {scene}: unknown categories {sorted(unknown)}; present: {cats}")
        for cat in cats:
            out[(scene, cat)] = "bench" if cat in bench else "ft"
    return out


def check_disjoint(ft: Iterable[tuple[str, str]], bench: Iterable[tuple[str, str]]) -> None:
    """Refuse a split where a (scene, category) is in both sets."""
    both = set(ft) & set(bench)
    if both:
        raise SplitError(f"categories on both sides of the split: {sorted(both)}")
