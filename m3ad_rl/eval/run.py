"""M3-AD-Bench evaluation as a Ray job: shard the benchmark over engine workers with Ray Data,
append predictions to a JSONL (a rerun skips what is done), score, and write the report.

    m3ad-rl eval run --model models/tiny --engine hf --dataset data/split/bench --out runs/eval --workers 2

Outputs in ``--out``: ``predictions.jsonl`` (the ``eval score`` input format), ``report.json``,
``report.md`` (the paper's tables, the IoU sweep, the reflection before/after and a plain
statement of how far the numbers are from chance), ``reflection.png`` and ``iou_sweep.png``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from m3ad_rl.engines.base import SamplingParams
from m3ad_rl.eval.metrics import EvalConfig


class EvalRunConfig(BaseModel):
    """One evaluation run."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., description="Model folder or name (for openai: the served model name).")
    engine: Literal["hf", "vllm", "openai"] = Field("hf", description="Inference engine.")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="Passed to the engine.")
    dataset: str = Field(..., description="Benchmark dataset URL (m3ad-rl data format).")
    out: str = Field(..., description="Output folder.")
    workers: int = Field(1, ge=1, description="Engine replicas (Ray Data actors).")
    batch_size: int = Field(4, ge=1, description="Images per engine call.")
    gpus_per_worker: float | None = Field(None, description="Default: 1 for hf/vllm when CUDA exists, else 0.")
    with_types: bool = Field(False, description="List the fine types in the question.")
    address: str | None = Field(None, description="Ray cluster address (default: start or join local Ray).")
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N samples.")
    overwrite: bool = Field(False, description="Replace predictions in out made by another run (default: refuse).")
    sampling: SamplingParams = SamplingParams(n=1, temperature=0.0, max_new_tokens=512, logprobs=False)
    metrics: EvalConfig = EvalConfig()
    length_check: Literal["refuse", "warn", "off"] = Field(
        "refuse",
        description="sampling.max_new_tokens below the longest target the model was trained on (its "
        "m3ad_lengths.json): refuse to start, warn, or say nothing (m3ad_rl.data.lengths).",
    )


class _Predictor:
    """A Ray Data actor holding one engine; maps a batch of samples to responses."""

    def __init__(self, cfg: dict):
        from m3ad_rl.core.prompts import question
        from m3ad_rl.engines import make_engine

        self.cfg = EvalRunConfig(**cfg)
        self.engine = make_engine(self.cfg.engine, self.cfg.model, **self.cfg.engine_kwargs)
        self.text = question(self.cfg.with_types)

    def __call__(self, batch: dict) -> dict:
        from m3ad_rl.engines.base import GenerationRequest

        reqs = [
            GenerationRequest(str(i), self.text, bytes(img)) for i, img in zip(batch["id"], batch["image"], strict=True)
        ]
        t0 = time.perf_counter()
        outs = self.engine.generate(reqs, self.cfg.sampling)
        dt = (time.perf_counter() - t0) / max(1, len(reqs))
        return {
            "id": list(batch["id"]),
            "scene": list(batch["scene"]),
            "source": list(batch["source"]),
            "ground_truth": list(batch["ground_truth"]),
            "response": [o[0].text for o in outs],
            "truncated": [o[0].finish_reason == "length" for o in outs],
            "seconds": [dt] * len(reqs),
        }


def done_ids(path: Path) -> set[str]:
    """Ids already in a predictions file. A line cut short by a killed run is dropped from the file
    (so appending starts on a fresh line) and its sample is predicted again."""
    ids: set[str] = set()
    if not path.exists():
        return ids
    good = []
    for line in path.read_text().splitlines():
        try:
            ids.add(json.loads(line)["id"])
            good.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    text = "".join(f"{line}\n" for line in good)
    if path.read_text() != text:
        path.write_text(text)
    return ids


