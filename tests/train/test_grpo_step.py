"""A GRPO step by hand and on the tiny model: advantages, loss, and the direction of the update."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from m3ad_rl.core.prompts import question  # noqa: E402
from m3ad_rl.engines import GenerationRequest, SamplingParams, make_engine  # noqa: E402
from m3ad_rl.train.grpo import GRPOConfig, grpo_advantages, grpo_loss  # noqa: E402
from m3ad_rl.train.logprobs import build_batch, token_log_probs  # noqa: E402


def test_advantages_and_loss_match_a_hand_computation():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.float32)
    adv = grpo_advantages(torch.tensor([1.0, 3.0, 2.0, 2.0]), mask, np.array(["a", "a", "b", "b"]))
    s = 1 / np.sqrt(2)  # group a: mean 2, std sqrt(2); group b: equal scores -> 0
    want = torch.tensor([[-s, -s, -s, 0], [s, s, 0, 0], [0] * 4, [0] * 4], dtype=torch.float32)
    assert torch.allclose(adv, want, atol=1e-4)
    lp = torch.full((4, 4), -1.5)
    loss, m = grpo_loss(lp.clone().requires_grad_(), lp, lp, adv, mask)
    # ratio 1, KL 0: token-mean of -A over the 10 response tokens = (3 s - 2 s) / 10
    assert loss.item() == pytest.approx(s / 10, abs=1e-5)
    assert m["actor/kl_loss"] == 0.0 and m["actor/pg_clipfrac"] == 0.0


def test_clipping_and_kl_term():
    mask = torch.ones(1, 3)
    adv = torch.ones(1, 3)
    old = torch.zeros(1, 3)
    new = torch.full((1, 3), 0.5)  # ratio e^0.5 = 1.65 > 1.2: clipped
    loss, m = grpo_loss(new, old, old, adv, mask, GRPOConfig(kl_coef=0.0))
    assert loss.item() == pytest.approx(-1.2, abs=1e-5) and m["actor/pg_clipfrac"] == 1.0
    _, m = grpo_loss(new, old, old, adv, mask, GRPOConfig(kl_coef=0.01))
    k3 = np.exp(-0.5) - (-0.5) - 1  # low-variance k3 estimator of KL(π‖π_ref) at log-ratio 0.5
    assert m["actor/kl_loss"] == pytest.approx(k3, abs=1e-4)
    # β = 0 needs no reference: the same loss without one; β > 0 without one is an error
    no_ref, m0 = grpo_loss(new, old, None, adv, mask, GRPOConfig(kl_coef=0.0))
    assert no_ref.item() == pytest.approx(-1.2, abs=1e-5) and m0["actor/kl_loss"] == 0.0
    with pytest.raises(ValueError, match="needs the reference log-probs"):
        grpo_loss(new, old, None, adv, mask, GRPOConfig(kl_coef=0.01))


def test_grpo_step_on_the_tiny_model_raises_the_rewarded_sample(tiny_model):
    engine = make_engine("hf", str(tiny_model))
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (224, 224), (100, 50, 50)).save(buf, "PNG")
    req = GenerationRequest("p", question(), buf.getvalue())
    samples = engine.generate([req], SamplingParams(n=2, max_new_tokens=10, seed=3))[0]
    model, proc = engine.model, engine.processor
    batch = build_batch(proc, [req, req], [c.token_ids for c in samples])
    model.train()
    lp = token_log_probs(model, batch)
    # the actor's log-probs equal the rollout engine's (same weights)
    for i, c in enumerate(samples):
        got = lp[i][batch.response_mask[i].bool()]
        assert torch.allclose(got, torch.tensor(c.logprobs), atol=2e-3)
    old = lp.detach()
    _, m0 = grpo_loss(lp, old, old, torch.zeros_like(old), batch.response_mask)
    assert m0["actor/kl_loss"] == pytest.approx(0.0, abs=1e-7)  # KL against itself
    adv = grpo_advantages(torch.tensor([1.0, 0.0]), batch.response_mask, np.array(["p", "p"]))
    loss, _ = grpo_loss(lp, old, old, adv, batch.response_mask)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    opt.zero_grad()
    loss.backward()
    opt.step()
    with torch.no_grad():
        new = token_log_probs(model, batch)
    seq_old, seq_new = old.sum(1), new.sum(1)
    assert seq_new[0] > seq_old[0]  # the rewarded sample became more likely
    assert seq_new[1] < seq_old[1]  # the other one less likely


def test_shared_image_encoding_equals_one_image_per_row(tiny_model):
    """build_batch encodes each distinct image once (GRPO's n samples share it); the log-probs must be
    exactly those of feeding every row its own copy."""
    import io

    from PIL import Image

    from m3ad_rl.train.logprobs import PolicyBatch, response_log_probs

    engine = make_engine("hf", str(tiny_model))
    reqs = []
    for i, colour in enumerate([(200, 10, 10), (10, 200, 10)]):
        buf = io.BytesIO()
        Image.new("RGB", (224, 224), colour).save(buf, "PNG")
        reqs += [GenerationRequest(f"p{i}", question(), buf.getvalue())] * 3
    resps = [[20 + (7 * j + k) % 90 for k in range(5 + j)] for j in range(len(reqs))]
    b = build_batch(engine.processor, reqs, resps)
    v = b.vision
    assert len(v["unique_grid_thw"]) == 2 and v["image_rows"].tolist() == [0, 0, 0, 1, 1, 1]
    starts = torch.cumsum(torch.cat([torch.zeros(1, dtype=torch.long), v["unique_grid_thw"].prod(1)]), 0)
    own = torch.cat([v["pixel_values"][starts[u] : starts[u + 1]] for u in v["image_rows"].tolist()])
    vision = {"pixel_values": own, "image_grid_thw": v["image_grid_thw"]}
    per_row = PolicyBatch(
        b.input_ids, b.attention_mask, b.mm_token_type_ids, b.response_mask, vision, b.response_len, b.prompt_len
    )
    with torch.no_grad():
        shared, _ = response_log_probs(engine.model, b)
        separate, _ = response_log_probs(engine.model, per_row)
        full = token_log_probs(engine.model, per_row)
    assert torch.equal(shared, separate)
    for i, n in enumerate(b.response_len.tolist()):  # response-aligned = the full-sequence view's response part
        assert torch.allclose(shared[i, :n], full[i][b.response_mask[i].bool()], atol=1e-5)
