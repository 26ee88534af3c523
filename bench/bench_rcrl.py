"""Seconds per RCRL step: ours against TRL's GRPOTrainer, each side in its own fresh process, alternated.

    python bench/bench_rcrl.py [--repeats 3] [--steps 5] [--prompts 8] [--n 4] [--max-new-tokens 128]
                               [--vocab small|qwen] [--sides ours trl-best trl-default]
    python bench/bench_rcrl.py --side ours --work DIR ...   # one side, one process (what the driver runs)

The same tiny Qwen3-VL (built here), the same rl.parquet prompts and images, B prompts × n samples at
temperature 1.0, the same new-token limit, fp32, β = 0.01 KL to the reference, one optimiser step per
batch, 2 torch threads, our reward function. Sides:

- ``ours``: the verl-style controller, HF rollout worker, DeepSpeed ZeRO-2 actor with a colocated
  reference, Ray Serve reward service; token-mean loss over the batch; no gradient checkpointing.
- ``trl-best``: GRPOTrainer with gradient checkpointing off and ``loss_type="dapo"`` (a token mean
  over the batch, as ours).
- ``trl-default``: GRPOTrainer as it comes (gradient checkpointing on in TRL 1.16).
- ``ours-plainhead`` (and the other ``ours-*``): ours with one lever off, its "before"; plainhead: the
  vocabulary projection's logits kept for the backward instead of ``LinearLogProbs``; recompute: the
  fused head's backward recomputes the logits instead of taking the gradients its forward computed;
  dyncache / static: the rollout's decoding loop always on a growing / a static KV cache (ours: the
  engine's default, on CPU a cache growing into one buffer).

Both sides' CPU processes keep the memory they free (glibc's ``MALLOC_*`` setting that ours get from
``ray_setup.cpu_worker_env``; TRL's process is started with it too); ``M3AD_KEEP_FREED_MEMORY=0`` runs both
with glibc's defaults, and the sides ``ours-glibcmalloc`` / ``trl-best-glibcmalloc`` run one side that way
(the setting's "before").

Peak memory per side: the actor process's peak RSS (ours: the DeepSpeed rank, reported by the worker;
TRL: its one process, which also holds the rollout model and the reference).

Honest by construction: each run is a fresh process; the sides alternate (ours, trl-best,
trl-default, ours, …); before every run the driver checks that no process of an earlier run (its
Ray temp folder) is alive; each run's first step is warm-up; the figure per run is its median step
time, and the table gives the median and min–max over repeats. The tokens each side processed per
step (prompt and response) are printed so a reader sees it is the same work.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine

from m3ad_rl.core import provenance
from m3ad_rl.train.ray_setup import cpu_worker_env

ROOT = Path(__file__).resolve().parents[1]
OURS_SIDES = [
    "ours",
    "ours-bf16",
    "ours-genshare",
    "ours-noshare",
    "ours-sepref",
    "ours-hfgen",
    "ours-plainhead",
    "ours-recompute",
    "ours-dyncache",
    "ours-static",
    "ours-modelstep",
    "ours-glibcmalloc",
]


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


def prompt_tokens(model: Path, data: Path, prompts: int, n: int) -> int:
    """Prompt tokens (text and image) of one step's B × n rows: the same on both sides."""
    import pyarrow.parquet as pq
    from transformers import AutoProcessor

    from m3ad_rl.engines.base import GenerationRequest

    proc = AutoProcessor.from_pretrained(str(model))
    rows = pq.read_table(data).to_pylist()[:prompts]
    total = 0
    for r in rows:
        req = GenerationRequest(
            "x", r["prompt"][-1]["content"].replace("<image>", "", 1), bytes(r["images"][0]["bytes"])
        )
        text = proc.apply_chat_template(req.messages(), add_generation_prompt=True, tokenize=False)
        total += int(proc(text=[text], images=[req.pil_image()], return_tensors="pt")["input_ids"].shape[1])
    return total * n


