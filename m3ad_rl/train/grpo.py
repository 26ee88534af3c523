"""RCRL's GRPO as pure tensor functions, on verl 0.9.1's ``core_algos`` registries (SPEC §6).

Shapes: ``B`` prompts, ``n`` samples each, ``L`` response tokens; rows are ordered prompt by prompt
(``[B x n, L]``). The reward is a sequence-level score placed on the last response token, GRPO
normalises it within each prompt's group (verl's ``grpo`` advantage estimator), and the loss is
verl's ``vanilla`` clipped policy loss plus the KL to the reference policy as a loss term
(low-variance k3 estimator, coefficient 0.01 by default).

Choices from the literature, each off by default (the paper is silent on them):

- Dr. GRPO (https://arxiv.org/abs/2503.20783): ``norm_adv_by_std: false`` and
  ``loss_agg_mode: seq-mean-token-sum-norm`` (normalised by the constant ``max_new_tokens``);
- the paper's "best-performing samples" read literally: ``positive_advantages_only`` (only rows above
  their group's mean get a loss);
- an adaptive β (``kl_ctrl: adaptive``, verl's ``AdaptiveKLController``) that holds KL(π‖π_ref) near
  ``kl_target``;
- DAPO (https://arxiv.org/abs/2503.14476): clip-higher (``clip_ratio_high: 0.28``), overlong
  filtering (``overlong_filter``: responses cut at the token limit get no loss), and dynamic
  sampling's filter (``drop_zero_variance_groups``: groups whose rewards are all equal carry no
  gradient; they are dropped from the update rather than resampled).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from omegaconf import OmegaConf
from pydantic import BaseModel, ConfigDict, Field, model_validator
from verl.trainer.ppo import core_algos

KLType = Literal["kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3"]
LossAggMode = Literal["token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


class GRPOConfig(BaseModel):
    """The update rule. Names and values are verl's; a typo fails at config load, naming the choices."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    clip_ratio: float = Field(0.2, gt=0, description="PPO clip ε (both sides unless overridden).")
    clip_ratio_low: float | None = Field(None, gt=0, description="ε below 1 (default clip_ratio).")
    clip_ratio_high: float | None = Field(None, gt=0, description="ε above 1; DAPO's clip-higher uses 0.28.")
    kl_coef: float = Field(0.01, ge=0, description="β of the KL-to-reference loss term (SPEC §6).")
    kl_type: KLType = Field("low_var_kl", description="verl kl_penalty name; low_var_kl (= k3) is the k3 estimator.")
    loss_agg_mode: LossAggMode = Field("token-mean", description="verl agg_loss mode, over the whole batch.")
    norm_adv_by_std: bool = Field(True, description="GRPO divides by the group's std (Dr.GRPO: False).")
    overlong_filter: bool = Field(False, description="DAPO: no loss on responses cut at max_new_tokens.")
    drop_zero_variance_groups: bool = Field(
        False, description="DAPO's dynamic-sampling filter: leave groups with all-equal rewards out of the update."
    )
    positive_advantages_only: bool = Field(
        False,
        description="Learn only from the better samples of each group (advantage > 0): the paper's 'best-"
        "performing samples' read literally; the rest get no loss (rejection sampling with GRPO's weights).",
    )
    kl_ctrl: Literal["fixed", "adaptive"] = Field(
        "fixed",
        description="fixed: β = kl_coef throughout; adaptive: β follows verl's AdaptiveKLController (Ziegler et "
        "al. 2019) towards kl_target, starting at kl_coef.",
    )
    kl_target: float = Field(0.05, gt=0, description="The KL (k3, per token) the adaptive controller aims for.")
    kl_horizon: int = Field(
        320, ge=1, description="Adaptive controller horizon in rows: β moves by ≤ 20 % × rows/horizon per step."
    )
    recompute_old_log_prob: bool = Field(
        False,
        description="Always run a separate π_old pass before the update. It runs anyway when there is more "
        "than one optimiser step per rollout batch; with exactly one, π_old equals π at update time and the "
        "update's own (detached) log-probs serve.",
    )

    @model_validator(mode="after")
    def _adaptive_needs_a_start(self) -> GRPOConfig:
        if self.kl_ctrl == "adaptive" and self.kl_coef == 0:
            raise ValueError("kl_ctrl=adaptive starts from kl_coef: set kl_coef > 0 (e.g. 0.01)")
        return self


def kl_controller(cfg: GRPOConfig):
    """verl's KL controller for ``cfg``: ``.value`` is β, ``.update(kl, rows)`` moves it (adaptive only)."""
    if cfg.kl_ctrl == "adaptive":
        return core_algos.AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
    return core_algos.FixedKLController(cfg.kl_coef)


