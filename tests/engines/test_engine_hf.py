"""The HF engine: n samples per prompt in a left-padded batch, and log-probs that match a forward pass."""

import io

import pytest

torch = pytest.importorskip("torch")

from PIL import Image  # noqa: E402

from m3ad_rl.core.prompts import question  # noqa: E402
from m3ad_rl.engines import GenerationRequest, SamplingParams, make_engine  # noqa: E402


def _png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (300, 200), color).save(buf, "PNG")
    return buf.getvalue()


def test_batch_of_prompts_n_samples_and_logprobs_match_a_forward_pass(tiny_model):
    engine = make_engine("hf", str(tiny_model), batch_size=3)
    # different text lengths force left padding inside the batch
    reqs = [GenerationRequest(f"r{i}", question() + " Be brief." * i, _png((40 * i, 90, 20))) for i in range(3)]
    out = engine.generate(reqs, SamplingParams(n=4, max_new_tokens=12, temperature=0.8, seed=1))
    assert [len(g) for g in out] == [4, 4, 4]
    for g in out:
        for c in g:
            assert 0 < len(c.token_ids) <= 12 and len(c.logprobs) == len(c.token_ids)
            assert c.finish_reason in ("stop", "length")
    # every row of the left-padded batch: its log-probs equal one unpadded forward pass of that row alone
    proc, model = engine.processor, engine.model
    for r, g in zip(reqs, out, strict=True):
        text = proc.apply_chat_template(r.messages(), add_generation_prompt=True, tokenize=False)
        inputs = proc(text=[text], images=[r.pil_image()], return_tensors="pt")
        extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
        for c in g:
            ids = torch.cat([inputs["input_ids"], torch.tensor([c.token_ids])], dim=1)
            mm = torch.cat([inputs["mm_token_type_ids"], torch.zeros(1, len(c.token_ids), dtype=torch.long)], dim=1)
            with torch.no_grad():
                logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=mm, **extra).logits
            p = inputs["input_ids"].shape[1]
            lp = torch.log_softmax(logits[0, p - 1 : -1].float() / 0.8, dim=-1)
            expected = lp.gather(1, torch.tensor(c.token_ids)[:, None]).squeeze(1)
            assert torch.allclose(expected, torch.tensor(c.logprobs), atol=2e-3), f"{r.id}: padded row differs"


def test_per_sample_seeds_give_independent_streams_whatever_the_batch(tiny_model):
    """Sample j of every prompt used to draw the same random stream (one seed per worker and step)."""
    engine = make_engine("hf", str(tiny_model), batch_size=4)
    same = [GenerationRequest(f"r{i}", question(), _png((9, 9, 9))) for i in range(2)]  # identical prompts
    params = SamplingParams(n=2, max_new_tokens=16, temperature=1.0, logprobs=False)
    out = engine.generate(same, params, seeds=[[11, 12], [13, 14]])
    streams = [tuple(c.token_ids) for g in out for c in g]
    assert len(set(streams)) == 4, "two samples drew the same stream"
    alone = engine.generate(same[1:], params, seeds=[[13, 14]])  # prompt 1 alone, same seeds: same samples
    assert [c.token_ids for c in alone[0]] == [c.token_ids for c in out[1]]
    again = engine.generate(same, params, seeds=[[11, 12], [13, 14]])
    assert [[c.token_ids for c in g] for g in again] == [[c.token_ids for c in g] for g in out]


def test_vllm_blocks_the_same_vision_tokens_the_hf_engine_suppresses(tiny_model):
    from m3ad_rl.engines.vllm import vision_token_ids

    engine = make_engine("hf", str(tiny_model))
    assert sorted(vision_token_ids(str(tiny_model))) == sorted(engine.vision_ids) and len(engine.vision_ids) == 4


