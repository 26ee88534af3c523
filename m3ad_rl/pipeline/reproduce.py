"""``m3ad-rl reproduce``: base → RAWS → RCRL on a small Qwen3-VL trained from scratch, with seeds.

    m3ad-rl reproduce --config configs/reproduce/cpu-small.yaml [--seeds 0 1 2] [--out URL]

Stages, each recorded in ``{out}/stages/<name>.json`` when it finishes, so a rerun skips what is done
and the trainers resume what was cut short (their own checkpoints):

1. ``data``: synthetic scenes at ``image_size``: the FT categories' FT set and held-out images, and the
   benchmark categories (never trained on, by any stage);
2. ``init``: the from-scratch model (the ``model`` recipe: still ``Qwen3VLForConditionalGeneration``);
3. ``perception`` (stage 0, once): the base model, a weak detector that answers plainly
   (``m3ad_rl.train.perception``); it stands in for the one pretrained VLM the paper starts from, so all
   seeds share it;
4. ``base-eval``: the base over the FT set (easy/hard), the held-out FT images and the benchmark;
5. per seed: ``ft`` (Thinking/Reflective sets, template captioner), ``sft`` (RAWS, Ray Train +
   DeepSpeed), ``rcrl`` (GRPO with reward preset (d)), ``eval`` (RAWS and RCRL on both test sets);
6. ``report``: ``{out}/report/results.md``: Table-1 layout, mean ± std over seeds, curves, Figure 5.
"""

from __future__ import annotations

import json
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from m3ad_rl.core import storage


