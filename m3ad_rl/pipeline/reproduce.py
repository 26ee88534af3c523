"""``m3ad-rl reproduce``: base → RAWS → RCRL on a small Qwen3-VL trained from scratch, with seeds.

    m3ad-rl reproduce --config configs/reproduce/cpu-small.yaml [--seeds 0 1 2] [--out URL] [--variants …]

Stages, each recorded in ``{out}/stages/<name>.json`` when it finishes, so a rerun skips what is done
and the trainers resume what was cut short (their own checkpoints):

1. ``data``: synthetic scenes at ``image_size``, in disjoint sets: of the FT categories the SFT pool
   (``ft``), the RL prompts (``rl``, never seen by SFT), a validation set (``val``, for choosing
   settings) and the held-out images (``ft-heldout``, only reported); and the benchmark categories
   (``bench``: never trained on or chosen by, by any stage);
2. ``init``: the from-scratch model (the ``model`` recipe: still ``Qwen3VLForConditionalGeneration``);
3. ``perception`` (stage 0, once): the base model, a weak detector that answers plainly
   (``m3ad_rl.train.perception``); it stands in for the one pretrained VLM the paper starts from, so all
   seeds share it;
4. ``base-eval``: the base over the SFT pool (easy/hard), the held-out FT images and the benchmark;
5. per seed: ``ft`` (Thinking/Reflective SFT set from the pool, RL set from the RL images, the targets'
   token lengths), ``sft`` (RAWS, Ray Train + DeepSpeed), ``rcrl`` (GRPO with ``reward_config``),
   ``eval`` (RAWS and RCRL on the held-out images and the benchmark, and the validation set when
   ``eval_validation``); and for each of ``variants`` (other reward configs, from the same RAWS
   model) ``rcrl-<variant>`` and ``eval-<variant>``;
6. ``report``: ``{out}/report/results.md``: Table-1 layout, paired RCRL − RAWS differences with bootstrap
   intervals, the variants' table and plot, curves, Figure 5, truncation.

Token limits (SFT's ``max_response_tokens``, RCRL's and evaluation's ``max_new_tokens``) are ``auto`` by
default: the longest SFT target of the seed's FT set (``lengths.json``) × ``length_margin``.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from m3ad_rl.core import storage
from m3ad_rl.pipeline.reproduce_report import variant_name


class ReproduceData(BaseModel):
    """The image sets; each has its own seed, so no image is in two sets (tested)."""

    model_config = ConfigDict(extra="forbid")

    image_size: int = Field(128, ge=64)
    ft_categories: list[str] = Field(..., description="Categories trained on (stage 0, RAWS, RCRL).")
    bench_categories: list[str] = Field(..., description="Held-out categories: the benchmark (unseen).")
    ft_images: int = Field(512, ge=8, description="The SFT pool: the base sorts it easy/hard; the SFT set.")
    rl_images: int | None = Field(
        1024, ge=8, description="RL prompts of the FT categories that SFT never sees; null: the SFT pool (the old way)."
    )
    val_images: int = Field(512, ge=8, description="Validation images of the FT categories: for choosing settings.")
    ft_heldout_images: int = Field(1024, ge=8, description="Held-out images of the FT categories: only reported.")
    bench_images: int = Field(512, ge=8, description="Images of the benchmark categories (unseen: never trained on).")
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
    variants: list[str] = Field(
        default_factory=list,
        description="Other reward configs (shipped names or paths), each an RCRL run from the same RAWS models.",
    )
    eval_max_new_tokens: int | Literal["auto"] = Field(
        "auto", description="Greedy evaluation's limit; auto: the longest SFT target × length_margin."
    )
    length_margin: float = Field(1.25, ge=1.0, description="auto limits: the longest SFT target × this.")
    eval_batch_size: int = Field(16, ge=1)
    eval_validation: bool = Field(False, description="Also evaluate RAWS and RCRL on the validation set.")
    bootstrap: int = Field(4000, ge=100, description="Bootstrap replicates of the report's intervals.")

    @field_validator("variants")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        names = [variant_name(x) for x in v]
        if len(set(names)) != len(names):
            raise ValueError(f"variants {v} repeat a name")
        return v


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


def data_sets(cfg: ReproduceConfig) -> dict[str, tuple[list[str], int, int]]:
    """{set: (categories, images, seed)}: every set its own seed, so no image is in two sets."""
    d = cfg.data
    sets = {
        "ft": (d.ft_categories, d.ft_images, d.seed),
        "ft-heldout": (d.ft_categories, d.ft_heldout_images, d.seed + 1),
        "bench": (d.bench_categories, d.bench_images, d.seed + 2),
        "rl": (d.ft_categories, d.rl_images or 0, d.seed + 3),
        "val": (d.ft_categories, d.val_images, d.seed + 4),
    }
    return {k: v for k, v in sets.items() if v[1]}


def eval_sets(cfg: ReproduceConfig) -> list[str]:
    """The sets each seed's models are scored on."""
    return ["ft-heldout", "bench", *(["val"] if cfg.eval_validation else [])]