def ours(
    model: Path, data: Path, args, out: Path, share_prefix: bool = True, share_actor: bool = True, bf16: bool = False,
    ref_in_update: bool = True, decode_loop: bool = True, fused_head: bool = True, static_cache: bool | None = None,
    grad_in_forward: bool = True, fast_step: bool = True,
) -> dict:  # fmt: skip
    """``share_prefix=False``: the rollout engine expands each prompt n times before the prefill;
    ``share_actor=False``: the actor's and reference's log-prob passes run n full rows per prompt;
    ``ref_in_update=False``: the reference pass is a call of its own; ``decode_loop=False``: HF ``generate``
    decodes after the shared prefill; ``static_cache=False``: our loop on a growing KV cache (each lever's
    "before")."""
    from m3ad_rl.train.rcrl import RCRLConfig, run

    cfg = RCRLConfig(
        model=str(model), data=str(data), out=str(out), steps=args.steps, batch_prompts=args.prompts,
        rollout={"threads": 2, "engine_kwargs": {"share_prefix": share_prefix, "decode_loop": decode_loop,
                                                  "static_cache": static_cache, "fast_step": fast_step},
                 "sampling": {"n": args.n, "temperature": 1.0, "max_new_tokens": args.max_new_tokens,
                              "logprobs": False}},
        actor={"threads": 2, "micro_batch_rows": args.prompts * args.n, "optim": {"lr": 1e-6, "bf16": bf16},
               "share_prefix": share_actor, "fused_head": fused_head, "grad_in_forward": grad_in_forward},
        ref={"in_update": ref_in_update},
        checkpoint={"every": 10**6}, logging={"tensorboard": False},
    )  # fmt: skip
    hist = run(cfg, progress=False, overwrite=True)["history"][1:]
    phases = sorted({k for h in hist for k in h if k.startswith("timing/")})
    return {
        "step_s": [h["timing/step_s"] for h in hist],
        "phases": {k[7:-2]: statistics.median(h[k] for h in hist if k in h) for k in phases},
        "response_tokens": statistics.mean(h["response/length_mean"] * args.prompts * args.n for h in hist),
        "peak_rss_gib": max((h.get("perf/actor_peak_rss_gib", 0.0) for h in hist), default=None),
    }


def trl_side(model: Path, data: Path, args, out: Path, best: bool) -> dict:
    import io

    import pyarrow.parquet as pq
    import torch
    from datasets import Dataset
    from PIL import Image
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from m3ad_rl.core.ground_truth import GroundTruth
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

    extra = {"gradient_checkpointing": False, "loss_type": "dapo"} if best else {}
    cfg = GRPOConfig(
        output_dir=str(out), per_device_train_batch_size=args.prompts * args.n, num_generations=args.n,
        max_completion_length=args.max_new_tokens, temperature=1.0, beta=0.01, learning_rate=1e-6,
        max_steps=args.steps, use_cpu=True, bf16=False, report_to="none", logging_steps=1, save_strategy="no",
        seed=0, dataloader_num_workers=0, **extra,
    )  # fmt: skip
    trainer = GRPOTrainer(model=str(model), reward_funcs=reward, args=cfg, train_dataset=ds, callbacks=[Timer()])
    trainer.train()
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    return {
        "step_s": times[1:], "loss_type": cfg.loss_type, "gradient_checkpointing": cfg.gradient_checkpointing,
        "response_tokens": statistics.mean(lengths[1:] or lengths) * args.prompts * args.n if lengths else None,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }  # fmt: skip


def one_side(args) -> None:
    """Run one side in this process and print its result as the last line (JSON)."""
    root = Path(args.work)
    model, data = build_inputs(root, args.vocab, args.prompts)
    out = Path(tempfile.mkdtemp(prefix=f"{args.side}-", dir=root))
    if args.side.startswith("ours"):  # ours: every lever; ours-genshare: shared prefill only; ours-noshare: neither;
        # ours-sepref: all but the reference inside the update; ours-hfgen: all but our decoding loop;
        # ours-dyncache: our loop on a growing KV cache; ours-modelstep: each decoding step through model(...)
        res = ours(
            model,
            data,
            args,
            out,
            share_prefix=args.side != "ours-noshare",
            share_actor=args.side not in ("ours-genshare", "ours-noshare"),
            bf16=args.side == "ours-bf16",
            ref_in_update=args.side != "ours-sepref",
            decode_loop=args.side not in ("ours-hfgen", "ours-genshare", "ours-noshare"),
            fused_head=args.side != "ours-plainhead",
            grad_in_forward=args.side != "ours-recompute",
            static_cache={"ours-dyncache": False, "ours-static": True}.get(args.side),
            fast_step=args.side != "ours-modelstep",
        )
    else:
        res = trl_side(model, data, args, out, best=args.side.startswith("trl-best"))
    print(json.dumps({"side": args.side, **res}), flush=True)


