"""Shared-prompt log-probs (issue 15): a prompt's KV cache computed once for its n responses gives the same
log-probs and the same gradients as n full rows."""

from __future__ import annotations

import io

import pytest

torch = pytest.importorskip("torch")


def _image(seed: int, size: tuple[int, int]) -> bytes:
    import numpy as np
    from PIL import Image

    arr = np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def _batch(processor, n: int = 3):
    from m3ad_rl.engines.base import GenerationRequest
    from m3ad_rl.train.logprobs import build_batch

    prompts = [GenerationRequest("a", "Any defect?", _image(0, (64, 64))),
               GenerationRequest("b", "Is there any defect in this part? Answer.", _image(1, (96, 64)))]  # fmt: skip
    g = torch.Generator().manual_seed(0)
    reqs, resps = [], []
    for r in prompts:
        for j in range(n):
            length = [1, 7, 12][j % 3]  # one-token, short and long responses: right padding and the edge case
            reqs.append(r)
            resps.append(torch.randint(10, 200, (length,), generator=g).tolist())
    return build_batch(processor, reqs, resps)


@pytest.fixture(scope="module")
def model_and_processor(tiny_model):
    from m3ad_rl.train.workers import load_policy

    model, processor = load_policy(str(tiny_model))
    model.config.use_cache = False
    return model, processor


def test_same_log_probs_and_gradients(model_and_processor):
    from m3ad_rl.train.logprobs import response_log_probs

    model, processor = model_and_processor
    batch = _batch(processor)
    results = []
    for share in (False, True):
        model.zero_grad(set_to_none=True)
        lp, ent = response_log_probs(model, batch, temperature=0.9, with_entropy=True, share_prefix=share)
        (lp.sum() * 0.01).backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        results.append((lp.detach(), ent, grads))
    (lp0, ent0, g0), (lp1, ent1, g1) = results
    assert lp0.shape == lp1.shape
    torch.testing.assert_close(lp1, lp0, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(ent1, ent0, atol=2e-5, rtol=1e-4)
    assert (lp1 == 0).sum() == (lp0 == 0).sum()  # the same padding
    assert g0.keys() == g1.keys() and any(k.startswith("model.visual") for k in g0)
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], atol=1e-5, rtol=1e-3, msg=k)


def test_a_plain_forward_after_a_shared_one_is_unaffected(model_and_processor):
    """The prompt pass sets the model's multimodal RoPE offsets; they must not leak into the next call."""
    from m3ad_rl.train.logprobs import response_log_probs

    model, processor = model_and_processor
    batch = _batch(processor, n=2)
    with torch.no_grad():
        before, _ = response_log_probs(model, batch)
        response_log_probs(model, batch, share_prefix=True)
        after, _ = response_log_probs(model, batch)
    torch.testing.assert_close(after, before)


def test_auto_shares_prompts_on_cpu_and_runs_full_rows_on_gpu():
    """The faster path per device (issue 23): shared on CPU, full rows on an H200; an explicit choice stays."""
    from m3ad_rl.core.config import ConfigError
    from m3ad_rl.train.logprobs import share_prefix_on
    from m3ad_rl.train.rcrl.config import ActorConfig

    assert ActorConfig().share_prefix == "auto"
    assert share_prefix_on("auto", cuda=False) and not share_prefix_on("auto", cuda=True)
    assert share_prefix_on(True, cuda=True) and not share_prefix_on(False, cuda=False)
    with pytest.raises((ValueError, ConfigError)):
        ActorConfig(share_prefix="sometimes")
