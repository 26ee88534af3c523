"""Reward service under load: 8 concurrent clients x 2,000 requests (one response each).

Issue 5: nothing dropped or mis-scored; requests/s and p99 latency. Issue 15: with and without the
replicas' ``@serve.batch`` (``--batch-max-requests 1`` is off), and against calling ``RewardFunction``
in process on the same responses (``--side inprocess``: no Ray at all). Run each side in its own process.

    python bench/bench_reward_service.py [--clients 8] [--requests 2000] [--replicas 2] [--batch 1]
        [--batch-max-requests 1] [--side http|inprocess]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=2000, help="per client")
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1, help="responses per request")
    ap.add_argument("--batch-max-requests", type=int, default=1, help="the replicas' @serve.batch size (1: off)")
    ap.add_argument("--side", choices=["http", "inprocess"], default="http")
    args = ap.parse_args()
    if args.side == "inprocess":
        return inprocess(args)

    import httpx
    import ray
    from ray import serve

    from m3ad_rl.data.simulated_responses import make_records
    from rewards import RewardFunction
    from rewards.service import start

    print(f"machine: {machine()}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    start(port=port, replicas=args.replicas, batch_max_requests=args.batch_max_requests)
    url = f"http://127.0.0.1:{port}/rewards/score"
    records = make_records(2000, seed=0)
    items = [{"id": r["id"], "response": r["response"], "ground_truth": r["ground_truth"]} for r in records]
    fn = RewardFunction()
    expected = {i["id"]: fn(i["response"], i["ground_truth"]).score for i in items}

    def client(k: int) -> tuple[list[float], int, int]:
        lat, ok, wrong = [], 0, 0
        with httpx.Client(timeout=120) as c:
            for j in range(args.requests):
                batch = [items[(k * 997 + j * args.batch + b) % len(items)] for b in range(args.batch)]
                t0 = time.perf_counter()
                r = c.post(url, json={"items": batch})
                lat.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    continue
                for res in r.json()["results"]:
                    ok += 1
                    wrong += res["score"] != expected[res["id"]]
        return lat, ok, wrong

    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        results = list(pool.map(client, range(args.clients)))
    wall = time.perf_counter() - t0
    lat = sorted(x for r in results for x in r[0])
    ok, wrong = sum(r[1] for r in results), sum(r[2] for r in results)
    total = args.clients * args.requests
    p = lambda q: 1000 * lat[min(len(lat) - 1, int(q * len(lat)))]  # noqa: E731
    print(
        f"{args.clients} clients x {args.requests} requests x {args.batch} response(s), {args.replicas} replicas, "
        f"@serve.batch {'off' if args.batch_max_requests <= 1 else f'<= {args.batch_max_requests} requests'}: "
        f"{total / wall:,.0f} requests/s ({ok / wall:,.0f} responses/s); latency p50 {p(0.5):.1f} ms, "
        f"p99 {p(0.99):.1f} ms, mean {1000 * statistics.mean(lat):.1f} ms"
    )
    print(f"scored {ok} of {total * args.batch} responses; dropped {total * args.batch - ok}; mis-scored {wrong}")
    serve.shutdown()
    ray.shutdown()


def inprocess(args: argparse.Namespace) -> None:
    """The same responses scored by ``RewardFunction`` in this process, one at a time (ground truth
    parsed per call, as the service does): the ceiling a service hop is measured against."""
    from m3ad_rl.data.simulated_responses import make_records
    from rewards import RewardFunction
    from rewards.service import score_items

    print(f"machine: {machine()}")
    records = make_records(2000, seed=0)
    items = [{"id": r["id"], "response": r["response"], "ground_truth": r["ground_truth"]} for r in records]
    fn = RewardFunction()
    n = args.clients * args.requests * args.batch
    t0 = time.perf_counter()
    done = 0
    while done < n:
        k = min(args.batch, n - done)
        batch = [items[(done + b) % len(items)] for b in range(k)]
        done += len(score_items(fn, batch))
    wall = time.perf_counter() - t0
    print(f"in process, one thread, {args.batch} response(s) per call: {n / wall:,.0f} responses/s ({n} scored)")


if __name__ == "__main__":
    main()
