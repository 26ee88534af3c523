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
    from m3ad_rl.train import logprobs
    from m3ad_rl.train.logprobs import LinearLogProbs

    calls = []
    linear = logprobs._linear
    monkeypatch.setattr(logprobs, "_linear", lambda *a: calls.append(a[1].shape[0]) or linear(*a))
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


def _grpo_like(lp: torch.Tensor) -> torch.Tensor:
    """A per-token loss of GRPO's shape: clipped ratio against fixed old log-probs, k3 KL, token-mean."""
    g = torch.Generator().manual_seed(5)
    old = lp.detach() + 0.3 * torch.randn(lp.shape, generator=g)
    ref = lp.detach() + 0.2 * torch.randn(lp.shape, generator=g)
    adv = torch.randn(lp.shape, generator=g)
    ratio = torch.exp(lp - old)
    pg = torch.maximum(-adv * ratio, -adv * ratio.clamp(0.8, 1.2))
    kl = torch.exp(ref - lp) - (ref - lp) - 1
    return (pg + 0.01 * kl).sum() / lp.numel()


@pytest.mark.parametrize("chunk", [40, 1 << 25])  # several token chunks, one
@pytest.mark.parametrize("loss", ["per-token", "mixed"])
def test_gradients_in_the_forward_equal_the_plain_path_for_any_loss(chunk, loss, monkeypatch):
    """``grad_of`` (the update's loss probe): the forward computes the gradients from each chunk's logits;
    a per-token loss (GRPO's) needs no vocabulary matmul in the backward, and a loss that mixes tokens
    (here a squared sum, which the probe cannot foresee) is corrected there: exact either way (break the
    correction or the prediction: this fails)."""
    from m3ad_rl.train.logprobs import LinearLogProbs, loss_probe

    g = torch.Generator().manual_seed(3)
    m, h, v = 12, 6, 29
    hidden = torch.randn(m, h, generator=g, requires_grad=True)
    weight = torch.randn(v, h, generator=g, requires_grad=True)
    bias = torch.randn(v, generator=g, requires_grad=True)
    targets = torch.randint(0, v, (m,), generator=g)
    mask = torch.arange(4)[None] < torch.tensor([[4], [2], [3]])  # [3 rows, 4 tokens]: padding masked out

    def loss_fn(lp):
        return _grpo_like(lp) if loss == "per-token" else _grpo_like(lp) + 0.1 * lp.sum() ** 2

    from m3ad_rl.train import logprobs

    calls = []
    linear = logprobs._linear
    monkeypatch.setattr(logprobs, "_linear", lambda *a: calls.append(1) or linear(*a))
    lp, ent = LinearLogProbs.apply(hidden, weight, bias, targets, 0.8, chunk, True, loss_probe(loss_fn, (3, 4), mask))
    forward_calls = len(calls)
    loss_fn(lp.view(3, 4) * mask).backward()
    # the backward recomputes only to correct: a mixing loss seen through placeholders (in one chunk the
    # probe sees every token's value, so even it is foreseen)
    assert (len(calls) > forward_calls) is (loss == "mixed" and chunk == 40)
    got = [x.grad.clone() for x in (hidden, weight, bias)]
    for x in (hidden, weight, bias):
        x.grad = None
    want_lp, want_ent = _plain(hidden, weight, bias, targets, 0.8)
    loss_fn(want_lp.view(3, 4) * mask).backward()
    torch.testing.assert_close(lp, want_lp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, want_ent, atol=1e-5, rtol=1e-5)
    for a, e in zip(got, (hidden.grad, weight.grad, bias.grad), strict=True):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5)


def test_gradients_in_the_forward_gradcheck_in_float64():
    from m3ad_rl.train.logprobs import LinearLogProbs, loss_probe

    g = torch.Generator().manual_seed(4)
    hidden = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 4, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 10, 3, 3, 7, 1])
    mask = torch.ones(2, 3, dtype=torch.bool)

    def loss_fn(lp):
        return (torch.exp(lp) * torch.arange(1.0, 7.0, dtype=lp.dtype).view(2, 3)).sum()

    def f(hh, ww):
        lp, _ = LinearLogProbs.apply(hh, ww, None, targets, 0.9, 22, False, loss_probe(loss_fn, (2, 3), mask))
        return loss_fn(lp.view(2, 3) * mask)

    # a repeated backward (retained graph) takes the recompute path, and a zero upstream gradient cancels the
    # predicted one: both equal to rounding, not bit for bit
    assert torch.autograd.gradcheck(f, (hidden, weight), nondet_tol=1e-12, check_undefined_grad=False)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
