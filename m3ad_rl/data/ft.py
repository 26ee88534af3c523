"""FT construction (paper §3, A.4; SPEC §5): difficulty, mode, trajectories, SFT and RL sets.

1. A base model's yes/no on each FT sample sets the difficulty: right -> easy, wrong -> hard
   (an unreadable answer counts as wrong).
2. Reflective Mode is drawn with p = 0.3 for easy and p = 0.7 for hard samples, seeded per
   sample id, so the choice does not depend on file order.
3. The initial decision of a trajectory is the truth, except in a hard Reflective sample, where
   it is the base model's wrong answer: the reflection then corrects it.
4. A captioner writes the text; the SFT set holds chat messages with the image, the RL set is
   verl's Parquet layout (``prompt``, ``images``, ``data_source``, ``reward_model``, ``extra_info``).

Captioners share one interface (``Captioner.caption_samples``, in ``captions.py`` with the job and
result types, re-exported here) and are made by name (``make_captioner``); ``build_ft`` runs the
whole construction from a dataset URL to the sets.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import random
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from m3ad_rl.core import storage
from m3ad_rl.core.errors import DataError, UsageError
from m3ad_rl.core.guards import require_file
from m3ad_rl.core.output_format import parse
from m3ad_rl.core.prompts import question
from m3ad_rl.core.registry import Registry
from m3ad_rl.data.captions import Captioner, CaptionJob, CaptionResult  # noqa: F401 (re-exported: callers import them here)
from m3ad_rl.data.schema import Sample, decode_image
from m3ad_rl.data.store import DatasetWriter, iter_samples, move_file, remove_file


class FTConfig(BaseModel):
    """How the FT set is built."""

    model_config = ConfigDict(extra="forbid")

    seed: int = Field(0, description="Seed of the mode draw and the template wording.")
    p_reflective_easy: float = Field(0.3, ge=0, le=1, description="P(Reflective Mode) for easy samples.")
    p_reflective_hard: float = Field(0.7, ge=0, le=1, description="P(Reflective Mode) for hard samples.")
    with_types: bool = Field(False, description="List the 41 fine types in the prompt.")
    data_source: str = Field("m3ad", description="verl data_source of the RL rows.")


CAPTIONERS: Registry[Callable[..., Captioner]] = Registry("captioner")


@CAPTIONERS.register("template")
def _template_captioner(*, seed: int = 0, **_unused: object) -> Captioner:
    """Offline phrase-bank trajectories (the endpoint options do not apply)."""
    from m3ad_rl.data.captioner_template import TemplateCaptioner

    return TemplateCaptioner(seed)


@CAPTIONERS.register("openai")
def _openai_captioner(
    *, base_url: str | None = None, model: str | None = None, seed: int | None = None, **options: object
) -> Captioner:
    """An LLM behind an OpenAI-compatible endpoint writes the reasoning (``seed`` does not apply)."""
    if not (base_url and model):
        raise UsageError("--captioner openai needs --base-url and --model", "add both")
    from m3ad_rl.data.captioner_openai import OpenAICaptioner

    return OpenAICaptioner(base_url=base_url, model=model, **options)  # type: ignore[arg-type]


def make_captioner(name: str, **options: object) -> Captioner:
    """A captioner by name (``CAPTIONERS.names()``); options one does not use are ignored
    (``seed`` by openai; ``base_url``, ``model`` … by template), so a CLI can pass all its flags."""
    return CAPTIONERS.get(name)(**options)


@dataclass
class FTReport:
    """What FT construction built and left out (``skipped``: (sample id, reason), in the order met)."""

    easy: int = 0
    hard: int = 0
    reflective: int = 0
    thinking: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    sft_rows: int = 0  # rows written to sft.parquet (build_ft)
    rl_rows: int = 0  # rows written to rl.parquet (build_ft)
    rl_overlap: int = 0  # RL prompts whose image is also an SFT sample's (build_ft with rl_input)
    lengths: dict | None = None  # the SFT targets' token lengths (build_ft with a tokenizer; lengths.json)


def read_predictions(path: str) -> dict[str, str | None]:
    """``{id: "yes"|"no"|None}`` from JSONL lines ``{"id", "answer"}`` or ``{"id", "response"}``.

    ``answer`` must be "yes" or "no" (any case); a ``response`` is parsed, and one without a
    readable answer gives None (the base model failed: the sample is hard). A line that is not a
    JSON object with a string id and one of the two, or an id repeated with another answer, is a
    DataError naming the line(s): a wrong difficulty would go on silently into training.
    """
    out: dict[str, str | None] = {}
    first: dict[str, int] = {}
    conflicts: list[str] = []
    with fsspec.open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:  # a byte-order mark is not part of the first line
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError:
                raise DataError(f"{path}:{lineno}: not UTF-8 text", "save the predictions as UTF-8") from None
            if not line.strip():
                continue
            sid, answer = _prediction(path, lineno, line)
            if sid in out and out[sid] != answer:
                conflicts.append(f"{sid!r} (lines {first[sid]}: {out[sid]}, {lineno}: {answer})")
                continue
            first.setdefault(sid, lineno)
            out[sid] = answer
    if conflicts:
        shown = "; ".join(conflicts[:5]) + (f"; and {len(conflicts) - 5} more" if len(conflicts) > 5 else "")
        raise DataError(f"{path}: ids with conflicting predictions: {shown}", "keep one prediction per id")
    return out


def _prediction(path: str, lineno: int, line: str) -> tuple[str, str | None]:
    """(id, "yes" | "no" | None) of one predictions line, or a DataError naming it."""
    where = f"{path}:{lineno}"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not valid JSON ({e})", "fix or remove the line") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("id"), str) or not obj["id"]:
        raise DataError(f"{where}: expected a JSON object with a string id", "fix or remove the line")
    if "answer" in obj:
        a = obj["answer"]
        if not isinstance(a, str) or a.strip().lower() not in ("yes", "no"):
            raise DataError(f'{where}: answer {a!r} is not "yes" or "no"', "give yes/no, or the raw response")
        return obj["id"], a.strip().lower()
    if not isinstance(obj.get("response"), str):
        raise DataError(f"{where}: expected an answer (yes/no) or a response (text)", "fix or remove the line")
    return obj["id"], parse(obj["response"]).answer


def assign(sample: Sample, base_answer: str | None, cfg: FTConfig) -> tuple[str, str, str]:
    """(difficulty, mode, initial decision) of one sample."""
    verdict = "yes" if sample.anomalous else "no"
    difficulty = "easy" if base_answer == verdict else "hard"
    p = cfg.p_reflective_easy if difficulty == "easy" else cfg.p_reflective_hard
    mode = "reflective" if random.Random(f"{cfg.seed}/mode/{sample.id}").random() < p else "thinking"
    wrong = "no" if verdict == "yes" else "yes"
    initial = wrong if (difficulty == "hard" and mode == "reflective") else verdict
    return difficulty, mode, initial


def plan(
    samples: Iterable[Sample], predictions: dict[str, str | None], cfg: FTConfig, report: FTReport
) -> list[CaptionJob]:
    """Difficulty and mode set on each sample with a prediction; the others go to ``report.skipped``."""
    jobs = []
    for s in samples:
        if s.id not in predictions:
            report.skipped.append((s.id, "no base-model prediction"))
            continue
        s.difficulty, s.mode, initial = assign(s, predictions[s.id], cfg)
        jobs.append(CaptionJob(s, s.mode, initial))
    return jobs


def build(
    samples: Iterable[Sample],
    predictions: dict[str, str | None],
    captioner: Captioner,
    cfg: FTConfig,
    report: FTReport | None = None,
    progress: bool = False,
) -> list[Sample]:
    """The FT samples with difficulty, mode and target set, in input order. Samples without a
    prediction, then samples whose caption failed, are reported in ``report.skipped`` and left out."""
    report = report if report is not None else FTReport()
    jobs = plan(samples, predictions, cfg, report)
    built = []
    for job, res in zip(jobs, captioner.caption_samples(jobs, progress), strict=True):
        s = job.sample
        if res.text is None:
            report.skipped.append((s.id, f"caption failed: {res.error}"))
            continue
        s.target = res.text
        setattr(report, s.difficulty, getattr(report, s.difficulty) + 1)
        setattr(report, s.mode, getattr(report, s.mode) + 1)
        built.append(s)
    return built


def build_ft(
    input: str,
    predictions: str,
    out: str,
    cfg: FTConfig,
    captioner: Captioner,
    *,
    progress: bool = True,
    tokenizer: str | None = None,
    rl_input: str | None = None,
    overwrite: bool = False,
) -> FTReport:
    """FT construction end to end: ``OUT/samples`` (a dataset), ``OUT/sft.parquet``, ``OUT/rl.parquet``,
    and with ``tokenizer`` (a model reference) ``OUT/lengths.json``, the targets' token lengths
    (``m3ad_rl.data.lengths``) that the trainers and evaluation check their limits against.

    ``rl_input``: another dataset to draw the RL prompts from (images SFT never saw, the reading of
    docs/spec-readings.md); default: the FT samples themselves. Checks come first (predictions a
    file, ``out`` apart from the inputs and new — or an earlier FT output with ``overwrite`` —, every
    predictions line valid), so a mistake costs no captions. The sets are published together only
    when all are written (``m3ad_rl.core.outputs``); predictions that match no sample are an error
    and leave an earlier output as it was. Every sample left out is in ``report.skipped`` with the
    reason (undecodable image, no prediction, caption failed, rejected by the writer); nothing is
    printed.
    """
    from m3ad_rl.core.outputs import FT_SETS, check_dir, publish_dir, require_lasting

    require_file(predictions, "--predictions")
    require_lasting(out)
    old = check_dir(out, FT_SETS, inputs=[input, predictions, rl_input], overwrite=overwrite)
    if rl_input is not None and not storage.exists(rl_input):
        raise UsageError(f"--rl-input {rl_input}: no such dataset", "give the dataset of the RL prompts")
    tok = _load_tokenizer(tokenizer) if tokenizer else None  # a bad model reference fails before any work
    preds = read_predictions(predictions)  # a bad or conflicting line fails here, before any work
    report = FTReport()
    samples = list(decodable(iter_samples(input), report))
    if samples and not any(s.id in preds for s in samples):
        raise DataError(f"no sample of {input} has a prediction in {predictions} ({len(samples)} samples, "
                        f"{len(preds)} predictions, e.g. {next(iter(preds), '-')!r} vs {samples[0].id!r})",
                        "give the predictions the base model made on this dataset")  # fmt: skip
    built = build(samples, preds, captioner, cfg, report, progress)
    with publish_dir(out.rstrip("/"), FT_SETS, checked=old) as (fs, stage):
        where = fs.unstrip_protocol(stage)
        with DatasetWriter(f"{where}/samples") as w:
            kept = [s for s in built if w.write(s)]
        report.skipped += [(r.id, "; ".join(r.reasons)) for r in w.report.rejected]
        report.sft_rows = write_parquet(f"{where}/sft.parquet", (sft_row(s, cfg) for s in kept), SFT_SCHEMA)
        rl = kept
        if rl_input is not None:
            rl = list(decodable(iter_samples(rl_input), report))
            seen = {s.id for s in kept} | {hashlib.sha1(s.image_bytes()).hexdigest() for s in kept}
            report.rl_overlap = sum(1 for s in rl if s.id in seen or hashlib.sha1(s.image_bytes()).hexdigest() in seen)
        rows = (rl_row(s, i, cfg) for i, s in enumerate(rl))
        report.rl_rows = write_parquet(f"{where}/rl.parquet", rows, RL_SCHEMA)
        if tok is not None:
            from m3ad_rl.data.lengths import target_lengths, write_lengths

            report.lengths = target_lengths(((s.mode, s.target) for s in kept), tok, tokenizer)
            write_lengths(where, report.lengths)
    return report


def _load_tokenizer(model: str):
    """The tokenizer of a model reference (folder, storage URL, hub id); a UsageError if it cannot load."""
    from transformers import AutoTokenizer

    from m3ad_rl.core.storage import local_model

    try:
        return AutoTokenizer.from_pretrained(local_model(model))
    except (OSError, ValueError) as e:
        raise UsageError(f"--model {model}: no tokenizer could be loaded ({type(e).__name__})",
                         "give the model whose tokenizer the SFT and RL runs use") from None  # fmt: skip


def decodable(samples: Iterable[Sample], report: FTReport) -> Iterator[Sample]:
    """The samples whose image decodes; the others go to ``report.skipped`` with the reason, so no
    caption is asked for and no SFT/RL row is built from a broken image."""
    for s in samples:
        try:
            decode_image(s.id, s.image_bytes(), mode=None)
        except DataError as e:
            report.skipped.append((s.id, e.what.removeprefix(f"sample {s.id!r}: ")))
            continue
        yield s


def _image_bytes(s: Sample) -> bytes:
    return s.image_bytes()


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
    """Stream rows into one Parquet file at any fsspec URL; returns the row count.

    The file is written beside ``url`` and moved there when complete, so ``url`` never holds half
    a file."""
    fs, path = fsspec.core.url_to_fs(url)
    tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    fs.makedirs(posixpath.dirname(path) or ".", exist_ok=True)
    n, buf = 0, []
    try:
        with fs.open(tmp, "wb") as fh, pq.ParquetWriter(fh, schema, compression="zstd") as w:
            for row in rows:
                buf.append(row)
                if len(buf) >= row_group_size:
                    w.write_table(pa.Table.from_pylist(buf, schema=schema))
                    n, buf = n + len(buf), []
            if buf:
                w.write_table(pa.Table.from_pylist(buf, schema=schema))
                n += len(buf)
        move_file(fs, tmp, path)
    finally:
        remove_file(fs, tmp)
    return n