def test_greedy_is_deterministic_and_without_logprobs(tiny_model):
    engine = make_engine("hf", str(tiny_model))
    req = [GenerationRequest("a", question(), _png((1, 2, 3)))]
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=8, logprobs=False)
    a, b = engine.generate(req, params), engine.generate(req, params)
    assert a[0][0].token_ids == b[0][0].token_ids and a[0][0].logprobs is None


def test_unknown_engine_lists_the_choices():
    with pytest.raises(ValueError, match="choose one of: hf, vllm, openai"):
        make_engine("tgi", "x")


def test_inverse_cdf_sampling_draws_from_the_given_distribution():
    """The CPU sampler that replaces torch.multinomial during generate: right frequencies, never a
    zero-probability token, and untouched calls for other shapes."""
    import torch

    from m3ad_rl.engines.hf import inverse_cdf_sampling

    original = torch.multinomial
    probs = torch.tensor([[0.0, 0.5, 0.2, 0.0, 0.3]]).repeat(40_000, 1)
    g = torch.Generator().manual_seed(0)
    with inverse_cdf_sampling():
        draws = torch.multinomial(probs, 1, generator=g).squeeze(1)
        several = torch.multinomial(probs[:3], 2)  # two samples: the original function
    freq = torch.bincount(draws, minlength=5).double() / len(draws)
    assert freq[0] == 0 and freq[3] == 0
    assert torch.allclose(freq, probs[0].double(), atol=0.01)
    assert several.shape == (3, 2)
    assert torch.multinomial is original  # restored on exit


@pytest.mark.parametrize("vocab", [151_936, 5000, 2048, 1024, 7])  # Qwen's; ragged last block; one sum
def test_two_level_inverse_cdf_picks_the_token_of_a_full_cumulative_sum(vocab):
    """``inverse_cdf`` (block sums, then one block) against the plain float64 cumulative sum over the
    whole vocabulary: the same token for every draw, zero-probability tokens (at block edges too) never,
    and the first / last possible token at u = 0 / u → 1."""
    from m3ad_rl.engines.hf import inverse_cdf

    g = torch.Generator().manual_seed(vocab)
    logits = torch.randn(64, vocab, generator=g) * 4
    zero = torch.tensor([0, 1023, 1024, 2047, vocab - 1]).clamp(max=vocab - 1)
    logits[:, zero] = -float("inf")
    probs = torch.softmax(logits, -1)
    for _ in range(20):
        u = torch.rand(64, generator=g, dtype=torch.float64)
        cdf = probs.double().cumsum(-1)
        want = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).squeeze(1)
        got = inverse_cdf(probs, u)
        assert torch.equal(got, want)
        assert not torch.isin(got, zero).any()
        half = probs.bfloat16()  # (torch's own float64 sums: the path a GPU takes)
        cdf = half.double().cumsum(-1)
        want = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).squeeze(1)
        assert torch.equal(inverse_cdf(half, u), want)
    edges = inverse_cdf(probs[:2], torch.tensor([0.0, 1 - 1e-12], dtype=torch.float64))
    nonzero = [int(i) for i in probs[0].nonzero()[[0, -1]]]
    assert edges[0] == nonzero[0] and edges[1] == int(probs[1].nonzero()[-1]), (edges, nonzero)


