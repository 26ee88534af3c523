"""Does our GRPO loop improve a policy? A check small enough for CI (``m3ad-rl check learning``).

The task only asks for the output format and the right yes/no answer, so the tiny model can master it in
minutes on 2 cores:

1. a weak start: the tiny Qwen3-VL, briefly SFT'd on defective scenes whose targets say "yes" (with the
   true types and boxes) for half of them and "no" for the other half: it writes the format and answers
   yes about half the time, whatever it sees;
2. RCRL (the real loop: rollout workers, the Ray Serve reward service, DeepSpeed actor and reference,
   weight push) on other defective scenes: "yes" earns the answer reward, so the mean reward must climb;
3. the answer accuracy on held-out defective scenes, sampled before and after RCRL, must rise with it.

A broken advantage sign, a weight push that does nothing or a zero learning rate leave the reward flat or
falling: ``sabotage=`` runs the same check with each, and the check must then fail (the "zero" rate is
1e-12: the optimiser refuses exactly 0).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

SABOTAGES = ("advantage_sign", "no_weight_push", "zero_lr")


@dataclass
class LearningCheck:
    """Sizes of the check; the defaults pass in about three minutes per seed on 2 cores."""

    seed: int = 0
    image_size: int = 64
    sft_images: int = 64
    sft_steps: int = 300
    rl_images: int = 32
    heldout_images: int = 24
    heldout_samples: int = 4
    rcrl_steps: int = 30
    batch_prompts: int = 8
    n: int = 4
    max_new_tokens: int = 96
    lr: float = 2e-4
    window: int = 5  # steps averaged at each end of the reward curve
    min_climb: float = 0.25  # the last window's mean reward must exceed the first's by this much
    sabotage: str | None = None


@dataclass
class LearningResult:
    check: LearningCheck
    rewards: list[float] = field(default_factory=list)
    accuracy_before: float = 0.0
    accuracy_after: float = 0.0

    @property
    def climb(self) -> float:
        w = self.check.window
        return sum(self.rewards[-w:]) / w - sum(self.rewards[:w]) / w

    @property
    def passed(self) -> bool:
        return self.climb >= self.check.min_climb and self.accuracy_after > self.accuracy_before

    def line(self) -> str:
        c = self.check
        return (f"seed {c.seed}{f' (sabotage: {c.sabotage})' if c.sabotage else ''}: reward first {c.window} "
                f"steps {sum(self.rewards[:c.window]) / c.window:.2f} -> last {c.window} "
                f"{sum(self.rewards[-c.window:]) / c.window:.2f} (climb {self.climb:+.2f}, need "
                f"{c.min_climb:+.2f}); held-out accuracy {self.accuracy_before:.2f} -> {self.accuracy_after:.2f}; "
                f"{'PASS' if self.passed else 'FAIL'}")  # fmt: skip


def _defective_scenes(out: str, n: int, seed: int, size: int) -> list:
    from m3ad_rl.data.store import iter_samples
    from m3ad_rl.data.synthetic import SynthConfig, synthesize

    synthesize(
        SynthConfig(n=n, seed=seed, size=size, anomaly_ratio=1.0, max_defects=1), out, progress=False, overwrite=True
    )  # the check owns its work folder: a rerun starts over
    return list(iter_samples(out))


def _write_sets(work: Path, c: LearningCheck) -> dict[str, str]:
    """sft.parquet (half yes, half no), rl.parquet and the held-out samples, each from its own scenes."""
    from m3ad_rl.core.output_format import render
    from m3ad_rl.data.ft import RL_SCHEMA, SFT_SCHEMA, FTConfig, rl_row, sft_row, write_parquet

    cfg = FTConfig(seed=c.seed)
    rng = random.Random(c.seed)
    sft = _defective_scenes(str(work / "data/sft"), c.sft_images, 1000 + c.seed, c.image_size)
    for i, s in enumerate(sft):
        says_yes = i % 2 == 0
        s.mode, s.difficulty = "thinking", "easy"
        s.target = render(
            think="I inspect the part.", answer="yes" if says_yes else "no", initial="yes" if says_yes else "no",
            types=[d.type for d in s.defects] if says_yes else (), boxes=[d.box for d in s.defects] if says_yes else (),
        )  # fmt: skip
    rng.shuffle(sft)
    rl = _defective_scenes(str(work / "data/rl"), c.rl_images, 2000 + c.seed, c.image_size)
    heldout = _defective_scenes(str(work / "data/heldout"), c.heldout_images, 3000 + c.seed, c.image_size)
    write_parquet(str(work / "sft.parquet"), (sft_row(s, cfg) for s in sft), SFT_SCHEMA)
    write_parquet(str(work / "rl.parquet"), (rl_row(s, i, cfg) for i, s in enumerate(rl)), RL_SCHEMA)
    (work / "heldout.json").write_text(json.dumps([s.id for s in heldout]))
    return {"sft": str(work / "sft.parquet"), "rl": str(work / "rl.parquet"), "heldout": str(work / "data/heldout")}


def answer_accuracy(model: str, dataset: str, samples: int, max_new_tokens: int, seed: int) -> float:
    """Share of sampled answers (temperature 1) that match the truth, over every image of ``dataset``."""
    from m3ad_rl.core.output_format import parse
    from m3ad_rl.core.prompts import question
    from m3ad_rl.data.store import iter_samples
    from m3ad_rl.engines import make_engine
    from m3ad_rl.engines.base import GenerationRequest, SamplingParams

    rows = list(iter_samples(dataset))
    engine = make_engine("hf", model)
    try:
        requests = [GenerationRequest(s.id, question(False), s.image_bytes()) for s in rows]
        params = SamplingParams(n=samples, temperature=1.0, max_new_tokens=max_new_tokens, seed=seed, logprobs=False)
        outs = engine.generate(requests, params)
    finally:
        engine.close()
    truth = {s.id: ("yes" if s.anomalous else "no") for s in rows}
    hits = [parse(c.text).answer == truth[r.id] for r, group in zip(requests, outs, strict=True) for c in group]
    return sum(hits) / max(len(hits), 1)


def run_learning_check(
    work: str | Path, check: LearningCheck | None = None, sft_from: str | Path | None = None
) -> LearningResult:
    """Build the task under ``work``, SFT the weak start, measure, run RCRL, measure again.

    ``sft_from``: the ``work`` of an earlier check with the same seed and SFT sizes, whose weak start
    this one takes instead of training its own (the same recipe and seed); the sabotage checks share
    the seed-0 check's, which saves each of them its SFT."""
    import ray

    c = check or LearningCheck()
    if c.sabotage not in (None, *SABOTAGES):
        raise ValueError(f"sabotage={c.sabotage!r}; choose one of {', '.join(SABOTAGES)}")
    if sft_from is not None:  # before anything is built
        made = json.loads((Path(sft_from) / "sft-start.json").read_text())
        if made != _sft_key(c):
            raise ValueError(f"sft_from={sft_from} was trained for {made}, this check needs {_sft_key(c)}")
    work = Path(work).absolute()
    work.mkdir(parents=True, exist_ok=True)
    started = not ray.is_initialized()
    try:
        return _run(work, c, Path(sft_from) if sft_from is not None else None)
    finally:
        if started:  # leave the process as it was (a test session, a notebook)
            ray.shutdown()


