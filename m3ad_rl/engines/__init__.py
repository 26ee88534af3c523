"""Inference engines behind one interface (``Engine``): HF transformers, vLLM, OpenAI-compatible HTTP.

This package and the training workers are the only code that imports torch, transformers or vllm.
"""

from __future__ import annotations

from m3ad_rl.engines.base import Completion, Engine, GenerationRequest, SamplingParams

ENGINES = ("hf", "vllm", "openai")


def make_engine(kind: str, model: str, **kwargs) -> Engine:
    """An engine by name: ``hf`` (transformers), ``vllm`` (offline LLM), ``openai`` (HTTP endpoint)."""
    if kind == "hf":
        from m3ad_rl.engines.hf import HFEngine

        return HFEngine(model, **kwargs)
    if kind == "vllm":
        from m3ad_rl.engines.vllm import VLLMEngine

        return VLLMEngine(model, **kwargs)
    if kind == "openai":
        from m3ad_rl.engines.openai import OpenAIEngine

        return OpenAIEngine(model=model, **kwargs)
    raise ValueError(f"unknown engine {kind!r}; choose one of: {', '.join(ENGINES)}")


__all__ = ["ENGINES", "Completion", "Engine", "GenerationRequest", "SamplingParams", "make_engine"]
