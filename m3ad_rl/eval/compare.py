"""Baseline sweep: several models or endpoints over one benchmark, compared in one table like the
paper's Table 1 (a model per row, scenes as columns, accuracy and balanced accuracy).

    m3ad-rl eval sweep --config configs/eval/baselines-cpu.yaml
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from m3ad_rl.engines.base import SamplingParams
from m3ad_rl.eval.metrics import EvalConfig


class SweepModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., description="Row label in the table.")
    model: str = Field(..., description="Model folder or served model name.")
    engine: Literal["hf", "vllm", "openai"] = "hf"
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)
    exclude_sources: tuple[str, ...] = Field((), description="E.g. real-iad for IAD-R1 (paper C.2).")


class SweepConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str
    out: str
    workers: int = 1
    limit: int | None = None
    sampling: SamplingParams = SamplingParams(n=1, temperature=0.0, max_new_tokens=512, logprobs=False)
    models: list[SweepModel]


def run_sweep(cfg: SweepConfig) -> str:
    """Evaluate every model (each resumable in OUT/<name>) and write OUT/comparison.md."""
    from m3ad_rl.eval.run import EvalRunConfig, run

    reports = {}
    for m in cfg.models:
        run_cfg = EvalRunConfig(
            model=m.model, engine=m.engine, engine_kwargs=m.engine_kwargs, dataset=cfg.dataset,
            out=str(Path(cfg.out) / m.name), workers=cfg.workers, limit=cfg.limit, sampling=cfg.sampling,
            metrics=EvalConfig(exclude_sources=m.exclude_sources),
        )  # fmt: skip
        reports[m.name] = run(run_cfg)
    table = comparison_table(reports)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    (Path(cfg.out) / "comparison.md").write_text(table + "\n")
    return table


def comparison_table(reports: dict[str, dict]) -> str:
    """Markdown: a model per row; Acc and Bal per scene, then the average; then Type/Loc F1."""
    scenes: list[str] = []
    for r in reports.values():
        scenes += [s for s in r["scenes"] if s not in scenes]
    head = ["Model"] + [f"{s.capitalize()} {m}" for s in [*scenes, "average"] for m in ("Acc", "Bal")]
    head += ["Type F1", "Loc F1"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in reports.items():
        cells = [name]
        for s in [*scenes, "average"]:
            row = r["average"] if s == "average" else r["scenes"].get(s)
            cells += [f"{100 * row['accuracy']:.1f}", f"{100 * row['balanced_accuracy']:.1f}"] if row else ["-", "-"]
        cells += [f"{r['average']['type_f1']:.3f}", f"{r['average']['loc_f1']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
