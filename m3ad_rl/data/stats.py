"""Counts of a dataset per scene, category, defect type and split, as tables and a plot."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

from m3ad_rl.core.errors import DataError
from m3ad_rl.data.store import iter_samples, read_table

COLUMNS = ["scene", "category", "label", "split", "defects"]


def dataset_stats(url: str) -> dict:
    """Counts from one pass over the label columns (images are not read)."""
    rows = read_table(url, COLUMNS).to_pylist()
    stats: dict = {
        "n": len(rows),
        "by_scene": Counter(),
        "by_category": Counter(),
        "by_type": Counter(),
        "by_split": Counter(),
        "boxes": 0,
    }
    for r in rows:
        stats["by_scene"][(r["scene"], r["label"])] += 1
        stats["by_category"][(r["scene"], r["category"], r["label"])] += 1
        stats["by_split"][(r["split"] or "-", r["label"])] += 1
        for d in r["defects"] or []:
            stats["by_type"][d["type"]] += 1
            stats["boxes"] += 1
    return stats


def undecodable(url: str) -> Iterator[tuple[str, str]]:
    """(id, why) of every sample whose image cannot be read or decoded (``data stats --check-images``).

    Datasets written here were checked on write; this is for sets written elsewhere or damaged since."""
    from m3ad_rl.data.schema import decode_image

    for s in iter_samples(url):
        try:
            decode_image(s.id, s.image_bytes(), mode=None)
        except DataError as e:
            yield s.id, e.what.removeprefix(f"sample {s.id!r}: ")


def print_stats(stats: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(
        f"[bold]{stats['n']}[/bold] samples, {stats['boxes']} defect boxes, {len(stats['by_type'])} defect types"
    )
    for title, key, names in [
        ("per scene", "by_scene", ["scene"]),
        ("per category", "by_category", ["scene", "category"]),
        ("per split", "by_split", ["split"]),
    ]:
        groups: dict[tuple, Counter] = {}
        for k, v in stats[key].items():
            groups.setdefault(k[:-1], Counter())[k[-1]] = v
        t = Table(title=title, title_justify="left")
        for n in [*names, "normal", "anomalous", "total"]:
            t.add_column(n, justify="left" if n in names else "right")
        for k in sorted(groups):
            c = groups[k]
            t.add_row(*k, str(c["normal"]), str(c["anomalous"]), str(c["normal"] + c["anomalous"]))
        console.print(t)
    t = Table(title="per defect type (boxes)", title_justify="left")
    t.add_column("type")
    t.add_column("boxes", justify="right")
    for name, v in stats["by_type"].most_common():
        t.add_row(name, str(v))
    console.print(t)


def plot_stats(stats: dict, path: str) -> None:
    """Two panels: images per scene (normal/anomalous) and boxes per defect type."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenes = sorted({k[0] for k in stats["by_scene"]})
    types = stats["by_type"].most_common()
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [1, 3]})
    normal = [stats["by_scene"][(s, "normal")] for s in scenes]
    anomalous = [stats["by_scene"][(s, "anomalous")] for s in scenes]
    a.bar(scenes, normal, label="normal", color="#9bb7d4")
    a.bar(scenes, anomalous, bottom=normal, label="anomalous", color="#c0504d")
    a.set_title("images per scene")
    a.legend()
    a.tick_params(axis="x", rotation=30)
    b.bar([t for t, _ in types], [v for _, v in types], color="#1f4e79")
    b.set_title("defect boxes per fine type")
    b.tick_params(axis="x", rotation=75, labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def check_dataset_stats(
    input: str,
    plot: str | None = None,
    check_images: bool = False,
    on_bad: Callable[[str, str], None] | None = None,
    overwrite: bool = False,
) -> tuple[dict, int]:
    """Counts of ``input`` (printed), optionally every image decoded (``on_bad(id, why)`` for each that does
    not) and a plot saved; returns (the counts, how many images do not decode)."""
    from pathlib import Path

    from m3ad_rl.core.errors import UsageError
    from m3ad_rl.core.outputs import check_file, publish_file

    if plot:
        if Path(plot).suffix.lower() not in (".png", ".jpg", ".jpeg", ".svg", ".pdf"):
            raise UsageError(f"--plot {plot} must end in .png, .jpg, .svg or .pdf", "name the image file")
        check_file(plot, inputs=[input], overwrite=overwrite, option="--plot")
    stats = dataset_stats(input)
    print_stats(stats)
    bad = 0
    if check_images:
        for sid, why in undecodable(input):
            bad += 1
            if on_bad:
                on_bad(sid, why)
    if plot:
        with publish_file(plot) as tmp:
            plot_stats(stats, str(tmp))
    return stats, bad
