"""Log-probs without ``[tokens, V]`` logits kept for the backward (issue 23): ``LinearLogProbs`` equals the
plain ``log_softmax(h Wᵀ + b)`` gather in fp32 — values, entropy and the gradients of hidden, W and b —
whatever the chunking, and the model-level path (actor, reference, SFT) takes it for a linear head."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def _plain(hidden, weight, bias, targets, t):
    logits = torch.nn.functional.linear(hidden, weight, bias).float() / t
    logp = torch.log_softmax(logits, -1)
    ent = -(logp.exp() * logp).sum(-1)
    return logp.gather(1, targets[:, None]).squeeze(1), ent.detach()


@pytest.mark.parametrize("chunk", [7, 64, 1 << 25])  # one vocab slice/row per chunk, several, everything at once
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("t", [1.0, 0.7])
def test_equals_the_plain_log_softmax_with_gradients(chunk, bias, t):
    from m3ad_rl.train.logprobs import LinearLogProbs

    g = torch.Generator().manual_seed(0)
    m, h, v = 13, 8, 37
    hidden = torch.randn(m, h, generator=g, requires_grad=True)
    weight = torch.randn(v, h, generator=g, requires_grad=True)
    b = torch.randn(v, generator=g, requires_grad=True) if bias else None
    targets = torch.randint(0, v, (m,), generator=g)
    targets[0], targets[1] = 0, v - 1  # the first and last vocabulary slices
    upstream = torch.randn(m, generator=g)  # per-token weights, as the GRPO loss gives

    lp, ent = LinearLogProbs.apply(hidden, weight, b, targets, t, chunk, True)
    (lp * upstream).sum().backward()
    got = [x.grad.clone() for x in (hidden, weight, b) if x is not None]
    for x in (hidden, weight, b):
        if x is not None:
            x.grad = None
    want_lp, want_ent = _plain(hidden, weight, b, targets, t)
    (want_lp * upstream).sum().backward()
    want = [x.grad for x in (hidden, weight, b) if x is not None]

    torch.testing.assert_close(lp, want_lp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, want_ent, atol=1e-5, rtol=1e-5)
    for a, e in zip(got, want, strict=True):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("chunk", [12, 1 << 20], ids=["recomputed", "kept"])
def test_gradcheck_in_float64(chunk):
    """Both backwards: logits recomputed per vocabulary slice, and the one chunk the forward kept."""
    from m3ad_rl.train.logprobs import LinearLogProbs

    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 4, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(11, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 10, 3, 3, 7])

    def f(hh, ww, bb):
        return LinearLogProbs.apply(hh, ww, bb, targets, 0.8, chunk, False)[0]

    assert torch.autograd.gradcheck(f, (hidden, weight, bias))


def test_logits_that_fit_one_chunk_are_not_recomputed(monkeypatch):
    """A small vocabulary's logits are one chunk: the backward reuses them (no vocabulary matmul); a
    larger one recomputes slice by slice, never holding more than a chunk."""
    from m3ad_rl.train.logprobs import LinearLogProbs

    calls = []
    linear = torch.nn.functional.linear
    monkeypatch.setattr(torch.nn.functional, "linear", lambda *a: calls.append(a[1].shape[0]) or linear(*a))
    hidden, weight = torch.randn(6, 4, requires_grad=True), torch.randn(10, 4, requires_grad=True)
    for chunk, recomputed in ((60, False), (59, True)):
        lp, _ = LinearLogProbs.apply(hidden, weight, None, torch.arange(6), 1.0, chunk, False)
        calls.clear()
        lp.sum().backward()
        assert bool(calls) is recomputed, (chunk, calls)


def test_frozen_inputs_get_no_gradient_and_inference_mode_works():
    from m3ad_rl.train.logprobs import LinearLogProbs

    hidden = torch.randn(4, 3, requires_grad=True)
    weight = torch.randn(9, 3)  # a frozen head: only the hidden's gradient is computed
    lp, ent = LinearLogProbs.apply(hidden, weight, None, torch.tensor([1, 2, 3, 8]), 1.0, 5, False)
    lp.sum().backward()
    assert hidden.grad is not None and weight.grad is None and ent is None
    with torch.inference_mode():  # the reference and π_old: no graph at all
        lp2, _ = LinearLogProbs.apply(hidden, weight, None, torch.tensor([1, 2, 3, 8]), 1.0, 5, True)
    torch.testing.assert_close(lp2, lp.detach())


def test_the_model_path_takes_the_fused_head_and_matches_the_chunked_one(tiny_model, monkeypatch):
    """``response_log_probs`` on the tiny Qwen3-VL, full rows and shared prompt: the fused head gives the
    row-chunked path's log-probs and parameter gradients (break ``LinearLogProbs.backward``: this fails)."""
    from m3ad_rl.train import logprobs
    from m3ad_rl.train.workers import load_policy
    from tests.train.test_shared_prefix import _batch

    model, processor = load_policy(str(tiny_model))
    model.config.use_cache = False
    assert logprobs.fusable_head(model.lm_head)
    batch = _batch(processor)
    calls = []
    real = logprobs.LinearLogProbs.apply
    monkeypatch.setattr(logprobs.LinearLogProbs, "apply", lambda *a: calls.append(1) or real(*a))
    for share in (False, True):
        results = []
        for fused in (True, False):
            model.zero_grad(set_to_none=True)
            lp, ent = logprobs.response_log_probs(
                model, batch, temperature=0.9, with_entropy=True, share_prefix=share, fused_head=fused
            )
            (lp.sum() * 0.01).backward()
            grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
            results.append((lp.detach(), ent, grads))
        (lp0, ent0, g0), (lp1, ent1, g1) = results
        torch.testing.assert_close(lp0, lp1, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ent0, ent1, atol=1e-5, rtol=1e-5)
        assert g0.keys() == g1.keys() and any("embed_tokens" in k or "lm_head" in k for k in g0)
        for k in g0:
            torch.testing.assert_close(g0[k], g1[k], atol=1e-6, rtol=1e-4, msg=k)
    assert calls == [1, 1]  # the fused side of each pair, and only it
