"""Hugging Face transformers engine: batched, left-padded generation on CPU or GPU.

Log-probs are those of the sampling distribution (logits / temperature, no top-p renormalisation),
computed step by step so a 151k vocabulary never materialises a [batch, length, vocab] tensor.
"""

from __future__ import annotations

import contextlib
import logging
from types import SimpleNamespace

from m3ad_rl.engines.base import Completion, GenerationRequest, SamplingParams

log = logging.getLogger(__name__)


@contextlib.contextmanager
def inverse_cdf_sampling(generators: list | None = None):
    """Draw one token per row by inverse-CDF sampling while active.

    ``torch.multinomial`` on CPU draws an exponential variate for every vocabulary entry; with
    Qwen's 151k vocabulary that was 65 % of generation time. One uniform per row against the
    cumulative probabilities samples the same distribution. With ``generators`` (one
    ``torch.Generator`` per row) row i's uniforms come from its own generator, so a sample's random
    stream depends on its seed alone, not on which other rows share the batch. Other calls pass
    through unchanged.
    """
    import torch

    original = torch.multinomial

    def multinomial(probs, num_samples, replacement=False, *, generator=None, out=None):
        if num_samples != 1 or out is not None or probs.dim() != 2:
            return original(probs, num_samples, replacement, generator=generator, out=out)
        if generators is not None and len(generators) == probs.shape[0]:
            u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in generators]).to(probs.device)
        else:
            u = torch.rand(probs.shape[0], generator=generator, dtype=torch.float64, device=probs.device)
        return inverse_cdf(probs, u)[:, None]

    torch.multinomial = multinomial
    try:
        yield
    finally:
        torch.multinomial = original


def inverse_cdf(probs, u, block: int = 1024):
    """Row i's token: the first index where the cumulative sum of ``probs[i]`` exceeds ``u[i]`` times
    its total (``u`` in [0, 1), float64), as ``torch.multinomial`` would draw it. Up to ``4 × block``
    entries that is one float64 cumulative sum. Above, two levels, so a 151k
    vocabulary is read once and never copied to float64 (a float64 cumulative sum over the whole
    vocabulary was half of a CPU decoding step): float64 block sums find each row's block, then that
    block's float64 cumulative sum finds the token. Summed in another order than one running sum, the
    edges move by ~1e-16, so a draw differs only where u lands that close to one. A zero-probability
    token (a suppressed one) is never drawn, also at u → 1."""
    import torch

    rows, vocab = probs.shape
    if vocab <= 4 * block:  # small: one float64 cumulative sum is cheaper than the two levels' extra ops
        cdf = probs.double().cumsum(-1)
        total = cdf[:, -1:]
        t = torch.minimum(u.reshape(rows, 1).to(cdf) * total, torch.nextafter(total, torch.zeros_like(total)))
        return torch.searchsorted(cdf, t, right=True).squeeze(1)
    probs = probs.contiguous()
    size = min(block, vocab)
    whole = vocab // size
    if probs.device.type == "cpu" and probs.dtype in (torch.float32, torch.float64):  # numpy: 5× faster here
        import numpy as np

        a = probs.numpy()
        sums = np.lib.stride_tricks.as_strided(
            a, (rows, whole, size), (a.strides[0], size * a.strides[1], a.strides[1])
        )
        sums = torch.from_numpy(sums.sum(-1, dtype=np.float64))
    else:
        sums = probs.as_strided((rows, whole, size), (vocab, size, 1)).sum(-1, dtype=torch.float64)
    if whole * size < vocab:  # the ragged last block
        sums = torch.cat([sums, probs[:, whole * size :].sum(-1, keepdim=True, dtype=torch.float64)], dim=1)
    blocks = sums.cumsum(-1)
    total = blocks[:, -1:]
    target = torch.minimum(u.reshape(rows, 1).to(blocks) * total, torch.nextafter(total, torch.zeros_like(total)))
    b = torch.searchsorted(blocks, target, right=True)  # [rows, 1]: a block with mass (target < total)
    before = torch.where(b > 0, blocks.gather(1, (b - 1).clamp(min=0)), 0.0)
    idx = b * size + torch.arange(size, device=probs.device)  # [rows, size]
    inside = torch.where(idx < vocab, probs.gather(1, idx.clamp(max=vocab - 1)), 0.0).double().cumsum(-1)
    mass = inside[:, -1:]
    t = torch.minimum((target - before).clamp(min=0.0), torch.nextafter(mass, torch.zeros_like(mass)))
    return (b * size + torch.searchsorted(inside, t, right=True)).squeeze(1)


