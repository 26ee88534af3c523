"""RCRL's GRPO as pure tensor functions, on verl 0.9.1's ``core_algos`` (SPEC §6).

Shapes: ``B`` prompts, ``n`` samples each, ``L`` response tokens; rows are ordered prompt by prompt
(``[B x n, L]``). The reward is a sequence-level score placed on the last response token, GRPO
normalises it within each prompt's group, and the loss is verl's clipped policy loss plus the KL to
the reference policy as a loss term (low-variance k3 estimator, coefficient 0.01 by default).
"""

from __future__ import annotations

import numpy as np
import torch
from omegaconf import OmegaConf
from pydantic import BaseModel, ConfigDict, Field
from verl.trainer.ppo import core_algos


class GRPOConfig(BaseModel):
    """The update rule."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    clip_ratio: float = Field(0.2, gt=0, description="PPO clip ε (both sides unless overridden).")
    clip_ratio_low: float | None = None
    clip_ratio_high: float | None = None
    kl_coef: float = Field(0.01, ge=0, description="β of the KL-to-reference loss term (SPEC §6).")
    kl_type: str = Field("low_var_kl", description="verl kl_penalty name; low_var_kl is the k3 estimator.")
    loss_agg_mode: str = Field("token-mean", description="verl agg_loss mode.")
    norm_adv_by_std: bool = Field(True, description="GRPO divides by the group's std (Dr.GRPO: False).")
    recompute_old_log_prob: bool = Field(
        False,
        description="Run a separate π_old pass before the update. With one optimiser step per rollout "
        "batch π_old equals π at update time, so the update's own (detached) log-probs serve.",
    )


def last_token_rewards(scores: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """``[B x n]`` sequence scores -> ``[B x n, L]`` token rewards with the score on the last token."""
    rewards = torch.zeros_like(response_mask, dtype=torch.float32)
    last = response_mask.long().sum(dim=1).clamp(min=1) - 1
    rewards[torch.arange(len(scores)), last] = scores.float()
    return rewards


def grpo_advantages(
    scores: torch.Tensor, response_mask: torch.Tensor, group_ids: np.ndarray, cfg: GRPOConfig | None = None
) -> torch.Tensor:
    """``[B x n, L]`` advantages: (score - group mean) / (group std + ε), broadcast over the tokens."""
    cfg = cfg or GRPOConfig()
    adv, _ = core_algos.compute_grpo_outcome_advantage(
        token_level_rewards=last_token_rewards(scores, response_mask),
        response_mask=response_mask,
        index=np.asarray(group_ids, dtype=object),
        norm_adv_by_std_in_grpo=cfg.norm_adv_by_std,
    )
    return adv


def grpo_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    ref_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    cfg: GRPOConfig | None = None,
    global_batch_info: dict | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped policy loss + β · KL(π ‖ π_ref); all inputs ``[B x n, L]``. Returns (loss, metrics).

    ``global_batch_info`` (``dp_size``, ``batch_num_tokens``, ``global_batch_size``) makes the token
    mean global across data-parallel workers, as verl's ``agg_loss`` expects; empty on one worker.
    """
    cfg = cfg or GRPOConfig()
    info = dict(global_batch_info or {})
    actor_cfg = OmegaConf.create(
        {"clip_ratio": cfg.clip_ratio, "clip_ratio_low": cfg.clip_ratio_low, "clip_ratio_high": cfg.clip_ratio_high,
         "clip_ratio_c": 3.0, "loss_agg_mode": cfg.loss_agg_mode, "global_batch_info": info}
    )  # fmt: skip
    pg_loss, pg_metrics = core_algos.compute_policy_loss_vanilla(
        old_log_prob=old_log_prob,
        log_prob=log_prob,
        advantages=advantages,
        response_mask=response_mask,
        loss_agg_mode=cfg.loss_agg_mode,
        config=actor_cfg,
    )
    kl = core_algos.kl_penalty(log_prob, ref_log_prob, cfg.kl_type)
    kl_loss = core_algos.agg_loss(kl, response_mask, cfg.loss_agg_mode, **info)
    loss = pg_loss + cfg.kl_coef * kl_loss
    metrics = {k: float(v) for k, v in pg_metrics.items() if isinstance(v, (int, float))}
    metrics.update({"actor/pg_loss": pg_loss.item(), "actor/kl_loss": kl_loss.item(), "actor/loss": loss.item()})
    return loss, metrics
