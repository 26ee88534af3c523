"""Reward scoring throughput: parse + consistency + gated accuracy + reflection, one core.

Target (issue 2): >= 20,000 responses/s for realistic 300-800-token responses with 1-3 boxes.

    python bench/bench_rewards.py [--n 20000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, n_tokens, pin_one_core

from m3ad_rl.core.ground_truth import GroundTruth
from m3ad_rl.core.output_format import parse
from m3ad_rl.data.simulated_responses import make_records
from rewards import RewardFunction


def workload(n: int, seed: int = 0) -> list[tuple[str, GroundTruth, int]]:
    """``n`` responses of 300-800 Qwen tokens (others are drawn again), well-formed and not."""
    out, seed_ = [], seed
    while len(out) < n:
        for r in make_records(n, seed=seed_, think_tokens=(200, 620)):
            k = n_tokens(r["response"])
            if 300 <= k <= 800:
                out.append((r["response"], GroundTruth.from_obj(r["ground_truth"]), k))
        seed_ += 1
    return out[:n]


def rate(fn: RewardFunction, items: list[tuple[str, GroundTruth, int]], repeats: int) -> list[float]:
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for text, gt, _k in items:
            fn(text, gt)
        rates.append(len(items) / (time.perf_counter() - t0))
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    where = pin_one_core()
    items = workload(args.n)
    boxed = [it for it in items if 1 <= len(parse(it[0]).boxes) <= 3]
    fn = RewardFunction()
    print(f"machine: {machine()} ({where})")
    toks = [k for *_, k in items]
    print(
        f"responses: {len(items)}, Qwen tokens mean {statistics.mean(toks):.0f} "
        f"(min {min(toks)}, max {max(toks)}); {len(boxed)} with 1-3 boxes"
    )
    for name, subset in [("all responses", items), ("responses with 1-3 boxes", boxed)]:
        r = rate(fn, subset, args.repeats)
        print(
            f"{name:26}: median {statistics.median(r):,.0f}/s, best {max(r):,.0f}/s, worst {min(r):,.0f}/s "
            f"({1e6 / statistics.median(r):.1f} us each)"
        )


if __name__ == "__main__":
    main()