@pytest.mark.parametrize(
    ("with_images", "sampling"),
    [(True, {"temperature": 1.0}), (True, {"temperature": 0.0}), (True, {"temperature": 0.7, "top_p": 0.9}),
     (False, {"temperature": 1.0})],
    ids=["loop-sampled", "loop-greedy", "generate-top-p", "text-only"],
)  # fmt: skip
def test_shared_prefix_generation_draws_the_same_samples_as_expanding_the_batch(
    tiny_model, with_images, sampling, monkeypatch
):
    """The prompt runs once per request and its KV cache is repeated n times: the samples must be exactly
    those of HF's expand-then-prefill path, also in a left-padded batch of differently sized images.
    Plain sampling and greedy run our own decoding loop (HF ``generate`` is never called); top-p goes
    through ``generate`` with the shared cache."""
    shared = make_engine("hf", str(tiny_model), batch_size=3)
    plain = make_engine("hf", str(tiny_model), batch_size=3, share_prefix=False, static_cache=False)  # HF generate
    sizes = [(300, 200), (120, 90), (64, 64)]
    reqs = []
    for i, size in enumerate(sizes):
        image = None
        if with_images:
            buf = io.BytesIO()
            Image.new("RGB", size, (30 * i, 90, 20)).save(buf, "PNG")
            image = buf.getvalue()
        reqs.append(GenerationRequest(f"r{i}", question() + " Be brief." * i, image))
    params = SamplingParams(n=3, max_new_tokens=16, **sampling)
    seeds = [[10 * i + j for j in range(3)] for i in range(3)]
    if with_images and sampling.get("top_p", 1.0) == 1.0:

        def no_generate(*a, **k):
            raise AssertionError("HF generate ran where our decoding loop should")

        monkeypatch.setattr(shared.model, "generate", no_generate)
    a = shared.generate(reqs, params, seeds)
    if params.temperature == 0:  # HF's greedy refuses n > 1: each of the n samples is the one greedy answer
        b = [g * 3 for g in plain.generate(reqs, params.model_copy(update={"n": 1}), [[s[0]] for s in seeds])]
    else:
        b = plain.generate(reqs, params, seeds)
    assert [[c.token_ids for c in g] for g in a] == [[c.token_ids for c in g] for g in b]
    for ga, gb in zip(a, b, strict=True):
        for ca, cb in zip(ga, gb, strict=True):
            assert torch.allclose(torch.tensor(ca.logprobs), torch.tensor(cb.logprobs), atol=1e-4)


@pytest.mark.parametrize(
    ("static", "sampling"),
    [({"compile_decode": False}, {"temperature": 1.0}), ({"compile_decode": False}, {"temperature": 0.0}),
     ({"compile_decode": "eager"}, {"temperature": 0.7}), ({"compile_decode": False}, {"temperature": 1.0, "n": 1})],
    ids=["static-sampled", "static-greedy", "compiled-step", "static-one-sample"],
)  # fmt: skip
def test_static_cache_decoding_gives_the_tokens_of_the_dynamic_loop(tiny_model, static, sampling):
    """The GPU decoding path (preallocated KV cache, fixed-shape steps, an end check every few steps, the
    step through ``torch.compile``) must draw exactly the tokens of the dynamic-cache loop, seed for seed,
    also when rows end at different steps, none of them on a check step (CHECK_EVERY)."""
    n = sampling.pop("n", 3)
    params = SamplingParams(n=n, max_new_tokens=40, logprobs=True, **sampling)
    reqs = [GenerationRequest(f"r{i}", question() + " Be brief." * i, _png((30 * i, 90, 20))) for i in range(3)]
    seeds = [[10 * i + j for j in range(n)] for i in range(3)]
    dynamic = make_engine("hf", str(tiny_model), batch_size=3, static_cache=False)
    probe = dynamic.generate(reqs, params, seeds)
    # an "end" token that the rows reach at different steps: some end early, some never
    firsts: dict[int, list[int]] = {}
    for c in (c for g in probe for c in g):
        for k, tok in enumerate(c.token_ids[1:], start=1):
            firsts.setdefault(tok, []).append(k)
            if tok in c.token_ids[1:k]:
                firsts[tok].pop()
    end_token = max(firsts, key=lambda t: (len(set(firsts[t])), -min(firsts[t])))
    fixed = make_engine("hf", str(tiny_model), batch_size=3, static_cache=True, **static)
    assert fixed.static_cache
    for e in (dynamic, fixed):
        e.eos_ids = e.eos_ids | {end_token}
    a, b = dynamic.generate(reqs, params, seeds), fixed.generate(reqs, params, seeds)
    lengths = [len(c.token_ids) for g in a for c in g]
    assert min(lengths) < 40 and any(k % fixed.CHECK_EVERY for k in lengths), lengths
    assert [[c.token_ids for c in g] for g in b] == [[c.token_ids for c in g] for g in a]
    assert [[c.finish_reason for c in g] for g in b] == [[c.finish_reason for c in g] for g in a]
    for ga, gb in zip(a, b, strict=True):
        for ca, cb in zip(ga, gb, strict=True):
            assert torch.allclose(torch.tensor(ca.logprobs), torch.tensor(cb.logprobs), atol=1e-4)


