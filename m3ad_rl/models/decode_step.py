"""One decoding step of a Qwen3-VL text model without transformers' per-call machinery (CPU decoding).

Decoding one token for a small model on CPU is bound by Python, not arithmetic: ``model(...)`` passes
through three nested ``forward``s with their output-capturing decorators and ``ModelOutput`` objects,
builds a mask, and calls ~40 modules per step. This step reads the same parameters and applies the same
operations in the same order (``F.linear``, the RMSNorm formula, the model's own rotary module and
attention function), so its logits equal the model's bit for bit (tests/models/test_decode_step.py); with
grouped-head attention, decoding the tiny model is 1.3× faster in fresh processes (docs/benchmarks.md).

Only the architecture it was written against takes it (``decode_step_for``); any other model, a quantised
or hooked layer, or an attention other than SDPA keeps ``model(...)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

_LAYER = "Qwen3VLTextDecoderLayer"
_TEXT = "Qwen3VLTextModel"
_MODEL = "Qwen3VLForConditionalGeneration"


def _rms(x: torch.Tensor, norm) -> torch.Tensor:
    """``Qwen3VLTextRMSNorm.forward``, the same operations."""
    dtype = x.dtype
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * h.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _plain(module: torch.nn.Module) -> bool:
    """A module whose ``forward`` is its class's and that has no hooks (nothing this step would skip)."""
    return (
        "forward" not in vars(module)
        and not module._forward_hooks
        and not module._forward_pre_hooks
        and not torch.nn.modules.module._global_forward_hooks
        and not torch.nn.modules.module._global_forward_pre_hooks
    )


def decode_step_for(model: torch.nn.Module) -> Callable | None:
    """The fast step for ``model`` (same signature and result as ``HFEngine._plain_step`` on a cache whose
    layers expose ``update(keys, values)``), or None where it does not apply."""
    if type(model).__name__ != _MODEL:
        return None
    text = getattr(getattr(model, "model", None), "language_model", None)
    if text is None or type(text).__name__ != _TEXT or model.training:
        return None
    cfg = text.config
    if cfg._attn_implementation not in ("sdpa", "sdpa_gqa") or getattr(cfg, "hidden_act", None) != "silu":
        return None
    if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or ["full_attention"])):
        return None
    if any(type(layer).__name__ != _LAYER for layer in text.layers):
        return None
    modules = [model, model.model, text, text.norm, text.embed_tokens, text.rotary_emb, model.lm_head]
    modules += [m for layer in text.layers for m in layer.modules()]
    linears = [model.lm_head] + [getattr(layer.self_attn, f"{x}_proj") for layer in text.layers for x in "qkvo"]
    linears += [getattr(layer.mlp, f"{x}_proj") for layer in text.layers for x in ("gate", "up", "down")]
    if not all(_plain(m) for m in modules) or any(type(m) is not torch.nn.Linear for m in linears):
        return None  # (a quantised or otherwise replaced projection: the step reads ``.weight`` as a matrix)
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    attention = ALL_ATTENTION_FUNCTIONS.get_interface(cfg._attn_implementation, None)  # the model's own dispatch
    layers = [(layer, layer.self_attn, layer.mlp) for layer in text.layers]
    embed, head, rotary, final = text.embed_tokens, model.lm_head, text.rotary_emb, text.norm

    def step(cur, mask, cache, pos, at):
        """``cur`` [rows, 1] tokens; ``mask`` a 4-D boolean SDPA mask, or the 2-D one of a batch without
        padding (then no mask, as transformers passes none); ``pos`` [3, rows, 1]. fp32 logits [rows, V]."""
        x = embed(cur)
        cos, sin = rotary(x, pos)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        attn_mask = mask if mask is not None and mask.dim() == 4 else None
        rows = x.shape[0]
        for i, (layer, attn, mlp) in enumerate(layers):
            residual = x
            h = _rms(x, layer.input_layernorm)
            shape = (rows, 1, -1, attn.head_dim)
            q = _rms(F.linear(h, attn.q_proj.weight, attn.q_proj.bias).view(shape), attn.q_norm).transpose(1, 2)
            k = _rms(F.linear(h, attn.k_proj.weight, attn.k_proj.bias).view(shape), attn.k_norm).transpose(1, 2)
            v = F.linear(h, attn.v_proj.weight, attn.v_proj.bias).view(shape).transpose(1, 2)
            q = (q * cos) + (_rotate_half(q) * sin)
            k = (k * cos) + (_rotate_half(k) * sin)
            k, v = cache.layers[i].update(k, v)
            o, _ = attention(attn, q, k, v, attn_mask, dropout=0.0, scaling=attn.scaling)
            o = o.reshape(rows, 1, -1).contiguous()
            x = residual + F.linear(o, attn.o_proj.weight, attn.o_proj.bias)
            residual = x
            h = _rms(x, layer.post_attention_layernorm)
            gate = F.silu(F.linear(h, mlp.gate_proj.weight, mlp.gate_proj.bias))
            h = gate * F.linear(h, mlp.up_proj.weight, mlp.up_proj.bias)
            x = residual + F.linear(h, mlp.down_proj.weight, mlp.down_proj.bias)
        x = _rms(x, final)
        return F.linear(x[:, -1], head.weight, head.bias).float()

    return step
