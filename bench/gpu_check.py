"""GPU check without Ray, DeepSpeed or vLLM: our HF rollout and our actor's log-prob + GRPO update on
random-init Qwen3-VL models at 2B- and 4B-like shapes, in bf16 on one GPU.

    python bench/gpu_check.py --shapes 2b 4b            # on a GPU machine (docs/benchmarks.md)
    python bench/gpu_check.py --shapes tiny --device cpu  # the same code path on a CPU, tiny shapes

Per shape it prints: rollout tokens/s (``HFEngine.generate``, n samples per prompt, sampled to a fixed
length) for each decoding loop (dynamic KV cache; static cache; static cache + compiled step, the GPU
default), each after an identical warm-up call, with how many rows drew the same tokens as the first
loop; the update's step time and tokens/s (per micro-batch, as the actor worker does: ``build_batch``
→ ``response_log_probs`` with grad, the shared-prompt path by default → clipped GRPO loss + k3 KL →
backward → AdamW; fp32 weights under bf16 autocast, or with ``--weights bf16`` bf16 weights and
gradients with fp32 master copies in the optimiser), peak GPU memory, and the update's model FLOPs
utilisation: 6 × parameters × tokens / time / peak bf16 FLOP/s (dense; attention FLOPs left out). It
also checks on the device that the shared-prompt log-probs equal full rows' (largest |Δ|, under the same
autocast).
The models have Qwen's 151,936-row embedding; the text comes from the project's small tokenizer.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = {  # text (hidden, layers, heads, kv heads, MLP), vision (hidden, depth, heads): Qwen3-VL-2B/4B-like
    "tiny": dict(hidden_size=128, layers=2, heads=4, kv_heads=2, intermediate_size=256,
                 vision_hidden_size=64, vision_depth=2, vision_heads=4),
    "2b": dict(hidden_size=2048, layers=28, heads=16, kv_heads=8, intermediate_size=6144,
               vision_hidden_size=1024, vision_depth=24, vision_heads=16),
    "4b": dict(hidden_size=2560, layers=36, heads=32, kv_heads=8, intermediate_size=9728,
               vision_hidden_size=1024, vision_depth=24, vision_heads=16),
}  # fmt: skip
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12}  # dense bf16 spec sheets


def grpo_loss(lp, old, ref, adv, mask, clip=0.2, beta=0.01):
    """verl's clipped token-mean loss + β·k3 KL when verl is installed; the same formulas inline otherwise."""
    try:
        from m3ad_rl.train.grpo import grpo_loss as ours

        return ours(lp, old, ref, adv, mask, with_metrics=False)[0]
    except ImportError:
        import torch

        ratio = torch.exp(lp - old)
        pg = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip))
        kl = torch.exp(ref - lp) - (ref - lp) - 1
        return ((pg + beta * kl) * mask).sum() / mask.sum().clamp(min=1)