def plan(cfg: ReproduceConfig) -> Stages:
    """The stages of ``cfg``, each with the settings it depends on and the outputs it writes."""
    stages = Stages(cfg.out)
    evaluation = [cfg.eval_max_new_tokens, cfg.eval_batch_size, cfg.length_margin]
    stages.add("data", None, cfg.data.model_dump(), ["data"])
    stages.add("init", "data", cfg.model, ["models/init"])
    stages.add("perception", "init", cfg.perception, ["perception"])
    stages.add("base-eval", "perception", evaluation[1:], ["eval/base"])
    for seed in cfg.seeds:
        s = f"seed-{seed}"
        stages.add(f"{s}-ft", "base-eval", [seed, cfg.data.rl_images is not None], [f"{s}/ft"])
        stages.add(f"{s}-sft", f"{s}-ft", [cfg.sft, cfg.length_margin], [f"{s}/sft"])
        for v in [None, *cfg.variants]:
            tag = f"-{variant_name(v)}" if v else ""
            reward = v or cfg.reward_config
            stages.add(f"{s}-rcrl{tag}", f"{s}-sft", [cfg.rcrl, reward, cfg.length_margin], [f"{s}/rcrl{tag}"])
            outs = [f"{s}/eval/rcrl{tag}"] + ([f"{s}/eval/raws"] if not v else [])
            stages.add(f"{s}-eval{tag}", f"{s}-rcrl{tag}", [*evaluation, eval_sets(cfg)], outs)
    return stages


def reproduce(cfg: ReproduceConfig, redo: list[str] | None = None) -> dict:
    """Run (or resume) every stage; ``redo``: stages to run again, with every stage after them."""
    from m3ad_rl.train.ray_setup import init_ray

    out = storage.absolute(cfg.out).rstrip("/")
    cfg = cfg.model_copy(update={"out": out})
    # a mistake in a trainer's section or a reward config fails now, in one line, not after stage 0's minutes
    _perception_config(cfg), _sft_config(cfg, cfg.seeds[0], "base", 512)
    for v in [cfg.reward_config, *cfg.variants]:
        _rcrl_config(cfg, cfg.seeds[0], "sft", v, 512)
    from m3ad_rl.core.outputs import REPRODUCE, claim_dir

    # the output contract: a new or empty out, or a reproduce run (resumed by its stage markers); never a
    # folder holding anything else
    claim_dir(out, REPRODUCE, resume=True)
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
        limit = stages.run(f"{s}-ft", _ft, cfg, seed, base)["lengths"]["max"]
        sft = stages.run(f"{s}-sft", _sft, cfg, seed, base, limit)["model"]
        for v in [None, *cfg.variants]:
            tag = f"-{variant_name(v)}" if v else ""
            rcrl = stages.run(f"{s}-rcrl{tag}", _rcrl, cfg, seed, sft, v or cfg.reward_config, tag, limit)["model"]
            stages.run(f"{s}-eval{tag}", _seed_eval, cfg, seed, sft if not v else None, rcrl, tag, limit)
    from m3ad_rl.pipeline.reproduce_report import write_report

    return write_report(cfg, stages.seconds())


def auto_limit(cfg: ReproduceConfig, longest: int) -> int:
    """A generation limit above every SFT target: the longest × ``length_margin``, rounded up to 16."""
    return int(math.ceil(longest * cfg.length_margin / 16) * 16)


# ---- the stages ---------------------------------------------------------------------------------------
def _data(cfg: ReproduceConfig) -> dict:
    from m3ad_rl.data.synthetic import SynthConfig, synthesize

    d = cfg.data
    for name, (cats, n, seed) in data_sets(cfg).items():
        synth = SynthConfig(
            n=n, seed=seed, size=d.image_size, categories=tuple(cats), max_defects=1, defect_scale=d.defect_scale
        )
        synthesize(synth, f"{cfg.out}/data/{name}", workers=2, progress=False, overwrite=True)  # ours: a rerun
    return {name: f"{cfg.out}/data/{name}" for name in data_sets(cfg)}


def _init_model(cfg: ReproduceConfig) -> dict:
    from m3ad_rl.models.tiny import TinySpec, write_tiny

    side = cfg.data.image_size
    spec = TinySpec(**{"image_min_pixels": side * side, "image_max_pixels": side * side, **cfg.model})
    info = write_tiny(f"{cfg.out}/models/init", spec, overwrite=True)
    return {"model": f"{cfg.out}/models/init", "parameters": info["parameters"]}


def _perception(cfg: ReproduceConfig) -> dict:
    import ray

    from m3ad_rl.train.perception import run as run_perception

    pc = _perception_config(cfg)
    task = ray.remote(num_cpus=pc.threads)(run_perception)  # on a worker node; its outputs go to the URL
    res = ray.get(task.remote(pc))
    return {"model": res["model"], "history": res["history"]}


def _eval(model: str, dataset: str, out: str, cfg: ReproduceConfig, max_new_tokens: int) -> dict:
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
        sampling=SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens, logprobs=False),
    )
    return run(ec)


