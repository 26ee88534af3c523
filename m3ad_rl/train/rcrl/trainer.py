"""RCRL: reflection-aware GRPO (paper §4.3, SPEC §3 and §6) with one controller driving worker groups.

    m3ad-rl train rcrl --config configs/train/rcrl-cpu.yaml [--reward-config configs/rewards/preset_b.yaml]
                       [--set steps=8 out=runs/rcrl] [--resume]

Each step reads like the algorithm (verl's order): generate (rollout workers, n samples per prompt)
→ reward (the Ray Serve reward service) → old log-prob (actor) → ref log-prob (reference) →
GRPO advantage → update (actor, KL-regularised clipped loss) → push weights to the rollout workers,
every phase timed. Checkpoints (actor weights, optimiser, scheduler, step, run settings,
reward config) go to ``{out}/checkpoints`` on any fsspec URL; ``--resume`` continues from the newest
complete one. The rows of step ``s`` and its sampling seed depend only on (seed, s), so a resumed run
redoes exactly the steps an uninterrupted one would.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from m3ad_rl.core import storage
from m3ad_rl.core.errors import LostWorkerError
from m3ad_rl.data.lengths import MODEL_LENGTHS_FILE, check_limit, find_lengths
from m3ad_rl.train.grpo import kl_controller
from m3ad_rl.train.ray_setup import cpu_worker_env
from m3ad_rl.train.rcrl.cluster import check_local_cpus, dead_actors, node_placement_groups, reserve
from m3ad_rl.train.rcrl.config import RCRLConfig
from m3ad_rl.train.rcrl.metrics import reward_metrics
from m3ad_rl.train.rcrl.prompts import PromptSet, image_bytes, prompt_text, sample_seeds
from m3ad_rl.train.rcrl.reward_client import RewardClient


class RCRLTrainer:
    """setup() → fit() → cleanup(); one method per phase."""

    def __init__(
        self, cfg: RCRLConfig, resume: bool = False, progress: bool = True, overwrite: bool = False, force: bool = False
    ):
        # Workers on other nodes (and in other folders) must see the same locations.
        cfg = cfg.model_copy(update={"model": storage.absolute_model(cfg.model), "data": storage.absolute(cfg.data),
                                     "out": storage.absolute(cfg.out)})  # fmt: skip
        self.cfg, self.resume, self.progress = cfg, resume, progress
        self.overwrite, self.force = overwrite, force
        self.step = 0
        self.reward: RewardClient | None = None
        self.tracker = None
        self.rollout: list = []
        self.actor = self.ref = None
        self._pools: list = []  # verl resource pools, whose placement groups cleanup() removes
        self._gang = None  # the placement group of the ranks and rollout workers (cluster.reserve)
        self._first: dict[str, int] = {}  # its first bundle per role
        self._resume_from: str | None = None
        self.lengths: tuple[dict, str] | None = None
        self.kl_ctrl = kl_controller(cfg.grpo)  # β of the KL term (fixed, or adaptive and checkpointed)

    # ---- setup -------------------------------------------------------------------------------
    def setup(self) -> None:
        from m3ad_rl.train.ray_setup import init_ray
        from m3ad_rl.train.tracking import Tracker

        cfg = self.cfg
        self.preflight()
        self.data = PromptSet(cfg.data, cfg.seed)
        placed = cfg.actor.workers * (1 + (not cfg.ref.colocate)) + cfg.rollout.workers  # 1 CPU each
        init_ray(cfg.address, cfg.num_cpus or max(placed + 2, 4))
        check_local_cpus(cfg.address, placed + 0.5)  # and the reward replica's 0.5
        # The small reward replica first, then every rank and rollout worker in one placement group:
        # runs sharing a cluster never each hold part of it while waiting for the rest.
        self._setup_reward()
        self._gang, self._first = reserve(cfg, f"m3ad-rcrl-{self.reward.app}",
                                          log=lambda m: print(m, file=sys.stderr, flush=True))  # fmt: skip
        self._setup_actor()
        self._setup_rollout()
        resumed = self._maybe_resume()
        self.tracker = Tracker(cfg.out, cfg.logging, Path(cfg.out).name, resume_step=resumed)
        self.tracker.log_params(cfg.model_dump(mode="json"))  # MLflow params / W&B config
        self._write_config()
        if resumed:
            print(f"resumed from step {resumed}: continuing at step {resumed + 1} of {cfg.steps}")
        self._sync_weights()

    RUN_FILES = ("checkpoints", "metrics.jsonl", "config.json", "model")

    def run_settings(self) -> dict:
        """What makes two runs the same run: a resume must match these (``--force`` accepts changes)."""
        c = self.cfg.model_dump(mode="json")
        return {k: c[k] for k in ("model", "data", "seed", "batch_prompts", "grpo", "reward")} | {
            "sampling": c["rollout"]["sampling"], "actor.workers": c["actor"]["workers"], "optim": c["actor"]["optim"],
            "ppo": [c["actor"]["ppo_mini_batch_prompts"], c["actor"]["ppo_epochs"]],
            **({"freeze": c["actor"]["freeze"]} if c["actor"]["freeze"] else {}),
        }  # fmt: skip

    def preflight(self) -> None:
        """Everything that can be checked before Ray and DeepSpeed start (seconds, not a minute)."""
        from m3ad_rl.core.outputs import RCRL_RUN, check_dir, claim_dir, require_lasting
        from m3ad_rl.train import preflight as pf

        cfg = self.cfg
        pf.check_model(cfg.model)
        pf.check_freeze(cfg.model, cfg.actor.freeze, "actor.freeze")
        pf.check_parquet(cfg.data, "rl")
        require_lasting(cfg.out, "out")
        old = check_dir(cfg.out, RCRL_RUN, inputs=[cfg.model, cfg.data], resume=self.resume, overwrite=self.overwrite,
                        resumable=True)  # fmt: skip
        pf.check_writable(cfg.out)
        self.lengths = find_lengths(model=cfg.model, data=cfg.data)
        check_limit(cfg.rollout.sampling.max_new_tokens, "rollout.sampling.max_new_tokens", self.lengths,
                    cfg.length_check)  # fmt: skip
        self._check_resume()
        # the output contract (core/outputs), once every check passed: a new or empty out, or this kind's own
        # run with --resume or --overwrite (its own entries removed then, nothing else); never over the inputs
        claim_dir(cfg.out, RCRL_RUN, checked=old)
        if not self.resume and cfg.checkpoint.dir and storage.exists(cfg.checkpoint_root):
            storage.remove(cfg.checkpoint_root)  # --overwrite (checked above)

    def _check_resume(self) -> None:
        """A fresh run: no checkpoints of another in checkpoint.dir (unless --overwrite); a resumed run: the
        same run, not finished; sets the checkpoint to resume from."""
        from m3ad_rl.core.errors import UsageError
        from m3ad_rl.train import checkpoint as ck
        from m3ad_rl.train import preflight as pf

        cfg = self.cfg
        if not self.resume:
            if cfg.checkpoint.dir and storage.exists(cfg.checkpoint_root) and not self.overwrite:
                raise UsageError(f"checkpoint.dir={cfg.checkpoint.dir} already holds checkpoints",
                                 "continue the run with --resume, start over with --overwrite, or choose "
                                 "another checkpoint.dir")  # fmt: skip
            return
        found = ck.latest_complete(cfg.checkpoint_root)
        if found is None:
            return
        step, url = found
        state = json.loads(storage.read_text(f"{url}/trainer_state.json"))
        if step >= cfg.steps:
            raise UsageError(f"out={cfg.out}: the run is finished (checkpoint at step {step} of steps={cfg.steps})",
                             "raise steps to train further, or choose another out")  # fmt: skip
        changed = pf.differing(state.get("settings", {}), self.run_settings()) if "settings" in state else []
        if changed and not self.force:
            raise UsageError(f"--resume: {url} is another run's checkpoint ({'; '.join(changed[:4])})",
                             "use the checkpoint's settings, another out, or --force to accept the change")  # fmt: skip
        if changed:
            print(f"warning: resuming with changed settings: {'; '.join(changed)}", file=sys.stderr)
        self._resume_from = url

    def _setup_actor(self) -> None:
        import ray
        from verl.single_controller.ray import RayClassWithInitArgs, RayResourcePool, RayWorkerGroup
        from verl.single_controller.ray.base import SubRayResourcePool

        from m3ad_rl.train.workers import PolicyWorker

        cfg, a = self.cfg, self.cfg.actor
        mini_rows = cfg.batch_prompts * cfg.rollout.sampling.n // a.workers // cfg.mini_batches  # per rank
        wcfg = {
            "model": cfg.model, "optim": a.optim.model_dump(), "grpo": cfg.grpo.model_dump(),
            "temperature": cfg.rollout.sampling.temperature or 1.0, "micro_batch_rows": a.micro_batch_rows,
            "share_prefix": a.share_prefix, "fused_head": a.fused_head, "grad_in_forward": a.grad_in_forward,
            "freeze": list(a.freeze),
            "grad_accum": max(1, -(-mini_rows // a.micro_batch_rows)),  # micro-batches per optimiser step
            "total_steps": cfg.steps * cfg.optimizer_steps_per_batch, "mini_batches": cfg.mini_batches,
            "ppo_epochs": a.ppo_epochs, "loss_scale_factor": cfg.rollout.sampling.max_new_tokens,
            "threads": a.threads, "seed": cfg.seed,
        }  # fmt: skip

        def group(role: str):
            if a.nodes > 1:
                pool = RayResourcePool([a.workers // a.nodes] * a.nodes, use_gpu=a.use_gpu, max_colocate_count=1)
                pool.pgs = node_placement_groups(a.workers // a.nodes, a.nodes, a.use_gpu, role)
                self._pools.append(pool)  # its placement groups outlive the workers unless removed (cleanup)
            else:  # bundles first[role] .. +workers of the run's group
                pool = SubRayResourcePool([self._gang], self._first["ref" if role == "ref" else "actor"], a.workers,
                                          process_on_nodes=[self._gang.bundle_count], use_gpu=a.use_gpu,
                                          max_colocate_count=1)  # fmt: skip
            return RayWorkerGroup(pool, RayClassWithInitArgs(cls=ray.remote(PolicyWorker), cfg=wcfg, role=role),
                                  worker_env=cpu_worker_env(a.use_gpu))  # fmt: skip

        use_ref = cfg.grpo.kl_coef > 0  # β = 0: no KL term, so no reference policy at all
        self.actor = group("actor_ref" if cfg.ref.colocate and use_ref else "actor")
        self.actor.init_model()
        self.ref = self.actor if use_ref else None
        if use_ref and not cfg.ref.colocate:
            self.ref = group("ref")
            self.ref.init_model()

    def _setup_rollout(self) -> None:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from m3ad_rl.train.workers import RolloutWorker

        r = self.cfg.rollout
        opts = {"num_cpus": 1, "num_gpus": r.num_gpus, "runtime_env": {"env_vars": cpu_worker_env(r.num_gpus > 0)}}
        self.rollout = [
            RolloutWorker.options(**opts, scheduling_strategy=PlacementGroupSchedulingStrategy(
                self._gang, placement_group_bundle_index=self._first["rollout"] + i)
            ).remote(r.engine, self.cfg.model, r.engine_kwargs, r.threads)
            for i in range(r.workers)
        ]  # fmt: skip

    def _setup_reward(self) -> None:
        sc = self.cfg.reward_service
        self.reward = RewardClient(self.cfg.reward, self.cfg.out, sc.url, sc.replicas, sc.http_port)

    def _write_config(self) -> None:
        import fsspec

        with fsspec.open(f"{self.cfg.out.rstrip('/')}/config.json", "w") as fh:
            json.dump(self.cfg.model_dump(mode="json"), fh, indent=2)

    # ---- the loop ----------------------------------------------------------------------------
    def fit(self) -> list[dict]:
        """Run steps ``step+1 .. cfg.steps``; returns the metrics of the steps run."""
        from tqdm import tqdm

        history = []
        bar = tqdm(range(self.step + 1, self.cfg.steps + 1), desc="RCRL", unit="step", disable=not self.progress)
        for step in bar:
            metrics = self.train_step(step)
            self.step = step
            if step % self.cfg.checkpoint.every == 0 or step == self.cfg.steps:
                with self.tracker.span("checkpoint", metrics):
                    self.save_checkpoint()
            self.tracker.log(step, metrics)
            history.append({"step": step, **metrics})
            bar.set_postfix(reward=f"{metrics['reward/score']:.3f}", kl=f"{metrics['actor/kl_loss']:.4f}")
        return history

    def train_step(self, step: int) -> dict[str, float]:
        t: dict[str, float] = {}
        tr = self.tracker
        t0 = time.perf_counter()
        with tr.span("step", None, step=step):
            rows = self.data.batch(step - 1, self.cfg.batch_prompts)
            with tr.span("generate", t):
                batch, texts = self.generate(rows, step)
            with tr.span("reward", t):
                scores, _, reward_metrics = self.compute_reward(rows, texts)
            if self.cfg.grpo.recompute_old_log_prob or self.cfg.optimizer_steps_per_batch > 1:
                with tr.span("old_log_prob", t):
                    batch = batch.union(self.actor.compute_log_prob(batch))
            if self.cfg.grpo.kl_coef > 0 and not self.cfg.ref_in_update:  # else: inside the update, or no KL
                with tr.span("ref", t):
                    batch = batch.union(self.ref.compute_ref_log_prob(batch))
            with tr.span("advantage", t):
                group_metrics = self.compute_advantage(batch, scores)
            with tr.span("update", t):
                update_metrics = self.update(batch)
            with tr.span("sync_weights", t):
                self._sync_weights()
        mask = batch.batch["response_mask"]
        if "entropy" in batch.batch.keys():  # noqa: SIM118 (TensorDict); π_old entropy, if it had a pass
            update_metrics["actor/entropy"] = float((batch.batch["entropy"] * mask).sum() / mask.sum().clamp(min=1))
        lengths = mask.sum(1).float()
        metrics = {
            **reward_metrics, **update_metrics, **group_metrics, **t,
            "response/length_mean": float(lengths.mean()), "response/length_max": float(lengths.max()),
            "response/clip_ratio": float((lengths >= self.cfg.rollout.sampling.max_new_tokens).float().mean()),
            "timing/step_s": time.perf_counter() - t0,
        }  # fmt: skip
        return metrics

    def generate(self, rows: list[dict], step: int):
        """n samples per prompt, prompts split over the rollout workers; rows ordered prompt by prompt."""
        import ray
        import torch
        from verl import DataProto

        sp = self.cfg.rollout.sampling
        seeds = sample_seeds(self.cfg.seed, step, len(rows), sp.n)
        parts = np.array_split(np.arange(len(rows)), len(self.rollout))
        futures = []
        for worker, idx in zip(self.rollout, parts, strict=True):
            if len(idx) == 0:
                continue
            futures.append(worker.generate.remote(
                [prompt_text(rows[i]) for i in idx], [image_bytes(rows[i]) for i in idx], sp.model_dump(),
                [seeds[i] for i in idx]))  # fmt: skip
        groups = [g for f in ray.get(futures) for g in f]
        comps = [c for g in groups for c in g]
        width = max(1, max(len(c["token_ids"]) for c in comps))
        ids = torch.zeros(len(comps), width, dtype=torch.long)
        mask = torch.zeros(len(comps), width)
        for i, c in enumerate(comps):
            ids[i, : len(c["token_ids"])] = torch.tensor(c["token_ids"], dtype=torch.long)
            mask[i, : len(c["token_ids"])] = 1
        truncated = torch.tensor([c["finish_reason"] == "length" for c in comps], dtype=torch.float32)
        rep = [r for r in rows for _ in range(sp.n)]
        batch = DataProto.from_dict(
            {"responses": ids, "response_mask": mask, "truncated": truncated},
            non_tensors={
                "prompt": np.array([prompt_text(r) for r in rep], dtype=object),
                "image": np.array([image_bytes(r) for r in rep], dtype=object),
                # the GRPO group: the prompt's place in this step (a row could appear twice across an epoch edge)
                "uid": np.array([str(i // sp.n) for i in range(len(rep))], dtype=object),
            },
        )
        return batch, [c["text"] for c in comps]

    def compute_reward(self, rows: list[dict], texts: list[str]):
        """Score every response with the reward service; returns (scores [N], parts, step metrics)."""
        n = self.cfg.rollout.sampling.n
        gts = [json.loads(r["reward_model"]["ground_truth"]) for r in rows for _ in range(n)]
        items = [
            {"id": str(i), "response": t, "ground_truth": gt,
             "image_size": [rows[i // n]["extra_info"]["width"], rows[i // n]["extra_info"]["height"]]}
            for i, (t, gt) in enumerate(zip(texts, gts, strict=True))
        ]  # fmt: skip
        parts = self.reward.score(items)
        scores = np.array([p["score"] for p in parts], dtype=np.float32)
        return scores, parts, reward_metrics(texts, gts, parts)

    def compute_advantage(self, batch, scores: np.ndarray) -> dict[str, float]:
        """GRPO advantages, and the loss mask after the optional filters; returns the group metrics."""
        import torch

        from m3ad_rl.train.grpo import equal_reward_groups, grpo_advantages, update_mask

        s, uid, g = torch.from_numpy(scores), batch.non_tensor_batch["uid"], self.cfg.grpo
        batch.batch["advantages"] = grpo_advantages(s, batch.batch["response_mask"], uid, g)
        batch.batch["loss_mask"] = update_mask(
            batch.batch["response_mask"], s, uid, batch.batch["truncated"], g, batch.batch["advantages"]
        )
        flat = equal_reward_groups(s, uid)
        n = self.cfg.rollout.sampling.n
        return {  # groups whose rewards are all equal carry no gradient under GRPO
            "groups/zero_variance": float(flat[::n].sum()), "groups/zero_variance_frac": float(flat[::n].mean()),
            "response/truncated_frac": float(batch.batch["truncated"].mean()),
            "response/in_update_frac": float((batch.batch["loss_mask"].sum(1) > 0).float().mean()),
        }  # fmt: skip

    def update(self, batch) -> dict[str, float]:
        """The actor's update with this step's β; an adaptive β then moves towards its KL target (verl)."""
        beta = float(self.kl_ctrl.value)
        batch.meta_info["kl_coef"] = beta
        out = self.actor.update_actor(batch)
        metrics = {k: float(np.mean(v)) for k, v in out.meta_info["metrics"].items()}
        self.kl_ctrl.update(metrics["actor/kl_loss"], len(batch))
        return {**metrics, "actor/kl_coef": beta}

    def _sync_weights(self) -> None:
        """Push the actor's weights to every rollout worker (through Ray's object store)."""
        import ray

        sd = ray.put(self.actor.state_dict()[0])
        ray.get([w.load_weights.remote(sd) for w in self.rollout])

    # ---- checkpoints -------------------------------------------------------------------------
    def save_checkpoint(self) -> str:
        """Each actor rank uploads its own shards; the driver adds its state, then the marker."""
        from m3ad_rl.train import checkpoint as ck

        url = ck.step_dir(self.cfg.checkpoint_root, self.step)
        storage.remove(url)  # a half-written folder of an earlier, killed attempt at this step
        # no RNG state or data position: every prompt and every random draw of step s derives from (seed, s)
        state = {"step": self.step, "reward_config": self.cfg.reward.model_dump(mode="json"),
                 "settings": self.run_settings(), "kl_coef": float(self.kl_ctrl.value)}  # fmt: skip
        files: dict[str, int] = {}
        for rank_files in self.actor.save_checkpoint(f"{url}/actor", "actor", {"step": self.step}):
            files.update({f"actor/{k}": v for k, v in rank_files.items()})
        text = json.dumps(state)
        storage.write_text(f"{url}/trainer_state.json", text)
        files["trainer_state.json"] = len(text.encode())
        ck.mark_complete(url, {"step": self.step, "time": time.time(), "ranks": self.cfg.actor.workers}, files)
        ck.prune(self.cfg.checkpoint_root, self.cfg.checkpoint.keep)
        return url

    def _maybe_resume(self) -> int:
        """Load the checkpoint ``preflight`` chose: every rank downloads what it needs itself."""
        if not self.resume or self._resume_from is None:
            if self.resume:
                print(f"--resume: no complete checkpoint under {self.cfg.checkpoint_root}; starting at step 1")
            return 0
        url = self._resume_from
        self.actor.load_checkpoint(f"{url}/actor", "actor")
        state = json.loads(storage.read_text(f"{url}/trainer_state.json"))
        self.step = int(state["step"])
        self.kl_ctrl.value = float(state.get("kl_coef", self.kl_ctrl.value))  # an adaptive β where it had got to
        return self.step

    def export_model(self) -> str:
        """The final actor as an HF model folder at ``{out}/model`` (rank 0 uploads it)."""
        url = f"{self.cfg.out.rstrip('/')}/model"
        self.actor.save_model(url)
        if self.lengths is not None:  # the policy still writes the targets SFT taught it
            storage.write_text(f"{url}/{MODEL_LENGTHS_FILE}", json.dumps(self.lengths[0], indent=1))
        return url

    def dead_workers(self, timeout: float = 60) -> list[str]:
        """This run's workers that died (asked after an error: did a node go?)."""
        named = [(f"actor rank {i}", w) for i, w in enumerate(self.actor.workers if self.actor else [])]
        if self.ref is not None and self.ref is not self.actor:
            named += [(f"reference rank {i}", w) for i, w in enumerate(self.ref.workers)]
        named += [(f"rollout worker {i}", w) for i, w in enumerate(self.rollout)]
        return dead_actors(named, timeout)

    def cleanup(self, after_error: bool = False) -> None:
        """Release what setup got this far. After an error (a lost node, say) each step is best effort and
        never replaces the error that stopped the run."""
        import ray

        groups = [g for g in {id(g): g for g in (self.actor, self.ref) if g is not None}.values()]
        steps = [("tracker", self.tracker and self.tracker.close),
                 ("reward service", self.reward and self.reward.close),
                 *[("rollout worker", lambda w=w: ray.kill(w)) for w in self.rollout],
                 *[("policy worker", lambda w=w: ray.kill(w)) for g in groups for w in g.workers],
                 *[("placement group", lambda pg=pg: ray.util.remove_placement_group(pg))
                   for pool in self._pools for pg in (getattr(pool, "pgs", None) or [])],
                 ("placement group", self._gang and (lambda: ray.util.remove_placement_group(self._gang)))]  # fmt: skip
        for what, step in steps:
            if not step:
                continue
            if not after_error:
                step()
                continue
            try:
                step()
            except Exception as e:
                print(f"warning: could not release the {what} after the error: {type(e).__name__}: {e}",
                      file=sys.stderr)  # fmt: skip


def run(
    cfg: RCRLConfig, resume: bool = False, progress: bool = True, overwrite: bool = False, force: bool = False
) -> dict:
    """The whole run; returns {"history": [...], "model": url}."""
    trainer = RCRLTrainer(cfg, resume=resume, progress=progress, overwrite=overwrite, force=force)
    try:
        trainer.setup()
        history = trainer.fit()
        model = trainer.export_model()
    except Exception as e:
        dead = _dead_workers(trainer)
        trainer.cleanup(after_error=True)
        if dead:
            raise LostWorkerError(f"{', '.join(dead)} died ({type(e).__name__})") from e
        raise
    except BaseException:
        trainer.cleanup(after_error=True)
        raise
    trainer.cleanup()
    return {"history": history, "model": model}


def _dead_workers(trainer: RCRLTrainer) -> list[str]:
    try:
        return trainer.dead_workers()
    except Exception:
        return []
