"""One inverse-CDF draw per row over a vocabulary: ``inverse_cdf`` (float64 block sums, then one block)
against a float64 cumulative sum over the whole vocabulary (the sampler before it), each side in its
own fresh process, alternated.

    python bench/bench_sampling.py [--rows 32] [--vocab 151936] [--iters 50] [--repeats 3] [--threads 2]

Work per draw: ``rows`` softmax rows of ``vocab`` entries (seeded random logits × 3), one uniform each.
Per run: the median of ``--iters`` draws after one warm-up; both sides also report how many of 1,000
draws (fixed uniforms) picked a token other than the full sum's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIDES = ["two-level", "full-sum"]


def full_sum(probs, u):
    import torch

    cdf = probs.double().cumsum(-1)
    return torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).squeeze(1)


def one_side(args) -> dict:
    import torch

    from m3ad_rl.engines.hf import inverse_cdf

    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(args.rows, args.vocab, generator=g) * 3, -1)
    draw = inverse_cdf if args.side == "two-level" else full_sum
    us = [torch.rand(args.rows, generator=g, dtype=torch.float64) for _ in range(args.iters + 1)]
    draw(probs, us[0])
    times = []
    for u in us[1:]:
        t0 = time.perf_counter()
        draw(probs, u)
        times.append(time.perf_counter() - t0)
    checks = [torch.rand(args.rows, generator=g, dtype=torch.float64) for _ in range(1000 // args.rows + 1)]
    differ = sum(int((draw(probs, u) != full_sum(probs, u)).sum()) for u in checks)
    draws = len(checks) * args.rows
    return {"side": args.side, "ms": 1000 * statistics.median(times), "differ": differ, "draws": draws}


def compare(args) -> None:
    from _common import fresh_runs, machine

    from m3ad_rl.core import provenance

    print(f"machine: {machine()}; commit {provenance.commit(Path(__file__).resolve().parents[1])}; "
          f"{args.rows} rows × vocabulary {args.vocab}; {args.threads} threads; "
          f"{args.repeats} repeats × {args.iters} draws", flush=True)  # fmt: skip
    runs: dict[str, list[dict]] = {s: [] for s in SIDES}
    for r, side, res in fresh_runs(__file__, SIDES, args, args.repeats):
        runs[side].append(res)
        print(f"  repeat {r + 1} {side:9s} {res['ms']:7.2f} ms per draw  "
              f"{res['differ']} of {res['draws']} draws differ from the full sum", flush=True)  # fmt: skip
    print("\n| side | median ms per draw | min–max | × full-sum | draws different from the full sum |")
    print("|---|---|---|---|---|")
    full = statistics.median(x["ms"] for x in runs["full-sum"])
    for side, rs in runs.items():
        ms = [x["ms"] for x in rs]
        print(f"| {side} | {statistics.median(ms):.2f} | {min(ms):.2f}–{max(ms):.2f} | "
              f"{statistics.median(ms) / full:.2f} | {rs[0]['differ']} of {rs[0]['draws']} |")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=32)
    p.add_argument("--vocab", type=int, default=151_936)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--side", choices=SIDES, help="run one side in this process")
    args = p.parse_args()
    if args.side:
        print(json.dumps(one_side(args)), flush=True)
    else:
        compare(args)


if __name__ == "__main__":
    main()
