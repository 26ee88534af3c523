"""DeepSpeed engines for SFT and the RCRL actor: one optimiser config, CPU (gloo) or GPU (nccl).

On CPU DeepSpeed needs ``DS_ACCELERATOR=cpu`` before it is imported, and compiles its CPU ops once
(about 100 s; cached in ``~/.cache/torch_extensions``). The optimiser is torch's AdamW handed to
DeepSpeed as a client optimiser (DeepSpeed's fused Adam needs CUDA), with a cosine schedule and
linear warm-up stepped by DeepSpeed at every accumulation boundary.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class OptimConfig(BaseModel):
    """Optimiser, schedule and DeepSpeed settings."""

    model_config = ConfigDict(extra="forbid")

    lr: float = Field(1e-6, gt=0, description="Peak learning rate (SPEC §6: 1e-5 SFT, 1e-6 RCRL).")
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up, in optimiser steps (SPEC §6: 100 for SFT).")
    schedule: Literal["cosine", "constant"] = Field("constant", description="After warm-up.")
    grad_clip: float = Field(1.0, gt=0, description="Global gradient-norm clip.")
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="DeepSpeed ZeRO stage.")
    bf16: bool = Field(False, description="bf16 weights and compute (GPU; on CPU it runs on AMX where present).")


def _cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


def init_distributed() -> None:
    """Join the process group the launcher described in RANK/WORLD_SIZE/MASTER_* (Ray Train or verl)."""
    if _cpu():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("LOCAL_RANK", "0")
    import deepspeed
    import torch.distributed as dist

    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="gloo" if _cpu() else "nccl")


def frozen_names(names: list[str], patterns: list[str] | tuple[str, ...]) -> list[str]:
    """The parameter names any of ``patterns`` matches (``fnmatch``: ``model.visual.*`` is the vision tower)."""
    from fnmatch import fnmatchcase

    return [n for n in names if any(fnmatchcase(n, p) for p in patterns)]


def freeze(model, patterns: list[str] | tuple[str, ...]) -> int:
    """Turn off the gradient of the parameters ``patterns`` name (they then get no optimiser state and never
    change); returns how many tensors were frozen. A pattern that names nothing is an error."""
    if not patterns:
        return 0
    names = [n for n, _ in model.named_parameters()]
    unmatched = [p for p in patterns if not frozen_names(names, [p])]
    if unmatched:
        raise ValueError(f"freeze: {unmatched} match no parameter (e.g. {', '.join(names[:3])})")
    hit = set(frozen_names(names, patterns))
    for n, p in model.named_parameters():
        if n in hit:
            p.requires_grad_(False)
    return len(hit)


def ds_config(cfg: OptimConfig, micro_batch: int, grad_accum: int) -> dict:
    """The DeepSpeed JSON config for these settings."""
    zero: dict = {"stage": cfg.zero_stage}
    if cfg.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": cfg.bf16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def make_engine(model, cfg: OptimConfig, total_steps: int, micro_batch: int = 1, grad_accum: int = 1):
    """Wrap ``model`` in a DeepSpeed engine with AdamW and the warm-up + cosine/constant schedule."""
    import deepspeed
    import torch
    from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    if cfg.schedule == "cosine":
        sched = get_cosine_schedule_with_warmup(opt, cfg.warmup_steps, max(total_steps, cfg.warmup_steps + 1))
    else:
        sched = get_constant_schedule_with_warmup(opt, cfg.warmup_steps)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=opt, lr_scheduler=sched, config=ds_config(cfg, micro_batch, grad_accum)
    )
    return engine


def full_state_dict(engine) -> dict:
    """The whole model's weights on CPU, on every rank (ZeRO-3 gathers its shards; collective)."""
    if engine.zero_optimization_stage() == 3:
        sd = engine._zero3_consolidated_16bit_state_dict() or {}
    else:
        sd = engine.module.state_dict()
    return {k: v.detach().cpu() for k, v in sd.items()}
