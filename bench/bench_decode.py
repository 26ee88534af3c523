"""The HF engine's decoding loops side by side, each in its own fresh process, alternated: HF
``generate`` over the shared prompt cache, our loop on a growing KV cache (one buffer), our loop on a static cache
(fixed shapes, an end check every few steps), that loop with the step compiled, and the engine's
defaults (``auto``: static on GPU; on CPU the cache grows into one buffer and the step skips transformers'
per-call machinery; ``modelstep``: the same, each step through ``model(...)``).

    python bench/bench_decode.py [--vocab small|qwen] [--prompts 8] [--n 4] [--new-tokens 128] [--repeats 3]
                                 [--same-size]  # images of one size: no left padding
    python bench/bench_decode.py --device cuda --sides dynamic static compiled   # on a GPU

Work per run: ``prompts`` image prompts × ``n`` samples decoded to exactly ``new-tokens`` tokens (the
end token is switched off), sampled at temperature 1 with one seed per sample, on the tiny Qwen3-VL
(``--vocab qwen``: Qwen's 151,936-row output projection). Per run: one identical warm-up call (compiling
and recording CUDA graphs for these shapes), then the median of ``--iters`` timed calls; tokens/s and ms
per decoding step. Every side must draw the tokens of the first side (checked; fp32 on CPU).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIDES = {  # engine settings: decode_loop, static_cache, compile_decode (, fast_step)
    "generate": (False, False, False),
    "auto": (True, None, None),  # the engine's defaults
    "modelstep": (True, None, None, False),  # the defaults, each step through model(...)
    "dynamic": (True, False, False),
    "static": (True, True, False),
    "compiled": (True, True, True),
}


def build_model(root: Path, vocab: str) -> Path:
    model = root / f"tiny-{vocab}"
    if not (model / "config.json").exists():
        argv = [sys.executable, "-m", "m3ad_rl.cli", "model", "tiny", "--out", str(model), "--vocab", vocab]
        subprocess.run(argv, check=True, capture_output=True)
    return model


def one_side(args) -> dict:
    import hashlib

    import torch
    from PIL import Image

    from m3ad_rl.core.prompts import question
    from m3ad_rl.engines import GenerationRequest, SamplingParams
    from m3ad_rl.engines.hf import HFEngine

    torch.set_num_threads(args.threads)
    loop, static, compiled, *fast = SIDES[args.side]
    engine = HFEngine(args.model, device=args.device, batch_size=args.prompts, decode_loop=loop,
                      static_cache=static, compile_decode=compiled, fast_step=fast[0] if fast else True)  # fmt: skip
    engine.model.generation_config.eos_token_id = None  # sample to the full length
    engine.eos_ids = set()
    reqs = []
    for i in range(args.prompts):
        buf = io.BytesIO()
        size = (224, 224) if args.same_size else (160 + 16 * i, 120)  # one prompt length, or left padding
        Image.new("RGB", size, (20 * i % 255, 90, 40)).save(buf, "PNG")
        reqs.append(GenerationRequest(f"r{i}", question(), buf.getvalue()))
    params = SamplingParams(n=args.n, temperature=1.0, max_new_tokens=args.new_tokens, logprobs=False)
    seeds = [[args.n * i + j for j in range(args.n)] for i in range(args.prompts)]

    def call():
        if args.device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = engine.generate(reqs, params, seeds)
        if args.device == "cuda":
            torch.cuda.synchronize()
        return out, time.perf_counter() - t0

    out, warm = call()
    times = [call()[1] for _ in range(args.iters)]
    tokens = sum(len(c.token_ids) for g in out for c in g)
    digest = hashlib.sha1(json.dumps([[c.token_ids for c in g] for g in out]).encode()).hexdigest()[:12]
    s = statistics.median(times)
    return {"side": args.side, "s": s, "warmup_s": warm, "tokens": tokens, "tokens_per_s": tokens / s,
            "ms_per_step": 1000 * s / args.new_tokens, "tokens_digest": digest}  # fmt: skip


def compare(args) -> None:
    from _common import fresh_runs, machine

    from m3ad_rl.core import provenance

    args.model = str(build_model(Path(args.root), args.vocab))
    print(f"machine: {machine()}; commit {provenance.commit(Path(__file__).resolve().parents[1])}; tiny Qwen3-VL, "
          f"{args.vocab} vocabulary; {args.prompts} prompts ({'one size' if args.same_size else 'left-padded'}) × "
          f"{args.n} samples × {args.new_tokens} tokens; "
          f"device {args.device}, {args.threads} threads; {args.repeats} repeats × {args.iters} calls",
          flush=True)  # fmt: skip
    runs: dict[str, list[dict]] = {s: [] for s in args.sides}
    for r, side, res in fresh_runs(__file__, args.sides, args, args.repeats):
        runs[side].append(res)
        print(f"  repeat {r + 1} {side:9s} {res['s']:7.3f} s  {res['tokens_per_s']:8.0f} tokens/s  "
              f"{res['ms_per_step']:6.1f} ms/step  warm-up {res['warmup_s']:.1f} s  tokens {res['tokens_digest']}",
              flush=True)  # fmt: skip
    first = args.sides[0]
    base = statistics.median(x["s"] for x in runs[first])
    print(f"\n| side | median s | min–max | tokens/s | ms per step | × {first} | same tokens as {first} |")
    print("|---|---|---|---|---|---|---|")
    digests = {x["tokens_digest"] for x in runs[first]}
    for side, rs in runs.items():
        s = [x["s"] for x in rs]
        med = statistics.median(s)
        same = all(x["tokens_digest"] in digests for x in rs)
        rate = statistics.median(x["tokens_per_s"] for x in rs)
        print(f"| {side} | {med:.3f} | {min(s):.3f}–{max(s):.3f} | {rate:.0f} | {1000 * med / args.new_tokens:.1f} | "
              f"{med / base:.2f} | {'yes' if same else 'NO'} |")  # fmt: skip
    if args.device == "cpu" and not all(x["tokens_digest"] in digests for rs in runs.values() for x in rs):
        raise SystemExit("a decoding loop drew other tokens than the first side (fp32 on CPU must be exact)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", choices=["small", "qwen"], default="small")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--same-size", action="store_true", help="images of one size: prompts of one length, no padding")
    p.add_argument("--root", default="/tmp/bench-decode", help="where the tiny model is built once")
    p.add_argument("--sides", nargs="+", choices=list(SIDES), default=["generate", "dynamic", "static"])
    p.add_argument("--side", choices=list(SIDES), help="run one side in this process")
    p.add_argument("--model", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        print(json.dumps(one_side(args)), flush=True)
    else:
        compare(args)


if __name__ == "__main__":
    main()