def leftovers(tmp: str) -> list[str]:
    """Processes still alive from an earlier run (their command line names that run's Ray temp folder)."""
    import psutil

    alive = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if tmp in cmd:
            alive.append(f"{p.info['pid']} {cmd[:80]}")
    return alive


def compare(args) -> None:
    root = Path(args.work or tempfile.mkdtemp(prefix="bench-rcrl-"))
    model, data = build_inputs(root, args.vocab, args.prompts)
    commit = provenance.commit(ROOT)
    p_tok = prompt_tokens(model, data, args.prompts, args.n)
    print(f"machine: {machine()}; commit {commit}; model {model.name}; {args.prompts} prompts × {args.n}, "
          f"≤{args.max_new_tokens} new tokens; {args.repeats} repeats × {args.steps} steps (first is warm-up); "
          f"prompt tokens per step (both sides): {p_tok}", flush=True)  # fmt: skip
    runs: dict[str, list[dict]] = {s: [] for s in args.sides}
    for r in range(args.repeats):
        order = args.sides[r % len(args.sides) :] + args.sides[: r % len(args.sides)]  # rotate: ABC, BCA, CAB
        for side in order:
            ray_tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
            assert not (left := leftovers("/tmp/ray-")), f"processes of an earlier run are alive: {left}"
            argv = [sys.executable, __file__, "--side", side, "--work", str(root), "--steps", str(args.steps),
                    "--prompts", str(args.prompts), "--n", str(args.n), "--max-new-tokens", str(args.max_new_tokens),
                    "--vocab", args.vocab]  # fmt: skip
            t0 = time.perf_counter()
            env = {**os.environ, "RAY_TMPDIR": ray_tmp}
            if side.endswith("-glibcmalloc"):  # glibc's defaults, for ours (its workers) and for TRL
                env["M3AD_KEEP_FREED_MEMORY"] = "0"
            elif side.startswith("trl"):  # the allocator setting our CPU workers get (ray_setup), for TRL's too
                env.update(cpu_worker_env(use_gpu=False))
            proc = subprocess.run(argv, capture_output=True, text=True, env=env)
            if proc.returncode:
                raise SystemExit(f"{side} failed:\n{proc.stderr[-3000:]}")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            res["median_step_s"] = statistics.median(res["step_s"])
            runs[side].append(res)
            print(f"  repeat {r + 1} {side:12s} {res['median_step_s']:6.2f} s/step  response tokens/step "
                  f"{res['response_tokens'] or float('nan'):7.0f}  peak RSS {res.get('peak_rss_gib') or 0:.2f} GiB  "
                  f"(process {time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip
    print("\n| side | median s/step | min–max over repeats | response tokens/step | peak RSS GiB | × ours |")
    print("|---|---|---|---|---|---|")
    base = statistics.median(r["median_step_s"] for r in runs["ours"]) if runs.get("ours") else None
    for side, rs in runs.items():
        med = statistics.median(r["median_step_s"] for r in rs)
        lo, hi = min(r["median_step_s"] for r in rs), max(r["median_step_s"] for r in rs)
        tok = statistics.median(r["response_tokens"] for r in rs if r["response_tokens"])
        ratio = f"{med / base:.2f}" if base else "-"
        rss = max((r.get("peak_rss_gib") or 0.0) for r in rs)
        print(f"| {side} | {med:.2f} | {lo:.2f}–{hi:.2f} | {tok:.0f} | {rss:.2f} | {ratio} |")
    for side, rs in runs.items():
        if side.startswith("ours"):
            phases = rs[-1]["phases"]
            print(f"{side}, phases (s, last repeat): " + ", ".join(f"{k} {v:.2f}" for k, v in phases.items()))
    print(json.dumps(runs))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--vocab", choices=["small", "qwen"], default="small")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sides", nargs="+", default=["ours", "trl-best", "trl-default"])
    p.add_argument(
        "--side",
        choices=[*OURS_SIDES, "trl-best", "trl-default", "trl-best-glibcmalloc"],
        help="run one side here (a fresh process)",
    )
    p.add_argument("--work", default=None, help="folder for the model and data (reused)")
    args = p.parse_args()
    if args.side:
        one_side(args)
    else:
        compare(args)


if __name__ == "__main__":
    main()
