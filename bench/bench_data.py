"""Data plane throughput: synthesis per core at 448x448, and Parquet read.

Targets (issue 3): synthesis >= 100 images/s per core at 448x448; Parquet read >= 2,000 samples/s.

    python bench/bench_data.py [--n 1000]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, pin_one_core

from m3ad_rl.data.store import iter_batches, iter_samples, write_dataset
from m3ad_rl.data.synthetic import SynthConfig, generate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    where = pin_one_core()
    print(f"machine: {machine()} ({where})")
    list(generate(SynthConfig(n=4)))  # warm caches (textures, noise banks, encoders)
    for fmt in ("jpeg", "png"):
        rates = []
        for r in range(args.repeats):
            t0 = time.perf_counter()
            samples = list(generate(SynthConfig(n=args.n, seed=r, size=448, image_format=fmt)))
            rates.append(args.n / (time.perf_counter() - t0))
        kb = statistics.mean(len(s.image) for s in samples) / 1e3
        print(
            f"synthesis 448x448 {fmt:4}: median {statistics.median(rates):.0f} images/s on one core "
            f"(runs: {', '.join(f'{x:.0f}' for x in rates)}); {kb:.0f} kB per image"
        )
    tmp = tempfile.mkdtemp()
    try:
        samples = list(generate(SynthConfig(n=args.n, seed=0)))
        t0 = time.perf_counter()
        write_dataset(tmp, samples, check_images=True)
        print(f"write with validation (decodes every image): {args.n / (time.perf_counter() - t0):.0f} samples/s")
        for name, fn in [
            ("read Sample objects with image bytes", lambda: sum(1 for _ in iter_samples(tmp))),
            ("read Arrow batches, all columns", lambda: sum(b.num_rows for b in iter_batches(tmp))),
            ("read labels only (no images)", lambda: sum(1 for _ in iter_samples(tmp, with_images=False))),
        ]:
            rates = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                n = fn()
                rates.append(n / (time.perf_counter() - t0))
            print(f"{name:38}: median {statistics.median(rates):,.0f} samples/s")
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
