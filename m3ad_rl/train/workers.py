"""The RCRL worker groups: DeepSpeed actor/reference workers (verl ``Worker``) and rollout workers.

Rows travel in verl ``DataProto`` batches, response-aligned (``N`` rows = B prompts × n samples,
``L`` = longest response):

- ``batch``: ``responses`` [N, L] token ids, ``response_mask`` [N, L], and, when updating,
  ``old_log_probs`` / ``ref_log_probs`` / ``advantages`` [N, L];
- ``non_tensor_batch``: ``prompt`` (the user text) and ``image`` (encoded bytes), object arrays.

Each worker rebuilds its model inputs (chat template, image processor) from those, so images never
cross the wire as pixel tensors. The reference policy is either colocated in the actor workers
(a frozen copy, no optimiser) or a worker group of its own (``role="ref"``).
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import torch
from verl import DataProto
from verl.single_controller.base import Worker
from verl.single_controller.base.decorator import Dispatch, register

from m3ad_rl.core import storage
from m3ad_rl.engines.base import GenerationRequest, SamplingParams
from m3ad_rl.engines.weight_transfer import pack_state, unpack_state
from m3ad_rl.train.deepspeed_engine import OptimConfig, freeze, full_state_dict, init_distributed, make_engine
from m3ad_rl.train.grpo import GRPOConfig, grpo_loss
from m3ad_rl.train.logprobs import build_batch, response_log_probs, share_prefix_on


def load_policy(path: str, bf16: bool = False):
    """(model, processor) from a model reference (folder, hub id, ``hf://``, any storage URL)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from m3ad_rl.core.storage import local_model
    from m3ad_rl.models.patch_embed import linear_patch_embed
    from m3ad_rl.models.processor import quick_token_check

    path = local_model(path)
    dtype = torch.bfloat16 if bf16 else torch.float32
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype)
    linear_patch_embed(model)  # the same weights; a matmul instead of a slow Conv3d
    return model, quick_token_check(AutoProcessor.from_pretrained(path))


def _requests(data: DataProto) -> list[GenerationRequest]:
    nt = data.non_tensor_batch
    pairs = zip(nt["prompt"], nt["image"], strict=True)
    return [GenerationRequest(str(i), str(t), bytes(b)) for i, (t, b) in enumerate(pairs)]


def _responses(data: DataProto) -> list[list[int]]:
    ids, mask = data.batch["responses"], data.batch["response_mask"]
    return [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)]


def _pad(x: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, width - x.shape[1]))


