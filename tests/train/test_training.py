"""RAWS SFT and RCRL for real: Ray Train + DeepSpeed workers, verl worker groups, the Ray Serve reward
service, rollout weight pushes, checkpoints, and a SIGKILL in the middle of a run.

The pipeline fixture runs once per session (synthetic data → FT sets → SFT on 2 Ray Train workers,
about 90 s); the RCRL runs start from its model so the rewards (and the updates) are not all zero.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("deepspeed")
ray = pytest.importorskip("ray")

from m3ad_rl.train.tracking import read_metrics  # noqa: E402

pytestmark = pytest.mark.slow  # end-to-end: `pytest -m 'not slow'` skips it

SFT_STEPS = 96


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory, tiny_model):
    """{"ft": FT folder, "sft": SFT run folder}, SFT trained on 2 Ray Train workers."""
    from m3ad_rl.data.store import iter_samples
    from m3ad_rl.train.sft import SFTConfig, run

    root = tmp_path_factory.mktemp("pipeline")
    _cli("data", "synth", "--out", str(root / "synth"), "--n", "24")
    with open(root / "preds.jsonl", "w") as fh:
        for i, s in enumerate(iter_samples(str(root / "synth"))):
            fh.write(json.dumps({"id": s.id, "answer": "yes" if i % 3 else "no"}) + "\n")
    _cli("data", "build-ft", "--input", str(root / "synth"), "--predictions", str(root / "preds.jsonl"),
         "--out", str(root / "ft"))  # fmt: skip
    cfg = SFTConfig(
        model=str(tiny_model), data=str(root / "ft/sft.parquet"), out=str(root / "sft"), workers=2,
        epochs=16, max_steps=SFT_STEPS, micro_batch=2, grad_accum=1,
        optim={"lr": 3e-3, "warmup_steps": 4, "schedule": "cosine"}, checkpoint={"every": 48},
    )  # fmt: skip
    before = signal.getsignal(signal.SIGINT)
    result = run(cfg)
    after = signal.getsignal(signal.SIGINT)
    ray.shutdown()
    return {"ft": root / "ft", "sft": root / "sft", "result": result, "root": root, "sigint": (before, after)}


def _cli(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "m3ad_rl.cli", *args], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_sft_learns_on_two_deepspeed_workers(pipeline):
    before, after = pipeline["sigint"]
    assert after is before, "Ray Train's SIGINT handler outlived the run: Ctrl-C in the next stage is swallowed"
    hist = pipeline["result"]["history"]
    assert [h["step"] for h in hist] == list(range(1, SFT_STEPS + 1))
    assert hist[-1]["sft/loss"] < 0.75 * hist[0]["sft/loss"]  # the response-token NLL went down
    lrs = [h["sft/lr"] for h in hist]
    assert lrs[1] > lrs[0] and lrs[-1] < max(lrs)  # warm-up, then cosine decay
    model = pipeline["sft"] / "model"
    assert (model / "model.safetensors").exists() and (model / "tokenizer.json").exists()
    ckpts = sorted(p for p in (pipeline["sft"] / "ray_train/sft").glob("checkpoint_*") if p.is_dir())
    assert ckpts, "Ray Train wrote no checkpoint"
    names = {p.name for p in ckpts[-1].rglob("*.pt")}
    assert {"zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"} <= names


def _rcrl_args(pipeline, out: Path, steps: int = 4, reward_url: str | None = None, model=None) -> list[str]:
    return [
        "train", "rcrl", "--no-progress", "--reward-config", "configs/rewards/preset_b.yaml", "--set",
        f"model={model or pipeline['sft'] / 'model'}", f"data={pipeline['ft'] / 'rl.parquet'}", f"out={out}",
        f"steps={steps}", "batch_prompts=4", "rollout.sampling.max_new_tokens=192", "checkpoint.every=2",
        "actor.optim.lr=3e-4", "seed=5", *([f"reward_service.url={reward_url}"] if reward_url else []),
        # the RL controls whose state a resume must restore: warm-up + cosine lr, an adaptive β
        "actor.optim.warmup_steps=2", "actor.optim.schedule=cosine", "grpo.kl_ctrl=adaptive",
        "grpo.kl_target=1e-6", "grpo.kl_horizon=16",
    ]  # fmt: skip


def _comparable(rows: list[dict]) -> list[dict]:
    return [
        {k: round(v, 5) for k, v in r.items() if not k.startswith(("timing/", "perf/"))} for r in rows
    ]  # measurements


REPO = Path(__file__).resolve().parents[2]


def test_rcrl_killed_mid_run_resumes_to_the_same_metrics(pipeline, tiny_model, tmp_path):
    """SIGKILL after step 2's checkpoint, then --resume: every step's metrics equal an uninterrupted run's.
    The policy starts from the random tiny model (the 96-step SFT model samples n identical responses,
    which carry no gradient) and the rewards come from the reward service's protocol with a length
    term (tests/helpers.py), so every step has a learning signal and the checkpoint restores a policy
    that really moved."""
    from rewards import load_reward_config
    from tests.helpers import shaped_reward_service

    with shaped_reward_service(load_reward_config(str(REPO / "configs/rewards/preset_b.yaml"))) as url:
        _killed_and_resumed(pipeline, tmp_path, url, tiny_model)


def _killed_and_resumed(pipeline, tmp_path, url: str, model) -> None:
    ray.shutdown()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ref_out, out = tmp_path / "uninterrupted", tmp_path / "killed"

    def cli(run_out: Path) -> list[str]:
        return [sys.executable, "-m", "m3ad_rl.cli", *_rcrl_args(pipeline, run_out, reward_url=url, model=model)]

    subprocess.run(cli(ref_out), cwd=REPO, env=env, check=True, capture_output=True, timeout=900)
    # the same run, SIGKILLed (driver and its local Ray) once step 2's checkpoint is complete
    proc = subprocess.Popen(cli(out), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    marker = out / "checkpoints/step_000002/COMPLETE"
    deadline = time.time() + 600
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert marker.exists(), "the run ended before its first checkpoint"
    assert not (out / "model").exists()  # it did not finish
    res = subprocess.run([*cli(out), "--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed from step" in res.stdout
    want, got = read_metrics(str(ref_out)), read_metrics(str(out))
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    assert _comparable(got) == _comparable(want)
    # the resume restored a policy that had moved: step 2's checkpointed weights differ from the SFT model's
    assert _weight_change(out / "checkpoints/step_000002", Path(model)) > 0
    assert all(r["groups/zero_variance"] < 4 for r in want[:2]), "no learning signal before the checkpoint"
    state = json.loads((out / "checkpoints/step_000004/trainer_state.json").read_text())
    assert state["step"] == 4 and state["reward_config"]["reflection"]["preset"] == "b"
    # warm-up then cosine: lr rises over 2 steps, then falls
    lrs, betas = [r["actor/lr"] for r in want], [r["actor/kl_coef"] for r in want]
    assert lrs[0] < lrs[1] and lrs[1] >= lrs[2] > lrs[3], lrs
    # the adaptive β follows each step's KL: down while π = π_ref (KL 0 < target), up once it moved
    kls = [r["actor/kl_loss"] for r in want]
    after = [*betas[1:], state["kl_coef"]]
    assert betas[0] == 0.01, betas
    for kl, before, now in zip(kls, betas, after, strict=True):
        assert (now > before) == (kl > 1e-6) and now != before, (kls, betas, state["kl_coef"])
    assert any(kl > 1e-6 for kl in kls), kls


def _weight_change(checkpoint: Path, model: Path) -> float:
    """Largest |Δ| between a checkpoint's actor weights and an HF model's."""
    import torch
    from safetensors.torch import load_file

    states = next(checkpoint.rglob("mp_rank_00_model_states.pt"))
    ckpt = torch.load(states, map_location="cpu", weights_only=False)["module"]
    base = load_file(model / "model.safetensors")
    common = [k for k in ckpt if k in base]
    assert common
    return max(float((ckpt[k].float() - base[k].float()).abs().max()) for k in common)


def test_half_written_checkpoint_is_never_taken(tmp_path):
    from m3ad_rl.train import checkpoint as ck

    root = str(tmp_path / "ckpt")
    for step, complete in ((2, True), (4, True), (6, False)):
        d = Path(ck.step_dir(root, step))
        d.mkdir(parents=True)
        (d / "weights.pt").write_bytes(b"x")
        if complete:
            ck.mark_complete(str(d), {"step": step})
    assert ck.latest_complete(root) == (4, ck.step_dir(root, 4))
    assert ck.prune(root, keep=1) == [2]
    assert ck.latest_complete(root)[0] == 4 and not Path(ck.step_dir(root, 2)).exists()
    assert ck.latest_complete(str(tmp_path / "none")) is None


def test_rollout_worker_generates_with_pushed_weights(tiny_model):
    """After load_weights the worker decodes exactly what a fresh engine holding the new weights
    decodes, and not what it decoded before."""
    import torch

    from m3ad_rl.core.prompts import question
    from m3ad_rl.engines import SamplingParams
    from m3ad_rl.engines.base import GenerationRequest
    from m3ad_rl.engines.hf import HFEngine
    from m3ad_rl.train.workers import RolloutWorker, pack_state

    ray.init(num_cpus=2, ignore_reinit_error=True)
    try:
        w = RolloutWorker.remote("hf", str(tiny_model))
        img = (REPO / "docs/images/synthetic-gallery.jpg").read_bytes()
        params = {"n": 1, "temperature": 0.0, "max_new_tokens": 12, "logprobs": False}
        before = ray.get(w.generate.remote([question()], [img], params))[0][0]["token_ids"]
        local = HFEngine(str(tiny_model))
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in local.model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
        expected = local.generate([GenerationRequest("x", question(), img)], SamplingParams(**params))[0][0].token_ids
        assert expected != before
        fp0 = ray.get(w.fingerprint.remote())
        sd = local.model.state_dict()
        assert ray.get(w.load_weights.remote(pack_state(sd))) == len(sd)
        assert ray.get(w.fingerprint.remote()) == pytest.approx(local.weights_fingerprint()) != fp0
        after = ray.get(w.generate.remote([question()], [img], params))[0][0]["token_ids"]
        assert after == expected
    finally:
        ray.shutdown()


def test_rcrl_config_errors_name_the_key(tmp_path):
    from m3ad_rl.core.config import ConfigError, load_config
    from m3ad_rl.train.rcrl import RCRLConfig

    base = ["model=m", "data=d", "out=o", "steps=1"]
    with pytest.raises(ConfigError, match=r"rollout\.engine"):
        load_config(RCRLConfig, None, [*base, "rollout.engine=tgi"])
    with pytest.raises(ConfigError, match=r"actor\.workers"):
        load_config(RCRLConfig, None, [*base, "batch_prompts=3", "rollout.sampling.n=3", "actor.workers=2"])
    cfg = load_config(RCRLConfig, None, base, sections={"reward": str(REPO / "configs/rewards/preset_c.yaml")})
    assert cfg.reward.reflection.preset == "c"


@pytest.mark.parametrize("path", sorted((REPO / "configs/train").glob("*.yaml")), ids=lambda p: p.name)
def test_every_training_config_loads(path):
    from m3ad_rl.core.config import load_config
    from m3ad_rl.train.rcrl import RCRLConfig
    from m3ad_rl.train.sft import SFTConfig

    cfg = load_config(SFTConfig if path.name.startswith("sft") else RCRLConfig, path)
    if path.name.startswith("rcrl") and "b." in path.name:  # the paper's runs: SPEC §6 values
        assert (cfg.rollout.sampling.n, cfg.rollout.sampling.temperature, cfg.grpo.kl_coef) == (4, 1.0, 0.01)
        assert cfg.actor.optim.lr == 1e-6 and cfg.grpo.kl_type == "low_var_kl"
    if path.name.startswith("sft") and "b." in path.name:
        assert (cfg.micro_batch, cfg.grad_accum, cfg.optim.lr, cfg.optim.warmup_steps) == (1, 2, 1e-5, 100)
        assert cfg.optim.schedule == "cosine"


@pytest.mark.parametrize("path", sorted((REPO / "configs/rewards").glob("*.yaml")), ids=lambda p: p.name)
def test_every_reward_variant_is_a_train_rcrl_reward_config(path):
    from m3ad_rl.core.config import load_config
    from m3ad_rl.train.rcrl import RCRLConfig
    from rewards.config import RewardConfig

    cfg = load_config(RCRLConfig, REPO / "configs/train/rcrl-cpu.yaml", sections={"reward": path})
    assert cfg.reward == load_config(RewardConfig, path)


def test_controller_update_with_minibatches_moves_clips_and_pushes_exact_weights(pipeline, tmp_path):
    """One RCRL step through the real controller with 2 mini-batches × 2 epochs (4 optimiser steps) and
    injected advantages: π_old comes from its own pass, the later optimiser steps see ratio ≠ 1 (clipped),
    and afterwards the rollout engine holds exactly the actor's weights (tied embedding counted once)."""
    import numpy as np

    from m3ad_rl.core.config import load_config
    from m3ad_rl.engines.weight_transfer import unpack_state
    from m3ad_rl.train.ray_setup import KEEP_FREED_MEMORY, worker_env
    from m3ad_rl.train.rcrl import RCRLConfig, RCRLTrainer

    ray.shutdown()  # a Ray started as a cluster's is (job environment without the allocator setting):
    ray.init(num_cpus=8, runtime_env={"env_vars": worker_env()})  # the CPU workers must get it themselves
    cfg = load_config(RCRLConfig, "configs/train/rcrl-cpu.yaml", [
        f"model={pipeline['sft'] / 'model'}", f"data={pipeline['ft'] / 'rl.parquet'}", f"out={tmp_path / 'run'}",
        "steps=1", "batch_prompts=4", "rollout.sampling.max_new_tokens=24", "actor.ppo_mini_batch_prompts=2",
        "actor.ppo_epochs=2", "actor.micro_batch_rows=4", "actor.optim.lr=5e-3", "logging.tensorboard=false",
    ])  # fmt: skip
    t = RCRLTrainer(cfg, progress=False)
    try:
        t.setup()
        for w in [*t.actor.workers, *t.rollout]:
            env = ray.get(w.__ray_call__.remote(lambda self: {k: os.environ.get(k) for k in KEEP_FREED_MEMORY}))
            assert env == KEEP_FREED_MEMORY, env
            pg = ray.get(w.__ray_call__.remote(lambda self: ray.util.get_current_placement_group().id.hex()))
            assert pg == t._gang.id.hex()  # every rank and rollout worker in the run's one group
        rows = t.data.batch(0, cfg.batch_prompts)
        batch, _ = t.generate(rows, 1)
        scores = np.random.default_rng(0).normal(size=len(batch)).astype(np.float32)  # a learning signal
        batch = batch.union(t.actor.compute_log_prob(batch))  # the separate π_old pass
        batch = batch.union(t.ref.compute_ref_log_prob(batch))
        t.compute_advantage(batch, scores)
        m = t.update(batch)
        assert m["actor/optimizer_steps"] == 4
        assert m["actor/pg_clipfrac"] > 0 and m["actor/ppo_kl"] != 0, m  # later steps saw a moved policy
        t._sync_weights()
        actor = unpack_state(t.actor.state_dict()[0])
        for w in t.rollout:
            sums = ray.get(w.named_sums.remote())
            assert sums and set(sums) <= set(actor)
            for k, v in sums.items():
                assert v == pytest.approx(float(actor[k].double().sum()), rel=1e-9, abs=1e-9), k
    finally:
        t.cleanup()
        left = [pg for pg in ray.util.placement_group_table().values() if pg["state"] != "REMOVED"]
        ray.shutdown()
    # a run leaves no placement group behind: each held a CPU, and reproduce's 7th RCRL stage in one process
    # waited forever for a CPU for its reward replica
    assert left == [], left