def _base_eval(cfg: ReproduceConfig, base: str) -> dict:
    """The base answers plainly (a few dozen tokens), so its limit is the configured or a generous fixed one."""
    limit = cfg.eval_max_new_tokens if cfg.eval_max_new_tokens != "auto" else 256
    return {
        name: _summary(_eval(base, f"{cfg.out}/data/{name}", f"{cfg.out}/eval/base/{name}", cfg, limit))
        for name in ("ft", "ft-heldout", "bench")
    }


def _ft(cfg: ReproduceConfig, seed: int, base: str) -> dict:
    from m3ad_rl.data.ft import FTConfig, build_ft, make_captioner

    ft = FTConfig(seed=seed)
    report = build_ft(
        f"{cfg.out}/data/ft",
        f"{cfg.out}/eval/base/ft/predictions.jsonl",
        f"{cfg.out}/seed-{seed}/ft",
        ft,
        make_captioner("template", seed=seed),
        progress=False,
        tokenizer=base,
        rl_input=f"{cfg.out}/data/rl" if cfg.data.rl_images else None,
        overwrite=True,  # the stage's own output: a rerun after a kill rebuilds it
    )
    keys = ("easy", "hard", "reflective", "thinking", "sft_rows", "rl_rows", "rl_overlap", "lengths")
    return {k: getattr(report, k) for k in keys}


def _sft(cfg: ReproduceConfig, seed: int, base: str, longest: int) -> dict:
    from m3ad_rl.train.sft import run as run_sft

    res = run_sft(_sft_config(cfg, seed, base, longest), resume=True)  # cut short: continue; nothing there: start
    return {"model": res["model"], "loss": res["loss"]}


def _rcrl(cfg: ReproduceConfig, seed: int, sft: str, reward: str, tag: str, longest: int) -> dict:
    from m3ad_rl.train.rcrl import run as run_rcrl

    res = run_rcrl(_rcrl_config(cfg, seed, sft, reward, longest, tag), resume=True, progress=False)  # as for SFT
    return {"model": res["model"]}


def _seed_eval(cfg: ReproduceConfig, seed: int, sft: str | None, rcrl: str, tag: str, longest: int) -> dict:
    """RCRL (and, for the main reward, RAWS) on the evaluation sets."""
    limit = cfg.eval_max_new_tokens if cfg.eval_max_new_tokens != "auto" else auto_limit(cfg, longest)
    models = ([("raws", sft)] if sft else []) + [(f"rcrl{tag}", rcrl)]
    return {
        f"{name}/{ds}": _summary(
            _eval(model, f"{cfg.out}/data/{ds}", f"{cfg.out}/seed-{seed}/eval/{name}/{ds}", cfg, limit)
        )
        for name, model in models
        for ds in eval_sets(cfg)
    }


def _summary(report: dict) -> dict:
    return {"accuracy": report["average"]["accuracy"], "balanced_accuracy": report["average"]["balanced_accuracy"],
            "truncated": report["run"].get("truncated", 0), "n": report["run"]["n"]}  # fmt: skip


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


def _sft_config(cfg: ReproduceConfig, seed: int, base: str, longest: int):
    """RAWS's config; ``max_response_tokens`` unset in the section: every target fits (the longest)."""
    from m3ad_rl.train.sft import SFTConfig

    fixed = {"model": base, "data": f"{cfg.out}/seed-{seed}/ft/sft.parquet", "out": f"{cfg.out}/seed-{seed}/sft",
             "seed": seed, "address": cfg.address}  # fmt: skip
    derived = {} if "max_response_tokens" in cfg.sft else {"max_response_tokens": longest}
    return _stage_config(SFTConfig, "train/sft-cpu.yaml", derived, fixed, cfg.sft, root="sft.")


def _rcrl_config(cfg: ReproduceConfig, seed: int, sft: str, reward_ref: str, longest: int, tag: str = ""):
    """RCRL's config; ``rollout.sampling.max_new_tokens`` unset in the section: auto (above every target)."""
    from omegaconf import OmegaConf

    from m3ad_rl.train.rcrl import RCRLConfig
    from rewards import load_reward_config

    fixed = {"model": sft, "data": f"{cfg.out}/seed-{seed}/ft/rl.parquet", "out": f"{cfg.out}/seed-{seed}/rcrl{tag}",
             "seed": seed, "address": cfg.address}  # fmt: skip
    # the variant's reward file, with the section's own ``reward`` keys over it (they hold for every variant)
    file = load_reward_config(_reward_path(reward_ref)).model_dump(mode="json")
    reward = {"reward": OmegaConf.to_container(OmegaConf.merge(file, dict(cfg.rcrl).get("reward") or {}))}
    derived = {"rollout": {"sampling": {"max_new_tokens": auto_limit(cfg, longest)}}}
    return _stage_config(RCRLConfig, "train/rcrl-cpu.yaml", derived, cfg.rcrl, fixed, reward, root="rcrl.")
