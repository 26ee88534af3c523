"""The CPU decoding path's two shortcuts give the model's own numbers bit for bit: the decoding step that skips
transformers' per-call machinery (``decode_step_for``) and SDPA over grouped heads without copying the cache
(``gqa_attention``). Each is compared in one process against the path it replaces (threads can change the
last bit between processes, never within one)."""

from __future__ import annotations

import io

import pytest

torch = pytest.importorskip("torch")

from PIL import Image  # noqa: E402

from m3ad_rl.core.prompts import question  # noqa: E402
from m3ad_rl.engines import GenerationRequest, SamplingParams, make_engine  # noqa: E402
from m3ad_rl.models.attention import NAME, gqa_attention  # noqa: E402
from m3ad_rl.models.decode_step import decode_step_for  # noqa: E402


def _requests(padded: bool) -> list[GenerationRequest]:
    reqs = []
    for i in range(3):
        buf = io.BytesIO()
        size = (64 + 48 * i, 64) if padded else (96, 96)  # image sizes differ: prompts of different lengths
        Image.effect_noise(size, 30 + 10 * i).convert("RGB").save(buf, "PNG")
        reqs.append(GenerationRequest(f"r{i}", question(), buf.getvalue()))
    return reqs


@pytest.mark.parametrize("padded", [True, False], ids=["left-padded", "one-length"])
@pytest.mark.parametrize("temperature", [1.0, 0.0], ids=["sampled", "greedy"])
def test_the_fast_decoding_step_draws_the_tokens_and_log_probs_of_the_model_call(tiny_model, padded, temperature):
    engine = make_engine("hf", str(tiny_model), batch_size=3)
    assert engine._fast_step is not None  # the tiny Qwen3-VL takes it
    engine.eos_ids = set()  # every row decodes all steps: the longest cache the test can give
    reqs, seeds = _requests(padded), [[1, 2], [3, 4], [5, 6]]
    params = SamplingParams(n=2, max_new_tokens=24, temperature=temperature, logprobs=True)
    fast = engine.generate(reqs, params, seeds)
    engine._fast_step = None  # ``model(...)`` per step
    plain = engine.generate(reqs, params, seeds)
    assert [[c.token_ids for c in g] for g in fast] == [[c.token_ids for c in g] for g in plain]
    assert [[c.logprobs for c in g] for g in fast] == [[c.logprobs for c in g] for g in plain]  # exact


def test_the_fast_step_s_logits_equal_the_model_s_bit_for_bit(tiny_model):
    """One step straight against ``model(...)``, on a cache the prompt filled, with a padding mask."""
    from m3ad_rl.engines.hf import _preallocate

    engine = make_engine("hf", str(tiny_model), batch_size=3)
    step = decode_step_for(engine.model)
    inputs = engine._inputs(_requests(padded=True))
    with torch.inference_mode():
        logits = []
        for fn in (step, engine._plain_step):
            cache = engine._prefill_once(inputs, 1)
            _preallocate(cache, cache.get_seq_length() + 4)
            mask = inputs["attention_mask"].bool()[:, None, None, :]
            pos = (inputs["attention_mask"].sum(1) - 1 + engine.model.model.rope_deltas[:, 0]).view(1, 3, 1)
            at = torch.tensor([cache.get_seq_length()])
            logits.append(fn(inputs["input_ids"][:, -1:], mask, cache, pos.expand(3, 3, 1).contiguous(), at))
    assert torch.equal(logits[0], logits[1])


def test_other_models_and_modified_layers_keep_the_model_call(tiny_model):
    """Whatever the step would skip (a hook, a replaced forward, another attention, training mode) keeps
    ``model(...)``: the fast step only runs where it computes exactly what the model would."""
    from transformers import AutoModelForImageTextToText

    def fresh():
        return AutoModelForImageTextToText.from_pretrained(tiny_model).eval()

    assert decode_step_for(fresh()) is not None
    hooked = fresh()
    hooked.model.language_model.layers[0].mlp.register_forward_hook(lambda *a: None)
    assert decode_step_for(hooked) is None
    replaced = fresh()
    replaced.model.language_model.norm.forward = lambda x: x
    assert decode_step_for(replaced) is None
    eager = AutoModelForImageTextToText.from_pretrained(tiny_model, attn_implementation="eager").eval()
    assert decode_step_for(eager) is None
    assert decode_step_for(fresh().train()) is None
    assert decode_step_for(fresh().model.language_model) is None  # not the whole model


def test_grouped_head_attention_gives_sdpa_s_outputs_exactly(tiny_model):
    """A left-padded batch (a mask, so transformers' ``sdpa`` copies every key/value head) through the
    model with ``sdpa`` and with ``sdpa_gqa``: the same logits, bit for bit."""
    from transformers import AutoModelForImageTextToText

    engine = make_engine("hf", str(tiny_model), batch_size=3)
    inputs = engine._inputs(_requests(padded=True))
    assert not bool(inputs["attention_mask"].all())
    model = AutoModelForImageTextToText.from_pretrained(tiny_model).eval()
    with torch.inference_mode():
        want = model(**inputs).logits
        assert gqa_attention(model) > 0
        assert model.model.language_model.config._attn_implementation == NAME
        got = model(**inputs).logits
    assert torch.equal(got, want)