def test_one_optimiser_step_without_old_log_probs_is_exact_and_asserted():
    """The π_old shortcut (the update's own detached log-probs) is exact only for one optimiser step."""
    from m3ad_rl.train.rcrl import RCRLConfig

    base = {"model": "m", "data": "d", "out": "o", "steps": 1, "batch_prompts": 4}
    assert RCRLConfig(**base).optimizer_steps_per_batch == 1
    assert RCRLConfig(**base, actor={"ppo_mini_batch_prompts": 2}).optimizer_steps_per_batch == 2
    assert RCRLConfig(**base, actor={"ppo_epochs": 3}).optimizer_steps_per_batch == 3
    with pytest.raises(ValueError, match="ppo_mini_batch_prompts=3 must divide batch_prompts=4"):
        RCRLConfig(**base, actor={"ppo_mini_batch_prompts": 3})


def test_reference_inside_the_update_equals_a_separate_reference_pass_and_beta_zero_has_none(
    pipeline, tiny_model, tmp_path
):
    """``ref.in_update`` (the colocated reference runs on the update's own micro-batches) gives every step's
    metrics of the separate reference pass, KL included once the policy has moved; with β = 0 no
    reference pass runs at all and the KL term is zero."""
    from m3ad_rl.core.config import load_config
    from m3ad_rl.train.rcrl import RCRLConfig, run
    from rewards import load_reward_config
    from tests.helpers import shaped_reward_service

    ray.shutdown()

    def one(name: str, *extra: str) -> list[dict]:
        cfg = load_config(RCRLConfig, str(REPO / "configs/train/rcrl-cpu.yaml"), [
            f"model={tiny_model}", f"data={pipeline['ft'] / 'rl.parquet'}", f"out={tmp_path / name}", "steps=3",
            "batch_prompts=4", "rollout.sampling.max_new_tokens=24", "actor.optim.lr=3e-3", "seed=5",
            f"reward_service.url={url}", "logging.tensorboard=false", *extra,
        ])  # fmt: skip
        try:
            return run(cfg, progress=False)["history"]
        finally:
            ray.shutdown()

    with shaped_reward_service(load_reward_config(str(REPO / "configs/rewards/preset_b.yaml"))) as url:
        fused, separate = one("fused", "ref.in_update=true"), one("separate", "ref.in_update=false")
        no_ref = one("beta0", "grpo.kl_coef=0")
    assert all("timing/ref_s" not in r and "timing/ref_in_update_s" in r for r in fused)
    assert all("timing/ref_s" in r and "timing/ref_in_update_s" not in r for r in separate)
    assert _comparable(fused) == _comparable(separate)
    assert fused[-1]["actor/kl_loss"] > 1e-6, "the policy never moved away from the reference"
    assert all("timing/ref_s" not in r and "timing/ref_in_update_s" not in r for r in no_ref)
    assert all(r["actor/kl_loss"] == 0 for r in no_ref)
