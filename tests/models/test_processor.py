"""The processor's placeholder check counted per row: the same outputs, the same error on a truncated prompt."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from m3ad_rl.models.processor import quick_token_check  # noqa: E402
from tests.helpers import two_image_prompts  # noqa: E402


def test_the_quick_check_gives_the_processor_s_outputs_and_its_error(tiny_model):
    from transformers import AutoProcessor

    plain = AutoProcessor.from_pretrained(tiny_model)
    quick = quick_token_check(AutoProcessor.from_pretrained(tiny_model))
    texts, images = two_image_prompts(plain, " More.")
    for kwargs in ({"return_tensors": "pt", "padding": True}, {}):  # tensors (the quick count), lists (the library's)
        want, got = plain(text=texts, images=images, **kwargs), quick(text=texts, images=images, **kwargs)
        assert set(got) == set(want)
        for k in want:
            a, b = want[k], got[k]
            assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b, k
    cut = {"return_tensors": "pt", "padding": True, "truncation": True, "max_length": 8}  # cuts image placeholders
    with pytest.raises(ValueError, match="Mismatch in `image` token count") as want_err:
        plain(text=texts, images=images, **cut)
    with pytest.raises(ValueError, match="Mismatch in `image` token count") as got_err:
        quick(text=texts, images=images, **cut)
    assert str(got_err.value) == str(want_err.value)
