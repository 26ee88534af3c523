"""Seconds per RCRL step and its phases on the tiny model; the same step with TRL's GRPOTrainer.

    python bench/bench_rcrl.py [--steps 6] [--prompts 8] [--n 4] [--max-new-tokens 128] [--side both]
                               [--vocab small|qwen]

Both sides: the same tiny Qwen3-VL (built here), the same rl.parquet prompts and images, B prompts ×
n samples at temperature 1.0, the same new-token limit, fp32, KL to the reference with β = 0.01,
one optimiser step per batch, 2 torch threads, and our reward function. Ours: verl-style controller,
HF rollout worker, DeepSpeed ZeRO-2 actor with a colocated reference, Ray Serve reward service, token
-mean clipped loss, no gradient checkpointing. TRL: GRPOTrainer with its defaults otherwise (``dapo``
loss, gradient checkpointing on). The first step of each side is warm-up and not counted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine


def build_inputs(root: Path, vocab: str, prompts: int) -> tuple[Path, Path]:
    """(tiny model, rl.parquet) under root."""
    model, ft = root / f"tiny-{vocab}", root / "ft"
    if not model.exists():
        subprocess.run([sys.executable, "-m", "m3ad_rl.cli", "model", "tiny", "--out", str(model), "--vocab", vocab],
                       check=True, capture_output=True)  # fmt: skip
    if not (ft / "rl.parquet").exists():
        n = max(prompts * 2, 16)
        subprocess.run([sys.executable, "-m", "m3ad_rl.cli", "data", "synth", "--out", str(root / "synth"),
                        "--n", str(n)], check=True, capture_output=True)  # fmt: skip
        preds = root / "preds.jsonl"
        from m3ad_rl.data.store import iter_samples

        samples = iter_samples(str(root / "synth"))
        preds.write_text("".join(json.dumps({"id": s.id, "answer": "no"}) + "\n" for s in samples))
        subprocess.run([sys.executable, "-m", "m3ad_rl.cli", "data", "build-ft", "--input", str(root / "synth"),
                        "--predictions", str(preds), "--out", str(ft)], check=True, capture_output=True)  # fmt: skip
    return model, ft / "rl.parquet"


def ours(model: Path, data: Path, args, out: Path) -> dict:
    from m3ad_rl.rcrl import RCRLConfig, run

    cfg = RCRLConfig(
        model=str(model), data=str(data), out=str(out), steps=args.steps, batch_prompts=args.prompts,
        rollout={"threads": 2, "sampling": {"n": args.n, "temperature": 1.0, "max_new_tokens": args.max_new_tokens,
                                            "logprobs": False}},
        actor={"threads": 2, "micro_batch_rows": args.prompts * args.n, "optim": {"lr": 1e-6}},
        checkpoint={"every": 10**6}, logging={"tensorboard": False},
    )  # fmt: skip
    hist = run(cfg, progress=False)["history"][1:]
    phases = sorted({k for h in hist for k in h if k.startswith("timing/")})
    return {
        "step_s": statistics.median(h["timing/step_s"] for h in hist),
        "phases": {k[7:-2]: statistics.median(h[k] for h in hist if k in h) for k in phases},
        "tokens_mean": statistics.mean(h["response/length_mean"] for h in hist),
    }


def trl_side(model: Path, data: Path, args, out: Path) -> dict:
    import io

    import pyarrow.parquet as pq
    import torch
    from datasets import Dataset
    from PIL import Image
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from m3ad_rl.labels import GroundTruth
    from rewards.scorer import RewardFunction

    torch.set_num_threads(2)
    rows = pq.read_table(data).to_pylist()
    ds = Dataset.from_list([
        {"prompt": [{"role": "user", "content": [{"type": "image"},
                     {"type": "text", "text": r["prompt"][-1]["content"].replace("<image>", "", 1)}]}],
         "image": Image.open(io.BytesIO(r["images"][0]["bytes"])).convert("RGB"),
         "ground_truth": r["reward_model"]["ground_truth"]}
        for r in rows
    ])  # fmt: skip
    fn = RewardFunction()

    def reward(completions, ground_truth, **_):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [fn(t, GroundTruth.from_obj(g)).score for t, g in zip(texts, ground_truth, strict=True)]

    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t0)

    cfg = GRPOConfig(
        output_dir=str(out), per_device_train_batch_size=args.prompts * args.n, num_generations=args.n,
        max_completion_length=args.max_new_tokens, temperature=1.0, beta=0.01, learning_rate=1e-6,
        max_steps=args.steps, use_cpu=True, bf16=False, report_to="none", logging_steps=10**6, save_strategy="no",
        seed=0, dataloader_num_workers=0,
    )  # fmt: skip
    trainer = GRPOTrainer(model=str(model), reward_funcs=reward, args=cfg, train_dataset=ds, callbacks=[Timer()])
    trainer.train()
    return {"step_s": statistics.median(times[1:]), "loss_type": cfg.loss_type,
            "gradient_checkpointing": cfg.gradient_checkpointing}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--vocab", choices=["small", "qwen"], default="small")
    p.add_argument("--side", choices=["ours", "trl", "both"], default="both")
    p.add_argument("--work", default=None, help="reuse a folder for the model and data")
    args = p.parse_args()
    root = Path(args.work or tempfile.mkdtemp(prefix="bench-rcrl-"))
    model, data = build_inputs(root, args.vocab, args.prompts)
    print(f"machine: {machine()}; model {model.name}; {args.prompts} prompts × {args.n}, "
          f"≤{args.max_new_tokens} new tokens; median of steps 2..{args.steps}")  # fmt: skip
    res = {}
    if args.side in ("ours", "both"):
        res["ours"] = ours(model, data, args, root / "ours")
        print(f"ours: {res['ours']['step_s']:.2f} s/step; phases: "
              + ", ".join(f"{k} {v:.2f}" for k, v in res["ours"]["phases"].items()))  # fmt: skip
    if args.side in ("trl", "both"):
        res["trl"] = trl_side(model, data, args, root / "trl")
        print(f"TRL GRPOTrainer: {res['trl']['step_s']:.2f} s/step (loss {res['trl']['loss_type']}, "
              f"gradient checkpointing {res['trl']['gradient_checkpointing']})")  # fmt: skip
    if len(res) == 2:
        print(f"ratio TRL / ours: {res['trl']['step_s'] / res['ours']['step_s']:.2f}x")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
