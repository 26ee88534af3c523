"""Cross-category splits (SPEC §5): within each scene some categories are FT-only, the rest are
held out for the benchmark, by explicit lists or a seeded fraction. A category is never on both
sides: ``check_disjoint`` refuses such a split. A scene or category named in the lists must exist
(a misspelt one is an error listing the valid names, never silently ignored)."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, field_validator

from m3ad_rl.core.errors import DataError, UsageError
from m3ad_rl.data.schema import SCENES
from m3ad_rl.data.store import WriteReport


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

    @field_validator("bench", "ft")
    @classmethod
    def _known_scenes(cls, lists: dict[str, list[str]]) -> dict[str, list[str]]:
        unknown = sorted(set(lists) - set(SCENES))
        if unknown:
            raise ValueError(f"unknown scene(s) {unknown}; the scenes are {', '.join(SCENES)}")
        return lists


class SplitError(UsageError, ValueError):
    """A split that would leak a category into both sets, or names a scene or category not in the data."""

    def __init__(self, what: str):
        super().__init__(what, "fix the split's bench/ft lists (--config or --set)")


def assign(categories: Iterable[tuple[str, str]], cfg: SplitConfig) -> dict[tuple[str, str], str]:
    """(scene, category) -> "ft" | "bench" for every category seen."""
    by_scene: dict[str, list[str]] = defaultdict(list)
    for scene, cat in sorted(set(categories)):
        by_scene[scene].append(cat)
    for side, lists in (("bench", cfg.bench), ("ft", cfg.ft)):
        absent = sorted(set(lists) - set(by_scene))
        if absent:
            have = ", ".join(sorted(by_scene))
            raise SplitError(f"{side} names scene(s) {absent} that the input does not have; its scenes: {have}")
    out: dict[tuple[str, str], str] = {}
    for scene, cats in by_scene.items():
        bench_list, ft_list = cfg.bench.get(scene), cfg.ft.get(scene)
        if bench_list is not None and ft_list is not None:
            both = set(bench_list) & set(ft_list)
            if both:
                raise SplitError(f"scene {scene}: categories {sorted(both)} are listed for both ft and bench")
        for side, listed in (("bench", bench_list), ("ft", ft_list)):
            unknown = sorted(set(listed or ()) - set(cats))
            if unknown:
                raise SplitError(f"scene {scene}: unknown categories {unknown} in {side}; present: {cats}")
        if bench_list is not None:
            bench = set(bench_list)
        elif ft_list is not None:
            bench = set(cats) - set(ft_list)
        elif len(cats) < 2:
            bench = set()  # one category: nothing to hold out
        else:
            k = min(len(cats) - 1, max(1, round(cfg.bench_fraction * len(cats))))
            bench = set(random.Random(f"{cfg.seed}/{scene}").sample(cats, k))
        for cat in cats:
            out[(scene, cat)] = "bench" if cat in bench else "ft"
    return out


def check_disjoint(ft: Iterable[tuple[str, str]], bench: Iterable[tuple[str, str]]) -> None:
    """Refuse a split where a (scene, category) is in both sets."""
    both = set(ft) & set(bench)
    if both:
        raise SplitError(f"categories on both sides of the split: {sorted(both)}")


def check_inputs(urls: list[str]) -> set[tuple[str, str]]:
    """The (scene, category) pairs of the datasets to pool, after refusing a dataset given twice or
    an id found twice (in one dataset or across them): pooling would write it twice."""
    from m3ad_rl.core.guards import location
    from m3ad_rl.data.store import read_table

    seen: dict[tuple[str, str], str] = {}
    for url in urls:
        if (where := location(url)) in seen:
            raise UsageError(f"--input {url} is given twice (as {seen[where]})", "give each dataset once")
        seen[where] = url
    pairs: set[tuple[str, str]] = set()
    owner: dict[str, str] = {}
    repeated: list[str] = []
    for url in urls:
        t = read_table(url, ["id", "scene", "category"])
        pairs |= set(zip(t.column("scene").to_pylist(), t.column("category").to_pylist(), strict=True))
        for sid in t.column("id").to_pylist():
            if sid in owner:
                repeated.append(f"{sid!r} ({owner[sid]}{' again' if owner[sid] == url else ' and ' + url})")
            else:
                owner[sid] = url
    if repeated:
        more = f" and {len(repeated) - 5} more" if len(repeated) > 5 else ""
        raise DataError(
            f"ids found more than once in the inputs: {', '.join(repeated[:5])}{more}",
            "pool each sample once: datasets whose ids differ (synth: other seeds; import: another --source)",
        )
    return pairs


@dataclass
class SplitResult:
    """Which side each (scene, category) went to, and what each side's writer wrote."""

    side: dict[tuple[str, str], str]
    ft: WriteReport
    bench: WriteReport

    def categories(self, name: str) -> list[str]:
        return sorted(f"{sc}/{c}" for (sc, c), v in self.side.items() if v == name)


def split_datasets(
    inputs: list[str],
    out: str,
    cfg: SplitConfig | None = None,
    config_file: str | None = None,
    overwrite: bool = False,
) -> SplitResult:
    """Write ``{out}/ft`` and ``{out}/bench`` from the datasets ``inputs``: every input is checked (each
    dataset once, each id once) and the split is proven disjoint and both sides non-empty before
    anything is written; the two are published together when both are complete (``core.outputs``)."""
    from m3ad_rl.core.outputs import SPLIT_SETS, check_dir, publish_dir
    from m3ad_rl.data.store import DatasetWriter, iter_samples

    cfg = cfg or SplitConfig()
    old = check_dir(out, SPLIT_SETS, inputs=[*inputs, config_file], overwrite=overwrite)
    side = assign(check_inputs(inputs), cfg)
    sides = {name: [k for k, v in side.items() if v == name] for name in ("ft", "bench")}
    check_disjoint(sides["ft"], sides["bench"])
    empty = [name for name, keys in sides.items() if not keys]
    if empty:
        raise UsageError(f"the split leaves the {' and '.join(empty)} side empty ({len(side)} categories in all)",
                         "pool more categories, or move some to that side (bench: / ft: lists)")  # fmt: skip
    with publish_dir(out.rstrip("/"), SPLIT_SETS, checked=old) as (fs, stage):
        where = fs.unstrip_protocol(stage)
        with DatasetWriter(f"{where}/ft") as ft, DatasetWriter(f"{where}/bench") as bench:
            for url in inputs:
                for s in iter_samples(url):
                    s.split = side[(s.scene, s.category)]
                    (ft if s.split == "ft" else bench).write(s)
    return SplitResult(side, ft.report, bench.report)