class ReproduceData(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image_size: int = Field(128, ge=64)
    ft_categories: list[str] = Field(..., description="Categories trained on (stage 0, RAWS, RCRL).")
    bench_categories: list[str] = Field(..., description="Held-out categories: the benchmark (unseen).")
    ft_images: int = Field(512, ge=8, description="The FT set (easy/hard, SFT and RL sets).")
    ft_heldout_images: int = Field(256, ge=8, description="New images of the FT categories (seen categories).")
    bench_images: int = Field(256, ge=8, description="Images of the benchmark categories.")
    defect_scale: float = Field(1.0, gt=0, le=4, description="Size of painted defects (SynthConfig.defect_scale).")
    seed: int = Field(100, description="Seed of the scenes (stage 0 draws its own, from its own seed).")


class ReproduceConfig(BaseModel):
    """Everything ``m3ad-rl reproduce`` runs; the stage sections are the trainers' own configs (overrides)."""

    model_config = ConfigDict(extra="forbid")

    out: str = Field("runs/reproduce", description="Every stage's outputs (any fsspec URL).")
    seeds: list[int] = Field([0, 1, 2], min_length=1)
    address: str | None = Field(None, description="Ray cluster address (default: start local Ray).")
    data: ReproduceData
    model: dict[str, Any] = Field(default_factory=dict, description="TinySpec fields of the from-scratch model.")
    perception: dict[str, Any] = Field(default_factory=dict, description="PerceptionConfig overrides (stage 0).")
    sft: dict[str, Any] = Field(default_factory=dict, description="SFTConfig overrides (RAWS).")
    rcrl: dict[str, Any] = Field(default_factory=dict, description="RCRLConfig overrides.")
    reward_config: str = Field("rewards/preset_d.yaml", description="Shipped config name or a path.")
    eval_max_new_tokens: int = Field(256, ge=8)
    eval_batch_size: int = Field(16, ge=1)


class Stages:
    """Stage markers under ``{out}/stages``: what is done, with which settings, its result and wall time.

    A stage's fingerprint hashes its own settings and its parent's fingerprint, so a changed setting
    makes that stage and every stage after it stale: a rerun then refuses (one line naming the stage)
    until ``--redo`` names it; ``redo`` removes the markers and outputs of a stage and its descendants."""

    def __init__(self, out: str):
        self.out = out.rstrip("/")
        self.root = f"{self.out}/stages"
        self.plan: dict[str, tuple[str | None, str, list[str]]] = {}  # name -> (parent, fingerprint, outputs)

    def add(self, name: str, parent: str | None, settings: Any, outputs: list[str]) -> None:
        import hashlib

        text = json.dumps([settings, self.plan[parent][1] if parent else None], sort_keys=True, default=str)
        self.plan[name] = (parent, hashlib.sha256(text.encode()).hexdigest()[:16], outputs)

    def descendants(self, name: str) -> list[str]:
        found, grew = [name], True
        while grew:
            grew = False
            for n, (parent, _, _) in self.plan.items():
                if parent in found and n not in found:
                    found.append(n)
                    grew = True
        return found

    def redo(self, names: list[str]) -> None:
        from m3ad_rl.core.errors import UsageError

        unknown = [n for n in names if n not in self.plan]
        if unknown:
            raise UsageError(f"--redo {' '.join(unknown)}: no such stage", f"the stages are {', '.join(self.plan)}")
        for name in names:
            for n in self.descendants(name):
                for url in [f"{self.root}/{n}.json", *(f"{self.out}/{o}" for o in self.plan[n][2])]:
                    storage.remove(url)

    def done(self, name: str) -> dict | None:
        url = f"{self.root}/{name}.json"
        return json.loads(storage.read_text(url)) if storage.exists(url) else None

    def run(self, name: str, fn, *args, **kwargs) -> dict:
        """``fn``'s result (a JSON-able dict), from the marker if the stage is done with the same settings."""
        from m3ad_rl.core.errors import UsageError

        fingerprint = self.plan[name][1]
        prior = self.done(name)
        if prior is not None:
            if prior.get("settings", fingerprint) != fingerprint:
                raise UsageError(
                    f"stage {name} in {self.out} was run with other settings",
                    f"add --redo {name} to run it and the stages after it again, or choose another --out",
                )
            print(f"[reproduce] {name}: done ({prior['seconds']:.0f} s), skipped", flush=True)
            return prior["result"]
        print(f"[reproduce] {name}: running", flush=True)
        t0 = time.perf_counter()
        result = fn(*args, **kwargs)
        seconds = time.perf_counter() - t0
        marker = {"result": result, "seconds": seconds, "settings": fingerprint}
        storage.write_text(f"{self.root}/{name}.json", json.dumps(marker))
        print(f"[reproduce] {name}: finished in {seconds:.0f} s", flush=True)
        return result

    def seconds(self) -> dict[str, float]:
        """Wall time of the planned stages that are done, in plan order."""
        return {n: m["seconds"] for n in self.plan if (m := self.done(n)) is not None}


def plan(cfg: ReproduceConfig) -> Stages:
    """The stages of ``cfg``, each with the settings it depends on and the outputs it writes."""
    stages = Stages(cfg.out)
    evaluation = [cfg.eval_max_new_tokens, cfg.eval_batch_size]
    stages.add("data", None, cfg.data.model_dump(), ["data"])
    stages.add("init", "data", cfg.model, ["models/init"])
    stages.add("perception", "init", cfg.perception, ["perception"])
    stages.add("base-eval", "perception", evaluation, ["eval/base"])
    for seed in cfg.seeds:
        s = f"seed-{seed}"
        stages.add(f"{s}-ft", "base-eval", seed, [f"{s}/ft"])
        stages.add(f"{s}-sft", f"{s}-ft", cfg.sft, [f"{s}/sft"])
        stages.add(f"{s}-rcrl", f"{s}-sft", [cfg.rcrl, cfg.reward_config], [f"{s}/rcrl"])
        stages.add(f"{s}-eval", f"{s}-rcrl", evaluation, [f"{s}/eval"])
    return stages


def reproduce(cfg: ReproduceConfig, redo: list[str] | None = None) -> dict:
    """Run (or resume) every stage; ``redo``: stages to run again, with every stage after them."""
    from m3ad_rl.train.ray_setup import init_ray

    out = storage.absolute(cfg.out).rstrip("/")
    cfg = cfg.model_copy(update={"out": out})
    # a mistake in a trainer's section fails now, in one line, not after stage 0's twenty minutes
    _perception_config(cfg), _sft_config(cfg, cfg.seeds[0], "base"), _rcrl_config(cfg, cfg.seeds[0], "sft")
    stages = plan(cfg)
    stages.redo(redo or [])
    storage.write_text(f"{out}/reproduce.json", cfg.model_dump_json(indent=1))
    init_ray(cfg.address, 8)
    stages.run("data", _data, cfg)
    stages.run("init", _init_model, cfg)
    base = stages.run("perception", _perception, cfg)["model"]
    stages.run("base-eval", _base_eval, cfg, base)
    for seed in cfg.seeds:
        s = f"seed-{seed}"
        stages.run(f"{s}-ft", _ft, cfg, seed)
        sft = stages.run(f"{s}-sft", _sft, cfg, seed, base)["model"]
        rcrl = stages.run(f"{s}-rcrl", _rcrl, cfg, seed, sft)["model"]
        stages.run(f"{s}-eval", _seed_eval, cfg, seed, sft, rcrl)
    from m3ad_rl.pipeline.reproduce_report import write_report

    return write_report(cfg, stages.seconds())


# ---- the stages ---------------------------------------------------------------------------------------
def _data(cfg: ReproduceConfig) -> dict:
    from m3ad_rl.data.synthetic import SynthConfig, synthesize

    d = cfg.data
    sets = {
        "ft": (d.ft_categories, d.ft_images, d.seed),
        "ft-heldout": (d.ft_categories, d.ft_heldout_images, d.seed + 1),
        "bench": (d.bench_categories, d.bench_images, d.seed + 2),
    }
    for name, (cats, n, seed) in sets.items():
        synth = SynthConfig(
            n=n, seed=seed, size=d.image_size, categories=tuple(cats), max_defects=1, defect_scale=d.defect_scale
        )
        synthesize(synth, f"{cfg.out}/data/{name}", workers=2, progress=False)
    return {name: f"{cfg.out}/data/{name}" for name in sets}


def _init_model(cfg: ReproduceConfig) -> dict:
    from m3ad_rl.models.tiny import TinySpec, write_tiny

    side = cfg.data.image_size
    spec = TinySpec(**{"image_min_pixels": side * side, "image_max_pixels": side * side, **cfg.model})
    info = write_tiny(f"{cfg.out}/models/init", spec)
    return {"model": f"{cfg.out}/models/init", "parameters": info["parameters"]}


def _perception(cfg: ReproduceConfig) -> dict:
    import ray

    from m3ad_rl.train.perception import run as run_perception

    pc = _perception_config(cfg)
    task = ray.remote(num_cpus=pc.threads)(run_perception)  # on a worker node; its outputs go to the URL
    res = ray.get(task.remote(pc))
    return {"model": res["model"], "history": res["history"]}


def _eval(model: str, dataset: str, out: str, cfg: ReproduceConfig) -> dict:
    from m3ad_rl.engines.base import SamplingParams
    from m3ad_rl.eval.run import EvalRunConfig, run

    ec = EvalRunConfig(
        model=model,
        dataset=dataset,
        out=out,
        workers=1,
        batch_size=cfg.eval_batch_size,
        address=cfg.address,
        overwrite=True,
        sampling=SamplingParams(n=1, temperature=0.0, max_new_tokens=cfg.eval_max_new_tokens, logprobs=False),
    )
    return run(ec)


def _base_eval(cfg: ReproduceConfig, base: str) -> dict:
    return {
        name: _summary(_eval(base, f"{cfg.out}/data/{name}", f"{cfg.out}/eval/base/{name}", cfg))
        for name in ("ft", "ft-heldout", "bench")
    }


def _ft(cfg: ReproduceConfig, seed: int) -> dict:
    from m3ad_rl.data.ft import FTConfig, build_ft, make_captioner

    ft = FTConfig(seed=seed)
    report = build_ft(
        f"{cfg.out}/data/ft",
        f"{cfg.out}/eval/base/ft/predictions.jsonl",
        f"{cfg.out}/seed-{seed}/ft",
        ft,
        make_captioner("template", seed=seed),
    )
    return {k: getattr(report, k) for k in ("easy", "hard", "reflective", "thinking", "sft_rows", "rl_rows")}


def _sft(cfg: ReproduceConfig, seed: int, base: str) -> dict:
    from m3ad_rl.train.sft import run as run_sft

    res = run_sft(_sft_config(cfg, seed, base), resume=True)  # cut short: continue; nothing there: start
    return {"model": res["model"], "loss": res["loss"]}


def _rcrl(cfg: ReproduceConfig, seed: int, sft: str) -> dict:
    from m3ad_rl.train.rcrl import run as run_rcrl

    res = run_rcrl(_rcrl_config(cfg, seed, sft), resume=True, progress=False)  # as for SFT
    return {"model": res["model"]}


def _seed_eval(cfg: ReproduceConfig, seed: int, sft: str, rcrl: str) -> dict:
    return {
        f"{name}/{ds}": _summary(_eval(model, f"{cfg.out}/data/{ds}", f"{cfg.out}/seed-{seed}/eval/{name}/{ds}", cfg))
        for name, model in (("raws", sft), ("rcrl", rcrl))
        for ds in ("ft-heldout", "bench")
    }


def _summary(report: dict) -> dict:
    return {"accuracy": report["average"]["accuracy"], "balanced_accuracy": report["average"]["balanced_accuracy"]}


def _reward_path(name: str) -> str:
    from pathlib import Path

    from m3ad_rl.core.package_data import config_file

    return name if Path(name).exists() else str(config_file(name))


# ---- the trainers' configs: a shipped file, this config's section, then the paths the stage fixes --------
def _stage_config(model, shipped: str | None, *layers: dict, root: str):
    """``model`` from the shipped config (if any) with ``layers`` merged over it; a mistake in a section is
    a ConfigError naming the key (``sft.epoch: not a field`` …)."""
    from omegaconf import OmegaConf

    from m3ad_rl.core.config import load_config, validate
    from m3ad_rl.core.package_data import config_file

    base = load_config(model, str(config_file(shipped))).model_dump(mode="json") if shipped else {}
    return validate(model, OmegaConf.to_container(OmegaConf.merge(base, *layers)), root=root)


def _perception_config(cfg: ReproduceConfig):
    from m3ad_rl.train.perception import PerceptionConfig

    fixed = {"model": f"{cfg.out}/models/init", "out": f"{cfg.out}/perception", "image_size": cfg.data.image_size,
             "categories": list(cfg.data.ft_categories), "defect_scale": cfg.data.defect_scale}  # fmt: skip
    return _stage_config(PerceptionConfig, None, fixed, cfg.perception, root="perception.")


def _sft_config(cfg: ReproduceConfig, seed: int, base: str):
    from m3ad_rl.train.sft import SFTConfig

    fixed = {"model": base, "data": f"{cfg.out}/seed-{seed}/ft/sft.parquet", "out": f"{cfg.out}/seed-{seed}/sft",
             "seed": seed, "address": cfg.address}  # fmt: skip
    return _stage_config(SFTConfig, "train/sft-cpu.yaml", fixed, cfg.sft, root="sft.")


def _rcrl_config(cfg: ReproduceConfig, seed: int, sft: str):
    from m3ad_rl.train.rcrl import RCRLConfig
    from rewards import load_reward_config

    fixed = {"model": sft, "data": f"{cfg.out}/seed-{seed}/ft/rl.parquet", "out": f"{cfg.out}/seed-{seed}/rcrl",
             "seed": seed, "address": cfg.address}  # fmt: skip
    reward = {"reward": load_reward_config(_reward_path(cfg.reward_config)).model_dump(mode="json")}
    return _stage_config(RCRLConfig, "train/rcrl-cpu.yaml", cfg.rcrl, fixed, reward, root="rcrl.")