@pytest.mark.parametrize("seeded", [True, False])
def test_a_decoding_step_that_does_not_compile_falls_back_to_the_same_tokens(tiny_model, caplog, monkeypatch, seeded):
    """A torch or model version dynamo cannot trace must cost speed, not the rollout: the batch runs
    again uncompiled from the same random state (the failure comes at the first step, after the draws)."""
    params = SamplingParams(n=2, max_new_tokens=12, temperature=1.0, seed=None if seeded else 7)
    reqs = [GenerationRequest(f"r{i}", question(), _png((40 * i, 90, 20))) for i in range(2)]
    seeds = [[1, 2], [3, 4]] if seeded else None

    def untraceable(fn, **kwargs):
        def call(*args):
            raise RuntimeError("dynamo could not trace this\n(details)")

        return call

    monkeypatch.setattr(torch, "compile", untraceable)
    broken = make_engine("hf", str(tiny_model), static_cache=True, compile_decode=True)
    with caplog.at_level("WARNING"):
        got = broken.generate(reqs, params, seeds)
    assert "compiling the decoding step failed" in caplog.text and broken.compile_decode is False
    want = make_engine("hf", str(tiny_model), static_cache=False).generate(reqs, params, seeds)
    assert [[c.token_ids for c in g] for g in got] == [[c.token_ids for c in g] for g in want]


def test_by_default_cpu_decodes_every_batch_into_a_growing_buffer_with_the_tokens_of_a_static_cache(
    tiny_model, monkeypatch
):
    """On CPU the default loop never copies a static cache: the prompt's cache grows into a buffer
    allocated once, also for left-padded prompts (whose mask is then built once and sliced). Both kinds
    of batch draw the tokens of the static cache and of a cache grown by concatenation (HF's own)."""
    from m3ad_rl.engines.hf import HFEngine

    engine = make_engine("hf", str(tiny_model), batch_size=3)
    assert engine.static_cache is None and not engine.compile_decode
    monkeypatch.setattr(HFEngine, "_static_copy", lambda *a: pytest.fail("a static cache on CPU by default"))
    params = SamplingParams(n=2, max_new_tokens=10, temperature=1.0, logprobs=True)
    even = [GenerationRequest(f"e{i}", question(), _png((40 * i, 90, 20))) for i in range(2)]
    padded = [GenerationRequest(f"p{i}", question() + " Be brief." * i, _png((40 * i, 90, 20))) for i in range(2)]
    got = {k: engine.generate(reqs, params, [[1, 2], [3, 4]]) for k, reqs in (("even", even), ("padded", padded))}
    monkeypatch.undo()
    fixed = make_engine("hf", str(tiny_model), static_cache=True)
    monkeypatch.setattr("m3ad_rl.engines.hf._preallocate", lambda cache, capacity: None)  # DynamicLayer's cat
    grown = make_engine("hf", str(tiny_model))
    for name, reqs in (("even", even), ("padded", padded)):
        for other in (fixed, grown):
            want = other.generate(reqs, params, [[1, 2], [3, 4]])
            assert [[c.token_ids for c in g] for g in got[name]] == [[c.token_ids for c in g] for g in want], name
            for ga, gb in zip(got[name], want, strict=True):
                for ca, cb in zip(ga, gb, strict=True):
                    assert torch.allclose(torch.tensor(ca.logprobs), torch.tensor(cb.logprobs), atol=1e-5), name