def _sft_key(c: LearningCheck) -> dict:
    """What the weak start depends on."""
    return {k: getattr(c, k) for k in ("seed", "image_size", "sft_images", "sft_steps")}


def _run(work: Path, c: LearningCheck, sft_from: Path | None = None) -> LearningResult:
    from m3ad_rl.engines.base import SamplingParams
    from m3ad_rl.models.tiny import TinySpec, write_tiny
    from m3ad_rl.train import rcrl
    from m3ad_rl.train.ray_setup import init_ray
    from m3ad_rl.train.rcrl.config import ActorConfig, CheckpointConfig, RolloutConfig
    from m3ad_rl.train.sft import SFTConfig
    from m3ad_rl.train.sft import run as run_sft
    from rewards import load_reward_config

    sets = _write_sets(work, c)
    init_ray(None, 8)  # room for SFT now and, later, RCRL's actor, rollout and reward workers together
    if sft_from is not None:
        sft = {"model": str(sft_from / "sft" / "model")}
    else:
        write_tiny(str(work / "tiny"), TinySpec(seed=c.seed), overwrite=True)
        sft = run_sft(SFTConfig(model=str(work / "tiny"), data=sets["sft"], out=str(work / "sft"), seed=c.seed,
                                max_steps=c.sft_steps, epochs=20, grad_accum=1, micro_batch=2,
                                optim={"lr": 3e-3, "warmup_steps": 4}), overwrite=True)  # fmt: skip
        (work / "sft-start.json").write_text(json.dumps(_sft_key(c)))
    result = LearningResult(c)
    result.accuracy_before = answer_accuracy(sft["model"], sets["heldout"], c.heldout_samples, c.max_new_tokens, c.seed)
    cfg = rcrl.RCRLConfig(
        model=sft["model"], data=sets["rl"], out=str(work / "rcrl"), seed=c.seed, steps=c.rcrl_steps,
        batch_prompts=c.batch_prompts,
        rollout=RolloutConfig(sampling=SamplingParams(n=c.n, temperature=1.0, max_new_tokens=c.max_new_tokens,
                                                      logprobs=False)),
        actor=ActorConfig(optim={"lr": 1e-12 if c.sabotage == "zero_lr" else c.lr, "zero_stage": 2}),
        checkpoint=CheckpointConfig(every=c.rcrl_steps, keep=1),
        # the task is the answer: λc = 0, so a well-formed "no" does not pay as much as a right "yes"
        reward=load_reward_config(overrides=["weights.consistency=0"]),
    )  # fmt: skip
    with _sabotaged(c.sabotage):
        out = rcrl.run(cfg, progress=False, overwrite=True)
    result.rewards = [h["reward/score"] for h in out["history"]]
    result.accuracy_after = answer_accuracy(out["model"], sets["heldout"], c.heldout_samples, c.max_new_tokens, c.seed)
    (work / "result.json").write_text(json.dumps({**asdict(result), "climb": result.climb, "passed": result.passed},
                                                 indent=1))  # fmt: skip
    return result


class _sabotaged:
    """Break the loop on purpose (driver side, where the controller runs): the check must then fail."""

    def __init__(self, sabotage: str | None):
        self.sabotage, self.undo = sabotage, []

    def __enter__(self):
        from m3ad_rl.train.rcrl.trainer import RCRLTrainer

        if self.sabotage == "advantage_sign":
            original = RCRLTrainer.compute_advantage

            def flipped(trainer, batch, scores):
                return original(trainer, batch, -scores)

            self._patch(RCRLTrainer, "compute_advantage", flipped)
        elif self.sabotage == "no_weight_push":
            self._patch(RCRLTrainer, "_sync_weights", lambda trainer: None)
        return self

    def _patch(self, owner, name, value):
        self.undo.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    def __exit__(self, *exc):
        for owner, name, value in reversed(self.undo):
            setattr(owner, name, value)
