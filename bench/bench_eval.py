"""Evaluation and engine throughput on the tiny model.

Issue 4: images/s of `eval run` with 1 and 2 workers; HF engine tokens/s for n = 4, batch 8.

    python bench/bench_eval.py [--images 32] [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine


def engine_tokens_per_s(model: str, max_new_tokens: int) -> tuple[float, int, float]:
    from PIL import Image

    from m3ad_rl.core.prompts import question
    from m3ad_rl.engines import GenerationRequest, SamplingParams, make_engine

    engine = make_engine("hf", model, batch_size=8)
    buf = io.BytesIO()
    Image.new("RGB", (448, 448), (120, 120, 120)).save(buf, "PNG")
    reqs = [GenerationRequest(f"r{i}", question(), buf.getvalue()) for i in range(8)]
    params = SamplingParams(n=4, max_new_tokens=max_new_tokens, seed=0)
    engine.generate(reqs[:1], SamplingParams(n=1, max_new_tokens=4))  # warm up
    t0 = time.perf_counter()
    out = engine.generate(reqs, params)
    dt = time.perf_counter() - t0
    tokens = sum(len(c.token_ids) for g in out for c in g)
    return tokens / dt, tokens, dt


def eval_images_per_s(model: str, dataset: str, workers: int, max_new_tokens: int) -> tuple[float, float]:
    from m3ad_rl.eval.run import EvalRunConfig, predict

    out = tempfile.mkdtemp()
    try:
        cfg = EvalRunConfig(model=model, dataset=dataset, out=out, workers=workers, batch_size=4,
                            sampling={"n": 1, "temperature": 0.0, "max_new_tokens": max_new_tokens,
                                      "logprobs": False})  # fmt: skip
        t0 = time.perf_counter()
        preds = predict(cfg, Path(out))
        dt = time.perf_counter() - t0
        n = len(preds.read_text().splitlines())
        return n / dt, dt
    finally:
        shutil.rmtree(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    args = ap.parse_args()
    import ray

    from m3ad_rl.data.store import write_dataset
    from m3ad_rl.data.synthetic import SynthConfig, generate
    from m3ad_rl.models.tiny import TinySpec, build_tiny

    print(f"machine: {machine()}")
    tmp = Path(tempfile.mkdtemp())
    try:
        for vocab in ("small", "qwen"):
            model = str(build_tiny(tmp / f"tiny-{vocab}", TinySpec(vocab=vocab)))
            rate, tokens, dt = engine_tokens_per_s(model, args.max_new_tokens)
            print(
                f"HF engine, tiny ({vocab} vocab), n=4 x batch 8, <= {args.max_new_tokens} new tokens: "
                f"{rate:,.0f} tokens/s ({tokens} tokens in {dt:.1f} s)"
            )
        write_dataset(str(tmp / "bench"), generate(SynthConfig(n=args.images, seed=1)))
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        for workers in (1, 2):
            rate, dt = eval_images_per_s(str(tmp / "tiny-small"), str(tmp / "bench"), workers, args.max_new_tokens)
            print(
                f"eval run, tiny (small vocab), {workers} worker(s): {rate:.2f} images/s "
                f"({args.images} images in {dt:.1f} s, engine start-up included)"
            )
        ray.shutdown()
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