class PolicyWorker(Worker):
    """One data-parallel rank of the actor (DeepSpeed engine) and/or the frozen reference policy.

    ``role``: ``actor`` (trainable), ``ref`` (frozen only) or ``actor_ref`` (both in one process).
    ``cfg`` keys: ``model``, ``optim`` (``OptimConfig``), ``grpo`` (``GRPOConfig``), ``temperature``,
    ``micro_batch_rows``, ``grad_accum``, ``total_steps``, ``threads``, ``seed``.
    """

    def __init__(self, cfg: dict, role: str = "actor_ref"):
        super().__init__()
        self.cfg, self.role = cfg, role
        self.optim = OptimConfig(**cfg.get("optim", {}))
        self.grpo = GRPOConfig(**cfg.get("grpo", {}))
        self.temperature = float(cfg.get("temperature", 1.0))
        self.micro = int(cfg.get("micro_batch_rows", 4))
        self.share = share_prefix_on(cfg.get("share_prefix", "auto"), torch.cuda.is_available())
        self.fused = bool(cfg.get("fused_head", True))
        self.grad_in_forward = bool(cfg.get("grad_in_forward", True))

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def init_model(self) -> None:
        torch.set_num_threads(int(self.cfg.get("threads", 1)))
        torch.manual_seed(int(self.cfg.get("seed", 0)))
        init_distributed()
        model, self.processor = load_policy(self.cfg["model"], self.optim.bf16)
        self.engine = self.ref = None
        if self.role in ("ref", "actor_ref"):
            self.ref, _ = load_policy(self.cfg["model"], self.optim.bf16)
            self.ref.eval().requires_grad_(False)
        if self.role in ("actor", "actor_ref"):
            model.config.use_cache = False
            freeze(model, self.cfg.get("freeze", []))
            self.engine = make_engine(
                model, self.optim, int(self.cfg.get("total_steps", 1)), self.micro, int(self.cfg.get("grad_accum", 1))
            )

    def _log_probs(self, model, data: DataProto, entropy: bool = False) -> dict[str, torch.Tensor]:
        reqs, resps = _requests(data), _responses(data)
        width = data.batch["responses"].shape[1]
        lps, ents = [], []
        with torch.inference_mode():
            for s in range(0, len(reqs), self.micro):
                b = build_batch(self.processor, reqs[s : s + self.micro], resps[s : s + self.micro])
                lp, ent = response_log_probs(
                    model, b, self.temperature, with_entropy=entropy, share_prefix=self.share, fused_head=self.fused
                )
                lps.append(_pad(lp, width))
                if entropy:
                    ents.append(_pad(ent, width))
        out = {"log_probs": torch.cat(lps)}
        if entropy:
            out["entropy"] = torch.cat(ents)
        return out

    @register(dispatch_mode=Dispatch.DP_COMPUTE_PROTO)
    def compute_log_prob(self, data: DataProto) -> DataProto:
        """π_old(token) of the sampled responses, and the per-token entropy."""
        self.engine.module.eval()
        out = self._log_probs(self.engine.module, data, entropy=True)
        return DataProto.from_dict({"old_log_probs": out["log_probs"], "entropy": out["entropy"]})

    @register(dispatch_mode=Dispatch.DP_COMPUTE_PROTO)
    def compute_ref_log_prob(self, data: DataProto) -> DataProto:
        """π_ref(token) under the frozen reference policy."""
        return DataProto.from_dict({"ref_log_probs": self._log_probs(self.ref, data)["log_probs"]})

    @register(dispatch_mode=Dispatch.DP_COMPUTE_PROTO)
    def update_actor(self, data: DataProto) -> DataProto:
        """``ppo_epochs`` passes over this rank's rows in ``mini_batches`` mini-batches, one optimiser step each.

        Every micro-batch's loss is its share of its mini-batch's loss aggregated over all ranks
        (verl's ``agg_loss`` with the mini-batch's token and sequence counts summed over ranks), so
        the micro-batch gradients are added (``scale_wrt_gas=False``) and DeepSpeed's average over
        ranks yields exactly the mini-batch loss's gradient, whatever the lengths and the split.
        """
        t0 = time.perf_counter()
        self.engine.module.train()
        reqs, resps = _requests(data), _responses(data)
        n_mini, epochs = int(self.cfg.get("mini_batches", 1)), int(self.cfg.get("ppo_epochs", 1))
        has_old = "old_log_probs" in data.batch.keys()  # noqa: SIM118 (TensorDict has no `in`)
        # π_old = π only while the weights are those that sampled: the first and only optimiser step.
        assert has_old or n_mini * epochs == 1, "more than one optimiser step per batch needs old_log_probs"
        # π_ref: given, or computed here on each micro-batch (colocated reference, one pass), or none (β = 0)
        has_ref = "ref_log_probs" in data.batch.keys()  # noqa: SIM118
        ref_here = not has_ref and self.ref is not None
        assert not ref_here or n_mini * epochs == 1, "the reference pass inside the update needs one optimiser step"
        t_ref = 0.0
        loss_mask = data.batch["loss_mask"] if "loss_mask" in data.batch.keys() else data.batch["response_mask"]  # noqa: SIM118
        grpo = self.grpo  # with this step's β when the controller sends one (an adaptive KL coefficient)
        if "kl_coef" in data.meta_info:
            grpo = grpo.model_copy(update={"kl_coef": float(data.meta_info["kl_coef"])})
        sums: dict[str, float] = {}
        n_micro = 0
        for _ in range(epochs):
            for rows in np.array_split(np.arange(len(reqs)), n_mini):
                info = self._global_batch_info(loss_mask[rows])
                for s in range(0, len(rows), self.micro):
                    idx = rows[s : s + self.micro]
                    b = build_batch(self.processor, [reqs[i] for i in idx], [resps[i] for i in idx])
                    ref = data.batch["ref_log_probs"][idx] if has_ref else None
                    if ref_here:  # the same built micro-batch as the actor's pass: no second processor run
                        t1 = time.perf_counter()
                        with torch.inference_mode():
                            ref, _ = response_log_probs(
                                self.ref, b, self.temperature, share_prefix=self.share, fused_head=self.fused
                            )
                        ref, t_ref = ref.clone(), t_ref + time.perf_counter() - t1  # clone: a normal tensor

                    def loss_of(lp, idx=idx, ref=ref, info=info, metrics=False):  # a sum of per-token terms
                        width = lp.shape[1]
                        old = data.batch["old_log_probs"][idx][:, :width] if has_old else lp.detach()
                        return grpo_loss(
                            lp, old, ref[:, :width] if ref is not None else None,
                            data.batch["advantages"][idx][:, :width], loss_mask[idx][:, :width].float(), grpo, info,
                            with_metrics=metrics,
                        )  # fmt: skip

                    lp, ent = response_log_probs(
                        self.engine.module, b, self.temperature, with_entropy=True, share_prefix=self.share,
                        fused_head=self.fused, loss_fn=(lambda x: loss_of(x)[0]) if self.grad_in_forward else None,
                    )  # fmt: skip
                    mask = loss_mask[idx][:, : lp.shape[1]].float()
                    loss, m = loss_of(lp, metrics=True)
                    self.engine.backward(loss, scale_wrt_gas=False)
                    self.engine.step()  # DeepSpeed steps the optimiser at the mini-batch's last micro-batch
                    n_micro += 1
                    m["actor/entropy"] = float((ent * mask).sum() / mask.sum().clamp(min=1))
                    for k, v in m.items():
                        sums[k] = sums.get(k, 0.0) + v
        metrics = {k: v / max(n_micro, 1) for k, v in sums.items()}
        for k in ("actor/pg_loss", "actor/kl_loss", "actor/loss"):  # micro-batch shares add up to the batch's
            metrics[k] = sums.get(k, 0.0) / (n_mini * epochs)  # the mean mini-batch loss (averaged over ranks later)
        metrics["actor/lr"] = float(self.engine.get_lr()[0])
        gn = self.engine.get_global_grad_norm()
        metrics["actor/grad_norm"] = float(gn) if gn is not None else 0.0
        metrics["actor/optimizer_steps"] = float(n_mini * epochs)
        metrics["timing/update_worker_s"] = time.perf_counter() - t0
        metrics["perf/actor_peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB
        if torch.cuda.is_available():
            metrics["perf/actor_peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
        if ref_here:
            metrics["timing/ref_in_update_s"] = t_ref
        return DataProto(meta_info={"metrics": metrics})

    def _global_batch_info(self, loss_mask: torch.Tensor) -> dict:
        """verl's ``global_batch_info`` for a mini-batch: its token and sequence counts summed over ranks."""
        import torch.distributed as dist

        counts = torch.tensor([float(loss_mask.sum()), float((loss_mask.sum(-1) > 0).sum())], dtype=torch.float64)
        world = dist.get_world_size() if dist.is_initialized() else 1
        if world > 1:
            dist.all_reduce(counts)
        return {
            "dp_size": world, "batch_num_tokens": max(float(counts[0]), 1.0),
            "global_batch_size": max(float(counts[1]), 1.0), "loss_scale_factor": self.cfg.get("loss_scale_factor"),
        }  # fmt: skip

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def state_dict(self) -> tuple[list, np.ndarray] | None:
        """The actor's full weights, packed (collective under ZeRO-3; rank 0 returns them)."""
        sd = full_state_dict(self.engine)
        return pack_state(sd) if self.rank == 0 else None

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def save_checkpoint(self, url: str, tag: str, client_state: dict) -> dict[str, int]:
        """This rank's DeepSpeed files (weights, optimiser, scheduler), written on its own disk and
        uploaded by this rank to ``url``; returns {relative name: size} of what it uploaded."""
        with tempfile.TemporaryDirectory(prefix="m3ad-ckpt-") as tmp:
            self.engine.save_checkpoint(tmp, tag=tag, client_state=client_state, save_latest=False)
            root = Path(tmp)
            files = {p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*") if p.is_file()}
            storage.upload_dir(tmp, url)
        return files

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def load_checkpoint(self, url: str, tag: str) -> dict:
        """Download what this rank reads of the checkpoint at ``url`` to its own disk, then load it."""
        stage3 = self.engine.zero_optimization_stage() == 3
        mine = f"zero_pp_rank_{self.rank}_"

        def needed(name: str) -> bool:  # ZeRO-3 reads only its own partition; ZeRO-1/2 read every rank's
            return not stage3 or "zero_pp_rank_" not in name or mine in name

        with tempfile.TemporaryDirectory(prefix="m3ad-ckpt-") as tmp:
            if not storage.download_dir(url, tmp, needed):
                raise FileNotFoundError(f"{url}: no checkpoint files")
            _, client_state = self.engine.load_checkpoint(tmp, tag=tag)
        return client_state or {}

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def save_model(self, url: str) -> None:
        """The current actor as an HF model folder (weights + processor) at ``url``, uploaded by rank 0."""
        sd = full_state_dict(self.engine)  # collective under ZeRO-3
        if self.rank == 0:
            with storage.staged_dir(url, clear=True) as d:
                self.engine.module.save_pretrained(str(d), state_dict=sd)
                self.processor.save_pretrained(str(d))


@ray.remote
class RolloutWorker:
    """An inference engine (HF on CPU, vLLM on GPU) that samples ``n`` responses per prompt and takes
    the actor's new weights after every update."""

    def __init__(self, kind: str, model: str, engine_kwargs: dict | None = None, threads: int = 1):
        from m3ad_rl.engines import make_engine

        torch.set_num_threads(threads)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.engine = make_engine(kind, model, **(engine_kwargs or {}))

    def generate(
        self, texts: list[str], images: list[bytes], params: dict, seeds: list[list[int]] | None = None
    ) -> list[list[dict]]:
        """``n`` samples per prompt; ``seeds[i][j]`` seeds sample j of prompt i (its own random stream)."""
        reqs = [GenerationRequest(str(i), t, b) for i, (t, b) in enumerate(zip(texts, images, strict=True))]
        outs = self.engine.generate(reqs, SamplingParams(**params), seeds=seeds)
        return [[{"text": c.text, "token_ids": list(c.token_ids), "finish_reason": c.finish_reason} for c in cs]
                for cs in outs]  # fmt: skip

    def load_weights(self, packed: tuple[list, np.ndarray]) -> int:
        """Replace the engine's weights (``pack_state`` form); returns how many tensors were loaded."""
        return self.engine.load_weights(unpack_state(packed))

    def named_sums(self) -> dict[str, float]:
        """{parameter name: sum of its values} of the engine's model (tied weights once), for tests."""
        return {k: float(v.double().sum()) for k, v in self.engine.model.named_parameters()}

    def fingerprint(self) -> float:
        """A number that changes when the weights do (for tests and logs)."""
        return self.engine.weights_fingerprint()
