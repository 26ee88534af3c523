"""Inference engines behind one interface (``Engine``): HF transformers, vLLM, OpenAI-compatible HTTP.

This package and the training workers are the only code that imports torch, transformers or vllm.
The factories import their engine when called, so ``import m3ad_rl.engines`` stays light.
"""

from __future__ import annotations

from collections.abc import Callable

from m3ad_rl.core.registry import Registry
from m3ad_rl.engines.base import Completion, Engine, GenerationRequest, SamplingParams

ENGINE_REGISTRY: Registry[Callable[..., Engine]] = Registry("engine")


@ENGINE_REGISTRY.register("hf")
def _hf(model: str, **kwargs) -> Engine:
    """transformers ``generate`` in this process."""
    from m3ad_rl.engines.hf import HFEngine

    return HFEngine(model, **kwargs)


@ENGINE_REGISTRY.register("vllm")
def _vllm(model: str, **kwargs) -> Engine:
    """vLLM's offline ``LLM``."""
    from m3ad_rl.engines.vllm import VLLMEngine

    return VLLMEngine(model, **kwargs)


@ENGINE_REGISTRY.register("openai")
def _openai(model: str, **kwargs) -> Engine:
    """Any OpenAI-compatible chat-completions endpoint over HTTP."""
    from m3ad_rl.engines.openai import OpenAIEngine

    return OpenAIEngine(model=model, **kwargs)


ENGINES = ENGINE_REGISTRY.names()


def make_engine(kind: str, model: str, **kwargs) -> Engine:
    """An engine by name (one of ``ENGINES``); an unknown name is a ValueError listing them."""
    return ENGINE_REGISTRY.get(kind)(model, **kwargs)


__all__ = ["ENGINES", "ENGINE_REGISTRY", "Completion", "Engine", "GenerationRequest", "SamplingParams", "make_engine"]