class _GrowingLayer:
    """A KV cache layer that grows into a buffer allocated once: each step writes its keys and values
    in place and attends to a view of the filled part. HF's ``DynamicLayer`` concatenates the whole
    cache with the new token at every step (on CPU that copying was half of a decoding step), and a
    ``StaticCache`` attends to all its slots, filled or not, behind a mask."""

    def __init__(self, layer, capacity: int):
        k, v = layer.keys, layer.values
        self.layer, self.filled = layer, k.shape[-2]
        self.k_buf = k.new_empty((*k.shape[:-2], capacity, k.shape[-1]))
        self.v_buf = v.new_empty((*v.shape[:-2], capacity, v.shape[-1]))
        self.k_buf[..., : self.filled, :] = k
        self.v_buf[..., : self.filled, :] = v

    def update(self, key_states, value_states, *args, **kwargs):
        end = self.filled + key_states.shape[-2]
        self.k_buf[..., self.filled : end, :] = key_states
        self.v_buf[..., self.filled : end, :] = value_states
        self.filled = end
        self.layer.keys, self.layer.values = self.k_buf[..., :end, :], self.v_buf[..., :end, :]
        return self.layer.keys, self.layer.values


def _preallocate(cache, capacity: int) -> None:
    """Make every layer of a ``DynamicCache`` grow into a buffer of ``capacity`` positions (``_GrowingLayer``):
    the same keys and values as concatenating, without the copies."""
    for layer in cache.layers:
        layer.update = _GrowingLayer(layer, capacity).update


