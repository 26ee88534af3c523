"""Overriding one nested key keeps its siblings' field defaults: `--set rollout.sampling.max_new_tokens=192`
used to rebuild SamplingParams from its class defaults (n=1, temperature 1.0), so an RCRL run sampled one
response per prompt (no GRPO group, no gradient) and `eval run` sampled instead of decoding greedily."""

from __future__ import annotations

import pytest

from m3ad_rl.core.config import load_config


def test_rcrl_nested_override_keeps_n_samples():
    pytest.importorskip("verl")
    from m3ad_rl.train.rcrl import RCRLConfig

    c = load_config(RCRLConfig, None, ["model=m", "data=d", "out=o", "steps=1", "rollout.sampling.max_new_tokens=192"])
    assert (c.rollout.sampling.n, c.rollout.sampling.max_new_tokens) == (4, 192)
    c = load_config(RCRLConfig, None, ["model=m", "data=d", "out=o", "steps=1", "actor.optim.lr=3e-4"])
    assert (c.actor.optim.lr, c.actor.optim.zero_stage) == (3e-4, 2)


def test_eval_nested_override_stays_greedy():
    from m3ad_rl.eval.run import EvalRunConfig

    c = load_config(EvalRunConfig, None, ["model=m", "dataset=d", "out=o", "sampling.max_new_tokens=8"])
    assert (c.sampling.temperature, c.sampling.n, c.sampling.max_new_tokens) == (0.0, 1, 8)


def test_sft_optimiser_defaults_survive_one_override():
    pytest.importorskip("deepspeed")
    from m3ad_rl.train.sft import SFTConfig

    c = load_config(SFTConfig, None, ["model=m", "data=d", "out=o", "optim.lr=1e-4"])
    assert (c.optim.lr, c.optim.warmup_steps, c.optim.schedule) == (1e-4, 100, "cosine")
