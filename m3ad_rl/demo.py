"""The Quickstart's main job, for now: score a shipped sample of model outputs with the RCRL
reward and the M3-AD-Bench metrics, and print the tables.

The sample (``resources/sample_outputs.jsonl``) comes from ``m3ad_rl.synthetic_outputs`` with
seed 0: a simulated inspector, not a model. Later issues replace this with the full pipeline.
"""

from __future__ import annotations

import json
from collections import defaultdict
from importlib import resources
from pathlib import Path

from rich.console import Console
from rich.table import Table

SAMPLE = "resources/sample_outputs.jsonl"


def run_demo(out: Path) -> int:
    from m3ad_rl.cli import main as cli

    console = Console()
    out.mkdir(parents=True, exist_ok=True)
    sample = Path(str(resources.files("m3ad_rl").joinpath(SAMPLE)))
    console.rule("[bold]m3ad-rl demo: rewards and benchmark metrics on shipped sample outputs")
    console.print(f"input: {sample}")

    rc = cli(["reward", "score", "--input", str(sample), "--output", str(out / "rewards.jsonl")])
    if rc not in (0, 3):
        return rc
    _reward_table(out / "rewards.jsonl", console)
    rc = cli(
        [
            "eval",
            "score",
            "--input",
            str(sample),
            "--output",
            str(out / "report.json"),
            "--markdown",
            str(out / "report.md"),
        ]
    )
    if rc not in (0, 3):
        return rc
    from m3ad_rl.report import plot_reflection

    report = json.loads((out / "report.json").read_text())
    plot_reflection(report, str(out / "reflection.png"))
    console.print(f"\nwrote {out}/rewards.jsonl, report.json, report.md, reflection.png")
    return 0


def _reward_table(path: Path, console: Console) -> None:
    """Mean reward and parts per reflection outcome (preset d)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for line in path.read_text().splitlines():
        r = json.loads(line)
        groups[r["reflection_outcome"]].append(r)
        groups["all"].append(r)
    parts = ["score", "consistency", "answer", "type", "location", "reflection"]
    short = ["score", "R_con", "R_ans", "R_type", "R_loc", "R_ref"]
    t = Table(title="RCRL reward by reflection outcome (default config: λ=1, preset d)", title_justify="left")
    t.add_column("outcome")
    t.add_column("n", justify="right")
    for name in short:
        t.add_column(name, justify="right")
    for name in ["none", "correct", "ineffective", "erroneous", "all"]:
        rows = groups.get(name, [])
        if rows:
            t.add_row(name, str(len(rows)), *[f"{sum(r[p] for r in rows) / len(rows):.3f}" for p in parts])
    console.print(t)