class HFEngine:
    """``AutoModelForImageTextToText`` + its processor; ``batch_size`` prompts per ``generate`` call."""

    name = "hf"

    def __init__(
        self,
        model: str,
        device: str | None = None,
        dtype: str = "auto",
        batch_size: int = 8,
        share_prefix: bool = True,
        decode_loop: bool = True,
        static_cache: bool | None = None,
        compile_decode: bool | str | None = None,
        fast_step: bool = True,
    ):
        """``share_prefix``: n samples continue one prefill of their prompt; ``decode_loop``: then decode
        with our own loop (plain sampling and greedy) instead of HF ``generate``: the same tokens, faster.

        ``static_cache``: that loop decodes into a preallocated KV cache with fixed-shape inputs and
        checks for the end only every few steps, so a step never waits for the device. Default (None):
        on GPU. On CPU the loop's cache grows into a buffer allocated once (``_GrowingLayer``) and each
        step attends to the filled part only: as fast as the static cache for left-padded prompts and
        1.45× faster for prompts of one length, which need no mask at all (bench/bench_decode.py).
        Either way one sample per prompt decodes in the loop too.
        ``compile_decode`` (default: on GPU) then compiles the decoding step
        (``torch.compile``, CUDA graphs on GPU; a string names the backend). On GPU a step of a small
        model is per-token overhead (Python, kernel launches, syncs), not compute. The tokens are the
        same as the dynamic-cache loop's (tests/engines/test_engine_hf.py).
        ``fast_step``: where the model is a Qwen3-VL on SDPA, the growing-cache loop's step
        skips transformers' per-call machinery and the model attends over grouped heads without copying the
        cache (``m3ad_rl.models.decode_step``, ``m3ad_rl.models.attention``): the model's logits bit for bit,
        1.3× faster decoding of the tiny model on CPU (bench_decode). ``False`` keeps ``model(...)`` per step."""
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from m3ad_rl.core.storage import local_model
        from m3ad_rl.models.attention import gqa_attention
        from m3ad_rl.models.decode_step import decode_step_for
        from m3ad_rl.models.patch_embed import linear_patch_embed
        from m3ad_rl.models.processor import quick_token_check

        model = local_model(model)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if dtype == "auto":
            dtype = "bfloat16" if self.device.startswith("cuda") else "float32"
        self.processor = quick_token_check(AutoProcessor.from_pretrained(model))
        self.processor.tokenizer.padding_side = "left"
        self.model = AutoModelForImageTextToText.from_pretrained(model, dtype=getattr(torch, dtype))
        self.model.to(self.device).eval()
        linear_patch_embed(self.model)
        on_gpu = self.device.startswith("cuda")
        if fast_step and not on_gpu:  # attend without copying the KV cache per query head (CPU kernels)
            gqa_attention(self.model)
        self.batch_size = batch_size
        self.share_prefix, self.decode_loop = share_prefix, decode_loop
        self.static_cache = static_cache  # None: per batch (_static_for)
        self.compile_decode = (on_gpu and static_cache is not False) if compile_decode is None else compile_decode
        self._compiled_step = None
        self._fast_step = decode_step_for(self.model) if fast_step else None  # None: ``model(...)`` per step
        tok = self.processor.tokenizer
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = {i for i in (eos if isinstance(eos, list) else [eos]) + [tok.eos_token_id] if i is not None}
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        # Vision placeholders are never valid output; a sampled one would break the actor's forward
        # pass over prompt + response (image tokens must match image features).
        cfg = self.model.config
        self.vision_ids = [
            i for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
            if (i := getattr(cfg, k, None)) is not None
        ]  # fmt: skip

    def generate(
        self, requests: list[GenerationRequest], params: SamplingParams, seeds: list[list[int]] | None = None
    ) -> list[list[Completion]]:
        """``params.n`` completions per request; ``seeds`` (one per request and sample) gives every sample
        its own random stream, independent of the batching (RCRL's rollouts)."""
        out: list[list[Completion]] = []
        for start in range(0, len(requests), self.batch_size):
            part = seeds[start : start + self.batch_size] if seeds is not None else None
            out.extend(self._batch(requests[start : start + self.batch_size], params, part))
        return out

    def _inputs(self, requests: list[GenerationRequest]):
        texts = [
            self.processor.apply_chat_template(r.messages(), add_generation_prompt=True, tokenize=False)
            for r in requests
        ]
        images = [r.pil_image() for r in requests if r.image is not None]
        if images and len(images) != len(requests):
            raise ValueError("a batch mixes requests with and without images; send them separately")
        return self.processor(text=texts, images=images or None, return_tensors="pt", padding=True)

    def _batch(
        self, requests: list[GenerationRequest], params: SamplingParams, seeds: list[list[int]] | None = None
    ) -> list[list[Completion]]:
        import torch

        inputs = self._inputs(requests).to(self.device)
        sample = params.temperature > 0
        kwargs = dict(
            max_new_tokens=params.max_new_tokens,
            do_sample=sample,
            num_return_sequences=params.n,
            return_dict_in_generate=True,
            output_logits=params.logprobs,
            pad_token_id=self.pad_id,
            suppress_tokens=self.vision_ids or None,
        )
        if sample:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
        if params.seed is not None:
            torch.manual_seed(params.seed)
        gens = None
        if seeds is not None:  # rows are request-major: request i's n samples are rows i·n … i·n + n - 1
            gens = [torch.Generator().manual_seed(int(s)) for row in seeds for s in row]
        sampler = inverse_cdf_sampling(gens) if self.device == "cpu" or gens else contextlib.nullcontext()
        with torch.inference_mode(), sampler:  # (no autograd bookkeeping: ~6 % faster decoding on CPU)
            images = "pixel_values" in inputs
            loop = self.decode_loop and params.top_p >= 1.0  # plain sampling or greedy: our own loop
            if images and loop and ((params.n > 1 and self.share_prefix) or self.static_cache is not False):
                res = self._decode(inputs, params, gens)
            elif images and params.n > 1 and self.share_prefix:
                res = self._generate_shared_prefix(inputs, kwargs, params.n)
            else:
                res = self.model.generate(**inputs, **kwargs)
        new = res.sequences[:, inputs["input_ids"].shape[1] :]  # [B*n, T]
        token_lp = None
        if params.logprobs:
            t = params.temperature if sample else 1.0
            steps = []
            for k, logits in enumerate(res.logits):  # one [B*n, V] tensor per generated position
                lp = torch.log_softmax(logits.float() / t, dim=-1)
                steps.append(lp.gather(1, new[:, k : k + 1]).squeeze(1))
            token_lp = torch.stack(steps, dim=1).cpu().tolist()  # [B*n, T]
        seqs = new.cpu().tolist()
        results: list[list[Completion]] = []
        for i in range(len(requests)):
            group = []
            for j in range(params.n):
                row = i * params.n + j
                ids, end = seqs[row], None
                for k, tok in enumerate(ids):
                    if tok in self.eos_ids:
                        end = k + 1
                        break
                ids = ids[:end] if end else ids
                text = self.processor.tokenizer.decode(ids, skip_special_tokens=True)
                lps = token_lp[row][: len(ids)] if token_lp is not None else None
                group.append(Completion(text, ids, lps, "stop" if end else "length"))
            results.append(group)
        return results

    def _generate_shared_prefix(self, inputs, kwargs: dict, n: int):
        """n samples per prompt without n prefills: the prompt (image included) runs once per request, its
        KV cache is repeated n times, and generation continues from the last prompt token. HF's
        ``num_return_sequences`` would expand the batch first and compute every prompt n times. Same
        tokens as that path, sample for sample (tests/engines/test_engine_hf.py). Prompts with images only:
        their positions come from the image grid and the mask; text-only prompts take the plain path."""
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        cache = self._prefill_once(inputs, n)
        kwargs = {**kwargs, "num_return_sequences": 1}
        return self.model.generate(input_ids=ids.repeat_interleave(n, dim=0),
                                   attention_mask=mask.repeat_interleave(n, dim=0), past_key_values=cache,
                                   **kwargs)  # fmt: skip

    def _prefill_once(self, inputs, n: int):
        """Run each prompt (image included) but its last token once, then repeat its KV cache n times."""
        prefill = {k: (v[:, :-1] if k in ("input_ids", "attention_mask", "mm_token_type_ids") else v)
                   for k, v in inputs.items()}  # fmt: skip
        base = self.model.model
        base.rope_deltas = None  # recomputed from this prompt's image grid
        cache = self.model(**prefill, use_cache=True).past_key_values
        cache.batch_repeat_interleave(n)
        if base.rope_deltas is not None:  # multimodal RoPE offsets, one per row from now on
            base.rope_deltas = base.rope_deltas.repeat_interleave(n, dim=0)
        return cache

    def _decode(self, inputs, params: SamplingParams, gens: list | None):
        """Our decoding loop; where the compiled step fails (a model or torch version dynamo cannot
        trace), the same batch again with the step uncompiled, from the same random state: a warning
        and a slower rollout, not a failed one."""
        import torch

        if not self.compile_decode:
            return self._decode_shared_prefix(inputs, params, gens)
        states = [g.get_state() for g in gens] if gens else None
        cpu_state = torch.get_rng_state()
        try:
            return self._decode_shared_prefix(inputs, params, gens)
        except Exception as err:  # (whatever torch.compile raises)
            why = (str(err).splitlines() or [type(err).__name__])[0]
            log.warning("compiling the decoding step failed (%s): decoding uncompiled", why)
            self.compile_decode, self._compiled_step = False, None
            for g, state in zip(gens or [], states or [], strict=True):
                g.set_state(state)
            torch.set_rng_state(cpu_state)
            return self._decode_shared_prefix(inputs, params, gens)

    def _decode_shared_prefix(self, inputs, params: SamplingParams, gens: list | None):
        """``_generate_shared_prefix`` without ``generate``'s per-token machinery (logits processors,
        stopping criteria, input preparation): the same tokens, sample for sample, ~10 % faster on CPU,
        where decoding a small model is Python-bound (tests/engines/test_engine_hf.py compares them).
        Plain sampling (temperature, top_p 1, no top_k) or greedy; each row's uniforms are drawn up front
        from its own generator, the same stream ``inverse_cdf_sampling`` consumes one draw per token.

        With ``static_cache`` every step has the same shapes: the KV cache holds prompt + all new tokens
        from the start, the attention mask covers them too (causality hides the slots not yet written),
        and the loop asks the device whether every row has ended only every ``CHECK_EVERY`` steps. Rows
        that ended emit padding meanwhile, which the result then cuts off where the last row ended.
        Otherwise the cache grows into a buffer sized for prompt + new tokens (``_preallocate``) and a
        left-padded batch's mask is built once, as SDPA takes it, and sliced per step (HF would rebuild
        it from the 2-D mask at every step)."""
        import torch

        n, steps, dev = params.n, params.max_new_tokens, self.device
        ids, mask = inputs["input_ids"].repeat_interleave(n, dim=0), inputs["attention_mask"].repeat_interleave(n, 0)
        cache = self._prefill_once(inputs, n)
        rows, past = ids.shape[0], cache.get_seq_length()
        deltas = self.model.model.rope_deltas
        pos = mask.sum(1, keepdim=True) - 1 + (deltas if deltas is not None else 0)  # position of the token fed
        pos = pos.view(1, rows, 1).expand(3, rows, 1).contiguous()  # (multimodal RoPE: 3 equal axes for text)
        step, check_every = self._plain_step, 1
        static = self._static_for()
        full = torch.cat([mask, mask.new_ones(rows, steps)], dim=1)  # the mask of every position to come
        if static:
            cache, mask = self._static_copy(cache, past + steps), full
            step, check_every = self._step_function(), self.CHECK_EVERY
        else:
            _preallocate(cache, past + steps)
            step = self._fast_step or step
            if not bool(full.all()):  # left-padded: the model's own mask per step costs more than the attention
                full = full.bool()[:, None, None, :]  # an SDPA mask, [rows, 1, 1, positions]: sliced, never rebuilt
            mask = full[..., : past + 1]
        sample = params.temperature > 0
        if sample:
            u = (torch.stack([torch.rand(steps, generator=g, dtype=torch.float64) for g in gens]) if gens
                 else torch.rand(rows, steps, dtype=torch.float64)).to(dev)  # fmt: skip
        eos = torch.tensor(sorted(self.eos_ids), dtype=torch.long, device=dev)
        at = torch.arange(past, past + steps, device=dev)  # cache positions
        out = torch.full((rows, steps), self.pad_id, dtype=torch.long, device=dev)
        alive = torch.ones(rows, dtype=torch.bool, device=dev)
        suppress = torch.tensor(self.vision_ids, dtype=torch.long, device=dev)
        cur, raw, k = ids[:, -1:], [], 0
        for k in range(steps):
            logits = step(cur, mask, cache, pos, at[k : k + 1])
            if params.logprobs:
                raw.append(logits)
            fill = logits.index_fill if params.logprobs else logits.index_fill_  # (raw logits kept for log-probs)
            scores = fill(1, suppress, -float("inf")) if suppress.numel() else logits  # vision placeholders never
            if sample:
                if params.temperature != 1.0:  # (x / 1 is x: skip a pass over a 151k vocabulary)
                    scores = scores / params.temperature
                nxt = inverse_cdf(torch.softmax(scores, dim=-1), u[:, k])
            else:
                nxt = scores.argmax(-1)
            nxt = torch.where(alive, nxt, self.pad_id)
            out[:, k] = nxt
            alive &= ~torch.isin(nxt, eos)
            if (k + 1) % check_every == 0 and not alive.any():  # (a device sync)
                break
            cur, pos = nxt[:, None], pos + 1
            if not static:
                mask = full[..., : past + k + 2]
        out, raw = out[:, : k + 1], raw[: k + 1]
        ended = torch.isin(out, eos)
        if bool(ended.any(1).all()):  # every row ended: cut where the last one did
            last = int(ended.int().argmax(1).max()) + 1
            out, raw = out[:, :last], raw[:last]
        return SimpleNamespace(sequences=torch.cat([ids, out], dim=1), logits=tuple(raw))

    CHECK_EVERY = 8  # static-cache decoding: steps between two "has every row ended?" syncs

    def _static_for(self) -> bool:
        """Whether this batch decodes into a static cache: as set, else on GPU (fixed shapes for CUDA
        graphs); on CPU the growing buffer is at least as fast for every batch."""
        if self.static_cache is not None:
            return bool(self.static_cache)
        return self.device.startswith("cuda")

    def _plain_step(self, cur, mask, cache, pos, at):
        """One decoding step: the next-token logits (fp32) of every row."""
        return self.model(
            input_ids=cur, attention_mask=mask, past_key_values=cache, use_cache=True, logits_to_keep=1,
            position_ids=pos, cache_position=at,
        ).logits[:, -1].float()  # fmt: skip

    def _step_function(self):
        """The decoding step, compiled once per engine when ``compile_decode`` asks for it (CUDA graphs on
        GPU: shapes are fixed per batch, so a graph is recorded per batch shape and replayed per token)."""
        import torch

        if not self.compile_decode:
            return self._plain_step
        if self._compiled_step is None:
            on_gpu = self.device.startswith("cuda")
            if isinstance(self.compile_decode, str):
                opts = {"backend": self.compile_decode}
            else:
                opts = {"mode": "reduce-overhead"} if on_gpu else {}
            compiled = torch.compile(self._plain_step, dynamic=False, **opts)

            def step(*args):
                if on_gpu:  # the previous step's outputs are consumed: CUDA graphs may reuse their memory
                    torch.compiler.cudagraph_mark_step_begin()
                return compiled(*args).clone()

            self._compiled_step = step
        return self._compiled_step

    def _static_copy(self, cache, length: int):
        """The prompt's dynamic KV cache copied into a ``StaticCache`` of ``length`` positions."""
        import torch
        from transformers import StaticCache

        static = StaticCache(config=self.model.config, max_cache_len=length)
        for i, layer in enumerate(cache.layers):
            filled = torch.arange(layer.keys.shape[2], device=layer.keys.device)
            static.update(layer.keys, layer.values, i, {"cache_position": filled})
        return static

    def load_weights(self, state_dict: dict) -> int:
        """Take new weights in place (the RCRL actor's, after an update); all keys must match."""
        self.model.load_state_dict(state_dict, strict=True)
        return len(state_dict)

    def weights_fingerprint(self) -> float:
        """Sum of all weights: changes whenever ``load_weights`` brings different ones."""
        import torch

        with torch.no_grad():
            return float(sum(p.double().sum() for p in self.model.parameters()))

    def close(self) -> None:
        self.model = None