def images(n: int, size: int) -> list[bytes]:
    import numpy as np
    from PIL import Image

    out = []
    for i in range(n):
        arr = (np.random.default_rng(i).random((size, size, 3)) * 255).astype("uint8")
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def build(shape: str, device: str, image_px: int, folder: Path):
    """Save a random model of ``shape`` (bf16 on GPU) and return the folder (the engine loads it)."""
    import torch

    from m3ad_rl.models.tiny import TinySpec, build_model, build_processor, build_tokenizer

    spec = replace(TinySpec(**SHAPES[shape]), embed_size=151_936, image_max_pixels=image_px * image_px)
    tok = build_tokenizer(spec.vocab, spec.small_vocab_size)
    with torch.device(device):  # random init on the GPU: minutes faster at 4B
        model = build_model(tok, spec).to(torch.bfloat16 if device == "cuda" else torch.float32)
    model.save_pretrained(folder)
    build_processor(tok, spec).save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def run_shape(shape: str, args) -> dict:
    import torch

    from m3ad_rl.engines.base import GenerationRequest, SamplingParams
    from m3ad_rl.engines.hf import HFEngine
    from m3ad_rl.train.logprobs import build_batch, response_log_probs, share_prefix_on

    dev = args.device
    with tempfile.TemporaryDirectory() as folder:
        t0 = time.perf_counter()
        n_params = build(shape, dev, args.image_px, Path(folder))
        engine = HFEngine(folder, device=dev, batch_size=args.prompts)
        build_s = time.perf_counter() - t0
    reqs = [GenerationRequest(str(i), "Is there a defect? Answer with a box.", b)
            for i, b in enumerate(images(args.prompts, args.image_px))]  # fmt: skip
    sp = SamplingParams(n=args.n, temperature=1.0, top_p=1.0, max_new_tokens=args.new_tokens, logprobs=False, seed=0)
    engine.model.generation_config.eos_token_id = None  # random weights: sample to the full length
    engine.eos_ids = set()
    modes = {"dynamic": (False, False), "static": (True, False), "compiled": (True, True)}
    rollout, outs = {}, None
    for mode in args.rollout_modes:  # the engine's default on the device last: its samples feed the update
        got, secs = timed_rollout(engine, reqs, sp, dev, *modes[mode])
        pairs = [] if outs is None else [p for x, y in zip(outs, got, strict=True) for p in zip(x, y, strict=True)]
        rows_same = sum(a.token_ids == b.token_ids for a, b in pairs) if pairs else None
        rollout[mode] = {"tokens_per_s": round(sum(len(c.token_ids) for o in got for c in o) / secs, 1),
                         "s": round(secs, 2), "rows_same_as_first_mode": rows_same}  # fmt: skip
        print(f"  rollout {mode}: {rollout[mode]}", flush=True)
        outs = got
    default = "compiled" if dev == "cuda" else "dynamic"
    best = rollout.get(default) or rollout[args.rollout_modes[-1]]
    gen_s, gen_tokens_per_s = best["s"], best["tokens_per_s"]

    if args.weights == "bf16":  # bf16 weights and gradients, fp32 master copies in the optimiser (DeepSpeed's bf16)
        model = engine.model.to(torch.bfloat16)
        params = [p for p in model.parameters() if p.requires_grad]
        masters = [p.detach().float().clone().requires_grad_() for p in params]
        opt = torch.optim.AdamW(masters, lr=1e-6, fused=dev == "cuda")
    else:  # fp32 master weights, bf16 autocast
        model = engine.model.float() if dev == "cuda" else engine.model
        params, masters = [], []
        opt = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=dev == "cuda")
    model.train().config.use_cache = False
    model.gradient_checkpointing_enable() if args.checkpointing else None
    autocast = dev == "cuda" and args.weights != "bf16"
    rows = [r for r in reqs for _ in range(args.n)]
    resps = [c.token_ids for o in outs for c in o]
    share = share_prefix_on(False if args.no_share_prefix else args.share_prefix, dev == "cuda")
    with torch.no_grad(), torch.autocast(dev, dtype=torch.bfloat16, enabled=autocast):
        mb = build_batch(engine.processor, rows[: args.micro], resps[: args.micro]).to(dev)
        full, _ = response_log_probs(model, mb, share_prefix=False)
        shared, _ = response_log_probs(model, mb, share_prefix=True)
        shared_vs_full = float((full.float() - shared.float()).abs().max())
    times, tokens = [], 0
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for it in range(args.steps + 1):  # the first is a warm-up
        _sync(dev)
        t0 = time.perf_counter()
        tokens = 0
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=autocast):
            for s in range(0, len(rows), args.micro):
                mb = build_batch(engine.processor, rows[s : s + args.micro], resps[s : s + args.micro]).to(dev)
                tokens += int(mb.attention_mask.sum())
                width = int(mb.response_len.max())
                mask = (torch.arange(width, device=dev)[None] < mb.response_len[:, None]).float()
                adv = torch.randn(mask.shape[0], 1, device=dev).expand_as(mask)
                part = mb.input_ids.shape[0] / len(rows)

                def loss_of(x, mask=mask, adv=adv, part=part):  # per-token terms: the head's gradient in its forward
                    return grpo_loss(x.float(), x.detach().float(), x.detach().float() - 0.01, adv, mask) * part

                lp, _ = response_log_probs(model, mb, share_prefix=share,
                                           loss_fn=loss_of if args.grad_in_forward else None)  # fmt: skip
                loss_of(lp).backward()
        for p, m in zip(params, masters, strict=True):  # (bf16 weights) the gradients to the fp32 masters
            m.grad, p.grad = p.grad.float() if p.grad is not None else None, None
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for p, m in zip(params, masters, strict=True):  # the stepped masters, rounded to bf16
                p.copy_(m)
        _sync(dev)
        if it:
            times.append(time.perf_counter() - t0)
    step_s = sorted(times)[len(times) // 2]
    peak = torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda" else float("nan")
    name = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
    peak_flops = next((v for k, v in PEAK_BF16.items() if k in name), None)
    mfu = 6 * n_params * tokens / step_s / peak_flops if peak_flops else float("nan")
    return {
        "shape": shape, "device": name, "params_M": round(n_params / 1e6, 1), "build_s": round(build_s, 1),
        "rollout": f"{args.prompts}x{args.n} rows, {args.new_tokens} new tokens",
        "rollout_tokens_per_s": gen_tokens_per_s, "rollout_s": gen_s, "rollout_modes": rollout,
        "update_tokens": tokens, "update_step_s": round(step_s, 3), "share_prefix": share,
        "grad_in_forward": args.grad_in_forward, "weights": args.weights,
        "shared_vs_full_max_abs_diff": shared_vs_full,
        "update_tokens_per_s": round(tokens / step_s, 1), "peak_mem_GiB": round(peak, 1), "update_mfu": round(mfu, 3),
    }  # fmt: skip


def timed_rollout(engine, reqs, sp, dev: str, static: bool, compiled: bool):
    """One rollout of the engine in a decoding mode, after one identical warm-up call (compiling and
    recording CUDA graphs for exactly these shapes): the samples and the seconds."""
    engine.static_cache, engine.compile_decode, engine._compiled_step = static, compiled, None
    engine.generate(reqs, sp)
    _sync(dev)
    t0 = time.perf_counter()
    outs = engine.generate(reqs, sp)
    _sync(dev)
    return outs, time.perf_counter() - t0


def _sync(dev: str) -> None:
    if dev == "cuda":
        import torch

        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["2b", "4b"], choices=list(SHAPES))
    ap.add_argument("--device", default="cuda" if os.environ.get("CUDA_VISIBLE_DEVICES") != "" else "cpu")
    ap.add_argument("--prompts", type=int, default=16, help="prompts per step")
    ap.add_argument("--n", type=int, default=4, help="samples per prompt")
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--image-px", type=int, default=448, help="square image side (448² → 196 merged tokens)")
    ap.add_argument("--micro", type=int, default=16, help="rows per forward/backward")
    ap.add_argument("--steps", type=int, default=3, help="timed update steps (after one warm-up)")
    ap.add_argument("--checkpointing", action="store_true", help="gradient checkpointing in the update")
    ap.add_argument(
        "--share-prefix",
        type=lambda v: v if v == "auto" else v.lower() == "true",
        default="auto",
        help="the update's rows: true (shared prompt), false (n full rows), auto (as actor.share_prefix)",
    )
    ap.add_argument("--no-share-prefix", action="store_true", help="n full rows per prompt in the update")
    ap.add_argument(
        "--grad-in-forward",
        type=lambda v: v.lower() == "true",
        default=True,
        help="true: the fused head computes its gradients in the forward (the update's default); false: recomputed",
    )
    ap.add_argument(
        "--weights",
        choices=["fp32-master", "bf16"],
        default="fp32-master",
        help="the update's weights: fp32 under bf16 autocast (default), or bf16 weights and gradients with fp32 "
        "master copies in the optimiser (DeepSpeed's bf16 mode, `actor.optim.bf16`)",
    )
    ap.add_argument(
        "--rollout-modes",
        nargs="+",
        default=["dynamic", "static", "compiled"],
        choices=["dynamic", "static", "compiled"],
        help="HF decoding loops to time: dynamic KV cache; static cache; static + compiled step",
    )
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        args.device = "cpu"
    print(f"torch {torch.__version__}, device {args.device}", flush=True)
    results = []
    for shape in args.shapes:
        r = run_shape(shape, args)
        print(json.dumps(r), flush=True)
        results.append(r)
        torch.cuda.empty_cache() if args.device == "cuda" else None
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