def last_token_rewards(scores: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """``[B x n]`` sequence scores -> ``[B x n, L]`` token rewards with the score on the last token (float64)."""
    rewards = torch.zeros(response_mask.shape, dtype=torch.float64)
    last = response_mask.long().sum(dim=1).clamp(min=1) - 1
    rewards[torch.arange(len(scores)), last] = scores.double()
    return rewards


def equal_reward_groups(scores: torch.Tensor, group_ids: np.ndarray) -> np.ndarray:
    """``[B x n]`` bool: the row's group has all-equal rewards (no learning signal under GRPO)."""
    ids = np.asarray(group_ids, dtype=object)
    s = scores.double().numpy()
    out = np.zeros(len(s), dtype=bool)
    for g in dict.fromkeys(ids.tolist()):
        rows = ids == g
        out[rows] = s[rows].max() == s[rows].min()
    return out


def grpo_advantages(
    scores: torch.Tensor, response_mask: torch.Tensor, group_ids: np.ndarray, cfg: GRPOConfig | None = None
) -> torch.Tensor:
    """``[B x n, L]`` float32 advantages: (score - group mean) / (group std + ε), broadcast over the tokens.

    Computed in float64, and exactly 0 for a group whose rewards are all equal: in float32 the mean
    and the values of such a group can differ by a rounding step, which the division by (std + ε)
    blew up to |A| ≈ 0.3 for n = 8.
    """
    cfg = cfg or GRPOConfig()
    estimator = core_algos.get_adv_estimator_fn("grpo")
    adv, _ = estimator(
        token_level_rewards=last_token_rewards(scores, response_mask),
        response_mask=response_mask.double(),
        index=np.asarray(group_ids, dtype=object),
        norm_adv_by_std_in_grpo=cfg.norm_adv_by_std,
    )
    adv[torch.from_numpy(equal_reward_groups(scores, group_ids))] = 0.0
    return adv.float()


def update_mask(
    response_mask: torch.Tensor,
    scores: torch.Tensor,
    group_ids: np.ndarray,
    truncated: torch.Tensor,
    cfg: GRPOConfig,
    advantages: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[B x n, L]`` loss mask after the optional filters (overlong responses, zero-variance groups, and
    with ``positive_advantages_only`` every row whose advantage is not above 0)."""
    keep = torch.ones(len(scores), dtype=torch.bool)
    if cfg.positive_advantages_only:
        if advantages is None:
            raise ValueError("positive_advantages_only needs the advantages")
        keep &= (advantages * response_mask).sum(1) > 0
    if cfg.overlong_filter:
        keep &= ~truncated.bool()
    if cfg.drop_zero_variance_groups:
        keep &= ~torch.from_numpy(equal_reward_groups(scores, group_ids))
    return response_mask * keep[:, None].to(response_mask.dtype)


def grpo_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    ref_log_prob: torch.Tensor | None,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    cfg: GRPOConfig | None = None,
    global_batch_info: dict | None = None,
    with_metrics: bool = True,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped policy loss + β · KL(π ‖ π_ref); all inputs ``[B x n, L]``. Returns (loss, metrics).
    ``ref_log_prob`` None (β = 0, no reference policy): no KL term.

    ``global_batch_info`` (``dp_size``, ``batch_num_tokens``, ``global_batch_size``, and for
    ``seq-mean-token-sum-norm`` ``loss_scale_factor``) makes the aggregation global across
    micro-batches and data-parallel ranks, as verl's ``agg_loss`` defines it: each micro-batch's
    loss is its share of the whole batch's, so their gradients add up (no averaging over
    micro-batches) and the ranks' average is the batch's loss. Empty: this micro-batch alone.
    Every term is per token (ratio, clip, KL, aggregation weights fixed by the masks and counts), which
    lets the fused head predict each token's gradient in its forward pass (logprobs.loss_probe).
    """
    cfg = cfg or GRPOConfig()
    info = dict(global_batch_info or {})
    actor_cfg = OmegaConf.create(
        {"clip_ratio": cfg.clip_ratio, "clip_ratio_low": cfg.clip_ratio_low, "clip_ratio_high": cfg.clip_ratio_high,
         "clip_ratio_c": 3.0, "loss_agg_mode": cfg.loss_agg_mode, "global_batch_info": info}
    )  # fmt: skip
    pg_loss, pg_metrics = core_algos.get_policy_loss_fn("vanilla")(
        old_log_prob=old_log_prob,
        log_prob=log_prob,
        advantages=advantages,
        response_mask=response_mask,
        loss_agg_mode=cfg.loss_agg_mode,
        config=actor_cfg,
    )
    if ref_log_prob is None:
        if cfg.kl_coef != 0:
            raise ValueError(f"kl_coef={cfg.kl_coef} needs the reference log-probs")
        kl_loss = torch.zeros((), dtype=pg_loss.dtype)
    else:
        kl = core_algos.kl_penalty(log_prob, ref_log_prob, cfg.kl_type)
        kl_loss = core_algos.agg_loss(kl, response_mask, cfg.loss_agg_mode, **info)
    loss = pg_loss + cfg.kl_coef * kl_loss
    if not with_metrics:  # (no host syncs: the fused head's per-chunk gradient probe)
        return loss, {}
    metrics = {k: float(v) for k, v in pg_metrics.items() if isinstance(v, (int, float))}
    metrics.update({"actor/pg_loss": pg_loss.item(), "actor/kl_loss": kl_loss.item(), "actor/loss": loss.item()})
    return loss, metrics
