"""GRPO maths that must be exact (issue 13): equal-reward groups get zero advantage for every n, typos
in verl names fail at config load, the loss aggregation is global across micro-batches and ranks
(each mode's per-token gradient weight equals verl's definition), and the optional filters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("verl")

from m3ad_rl.core.config import ConfigError, load_config
from m3ad_rl.train.grpo import GRPOConfig, grpo_advantages, grpo_loss, update_mask


@pytest.mark.parametrize("n", [3, 6, 8, 16])
def test_groups_with_equal_rewards_get_exactly_zero_advantage(n):
    rng = np.random.default_rng(n)
    for _ in range(200):
        scores = torch.tensor(np.r_[np.full(n, rng.normal()), rng.normal(size=n)], dtype=torch.float32)
        ids = np.array([0] * n + [1] * n, dtype=object)
        adv = grpo_advantages(scores, torch.ones(2 * n, 4), ids)
        assert torch.all(adv[:n] == 0), f"an equal group got |A| = {adv[:n].abs().max():.3g}"
        assert adv[n:].abs().max() > 0


def test_verl_names_are_checked_at_config_load(tmp_path):
    from m3ad_rl.train.rcrl import RCRLConfig

    for key, bad in (("grpo.kl_type", "lowvar_kl"), ("grpo.loss_agg_mode", "token_mean")):
        with pytest.raises(ConfigError, match=key.split(".")[1]):
            load_config(RCRLConfig, None, ["model=m", "data=d", "out=o", "steps=1", f"{key}={bad}"])


def _weights(mode: str, rows: list[int], ranks: list[list[list[int]]], horizon: int) -> list[list[float]]:
    """d loss / d log π(token) for every token, summing micro-batch losses per rank and averaging over ranks
    (what DeepSpeed does with scale_wrt_gas=False), with the ratio at 1 and advantage -1 (loss = +ratio)."""
    cfg = GRPOConfig(loss_agg_mode=mode, kl_coef=0.0)
    n_tok = sum(rows)
    out = {}
    world = len(ranks)
    for rank in ranks:
        for micro in rank:
            lens = [rows[i] for i in micro]
            width = max(lens)
            mask = torch.tensor([[1.0] * n + [0.0] * (width - n) for n in lens])
            lp = torch.zeros(len(micro), width, requires_grad=True)
            info = {"dp_size": world, "batch_num_tokens": n_tok, "global_batch_size": len(rows),
                    "loss_scale_factor": horizon}  # fmt: skip
            loss, _ = grpo_loss(lp, lp.detach(), lp.detach(), -torch.ones_like(lp), mask, cfg, info)
            loss.backward()
            for j, i in enumerate(micro):
                out[i] = (lp.grad[j, : lens[j]] / world).tolist()
    return [out[i] for i in range(len(rows))]


# verl's definitions over the whole batch: token-mean 1/T; seq-mean-token-mean 1/(S·|s|);
# seq-mean-token-sum 1/S; seq-mean-token-sum-norm 1/(S·H); token-sum 1
HAND = {
    "token-mean": lambda n, S, T, H: 1 / T,
    "seq-mean-token-mean": lambda n, S, T, H: 1 / (S * n),
    "seq-mean-token-sum": lambda n, S, T, H: 1 / S,
    "seq-mean-token-sum-norm": lambda n, S, T, H: 1 / (S * H),
    "token-sum": lambda n, S, T, H: 1.0,
}


@pytest.mark.parametrize("mode", list(HAND))
def test_per_token_gradient_weight_equals_verls_definition(mode):
    """Mixed lengths (2, 10, 3, 7 tokens), two ranks, two micro-batches each: the weight of a token
    must not depend on which micro-batch or rank it landed in (docs/training.md has the table)."""
    rows, horizon = [2, 10, 3, 7], 12
    ranks = [[[0], [1]], [[2], [3]]]
    got = _weights(mode, rows, ranks, horizon)
    S, T = len(rows), sum(rows)
    for n, w in zip(rows, got, strict=True):
        assert w == pytest.approx([HAND[mode](n, S, T, horizon)] * n, rel=1e-5)


def test_overlong_and_zero_variance_filters():
    mask = torch.ones(6, 3)
    scores = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.5])
    ids = np.array([0, 0, 0, 1, 1, 1], dtype=object)
    truncated = torch.tensor([0, 0, 0, 1, 0, 0])
    keep = update_mask(mask, scores, ids, truncated, GRPOConfig(overlong_filter=True))
    assert keep[:, 0].tolist() == [1, 1, 1, 0, 1, 1]
    keep = update_mask(mask, scores, ids, truncated, GRPOConfig(drop_zero_variance_groups=True))
    assert keep[:, 0].tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.equal(update_mask(mask, scores, ids, truncated, GRPOConfig()), mask)


def test_dr_grpo_keeps_the_std_out():
    scores, ids = torch.tensor([2.0, 0.0]), np.array([0, 0], dtype=object)
    a = grpo_advantages(scores, torch.ones(2, 1), ids, GRPOConfig(norm_adv_by_std=False))
    assert a[:, 0].tolist() == [1.0, -1.0]


def test_clip_higher_lets_ratios_rise_further():
    """DAPO's clip-higher: with ε_high = 0.28 a positive-advantage token keeps its gradient up to ratio 1.28."""
    lp = torch.full((1, 1), 0.25, requires_grad=True)  # ratio e^0.25 ≈ 1.28 > 1.2
    old, adv, mask = torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1)
    for high, moves in ((None, False), (0.3, True)):
        lp.grad = None
        loss, m = grpo_loss(lp, old, old, adv, mask, GRPOConfig(kl_coef=0.0, clip_ratio_high=high))
        loss.backward()
        assert (lp.grad.abs().item() > 0) is moves and (m["actor/pg_clipfrac"] > 0) is not moves


def test_sft_truncation_leaves_the_end_token_off(tiny_model):
    """A target cut at max_response_tokens used to get <|im_end|> right after the cut (teaching an early stop)."""
    import json

    from transformers import AutoProcessor

    from m3ad_rl.train.sft import _example

    proc = AutoProcessor.from_pretrained(str(tiny_model))
    end = proc.tokenizer.convert_tokens_to_ids("<|im_end|>")
    row = {"id": "x", "images": [{"bytes": b""}], "messages": json.dumps([
        {"role": "user", "content": [{"type": "text", "text": "q"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "a long target " * 40}]}])}  # fmt: skip
    _, ids, cut = _example(proc, row, 16)
    assert cut and len(ids) == 16 and end not in ids
    _, ids, cut = _example(proc, row, 10_000)
    assert not cut and ids[-1] == end
