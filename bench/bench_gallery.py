"""Seconds and page size of ``eval gallery`` on a large evaluation: N images, three models, fresh processes.

    python bench/bench_gallery.py [--n 10000] [--size 256] [--models 3] [--repeats 3]

Builds (once, under --work) a dataset of N random PNG images of ``size``² px and, per model, a
predictions.jsonl in `eval run`'s layout whose answers differ between models (so there are
disagreements and every outcome); then runs ``m3ad-rl eval gallery`` over all models in a fresh process
per repeat and prints the wall time, the page's and contact sheet's sizes and the images shown.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BOX = [0.2, 0.2, 0.6, 0.6]


def build(work: Path, n: int, size: int, models: int) -> list[Path]:
    import numpy as np
    from PIL import Image

    from m3ad_rl.core.output_format import render
    from m3ad_rl.data.schema import DefectRecord, Sample
    from m3ad_rl.data.store import write_dataset

    data = work / "data"
    if not (data / "manifest.json").exists():
        rng = np.random.default_rng(0)  # a smooth texture with mild noise: compresses like a photo, not like noise
        yy, xx = np.mgrid[0:size, 0:size] / size
        smooth = np.stack([128 + 60 * np.sin(6 * xx + c) * np.cos(4 * yy) for c in range(3)], -1)
        base = np.clip(smooth + rng.normal(0, 6, (size, size, 3)), 0, 255).astype(np.uint8)

        def samples():
            for i in range(n):
                arr = np.roll(base, i % size, axis=1)  # distinct images without N random draws
                buf = io.BytesIO()
                Image.fromarray(arr).save(buf, "PNG")
                anomalous = i % 2 == 0
                yield Sample(f"img{i:06d}", size, size, "bench", "wood", "texture",
                             "anomalous" if anomalous else "normal",
                             [DefectRecord("scratch", BOX)] if anomalous else [], image=buf.getvalue())  # fmt: skip

        write_dataset(str(data), samples(), quiet=True)
    folders = []
    for m in range(models):
        folder = work / f"model{m}"
        folders.append(folder)
        if (folder / "predictions.jsonl").exists():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        rnd = random.Random(m)
        lines = []
        for i in range(n):
            truth = "yes" if i % 2 == 0 else "no"
            answer = truth if rnd.random() < 0.7 else ("no" if truth == "yes" else "yes")
            initial = rnd.choice(["yes", "no"]) if rnd.random() < 0.2 else None
            again = "Again." if initial else None
            text = (render(think="A look.", answer="yes", types=["scratch"], boxes=[BOX], initial=initial,
                           reflection=again) if answer == "yes" else
                    render(think="A look.", answer="no", initial=initial, reflection=again))  # fmt: skip
            gt = {"label": "anomalous", "defects": [{"type": "scratch", "box": BOX}]} if truth == "yes" else {
                "label": "normal", "defects": []}  # fmt: skip
            lines.append(json.dumps({"id": f"img{i:06d}", "scene": "texture", "source": "bench", "response": text,
                                     "ground_truth": gt, "truncated": False}))  # fmt: skip
        (folder / "predictions.jsonl").write_text("\n".join(lines) + "\n")
        (folder / "run.json").write_text(json.dumps({"model": f"model{m}", "dataset": str(data)}))
    return folders


def main() -> None:
    from _common import machine

    from m3ad_rl.core import provenance

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--models", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--work", default=None)
    args = p.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-gallery-"))
    t0 = time.perf_counter()
    folders = build(work, args.n, args.size, args.models)
    built = time.perf_counter() - t0
    print(f"machine: {machine()}; commit {provenance.commit(Path(__file__).resolve().parents[1])}; {args.n} images "
          f"of {args.size}² px, {args.models} models (inputs built in {built:.0f} s)", flush=True)  # fmt: skip
    times = []
    for r in range(args.repeats):
        out = work / f"gallery-{r}.html"
        argv = [sys.executable, "-m", "m3ad_rl.cli", "eval", "gallery", "--eval", *map(str, folders), "--out",
                str(out), "--overwrite"]  # fmt: skip
        t = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True)
        took = time.perf_counter() - t
        if proc.returncode:
            raise SystemExit(proc.stderr[-2000:])
        times.append(took)
        png = out.with_suffix(".png")
        print(f"  repeat {r + 1}: {took:.2f} s (process, imports included); page {out.stat().st_size / 1e6:.2f} MB, "
              f"sheet {png.stat().st_size / 1e6:.2f} MB; {proc.stdout.strip()[:160]}", flush=True)  # fmt: skip
    print(f"\nmedian {statistics.median(times):.2f} s, min–max {min(times):.2f}–{max(times):.2f} s")


if __name__ == "__main__":
    main()
