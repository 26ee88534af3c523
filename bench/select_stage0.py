"""Choosing stage 0's augmentation without looking at the benchmark: leave FT categories out.

Stage 0 trains on 7 of the 11 FT categories and is scored on the other 4 (one per scene), which stand in
for unseen categories; the benchmark's categories are never drawn. Each variant runs phase 1 (the vision
tower alone) in its own fresh process and prints the image head's balanced accuracy on held-out scenes of
the trained categories (``bal``) and of the left-out ones (``transfer_bal``).

    python bench/select_stage0.py --out /tmp/sel0 --steps 1500 --variants none photometric geometric all
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

TRAIN = ["brick", "fabric", "gravel", "screw", "plate", "pcb", "parts tray"]
LEFT_OUT = ["wood", "nut", "resistor row", "colour kit"]
MODEL = {
    "hidden_size": 256,
    "layers": 4,
    "heads": 4,
    "kv_heads": 2,
    "intermediate_size": 768,
    "vision_hidden_size": 128,
    "vision_depth": 4,
    "vision_heads": 4,
}  # fmt: skip  (configs/reproduce/cpu-small)
VARIANTS = {
    "none": {},
    "photometric": {"hue": True, "contrast": 0.4, "invert": 0.25, "grayscale": 0.1},
    "geometric": {"flips": True, "scale": 0.4},
    "all": {"flips": True, "scale": 0.4, "hue": True, "contrast": 0.4, "invert": 0.25, "grayscale": 0.1},
    "hue": {"hue": True},
    "invert": {"invert": 0.5},
    "all-noinvert": {"flips": True, "scale": 0.4, "hue": True, "contrast": 0.4, "grayscale": 0.1},
    "photo-flips": {"flips": True, "hue": True, "contrast": 0.4, "invert": 0.25, "grayscale": 0.1},
}


def one(out: str, variant: str, steps: int, seed: int) -> dict:
    from m3ad_rl.core import storage
    from m3ad_rl.models.tiny import TinySpec, write_tiny
    from m3ad_rl.train.perception import PerceptionConfig, run

    model = f"{out}/init"
    if not storage.exists(f"{model}/config.json"):
        write_tiny(model, TinySpec(image_min_pixels=128 * 128, image_max_pixels=128 * 128, **MODEL))
    cfg = PerceptionConfig(
        model=model, out=f"{out}/{variant}-s{seed}", seed=seed, image_size=128, categories=tuple(TRAIN),
        transfer_categories=tuple(LEFT_OUT), defect_scale=2.5, vision_steps=steps, vision_batch=32,
        vision_lr=1e-3, steps=1, batch=4, eval_every=max(steps // 4, 1), checkpoint_every=10**6,
        eval_images=512, augment=VARIANTS[variant],
    )  # fmt: skip
    t0 = time.perf_counter()
    hist = run(cfg, progress=False)["history"]
    last = next(h for h in reversed(hist) if h["phase"] == "vision")
    return {"variant": variant, "seed": seed, "steps": steps, "seconds": time.perf_counter() - t0,
            "bal": last["perception/bal"], "transfer_bal": last["perception/transfer_bal"],
            "curve": [(h["step"], h["perception/bal"], h["perception/transfer_bal"]) for h in hist]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--one", nargs=2, metavar=("VARIANT", "SEED"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print("RESULT " + json.dumps(one(a.out, a.one[0], a.steps, int(a.one[1]))), flush=True)
        return
    for seed in a.seeds:
        for v in a.variants:  # each in a fresh process
            cmd = [sys.executable, __file__, "--out", a.out, "--steps", str(a.steps), "--one", v, str(seed)]
            r = subprocess.run(cmd, capture_output=True, text=True)
            line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                print(f"{v} seed {seed}: failed\n{r.stderr[-2000:]}", flush=True)
                continue
            res = json.loads(line[7:])
            print(f"{v:14s} seed {seed}: bal {res['bal']:.3f} transfer_bal {res['transfer_bal']:.3f} "
                  f"({res['seconds']:.0f} s) curve {res['curve']}", flush=True)  # fmt: skip
            with open(f"{a.out}/results.jsonl", "a") as fh:
                fh.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
