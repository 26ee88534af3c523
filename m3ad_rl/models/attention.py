"""SDPA with grouped-query heads for inference on CPU, without copying the KV cache.

Qwen3-VL's text model has fewer key/value heads than query heads. Transformers' ``sdpa`` attention
passes ``enable_gqa`` to ``scaled_dot_product_attention`` only where there is no mask; with one (a
left-padded batch) it first copies every key and value head ``heads / kv_heads`` times (``repeat_kv``).
A decoding step then copies the whole cache of every layer: on CPU that copy was 13 % of a decoding step of
the tiny model, the attention behind it 18 % (cProfile). PyTorch's CPU kernels take the mask and ``enable_gqa``
together and give bit-identical outputs (tests/models/test_decode_step.py), so the engine's model uses this.
(On CUDA a mask with ``enable_gqa`` falls back to the math kernel, so GPU models keep ``sdpa``; the actor
keeps it too: its backward sums the key/value gradients in another order, for no measurable gain.)
"""

from __future__ import annotations

import torch

NAME = "sdpa_gqa"


def _sdpa_gqa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """Transformers' attention-function signature; ``sdpa`` with ``enable_gqa`` whatever the mask."""
    groups = getattr(module, "num_key_value_groups", 1)
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    is_causal = query.shape[2] > 1 and attention_mask is None and is_causal
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, is_causal=is_causal,
        enable_gqa=groups > 1,
    )  # fmt: skip
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, _sdpa_gqa)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)  # the masks ``sdpa`` gets


def gqa_attention(model: torch.nn.Module) -> int:
    """Switch every config of ``model`` that uses ``sdpa`` to ``sdpa_gqa`` (CPU inference; see the module
    docstring). Returns how many configs were switched; a model on another attention is left alone."""
    _register()
    switched = 0
    seen: set[int] = set()
    for module in model.modules():
        cfg = getattr(module, "config", None)
        if cfg is None or id(cfg) in seen:
            continue
        seen.add(id(cfg))
        if getattr(cfg, "_attn_implementation", None) == "sdpa":
            cfg._attn_implementation = NAME
            switched += 1
    return switched
