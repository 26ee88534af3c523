"""Tables of an evaluation report, laid out like the paper's Tables 1, 4 and 5 and Figure 5.

``print_report`` writes them to the terminal with rich; ``markdown_report`` gives the same tables
as Markdown for report files.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _f3(x: float) -> str:
    return f"{x:.3f}"


def tables(report: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) for each table of a report."""
    scenes = list(report["scenes"])
    sc, avg = report["scenes"], report["average"]
    cols = [*scenes, "average"]
    get = lambda s: sc.get(s, avg)  # noqa: E731

    detection = (
        "Anomaly detection (Table 1): accuracy / balanced accuracy, %",
        ["", *[c.capitalize() for c in cols]],
        [
            ["Acc", *[_pct(get(c)["accuracy"]) for c in cols]],
            ["Bal", *[_pct(get(c)["balanced_accuracy"]) for c in cols]],
            ["n", *[str(sc[s]["n"]) for s in scenes], str(sum(sc[s]["n"] for s in scenes))],
        ],
    )
    analysis = (
        "Anomaly analysis (Table 4): Type / Loc Hard micro-F1",
        ["", *[c.capitalize() for c in cols]],
        [
            ["Type", *[_f3(get(c)["type_f1"]) for c in cols]],
            ["Loc", *[_f3(get(c)["loc_f1"]) for c in cols]],
        ],
    )
    per_iou = report.get("loc_f1_by_iou_per_scene", {})
    sweep = (
        "Loc Hard-F1 by IoU threshold (Table 5)",
        ["IoU", *[c.capitalize() for c in cols]],
        [[th, *[_f3(per_iou[s][th]) for s in scenes], _f3(v)] for th, v in report["loc_f1_by_iou"].items()],
    )
    refl = report["reflection"]
    rs = refl["scenes"]
    rget = lambda s: rs.get(s, refl)  # noqa: E731
    reflection = (
        "Reflection (Figure 5): before -> after reflection, %",
        ["", *[c.capitalize() for c in cols]],
        [
            ["Reflects", *[_pct(rget(c)["rate"]) for c in cols]],
            ["Acc before", *[_pct(rget(c)["accuracy_before"]) for c in cols]],
            ["Acc after", *[_pct(rget(c)["accuracy_after"]) for c in cols]],
            ["Bal before", *[_pct(rget(c)["balanced_accuracy_before"]) for c in cols]],
            ["Bal after", *[_pct(rget(c)["balanced_accuracy_after"]) for c in cols]],
        ],
    )
    counts = refl["counts"]
    outcomes = (
        "Reflection outcomes (all scenes)",
        ["reflected", "correct", "ineffective", "erroneous"],
        [[str(counts["reflected"]), str(counts["correct"]), str(counts["ineffective"]), str(counts["erroneous"])]],
    )
    return [detection, analysis, sweep, reflection, outcomes]


def print_report(report: dict, console: Console | None = None) -> None:
    """The report's tables on the terminal."""
    console = console or Console()
    for title, header, rows in tables(report):
        t = Table(title=title, title_justify="left")
        for i, h in enumerate(header):
            t.add_column(h, justify="left" if i == 0 else "right")
        for row in rows:
            t.add_row(*row)
        console.print(t)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def markdown_report(report: dict) -> str:
    """All tables as Markdown sections."""
    return "\n\n".join(f"### {title}\n\n{markdown_table(h, rows)}" for title, h, rows in tables(report)) + "\n"


def plot_reflection(report: dict, path: str) -> None:
    """Bar chart of accuracy and balanced accuracy before/after reflection per scene (Figure 5)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rs = report["reflection"]["scenes"]
    scenes = list(rs)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for ax, (metric, title) in zip(
        axes, [("accuracy", "Accuracy"), ("balanced_accuracy", "Balanced accuracy")], strict=True
    ):
        xs = range(len(scenes))
        before = [100 * rs[s][f"{metric}_before"] for s in scenes]
        after = [100 * rs[s][f"{metric}_after"] for s in scenes]
        ax.bar([x - 0.2 for x in xs], before, width=0.4, label="before reflection", color="#9bb7d4")
        ax.bar([x + 0.2 for x in xs], after, width=0.4, label="after reflection", color="#1f4e79")
        ax.set_xticks(list(xs), [s.capitalize() for s in scenes])
        ax.set_title(title)
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("%")
    axes[0].legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_iou_sweep(report: dict, path: str) -> None:
    """Loc Hard-F1 against the IoU threshold, one line per scene and the mean (Table 5)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    for scene, sweep in report.get("loc_f1_by_iou_per_scene", {}).items():
        ax.plot([float(k) for k in sweep], list(sweep.values()), marker="o", label=scene.capitalize())
    mean = report["loc_f1_by_iou"]
    ax.plot([float(k) for k in mean], list(mean.values()), marker="s", color="black", linewidth=2, label="Average")
    ax.set_xlabel("IoU threshold")
    ax.set_ylabel("Loc Hard-F1")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
