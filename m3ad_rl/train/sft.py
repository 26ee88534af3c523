"""RAWS SFT (paper §4.2, SPEC §6): full fine-tuning on the Thinking/Reflective trajectories.

    m3ad-rl train sft --config configs/train/sft-cpu.yaml [--set max_steps=20 out=runs/sft] [--resume]

A Ray Train ``TorchTrainer``; each worker wraps the model in a DeepSpeed engine (ZeRO stage from
config; gloo on CPU, nccl on GPU). The loss is the mean negative log-likelihood of the response
tokens only (the assistant turn plus its end-of-turn token), a token mean over the whole optimiser
step: every micro-batch on every rank divides by the step's token count summed over ranks, so a
short row's tokens weigh what a long row's do (verl's token-mean); images go through the model's
processor. Cosine schedule with linear warm-up, micro-batch and accumulation from config. Every
``checkpoint.every`` optimiser steps each rank reports its DeepSpeed checkpoint files to Ray Train,
which gathers them in one folder on the run's storage (any fsspec URL); ``--resume`` takes the
newest one and skips the micro-batches already seen. The final model is written as an HF folder
to ``{out}/model``.
"""

from __future__ import annotations

import json
import math
import os
import signal
import tempfile
import threading
import time
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from m3ad_rl.train.deepspeed_engine import OptimConfig
from m3ad_rl.train.tracking import LoggingConfig, read_metrics


