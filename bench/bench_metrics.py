"""Benchmark metrics over 100,000 predictions: parse every response, match, aggregate.

Target (issue 2): < 10 s. Timed in-process (``evaluate``) and end to end through
``m3ad-rl eval score`` (JSONL in, REPORT.json out).

    python bench/bench_metrics.py [--n 100000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine

from m3ad_rl.core.ground_truth import GroundTruth
from m3ad_rl.data.simulated_responses import make_records
from m3ad_rl.eval.metrics import Prediction, evaluate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    records = make_records(args.n, seed=0)
    preds = [
        Prediction(r["id"], r["scene"], r["response"], GroundTruth.from_obj(r["ground_truth"]), r["source"])
        for r in records
    ]
    t0 = time.perf_counter()
    report = evaluate(preds)
    dt = time.perf_counter() - t0
    print(
        f"evaluate(): {args.n:,} predictions in {dt:.2f} s ({args.n / dt:,.0f}/s); "
        f"average accuracy {report['average']['accuracy']:.3f}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "preds.jsonl"
        src.write_text("".join(json.dumps(r) + "\n" for r in records))
        t0 = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "m3ad_rl.cli",
                "eval",
                "score",
                "--input",
                str(src),
                "--output",
                str(Path(tmp) / "report.json"),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        dt = time.perf_counter() - t0
        mb = src.stat().st_size / 1e6
    print(f"m3ad-rl eval score: {args.n:,} predictions ({mb:.0f} MB JSONL) in {dt:.2f} s end to end")


if __name__ == "__main__":
    main()
