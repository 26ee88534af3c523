"""The vocabulary projection's log-probs, forward + backward: ``LinearLogProbs`` against the row-chunked
path whose logits autograd keeps, each side in its own fresh process, alternated.

Sides: ``fused-fwdgrad`` (the update's default: the gradients computed in the forward from the loss
probe), ``fused`` (the backward recomputes the logits), ``plain`` (autograd keeps the logits). Each
process runs with the allocator setting the actor gets on CPU (``ray_setup.cpu_worker_env``).

    python bench/bench_logprobs.py [--tokens 4096] [--hidden 128] [--vocab 151936] [--repeats 3] [--threads 2]
    python bench/bench_logprobs.py --device cuda --hidden 2048 --tokens 16384   # on a GPU

Work per run: ``tokens`` response positions of hidden size ``hidden`` projected onto ``vocab`` rows (Qwen's
151,936 by default), per-token log-probs with a random upstream gradient (what the GRPO loss sends),
backward into the hidden states and the weight. The same inputs (seeded) on both sides. Per run: the
median of ``--iters`` timed iterations after one warm-up, and the memory the step added on top of its
inputs: peak RSS minus the RSS before the first step on CPU, ``max_memory_allocated`` minus the inputs
on CUDA.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIDES = ["fused-fwdgrad", "fused", "plain"]


def _rss_gib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**30


def one_side(args) -> dict:
    import torch

    from m3ad_rl.train import logprobs

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    rows = args.tokens // args.width
    head = torch.nn.Linear(args.hidden, args.vocab, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(args.vocab, args.hidden, generator=g) * 0.02)
    head = head.to(dev)
    hidden = (torch.randn(rows, args.width, args.hidden, generator=g)).to(dev).requires_grad_(True)
    targets = torch.randint(0, args.vocab, (rows, args.width), generator=g).to(dev)
    mask = torch.ones(rows, args.width, device=dev)
    upstream = torch.randn(rows, args.width, generator=g).to(dev)

    def step() -> float:
        head.weight.grad, hidden.grad = None, None
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()

        def loss(x):  # per-token weights, as the GRPO loss gives
            return (x * upstream).sum()

        lp, _ = logprobs._finish(head, hidden, targets, mask, 1.0, False, fused=args.side != "plain",
                                 loss_fn=loss if args.side == "fused-fwdgrad" else None)  # fmt: skip
        loss(lp).backward()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    base = _rss_gib() if dev.type == "cpu" else torch.cuda.memory_allocated() / 2**30
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step()  # warm-up
    times = [step() for _ in range(args.iters)]
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"side": args.side, "step_s": statistics.median(times), "extra_gib": peak - base}


def compare(args) -> None:
    from _common import fresh_runs, machine

    from m3ad_rl.core import provenance
    from m3ad_rl.train.ray_setup import cpu_worker_env

    print(f"machine: {machine()}; commit {provenance.commit(Path(__file__).resolve().parents[1])}; "
          f"{args.tokens} tokens × hidden {args.hidden} → vocabulary {args.vocab}; device {args.device}, "
          f"{args.threads} threads; {args.repeats} repeats × {args.iters} iterations", flush=True)  # fmt: skip
    os.environ.update(cpu_worker_env(args.device != "cpu"))  # each side's process: the actor's allocator setting
    runs: dict[str, list[dict]] = {s: [] for s in SIDES}
    for r, side, res in fresh_runs(__file__, SIDES, args, args.repeats):
        runs[side].append(res)
        print(f"  repeat {r + 1} {side:13s} {res['step_s']:7.3f} s  +{res['extra_gib']:.2f} GiB", flush=True)
    print("\n| side | median s (fwd + bwd) | min–max | memory added, GiB | × plain |")
    print("|---|---|---|---|---|")
    plain = statistics.median(x["step_s"] for x in runs["plain"])
    for side, rs in runs.items():
        s = [x["step_s"] for x in rs]
        mem = statistics.median(x["extra_gib"] for x in rs)
        print(f"| {side} | {statistics.median(s):.3f} | {min(s):.3f}–{max(s):.3f} | {mem:.2f} | "
              f"{statistics.median(s) / plain:.2f} |")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--width", type=int, default=128, help="tokens per row (response length)")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--vocab", type=int, default=151_936)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--side", choices=SIDES, help="run one side in this process")
    args = p.parse_args()
    if args.side:
        print(json.dumps(one_side(args)), flush=True)
    else:
        compare(args)


if __name__ == "__main__":
    main()