class SFTOptimConfig(OptimConfig):
    """SPEC §6's SFT optimiser: lr 1e-5, 100 warm-up steps, cosine."""

    lr: float = Field(1e-5, gt=0)
    warmup_steps: int = Field(100, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"


class SFTCheckpointConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    every: int = Field(100, ge=1, description="Report a checkpoint every N optimiser steps (and at the end).")
    keep: int = Field(2, ge=1, description="Checkpoints Ray Train keeps.")


class SFTConfig(BaseModel):
    """One RAWS SFT run. Defaults are SPEC §6's (per-device batch 1, accumulation 2, lr 1e-5, 100 warm-up
    steps, cosine)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., description="HF model folder (the base model).")
    data: str = Field(..., description="sft.parquet from `m3ad-rl data build-ft` (any fsspec URL).")
    out: str = Field(..., description="Run folder: ray_train/ checkpoints, metrics.jsonl, model/.")
    seed: int = 0
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimiser steps.")
    micro_batch: int = Field(1, ge=1, description="Samples per device per forward pass.")
    grad_accum: int = Field(2, ge=1, description="Micro-batches per optimiser step.")
    max_response_tokens: int = Field(
        1024, ge=8, description="Longer targets are cut, without the end token (counted: sft/truncated_rows)."
    )
    length_check: Literal["refuse", "warn", "off"] = Field(
        "refuse",
        description="max_response_tokens below the longest target in lengths.json beside data: refuse "
        "to start, warn, or say nothing (m3ad_rl.data.lengths).",
    )
    workers: int = Field(1, ge=1, description="Ray Train workers (data-parallel DeepSpeed ranks).")
    threads: int = Field(1, ge=1, description="torch threads per worker (CPU).")
    use_gpu: bool = False
    freeze: list[str] = Field(
        default_factory=list,
        description="Parameters left as they are (fnmatch on names, e.g. 'model.visual.*' keeps the vision tower).",
    )
    address: str | None = Field(None, description="Ray address (default: start local Ray).")
    log_every: int = Field(1, ge=1, description="Optimiser steps between metric lines.")
    logging: LoggingConfig = LoggingConfig()
    optim: SFTOptimConfig = SFTOptimConfig()
    checkpoint: SFTCheckpointConfig = SFTCheckpointConfig()


def _rows(url: str) -> list[dict]:
    import fsspec
    import pyarrow.parquet as pq

    with fsspec.open(url, "rb") as fh:
        rows = pq.read_table(fh, columns=["id", "messages", "images"]).to_pylist()
    if not rows:
        raise ValueError(f"{url}: no rows")
    return rows


def micro_batches(n_rows: int, cfg: SFTConfig, rank: int, world: int) -> list[list[int]]:
    """This rank's micro-batches (row indices) for the whole run, in order: a seeded shuffle per epoch,
    rows dealt round-robin to ranks, cut to whole optimiser steps."""
    out = []
    for epoch in range(cfg.epochs):
        order = np.random.default_rng([cfg.seed, epoch]).permutation(n_rows)
        mine = order[rank::world]
        per_step = cfg.micro_batch * cfg.grad_accum
        usable = len(order) // world // per_step * per_step
        out.extend(mine[s : s + cfg.micro_batch].tolist() for s in range(0, usable, cfg.micro_batch))
    return out


def total_steps(n_rows: int, cfg: SFTConfig) -> int:
    steps = cfg.epochs * (n_rows // cfg.workers // (cfg.micro_batch * cfg.grad_accum))
    return min(steps, cfg.max_steps) if cfg.max_steps else steps


def _example(processor, row: dict, max_tokens: int):
    """(request, response token ids, truncated) for one SFT row: the user turn with its image, and the
    target plus ``<|im_end|>``. A target longer than ``max_tokens`` is cut *without* the end token, so
    the model is never taught to stop where the cut fell."""
    from m3ad_rl.engines.base import GenerationRequest

    msgs = json.loads(row["messages"])
    user = next(c["text"] for c in msgs[0]["content"] if c["type"] == "text")
    target = next(c["text"] for c in msgs[-1]["content"] if c["type"] == "text")
    tok = processor.tokenizer
    ids = tok(target, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
    truncated = len(ids) > max_tokens
    return GenerationRequest(row["id"], user, bytes(row["images"][0]["bytes"])), ids[:max_tokens], truncated


def train_loop(config: dict) -> None:
    """Runs on every Ray Train worker."""
    import ray.train
    import torch

    from m3ad_rl.train.deepspeed_engine import freeze, init_distributed, make_engine
    from m3ad_rl.train.logprobs import build_batch, response_log_probs
    from m3ad_rl.train.tracking import Tracker
    from m3ad_rl.train.workers import load_policy

    cfg = SFTConfig(**config)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    init_distributed()
    rows = _rows(cfg.data)
    steps = total_steps(len(rows), cfg)
    model, processor = load_policy(cfg.model, cfg.optim.bf16)
    model.config.use_cache = False
    freeze(model, cfg.freeze)
    engine = make_engine(model, cfg.optim, steps, cfg.micro_batch, cfg.grad_accum)
    done = 0
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            _, state = engine.load_checkpoint(d, tag="sft")
        done = int(state["step"])
        if rank == 0:
            print(f"resumed SFT at step {done} of {steps}")
    mbs = micro_batches(len(rows), cfg, rank, world)[: steps * cfg.grad_accum]
    tracker = Tracker(cfg.out, cfg.logging, "sft", resume_step=done) if rank == 0 else None
    if tracker is not None:
        tracker.log_params(cfg.model_dump(mode="json"))  # MLflow params / W&B config
    engine.train()
    loss_sum, tok_sum, cut, t0 = 0.0, 0, 0, time.perf_counter()
    step_tokens = 0.0
    for m in range(done * cfg.grad_accum, len(mbs)):
        if m % cfg.grad_accum == 0:  # a new optimiser step: its response-token count over all ranks
            step_tokens = _step_tokens(processor, rows, mbs[m : m + cfg.grad_accum], cfg.max_response_tokens)
        reqs, resps, truncated = zip(
            *(_example(processor, rows[i], cfg.max_response_tokens) for i in mbs[m]), strict=True
        )
        batch = build_batch(processor, list(reqs), list(resps))

        # this micro-batch's share of the step's token-mean NLL over all ranks (DeepSpeed averages ranks,
        # hence × world; micro-batch gradients add up, hence scale_wrt_gas=False): a sum of per-token terms,
        # so the fused head computes its gradients in the forward (loss_fn)
        def nll(x: torch.Tensor, total: float = step_tokens) -> torch.Tensor:
            return -x.sum() / total * world

        lp, _ = response_log_probs(engine.module, batch, loss_fn=nll)
        loss = nll(lp)
        engine.backward(loss, scale_wrt_gas=False)
        engine.step()
        loss_sum += float(loss) / world
        tok_sum, cut = tok_sum + int(batch.response_len.sum()), cut + sum(truncated)
        if (m + 1) % cfg.grad_accum:
            continue
        step = (m + 1) // cfg.grad_accum
        last = step == steps
        if step % cfg.log_every and not last:
            continue
        tot = torch.tensor([loss_sum, tok_sum, cut], dtype=torch.float64)
        torch.distributed.all_reduce(tot)  # the steps' losses (each the optimised token mean) and counts
        n_steps = step - (step - 1) // cfg.log_every * cfg.log_every if last else cfg.log_every
        metrics = {
            "sft/loss": float(tot[0]) / n_steps, "sft/lr": float(engine.get_lr()[0]),
            "sft/tokens": float(tot[1]), "sft/truncated_rows": float(tot[2]),
            "timing/step_s": (time.perf_counter() - t0) / n_steps,
        }  # fmt: skip
        if tracker is not None:
            tracker.log(step, metrics)
            print(f"SFT step {step}/{steps}: loss {metrics['sft/loss']:.4f} lr {metrics['sft/lr']:.2e}", flush=True)
        if step % cfg.checkpoint.every == 0 or last:
            _report_checkpoint(engine, {"step": step, **metrics}, step)
        loss_sum, tok_sum, cut, t0 = 0.0, 0, 0, time.perf_counter()
    _save_model(engine, processor, cfg, rank)
    if tracker is not None:
        tracker.close()


def _step_tokens(processor, rows: list[dict], micro: list[list[int]], max_tokens: int) -> float:
    """Response tokens of one optimiser step's micro-batches, summed over all ranks (the loss's denominator)."""
    import torch

    n = sum(len(_example(processor, rows[i], max_tokens)[1]) for mb in micro for i in mb)
    t = torch.tensor([float(n)], dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return max(float(t[0]), 1.0)


def _report_checkpoint(engine, metrics: dict, step: int) -> None:
    import ray.train

    with tempfile.TemporaryDirectory(prefix="m3ad-sft-") as d:
        engine.save_checkpoint(d, tag="sft", client_state={"step": step}, save_latest=False)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def _save_model(engine, processor, cfg: SFTConfig, rank: int) -> None:
    from m3ad_rl.core import storage
    from m3ad_rl.train.deepspeed_engine import full_state_dict

    sd = full_state_dict(engine)  # collective under ZeRO-3
    if rank == 0:  # written on this worker's disk, uploaded by this worker
        with storage.staged_dir(f"{cfg.out.rstrip('/')}/model", clear=True) as d:
            engine.module.save_pretrained(str(d), state_dict=sd)
            processor.save_pretrained(str(d))


def _storage(out: str):
    """(storage_path, storage_filesystem) for Ray Train: local paths as-is, other URLs through fsspec."""
    from fsspec.core import url_to_fs
    from fsspec.implementations.local import LocalFileSystem

    fs, path = url_to_fs(f"{out.rstrip('/')}/ray_train")
    if isinstance(fs, LocalFileSystem):
        return os.path.abspath(path), None
    import pyarrow.fs as pafs

    return path, pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def run(cfg: SFTConfig, resume: bool = False, overwrite: bool = False) -> dict:
    """Train; returns {"steps", "loss", "model"} and writes ``{out}/metrics.jsonl``."""
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from m3ad_rl.core import storage
    from m3ad_rl.core.outputs import SFT_RUN, check_dir, claim_dir, require_lasting
    from m3ad_rl.data.lengths import MODEL_LENGTHS_FILE, check_limit, find_lengths
    from m3ad_rl.train.ray_setup import init_ray

    # Ray Train workers run in their own folders (and on other nodes): no relative paths.
    cfg = cfg.model_copy(update={"model": storage.absolute_model(cfg.model), "data": storage.absolute(cfg.data),
                                 "out": storage.absolute(cfg.out)})  # fmt: skip
    from m3ad_rl.train import preflight as pf

    pf.check_model(cfg.model)  # seconds, before Ray and DeepSpeed start
    pf.check_freeze(cfg.model, cfg.freeze)
    pf.check_parquet(cfg.data, "sft")
    require_lasting(cfg.out, "out")
    old = check_dir(cfg.out, SFT_RUN, inputs=[cfg.model, cfg.data], resume=resume, overwrite=overwrite, resumable=True)
    pf.check_writable(cfg.out)
    lengths = find_lengths(data=cfg.data)
    check_limit(cfg.max_response_tokens, "max_response_tokens", lengths, cfg.length_check)
    rows = _rows(cfg.data)
    pf.check_images(rows, cfg.data, lambda r: r["id"], lambda r: bytes(r["images"][0]["bytes"]))
    steps = total_steps(len(rows), cfg)
    if steps < 1:
        raise ValueError(f"{len(rows)} rows give no optimiser step with {cfg.workers} workers × micro_batch "
                         f"{cfg.micro_batch} × grad_accum {cfg.grad_accum}")  # fmt: skip
    init_ray(cfg.address, max(cfg.workers + 1, 2))
    storage_path, fs = _storage(cfg.out)
    name = "sft"
    # the output contract (core/outputs): a new or empty out, or this kind's own run with --resume or
    # --overwrite (its own entries removed then, nothing else); never over the model or the data
    claim_dir(cfg.out, SFT_RUN, checked=old)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=cfg.model_dump(mode="json"),
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu),
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        run_config=RunConfig(
            name=name, storage_path=storage_path, storage_filesystem=fs,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.keep),
        ),
    )  # fmt: skip
    handler = signal.getsignal(signal.SIGINT)
    try:
        trainer.fit()
    finally:  # Ray Train's fit leaves its own SIGINT handler behind: Ctrl-C in a later stage would be swallowed
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, handler)
    if lengths is not None:  # the model carries the lengths it was trained to produce
        storage.write_text(f"{cfg.out.rstrip('/')}/model/{MODEL_LENGTHS_FILE}", json.dumps(lengths[0], indent=1))
    history = read_metrics(cfg.out)
    loss = history[-1]["sft/loss"] if history else math.nan
    return {"steps": steps, "loss": loss, "model": f"{cfg.out.rstrip('/')}/model", "history": history}
