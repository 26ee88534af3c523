"""FT construction (paper §3, A.4; SPEC §5): difficulty, mode, trajectories, SFT and RL sets.

1. A base model's yes/no on each FT sample sets the difficulty: right -> easy, wrong -> hard
   (an unreadable answer counts as wrong).
2. Reflective Mode is drawn with p = 0.3 for easy and p = 0.7 for hard samples, seeded per
   sample id, so the choice does not depend on file order.
3. The initial decision of a trajectory is the truth, except in a hard Reflective sample, where
   it is the base model's wrong answer: the reflection then corrects it.
4. A captioner writes the text; the SFT set holds chat messages with the image, the RL set is
   verl's Parquet layout (``prompt``, ``images``, ``data_source``, ``reward_model``, ``extra_info``).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from m3ad_rl.data.schema import Sample, read_uri
from m3ad_rl.output_format import parse
from m3ad_rl.prompts import question


class FTConfig(BaseModel):
    """How the FT set is built."""

    model_config = ConfigDict(extra="forbid")

    seed: int = Field(0, description="Seed of the mode draw and the template wording.")
    p_reflective_easy: float = Field(0.3, ge=0, le=1, description="P(Reflective Mode) for easy samples.")
    p_reflective_hard: float = Field(0.7, ge=0, le=1, description="P(Reflective Mode) for hard samples.")
    with_types: bool = Field(False, description="List the 41 fine types in the prompt.")
    data_source: str = Field("m3ad", description="verl data_source of the RL rows.")


class Captioner(Protocol):
    name: str

    def caption(self, sample: Sample, mode: str, initial: str) -> str: ...


@dataclass
class FTReport:
    easy: int = 0
    hard: int = 0
    reflective: int = 0
    thinking: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


def read_predictions(path: str) -> dict[str, str | None]:
    """``{id: "yes"|"no"|None}`` from JSONL lines ``{"id", "answer"}`` or ``{"id", "response"}``."""
    out: dict[str, str | None] = {}
    with fsspec.open(path, "r") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                sid = obj["id"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(f"{path}:{lineno}: expected a JSON object with id and answer or response") from None
            if "answer" in obj:
                a = str(obj["answer"]).strip().lower()
                out[sid] = a if a in ("yes", "no") else None
            else:
                out[sid] = parse(obj.get("response", "")).answer
    return out


def assign(sample: Sample, base_answer: str | None, cfg: FTConfig) -> tuple[str, str, str]:
    """(difficulty, mode, initial decision) of one sample."""
    verdict = "yes" if sample.anomalous else "no"
    difficulty = "easy" if base_answer == verdict else "hard"
    p = cfg.p_reflective_easy if difficulty == "easy" else cfg.p_reflective_hard
    mode = "reflective" if random.Random(f"{cfg.seed}/mode/{sample.id}").random() < p else "thinking"
    wrong = "no" if verdict == "yes" else "yes"
    initial = wrong if (difficulty == "hard" and mode == "reflective") else verdict
    return difficulty, mode, initial


def build(
    samples: Iterable[Sample],
    predictions: dict[str, str | None],
    captioner: Captioner,
    cfg: FTConfig,
    report: FTReport | None = None,
) -> Iterator[Sample]:
    """Yield FT samples with difficulty, mode and target set; samples without a prediction are
    reported in ``report.skipped`` and left out."""
    report = report if report is not None else FTReport()
    for s in samples:
        if s.id not in predictions:
            report.skipped.append((s.id, "no base-model prediction"))
            continue
        s.difficulty, s.mode, initial = assign(s, predictions[s.id], cfg)
        s.target = captioner.caption(s, s.mode, initial)
        setattr(report, s.difficulty, getattr(report, s.difficulty) + 1)
        setattr(report, s.mode, getattr(report, s.mode) + 1)
        yield s


def _image_bytes(s: Sample) -> bytes:
    return s.image if s.image is not None else read_uri(s.image_uri or "")


SFT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("messages", pa.string()),  # JSON: [{"role", "content": [{"type": "image"} | {"type": "text", "text"}]}]
        ("images", pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))),
        ("difficulty", pa.string()),
        ("mode", pa.string()),
    ]
)

RL_SCHEMA = pa.schema(
    [
        ("data_source", pa.string()),
        ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("images", pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))),
        ("ability", pa.string()),
        ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
        (
            "extra_info",
            pa.struct(
                [
                    ("id", pa.string()),
                    ("index", pa.int64()),
                    ("scene", pa.string()),
                    ("category", pa.string()),
                    ("width", pa.int32()),
                    ("height", pa.int32()),
                    ("difficulty", pa.string()),
                    ("mode", pa.string()),
                ]
            ),
        ),
    ]
)


def sft_row(s: Sample, cfg: FTConfig) -> dict:
    """Chat messages with the image, as TRL and Qwen-VL processors take them."""
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question(cfg.with_types)}]},
        {"role": "assistant", "content": [{"type": "text", "text": s.target}]},
    ]
    return {
        "id": s.id,
        "messages": json.dumps(messages),
        "images": [{"bytes": _image_bytes(s), "path": s.image_uri}],
        "difficulty": s.difficulty,
        "mode": s.mode,
    }


def rl_row(s: Sample, index: int, cfg: FTConfig) -> dict:
    """One row of verl's RL Parquet: the prompt holds "<image>" where the image goes."""
    return {
        "data_source": cfg.data_source,
        "prompt": [{"role": "user", "content": "<image>" + question(cfg.with_types)}],
        "images": [{"bytes": _image_bytes(s), "path": s.image_uri}],
        "ability": "anomaly_detection",
        "reward_model": {"style": "rule", "ground_truth": json.dumps(s.ground_truth())},
        "extra_info": {
            "id": s.id,
            "index": index,
            "scene": s.scene,
            "category": s.category,
            "width": s.width,
            "height": s.height,
            "difficulty": s.difficulty,
            "mode": s.mode,
        },
    }


def write_parquet(url: str, rows: Iterable[dict], schema: pa.Schema, row_group_size: int = 256) -> int:
    """Stream rows into one Parquet file at any fsspec URL; returns the row count."""
    n, buf = 0, []
    with fsspec.open(url, "wb") as fh, pq.ParquetWriter(fh, schema, compression="zstd") as w:
        for row in rows:
            buf.append(row)
            if len(buf) >= row_group_size:
                w.write_table(pa.Table.from_pylist(buf, schema=schema))
                n, buf = n + len(buf), []
        if buf:
            w.write_table(pa.Table.from_pylist(buf, schema=schema))
            n += len(buf)
    return n