def test_the_update_gets_grpo_gradients_in_the_forward_without_a_recompute(tiny_model, monkeypatch, mode):
    """``response_log_probs(loss_fn=...)`` on the tiny Qwen3-VL with the real GRPO loss (verl's policy loss,
    k3 KL, global aggregation) over several token chunks, full rows and shared prompt: the gradients equal
    the row-chunked path's, and the backward runs no vocabulary matmul (the probe foresaw every token's
    upstream gradient exactly)."""
    from m3ad_rl.train import logprobs
    from m3ad_rl.train.grpo import GRPOConfig, grpo_loss
    from m3ad_rl.train.workers import load_policy
    from tests.train.test_shared_prefix import _batch

    model, processor = load_policy(str(tiny_model))
    model.config.use_cache = False
    batch = _batch(processor)
    monkeypatch.setattr(logprobs, "_CHUNK_ELEMENTS", model.lm_head.out_features * 5)  # 5 tokens a chunk
    g = torch.Generator().manual_seed(2)
    width = int(batch.response_len.max())
    mask = (torch.arange(width)[None] < batch.response_len[:, None]).float()
    old = -torch.rand(mask.shape, generator=g) * 6
    ref = old + 0.1 * torch.randn(mask.shape, generator=g)
    adv = torch.randn(mask.shape, generator=g)
    info = {"dp_size": 1, "batch_num_tokens": float(mask.sum()), "global_batch_size": float(mask.shape[0])}
    cfg = GRPOConfig(loss_agg_mode=mode)

    def loss_fn(lp):
        return grpo_loss(lp, old, ref, adv, mask, cfg, info, with_metrics=False)[0]

    calls = []
    linear = logprobs._linear
    monkeypatch.setattr(logprobs, "_linear", lambda *a: calls.append(a[1].shape) or linear(*a))
    for share in (False, True):
        results = []
        for fused, probe in ((True, loss_fn), (False, None)):
            model.zero_grad(set_to_none=True)
            lp, _ = logprobs.response_log_probs(model, batch, 0.9, share_prefix=share, fused_head=fused,
                                                loss_fn=probe)  # fmt: skip
            assert not fused or calls  # the fused head's forward went through _linear
            calls.clear()
            loss_fn(lp).backward()
            if fused:
                assert not calls, calls  # no recompute, no correction
            results.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
        g0, g1 = results
        assert g0.keys() == g1.keys()
        for k in g0:
            torch.testing.assert_close(g0[k], g1[k], atol=1e-6, rtol=1e-4, msg=k)


def test_under_bf16_autocast_the_forward_gradients_match_the_recomputed_ones():
    """The GPU's mixed precision, on CPU autocast: the matmuls in bf16, softmax and sums in fp32; the gradients
    computed in the forward and those the backward recomputes agree to bf16 rounding."""
    from m3ad_rl.train.logprobs import LinearLogProbs, loss_probe

    g = torch.Generator().manual_seed(6)
    hidden = torch.randn(10, 16, generator=g, requires_grad=True)
    weight = (torch.randn(50, 16, generator=g) * 0.3).requires_grad_()
    targets = torch.randint(0, 50, (10,), generator=g)
    mask = torch.ones(2, 5, dtype=torch.bool)
    grads = []
    for probe in (loss_probe(_grpo_like, (2, 5), mask), None):
        hidden.grad = weight.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            lp, ent = LinearLogProbs.apply(hidden, weight, None, targets, 1.0, 50 * 4, True, probe)
            _grpo_like(lp.view(2, 5) * mask).backward()
        assert lp.dtype == torch.float32 and weight.grad.dtype == torch.float32
        grads.append((lp.detach(), ent, hidden.grad.clone(), weight.grad.clone()))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("probe", [True, False], ids=["grad-in-forward", "recomputed"])
def test_bf16_weights_without_autocast_give_the_fp32_numbers_to_bf16_rounding(probe):
    """``actor.optim.bf16`` on CPU: bf16 hidden states and weights, no autocast (the chunk buffer, fp32 on
    this path, once refused bf16 logits). Values and gradients close to the fp32 computation's."""
    from m3ad_rl.train.logprobs import LinearLogProbs, loss_probe

    g = torch.Generator().manual_seed(7)
    h32, w32 = torch.randn(10, 16, generator=g), torch.randn(50, 16, generator=g) * 0.3
    targets = torch.randint(0, 50, (10,), generator=g)
    mask = torch.ones(2, 5, dtype=torch.bool)
    out = []
    for dtype in (torch.float32, torch.bfloat16):
        hidden, weight = (x.to(dtype).detach().clone().requires_grad_() for x in (h32, w32))
        p = loss_probe(_grpo_like, (2, 5), mask) if probe else None
        lp, ent = LinearLogProbs.apply(hidden, weight, None, targets, 1.0, 50 * 4, True, p)
        _grpo_like(lp.view(2, 5).float() * mask).backward()
        assert hidden.grad.dtype == dtype and weight.grad.dtype == dtype
        out.append([x.float() for x in (lp.detach(), ent, hidden.grad, weight.grad)])
    for a, b in zip(*out, strict=True):
        torch.testing.assert_close(b, a, atol=5e-2, rtol=5e-2)