def provenance(cfg: EvalRunConfig) -> dict:
    """What made the predictions: a resumed run must be the same (model files, dataset, engine, sampling)."""
    from m3ad_rl.core import storage

    model_files = None  # hub ids, hf:// references and served names are recorded by name only
    remote = not storage.is_local(cfg.model) and not cfg.model.startswith(storage.HF_SCHEME)
    if cfg.engine != "openai" and (remote or (storage.is_local(cfg.model) and storage.local_path(cfg.model).is_dir())):
        files = storage.list_files(cfg.model if not storage.is_local(cfg.model) else str(storage.local_path(cfg.model)))
        model_files = hashlib.sha1(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
    return {
        "model": cfg.model, "model_files": model_files, "engine": cfg.engine, "dataset": cfg.dataset,
        "with_types": cfg.with_types, "sampling": cfg.sampling.model_dump(mode="json"),
        "engine_kwargs": {k: v for k, v in cfg.engine_kwargs.items() if "key" not in k.lower()},
    }  # fmt: skip


def _check_provenance(cfg: EvalRunConfig, out: Path) -> None:
    """Refuse to append to another run's predictions; record this run's provenance."""
    from m3ad_rl.core.errors import UsageError

    preds, meta = out / "predictions.jsonl", out / "run.json"
    now = provenance(cfg)
    has_preds = preds.exists() and preds.stat().st_size > 0
    if has_preds and not cfg.overwrite:
        before = json.loads(meta.read_text()) if meta.exists() else None
        if before != now:
            what = "; ".join(
                f"{k}: {before.get(k)!r} there, {now[k]!r} now" for k in now if before and before.get(k) != now[k]
            )
            raise UsageError(
                f"out={cfg.out} holds predictions made by another run ({what or 'no record of what made them'})",
                "choose another --out, or pass --overwrite to replace them",
            )
    if cfg.overwrite:
        for name in ("predictions.jsonl", "report.json", "report.md", "reflection.png", "iou_sweep.png"):
            (out / name).unlink(missing_ok=True)
    meta.write_text(json.dumps(now, indent=2) + "\n")


def _records(cfg: EvalRunConfig, skip: set[str]) -> list[dict]:
    from m3ad_rl.data.store import iter_samples

    out = []
    for s in iter_samples(cfg.dataset):
        if cfg.limit is not None and len(out) + len(skip) >= cfg.limit:
            break
        if s.id in skip:
            continue
        image = s.image if s.image is not None else _read(s.image_uri)
        out.append(
            {
                "id": s.id,
                "image": image,
                "scene": s.scene,
                "source": s.source,
                "ground_truth": json.dumps(s.ground_truth()),
            }
        )
    return out


def _read(uri: str | None) -> bytes:
    from m3ad_rl.data.schema import read_uri

    return read_uri(uri or "")


@contextlib.contextmanager
def workspace(out: str) -> Iterator[tuple[Path, Callable[[], None]]]:
    """(local folder, publish) for ``out``: the folder itself if local; for a storage URL a local copy
    (holding the predictions made so far, for resuming) whose files ``publish`` uploads - called
    as predictions come in, and always at the end, so a killed run loses little."""
    from m3ad_rl.core import storage

    if storage.is_local(out):
        path = storage.local_path(out)
        path.mkdir(parents=True, exist_ok=True)
        yield path, lambda: None
        return
    with tempfile.TemporaryDirectory(prefix="m3ad-eval-") as tmp:
        storage.download_dir(out, tmp, include=lambda name: name in ("predictions.jsonl", "run.json"))
        try:
            yield Path(tmp), lambda: storage.upload_dir(tmp, out)
        finally:
            storage.upload_dir(tmp, out)


def predict(cfg: EvalRunConfig, out: Path, publish: Callable[[], None] = lambda: None) -> Path:
    """Run the engines over the benchmark into ``out/predictions.jsonl``; returns that file."""
    import ray
    from tqdm import tqdm

    from m3ad_rl.train.ray_setup import init_ray

    preds = out / "predictions.jsonl"
    _check_provenance(cfg, out)
    skip = done_ids(preds)
    records = _records(cfg, skip)
    if skip:
        print(f"resuming: {len(skip)} predictions already in {preds}, {len(records)} to go", file=sys.stderr)
    if not records:
        return preds
    if not ray.is_initialized():
        init_ray(cfg.address, log_to_driver=False, dashboard=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    gpus = cfg.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if cfg.engine != "openai" and ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    ds = ray.data.from_items(records, override_num_blocks=max(cfg.workers, math.ceil(len(records) / cfg.batch_size)))
    mapped = ds.map_batches(
        _Predictor,
        fn_constructor_kwargs={"cfg": cfg.model_dump()},
        batch_size=cfg.batch_size,
        concurrency=cfg.workers,
        num_gpus=gpus,
        num_cpus=1 if gpus == 0 else 0.5,
    )
    t0 = last_publish = time.perf_counter()
    with preds.open("a") as fh, tqdm(total=len(records), desc="eval", unit="img", file=sys.stderr) as bar:
        for row in mapped.iter_rows():
            gt = json.loads(row["ground_truth"])
            fh.write(
                json.dumps(
                    {
                        "id": row["id"],
                        "scene": row["scene"],
                        "source": row["source"],
                        "response": row["response"],
                        "ground_truth": gt,
                        "truncated": bool(row["truncated"]),
                    }
                )
                + "\n"
            )
            fh.flush()
            if time.perf_counter() - last_publish > 30:
                publish()
                last_publish = time.perf_counter()
            bar.update()
            bar.set_postfix(img_s=f"{bar.n / (time.perf_counter() - t0):.2f}")
    return preds


def score(cfg: EvalRunConfig, preds: Path, out: Path | None = None) -> dict:
    """Score predictions and write report.json, report.md and the plots into ``out`` (default: beside them)."""
    from m3ad_rl.core.ground_truth import GroundTruth
    from m3ad_rl.core.jsonl import LineErrors, read_records
    from m3ad_rl.core.output_format import parse
    from m3ad_rl.eval.metrics import Prediction, evaluate
    from m3ad_rl.eval.report import markdown_report, plot_iou_sweep, plot_reflection

    rows = [obj for _, obj in read_records(str(preds), lambda o: o, LineErrors(str(preds), quiet=True))]
    report = evaluate(
        (
            Prediction(r["id"], r["scene"], r["response"], GroundTruth.from_obj(r["ground_truth"]), r.get("source"))
            for r in rows
        ),
        cfg.metrics,
    )
    readable = sum(1 for r in rows if parse(r["response"]).answer is not None)
    truncated = sum(1 for r in rows if r.get("truncated"))
    report["run"] = {
        "model": cfg.model,
        "engine": cfg.engine,
        "dataset": cfg.dataset,
        "n": len(rows),
        "readable_answers": readable / max(1, len(rows)),
        "truncated": truncated,  # responses cut at sampling.max_new_tokens
        "max_new_tokens": cfg.sampling.max_new_tokens,
    }
    report["verdict"] = chance_statement(report, readable, len(rows))
    report["verdict"] += (f" {truncated} of {len(rows)} responses ({100 * truncated / max(1, len(rows)):.1f}%) "
                          f"were cut at max_new_tokens={cfg.sampling.max_new_tokens}.")  # fmt: skip
    out = out or preds.parent
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    header = f"# M3-AD-Bench: {cfg.model} ({cfg.engine})\n\n{report['verdict']}\n\n"
    (out / "report.md").write_text(header + markdown_report(report))
    if report["scenes"]:
        plot_reflection(report, str(out / "reflection.png"))
        plot_iou_sweep(report, str(out / "iou_sweep.png"))
    _gallery(cfg, preds, out)
    return report


def _gallery(cfg: EvalRunConfig, preds: Path, out: Path) -> None:
    """The cases to look at (gallery.html, gallery.png) beside the report. A report is worth more than its
    pictures: a gallery that fails is a warning, never a failed evaluation."""
    from m3ad_rl.eval.gallery import write_beside

    parts = [p for p in str(cfg.model).rstrip("/").split("/") if p]
    name = (parts[-2] if len(parts) > 1 and parts[-1] in ("model", "hf", "final") else parts[-1]) if parts else "model"
    try:
        g = write_beside([str(preds)], [name], out, cfg.dataset, f"Evaluation gallery: {cfg.model}")
    except Exception as e:  # the report stands without it
        print(f"warning: no gallery for {out}: {type(e).__name__}: {e}", file=sys.stderr)
        return
    if g is not None and g.problems:
        print(f"warning: gallery: {len(g.problems)} problem(s), first: {g.problems[0]}", file=sys.stderr)


def chance_statement(report: dict, readable: int, n: int) -> str:
    """A plain sentence on whether the detection numbers differ from guessing."""
    if not report["scenes"] or n == 0:
        return "No predictions to judge."
    bal = report["average"]["balanced_accuracy"]
    margin = 2 * 0.5 / math.sqrt(n)  # about two standard errors of a coin-flip's balanced accuracy
    share = 100 * readable / n
    unreadable = (
        f" Only {share:.0f}% of the {n} responses gave a readable yes/no answer; the rest count as wrong."
        if share < 90
        else f" {share:.0f}% of the {n} responses gave a readable yes/no answer."
    )
    if bal < 0.5 - margin:
        return f"The results are below chance: mean balanced accuracy {bal:.3f} against 0.5 for guessing.{unreadable}"
    if bal <= 0.5 + margin:
        return (
            f"The results are at chance level: mean balanced accuracy {bal:.3f} is within {margin:.3f} of the "
            f"0.5 of random guessing.{unreadable}"
        )
    return f"Mean balanced accuracy {bal:.3f} is above chance (0.5 ± {margin:.3f}).{unreadable}"


def preflight(cfg: EvalRunConfig) -> None:
    """What can be checked before Ray starts (seconds): the model resolves, the dataset is one and has
    samples, the output is new or this kind's own (``core.outputs``) and apart from the inputs, the
    sources to exclude exist, and the token limit fits what the model was trained to write."""
    from m3ad_rl.core.errors import DataError
    from m3ad_rl.core.outputs import EVAL_RUN, check_dir
    from m3ad_rl.data.store import read_table

    served = cfg.engine == "openai"  # a served model is a name at an endpoint, not files of ours
    if not served:
        from m3ad_rl.train.preflight import check_model

        check_model(cfg.model)
    sources = read_table(cfg.dataset, ["source"]).column("source").to_pylist()  # a missing/damaged dataset: here
    if not sources:
        raise DataError(f"dataset {cfg.dataset} has no samples", "evaluate a dataset with samples")
    from m3ad_rl.eval.metrics import check_excluded

    check_excluded(cfg.metrics.exclude_sources, sources, cfg.dataset)
    check_dir(cfg.out, EVAL_RUN, inputs=[cfg.dataset, *([] if served else [cfg.model])], resume=True,
              overwrite=cfg.overwrite, resumable=True)  # fmt: skip
    if not served:
        from m3ad_rl.data.lengths import check_limit, find_lengths

        check_limit(cfg.sampling.max_new_tokens, "sampling.max_new_tokens", find_lengths(model=cfg.model),
                    cfg.length_check)  # fmt: skip


def run(cfg: EvalRunConfig) -> dict:
    """Predict (resumably) and score; ``cfg.out`` may be any storage URL."""
    from m3ad_rl.core import storage

    # the engine actors may run on other nodes and in other folders
    cfg = cfg.model_copy(update={"model": storage.absolute_model(cfg.model), "dataset": storage.absolute(cfg.dataset)})
    preflight(cfg)
    with workspace(cfg.out) as (out, publish):
        return score(cfg, predict(cfg, out, publish), out)
