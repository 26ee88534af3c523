"""Stage 0 of ``m3ad-rl reproduce``: perception pre-training, standing in for a pretrained base VLM.

The paper starts from a general VLM that already sees: a weak but real detector. No weights can be
fetched here, so we make one: a from-scratch ``Qwen3VLForConditionalGeneration`` learns to answer the
benchmark question with a *plain* answer (no thinking) on freshly drawn synthetic scenes of the FT
categories, a new batch every step (the generator is fast, so nothing is seen twice)::

    <type>scratch</type>
    <location>(0.120,0.340)(0.250,0.410)</location>
    <answer>yes</answer>            or just  <answer>no</answer>

Two losses: the answer tokens' NLL, and a dense defect map. One yes/no token per image is a weak
signal for a vision tower trained from nothing; the map gives every merged image token a label (does
its patch overlap a defect box?) through a linear probe on the vision tower's output. The probe is
dropped when the model is saved, so the result is a plain Qwen3-VL that every engine and trainer loads.

Single process (a Ray task in ``reproduce``): the model is small and the stage is not the system under
test. Checkpoints on any URL, ``COMPLETE`` marker last; a rerun resumes from the newest intact one and
draws the same batches (batch k is scenes k·B … k·B+B-1 of a fixed seed).
"""

from __future__ import annotations

import json
import math
import sys
import time

from pydantic import BaseModel, ConfigDict, Field

from m3ad_rl.core.output_format import format_box
from m3ad_rl.data.augment import AugmentConfig


