"""The vision patch embedding as a matmul: the numbers of the Conv3d it replaces, gradients included."""

from __future__ import annotations

import pytest
import torch

from m3ad_rl.models.patch_embed import linear_patch_embed
from tests.helpers import two_image_prompts


def _model_and_inputs(tiny_model):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    proc = AutoProcessor.from_pretrained(tiny_model)
    texts, images = two_image_prompts(proc)
    inputs = proc(text=texts, images=images, return_tensors="pt", padding=True)
    return AutoModelForImageTextToText.from_pretrained(tiny_model, dtype=torch.float64), inputs


def test_the_linear_patch_embedding_gives_the_convolutions_numbers_and_gradients(tiny_model):
    """Same logits and same gradient for every weight (the patch filter's above all), in float64 so
    only the order of the sums differs; the state dict keeps its keys and tensors."""
    conv, inputs = _model_and_inputs(tiny_model)
    fast, _ = _model_and_inputs(tiny_model)
    keys = list(fast.state_dict())
    assert linear_patch_embed(fast) == 1
    assert list(fast.state_dict()) == keys
    inputs["pixel_values"] = inputs["pixel_values"].double()
    grads = []
    for m in (conv, fast):
        out = m(**inputs).logits
        (out.square().mean()).backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
        grads[-1]["logits"] = out.detach()
    (a, b) = grads
    assert a.keys() == b.keys() and any("patch_embed" in k for k in a)
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-9, atol=1e-12), k


def test_only_a_plain_convolution_is_switched():
    """Padding, dilation or a stride other than the kernel make it a different operation: left alone."""

    class PatchEmbed(torch.nn.Module):
        def __init__(self, **conv):
            super().__init__()
            self.proj = torch.nn.Conv3d(3, 8, **conv)

        def forward(self, x):
            return self.proj(x.view(-1, 3, 2, 4, 4)).view(-1, 8)

    plain = PatchEmbed(kernel_size=(2, 4, 4), stride=(2, 4, 4))
    x = torch.randn(5, 3 * 2 * 4 * 4)
    want = plain(x)
    assert linear_patch_embed(plain) == 1
    assert torch.allclose(plain(x), want, atol=1e-6)
    for odd in ({"kernel_size": (2, 4, 4), "stride": (2, 2, 2)}, {"kernel_size": (2, 4, 4), "stride": (2, 4, 4),
                                                                    "padding": 1}):  # fmt: skip
        assert linear_patch_embed(PatchEmbed(**odd)) == 0


@pytest.mark.parametrize("where", ["engine", "actor"])
def test_the_engine_and_the_policy_load_with_the_linear_embedding(tiny_model, where):
    """Rollout (HF engine) and training (``load_policy``: actor, reference, SFT) both get it."""
    if where == "engine":
        from m3ad_rl.engines import make_engine

        model = make_engine("hf", str(tiny_model)).model
    else:
        from m3ad_rl.train.workers import load_policy

        model, _ = load_policy(str(tiny_model))
    embed = model.model.visual.patch_embed
    assert embed.forward.__func__.__name__ == "_linear_forward"
