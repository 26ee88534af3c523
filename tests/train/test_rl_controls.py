"""RL that can hold its ground: the positive-advantage filter, the adaptive β, and freezing modules.

The lr warm-up/schedule and the adaptive β across a kill and resume are checked on a real run in
``test_training.py::test_rcrl_killed_mid_run_resumes_to_the_same_metrics``; the freeze end to end in
``tests/pipeline/test_reproduce.py`` (SFT and RCRL leave the vision tower bit for bit)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from m3ad_rl.train.grpo import GRPOConfig, grpo_advantages, kl_controller, update_mask


def test_positive_advantages_only_keeps_the_rows_above_their_group_mean():
    scores = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0])  # group 0: one winner; group 1: all equal
    mask = torch.ones(8, 5)
    uid = np.array(["0"] * 4 + ["1"] * 4, dtype=object)
    cfg = GRPOConfig(positive_advantages_only=True)
    adv = grpo_advantages(scores, mask, uid, cfg)
    kept = update_mask(mask, scores, uid, torch.zeros(8), cfg, adv)
    assert kept.sum(1).tolist() == [5, 0, 0, 0, 0, 0, 0, 0]
    assert update_mask(mask, scores, uid, torch.zeros(8), GRPOConfig(), adv).sum() == 40  # off: every row
    with pytest.raises(ValueError, match="needs the advantages"):
        update_mask(mask, scores, uid, torch.zeros(8), cfg)


def test_adaptive_beta_moves_towards_its_kl_target_and_fixed_stays():
    cfg = GRPOConfig(kl_ctrl="adaptive", kl_coef=0.01, kl_target=0.05, kl_horizon=100)
    ctrl = kl_controller(cfg)
    ctrl.update(0.5, 32)  # KL 10x the target: β up by 20 % × 32/100
    assert ctrl.value == pytest.approx(0.01 * (1 + 0.2 * 0.32))
    ctrl.update(0.0, 32)  # no KL: down
    assert ctrl.value < 0.01 * (1 + 0.2 * 0.32)
    fixed = kl_controller(GRPOConfig(kl_coef=0.02))
    fixed.update(5.0, 32)
    assert fixed.value == 0.02
    with pytest.raises(ValueError, match="kl_coef > 0"):
        GRPOConfig(kl_ctrl="adaptive", kl_coef=0.0)


def test_freeze_names_parameters_by_pattern_and_refuses_a_pattern_that_names_nothing(tiny_model):
    from m3ad_rl.core.errors import UsageError
    from m3ad_rl.train.deepspeed_engine import freeze
    from m3ad_rl.train.preflight import check_freeze
    from m3ad_rl.train.workers import load_policy

    model, _ = load_policy(str(tiny_model))
    vision = [n for n, _ in model.named_parameters() if n.startswith("model.visual.")]
    assert check_freeze(str(tiny_model), ["model.visual.*"]) == len(vision) > 0
    assert freeze(model, ["model.visual.*"]) == len(vision)
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == set(vision)
    with pytest.raises(UsageError, match=r"match no parameter.*model\.visual\.\*"):
        check_freeze(str(tiny_model), ["visual.*"])
    with pytest.raises(ValueError, match="match no parameter"):
        freeze(model, ["vision_tower.*"])