class PerceptionConfig(BaseModel):
    """What stage 0 trains on and how long."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., description="The from-scratch model folder or URL (``m3ad-rl model tiny``).")
    out: str = Field(..., description="URL: checkpoints/, metrics.jsonl, model/ (the base model).")
    seed: int = Field(0, description="Seed of the scenes drawn and of the probe's initialisation.")
    image_size: int = Field(128, ge=64, description="Square scenes of this side, in pixels.")
    categories: tuple[str, ...] | None = Field(None, description="Synthetic categories to draw (the FT side).")
    anomaly_ratio: float = Field(0.5, ge=0, le=1)
    defect_scale: float = Field(1.0, gt=0, le=4, description="SynthConfig.defect_scale of the scenes drawn.")
    vision_steps: int = Field(0, ge=0, description="Phase 1: steps of the vision tower alone (no language model).")
    vision_batch: int = Field(32, ge=1)
    vision_lr: float = Field(1e-3, gt=0)
    steps: int = Field(2000, ge=1, description="Phase 2: steps of the whole model answering; each draws new scenes.")
    batch: int = Field(16, ge=1)
    lr: float = Field(5e-4, gt=0)
    warmup_steps: int = Field(50, ge=0)
    dense_weight: float = Field(1.0, ge=0, description="Weight of the per-token defect-map loss (0 = answers only).")
    threads: int = Field(2, ge=1)
    checkpoint_every: int = Field(250, ge=1)
    eval_every: int = Field(250, ge=1)
    eval_images: int = Field(128, ge=2, description="Held-out scenes (another seed) scored at each evaluation.")
    eval_categories: tuple[str, ...] | None = Field(
        None, description="Categories of the held-out scenes (perception/bal); default: the training categories."
    )
    transfer_categories: tuple[str, ...] | None = Field(
        None,
        description="Categories never trained on, scored as perception/transfer_bal (for choosing settings by "
        "leaving some FT categories out; never the benchmark's).",
    )
    augment: AugmentConfig = Field(
        AugmentConfig(), description="Label-preserving augmentation of phase 1's scenes (m3ad_rl.data.augment)."
    )
    augment_answers: bool = Field(False, description="Augment phase 2's scenes too (the whole model answering).")


def plain_answer(sample) -> str:
    """The base model's target: the answer tags of SPEC's format without the reasoning."""
    if not sample.defects:
        return "<answer>no</answer>"
    types = ", ".join(dict.fromkeys(d.type for d in sample.defects))
    boxes = "; ".join(format_box(d.box) for d in sample.defects)
    return f"<type>{types}</type>\n<location>{boxes}</location>\n<answer>yes</answer>"


def defect_map(samples, grid_thw, merge: int = 2):
    """One 0/1 label per merged image token (row-major over the merged grid): its cell overlaps a box."""
    import torch

    labels = []
    for s, (_, h, w) in zip(samples, grid_thw.tolist(), strict=True):
        rows, cols = h // merge, w // merge
        lab = torch.zeros(rows, cols)
        for d in s.defects:
            x1, y1, x2, y2 = d.box
            c0, c1 = int(x1 * cols), min(cols - 1, math.ceil(x2 * cols) - 1)
            r0, r1 = int(y1 * rows), min(rows - 1, math.ceil(y2 * rows) - 1)
            lab[r0 : max(r0, r1) + 1, c0 : max(c0, c1) + 1] = 1
        labels.append(lab.flatten())
    return torch.cat(labels)


def run(cfg: PerceptionConfig, progress: bool = True) -> dict:
    """Train (or resume) stage 0; returns ``{"model": URL, "history": [...]}``."""
    import torch
    from tqdm import tqdm

    from m3ad_rl.core import storage
    from m3ad_rl.core.prompts import question
    from m3ad_rl.data.synthetic import SynthConfig, categories_for, make_sample
    from m3ad_rl.engines.base import GenerationRequest
    from m3ad_rl.train import checkpoint as ckpt
    from m3ad_rl.train.logprobs import build_batch, response_log_probs
    from m3ad_rl.train.tracking import LoggingConfig, Tracker
    from m3ad_rl.train.workers import load_policy

    torch.set_num_threads(cfg.threads)
    out = cfg.out.rstrip("/")
    total = cfg.vision_steps + cfg.steps
    model, processor = load_policy(cfg.model)
    model.config.use_cache = False
    torch.manual_seed(cfg.seed)
    width = model.config.text_config.hidden_size
    heads = torch.nn.ModuleDict({"map": torch.nn.Linear(width, 1), "image": torch.nn.Linear(width, 1)})
    params = [*model.parameters(), *heads.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.98))
    done, history = 0, []
    latest = ckpt.latest_complete(f"{out}/checkpoints")
    if latest is not None:
        done, url = latest
        with storage.staged_dir(f"{storage.cache_root()}/perception-resume", clear=True) as tmp:
            storage.download_dir(url, tmp)
            state = torch.load(tmp / "state.pt", weights_only=False)
        model.load_state_dict(state["model"])
        heads.load_state_dict(state["heads"])
        opt.load_state_dict(state["optim"])
        history = state["history"]
        print(f"perception: resumed at step {done} of {total}", flush=True)

    tok = processor.tokenizer
    end = tok.convert_tokens_to_ids("<|im_end|>")
    draw = SynthConfig(
        n=10**9,
        size=cfg.image_size,
        seed=cfg.seed,
        anomaly_ratio=cfg.anomaly_ratio,
        max_defects=1,
        categories=cfg.categories,
        defect_scale=cfg.defect_scale,
    )
    draw_vision = draw.model_copy(update={"seed": cfg.seed + 104729})
    cats = categories_for(draw)

    def scenes(conf: SynthConfig, start: int, count: int, categories=cats, augmented: bool = True) -> list:
        """(sample, image) pairs number start … start+count-1 of ``conf``, augmented (boxes moved) if asked."""
        return [_scene(make_sample(conf, i, categories), cfg, i, augmented) for i in range(start, start + count)]

    held_draw = draw.model_copy(update={"seed": cfg.seed + 7919, "categories": cfg.eval_categories or cfg.categories})
    held = {"bal": scenes(held_draw, 0, cfg.eval_images, categories_for(held_draw), augmented=False)}
    if cfg.transfer_categories:
        tr = draw.model_copy(update={"seed": cfg.seed + 6151, "categories": cfg.transfer_categories})
        held["transfer_bal"] = scenes(tr, 0, cfg.eval_images, categories_for(tr), augmented=False)
    captured: dict = {}
    hook = model.model.visual.register_forward_hook(lambda m, i, o: captured.__setitem__("v", o.pooler_output))
    tracker = Tracker(out, LoggingConfig(backends=["jsonl"]), "perception", resume_step=done)

    def batch_for(pairs, with_targets: bool = True):
        reqs = [GenerationRequest(s.id, question(False), img) for s, img in pairs]
        resps = [tok(plain_answer(s), add_special_tokens=False)["input_ids"] + [end] for s, _ in pairs]
        return build_batch(processor, reqs, resps if with_targets else [r[:2] for r in resps])

    def vision_losses(pairs):
        """The defect map and an image-level yes/no (the most anomalous token) from the vision tower alone."""
        samples = [s for s, _ in pairs]
        pixels, grid = _pixels(processor, pairs)
        feats = model.model.visual(pixels, grid_thw=grid, return_dict=True).pooler_output
        dense = torch.nn.functional.binary_cross_entropy_with_logits(
            heads["map"](feats).squeeze(-1), defect_map(samples, grid)
        )
        logit = _image_logits(heads["image"], feats, grid)
        truth = torch.tensor([float(bool(s.defects)) for s in samples])
        return dense, torch.nn.functional.binary_cross_entropy_with_logits(logit, truth)

    model.train()
    bar = tqdm(
        total=total,
        initial=done,
        desc="stage 0: perception",
        unit="step",
        disable=not progress,
        mininterval=0.1 if sys.stderr.isatty() else 30,
    )  # in a Ray task's log: a line every 30 s
    t0, sums = time.perf_counter(), [0.0, 0.0, 0]
    try:
        for step in range(done, total):
            vision = step < cfg.vision_steps
            k = step if vision else step - cfg.vision_steps
            for g in opt.param_groups:
                g["lr"] = (cfg.vision_lr if vision else cfg.lr) * min(1.0, (k + 1) / max(1, cfg.warmup_steps))
            if vision:  # phase 1: the vision tower on many images (cheap: no language model)
                dense, first = vision_losses(scenes(draw_vision, k * cfg.vision_batch, cfg.vision_batch))
            else:  # phase 2: the whole model answers; the map keeps the tower honest
                pairs = scenes(draw, k * cfg.batch, cfg.batch, augmented=cfg.augment_answers)
                batch = batch_for(pairs)
                lp, _ = response_log_probs(model, batch)
                first = -lp.sum() / batch.response_len.sum()
                target = defect_map([s for s, _ in pairs], batch.vision["image_grid_thw"])
                dense = torch.nn.functional.binary_cross_entropy_with_logits(
                    heads["map"](captured["v"]).squeeze(-1), target
                )
            loss = first + cfg.dense_weight * dense
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sums = [sums[0] + first.item(), sums[1] + dense.item(), sums[2] + 1]
            bar.update()
            n = step + 1
            if n % cfg.eval_every == 0 or n in (cfg.vision_steps, total):
                main = "perception/image_bce" if vision else "perception/nll"
                metrics = {
                    main: sums[0] / sums[2],
                    "perception/dense_bce": sums[1] / sums[2],
                    **_heldout(model, processor, heads, held, batch_for, vision),
                    "timing/step_s": (time.perf_counter() - t0) / sums[2],
                    "perception/images": min(n, cfg.vision_steps) * cfg.vision_batch
                    + max(0, n - cfg.vision_steps) * cfg.batch,
                }
                tracker.log(n, metrics)
                history.append({"step": n, "phase": "vision" if vision else "answer", **metrics})
                transfer = f" transfer bal {metrics['perception/transfer_bal']:.3f}" if len(held) > 1 else ""
                bar.write(
                    f"stage 0 step {n} ({'vision' if vision else 'answer'}): {main[11:]} {sums[0] / sums[2]:.3f} "
                    f"map {metrics['perception/dense_bce']:.3f} held-out bal {metrics['perception/bal']:.3f}{transfer}"
                )
                t0, sums = time.perf_counter(), [0.0, 0.0, 0]
            if n % cfg.checkpoint_every == 0 or n == total:
                _save_checkpoint(out, n, model, heads, opt, history)
    finally:
        bar.close()
        hook.remove()
        tracker.close()
    with storage.staged_dir(f"{out}/model", clear=True) as d:
        model.save_pretrained(d)
        processor.save_pretrained(d)
        (d / "m3ad_perception.json").write_text(json.dumps({"config": cfg.model_dump(), "history": history}, indent=1))
    return {"model": f"{out}/model", "history": history}


def _scene(sample, cfg: PerceptionConfig, index: int, augmented: bool):
    """(sample, RGB image): augmented by ``cfg.augment`` (its own stream per scene index), boxes moved."""
    from dataclasses import replace

    import numpy as np

    from m3ad_rl.data.augment import augment
    from m3ad_rl.data.schema import DefectRecord

    image = sample.load_image()
    if not (augmented and cfg.augment.active):
        return sample, image
    rng = np.random.default_rng([cfg.seed, 0xA46, index])
    image, boxes = augment(image, [d.box for d in sample.defects], rng, cfg.augment)
    defects = [DefectRecord(d.type, b, d.level2, d.level1) for d, b in zip(sample.defects, boxes, strict=True)]
    return replace(sample, defects=defects, image=None), image


def _pixels(processor, pairs):
    v = processor.image_processor(images=[img for _, img in pairs], return_tensors="pt")
    return v["pixel_values"], v["image_grid_thw"]


def _image_logits(head, feats, grid):
    """One logit per image: its most anomalous merged token."""
    import torch

    sizes = (grid.prod(-1) // 4).tolist()
    return torch.stack([head(f).squeeze(-1).amax() for f in torch.split(feats, sizes)])


def _heldout(model, processor, heads, held: dict[str, list], batch_for, vision: bool) -> dict:
    """Accuracy and balanced accuracy on each held-out set of (sample, image) pairs: of the image head while
    the tower trains alone, then of the first decisive token (``<type`` = yes, ``<answer`` = no), what greedy
    decoding answers. ``held``: {metric name: pairs}; "bal" also gives perception/acc."""
    import torch

    from m3ad_rl.train.logprobs import response_log_probs

    model.eval()
    out = {}
    for name, pairs in held.items():
        said = []
        with torch.no_grad():
            for k in range(0, len(pairs), 32):
                chunk = pairs[k : k + 32]
                if vision:
                    pixels, grid = _pixels(processor, chunk)
                    feats = model.model.visual(pixels, grid_thw=grid, return_dict=True).pooler_output
                    said += (_image_logits(heads["image"], feats, grid) > 0).tolist()
                else:
                    b = batch_for([(_as_anomalous(s), img) for s, img in chunk], with_targets=False)  # "<", "type"
                    lp, _ = response_log_probs(model, b)
                    said += (lp[:, 1] > math.log(0.5)).tolist()
        truth = [bool(s.defects) for s, _ in pairs]
        pos = [a for a, t in zip(said, truth, strict=True) if t]
        neg = [not a for a, t in zip(said, truth, strict=True) if not t]
        out[f"perception/{name}"] = 0.5 * (sum(pos) / max(len(pos), 1) + sum(neg) / max(len(neg), 1))
        if name == "bal":
            out["perception/acc"] = sum(a == t for a, t in zip(said, truth, strict=True)) / len(pairs)
    model.train()
    return out


def _as_anomalous(sample):
    """The same image with a dummy defect, so ``plain_answer`` starts with ``<type`` (the yes branch)."""
    from dataclasses import replace

    from m3ad_rl.data.schema import DefectRecord

    return replace(sample, defects=[DefectRecord("scratch", [0.0, 0.0, 1.0, 1.0])])


def _save_checkpoint(out: str, step: int, model, heads, opt, history: list) -> None:
    import torch

    from m3ad_rl.core import storage
    from m3ad_rl.train import checkpoint as ckpt

    url = ckpt.step_dir(f"{out}/checkpoints", step)
    with storage.staged_dir(url, clear=True) as d:
        state = {
            "model": model.state_dict(),
            "heads": heads.state_dict(),
            "optim": opt.state_dict(),
            "history": history,
            "step": step,
        }
        torch.save(state, d / "state.pt")
        files = {"state.pt": (d / "state.pt").stat().st_size}
    ckpt.mark_complete(url, {"step": step}, files)
    ckpt.prune(f"{out}/checkpoints", keep=1)
