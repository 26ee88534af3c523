"""RCRL's settings: every field documented here; YAML files only set values."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from m3ad_rl.engines.base import SamplingParams
from m3ad_rl.train.deepspeed_engine import OptimConfig
from m3ad_rl.train.grpo import GRPOConfig
from m3ad_rl.train.tracking import LoggingConfig
from rewards.config import RewardConfig


class RolloutConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    engine: Literal["hf", "vllm"] = Field("hf", description="hf on CPU; vllm on GPU.")
    workers: int = Field(1, ge=1, description="Rollout engine replicas (prompts are split between them).")
    threads: int = Field(1, ge=1, description="torch threads per rollout worker (CPU).")
    num_gpus: float = Field(0, ge=0, description="GPUs per rollout worker.")
    engine_kwargs: dict = Field(default_factory=dict, description="Passed to the engine (e.g. vLLM's).")
    sampling: SamplingParams = SamplingParams(n=4, temperature=1.0, top_p=1.0, max_new_tokens=512, logprobs=False)


class ActorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workers: int = Field(1, ge=1, description="Data-parallel DeepSpeed ranks.")
    nodes: int = Field(1, ge=1, description="Spread the ranks over this many nodes (workers/nodes per node).")
    threads: int = Field(1, ge=1, description="torch threads per rank (CPU).")
    use_gpu: bool = Field(False, description="One GPU per rank.")
    micro_batch_rows: int = Field(4, ge=1, description="Rows (prompt + response) per forward pass.")
    freeze: list[str] = Field(
        default_factory=list,
        description="Parameters the update leaves as they are (fnmatch on names, e.g. 'model.visual.*' keeps the "
        "vision tower the RAWS model sees with).",
    )
    share_prefix: bool | Literal["auto"] = Field(
        "auto",
        description="Run each prompt (and image) once per micro-batch and reuse its KV cache for the rows that "
        "continue it (GRPO's n samples), in the actor's and reference's log-prob passes; false: n full rows; "
        "auto: shared on CPU (faster there), full rows on GPU (5 % faster on an H200, 12 % more memory: "
        "docs/benchmarks.md). π_old, π and the reference always take the same path.",
    )
    fused_head: bool = Field(
        True,
        description="Log-probs through the vocabulary projection without keeping [tokens, vocabulary] logits for "
        "the backward; false: autograd keeps them (more memory).",
    )
    grad_in_forward: bool = Field(
        True,
        description="With fused_head: the head's gradients computed in the forward from each chunk's logits (the "
        "GRPO loss is a sum of per-token terms, so each token's upstream gradient is known there); false: the "
        "backward recomputes the logits (one [tokens, H] x [H, V] matmul more).",
    )
    ppo_mini_batch_prompts: int | None = Field(
        None, ge=1, description="Prompts per optimiser step (verl's ppo_mini_batch_size); default the whole batch."
    )
    ppo_epochs: int = Field(
        1, ge=1, description="Passes over each rollout batch (verl ppo_epochs, TRL num_iterations)."
    )
    optim: OptimConfig = OptimConfig(lr=1e-6, zero_stage=2)


class RefConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    colocate: bool = Field(True, description="Frozen copy inside the actor ranks; false: its own worker group.")
    in_update: bool = Field(
        True,
        description="Colocated, with one optimiser step per batch: the reference log-probs are computed inside "
        "the update call on the same micro-batches (one Ray round trip and one image-processor pass fewer); "
        "false: a separate reference pass first (verl's order). With grpo.kl_coef = 0 there is no reference.",
    )


class RewardServiceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(None, description="An already running service (e.g. the RayService); else deploy one.")
    replicas: int = Field(1, ge=1, description="Replicas of the deployed service.")
    http_port: int | None = Field(
        None, description="Also expose the deployed service over HTTP on this port, at /rewards-<run>-<hash>."
    )


class CheckpointConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    every: int = Field(50, ge=1, description="Save every N steps (and at the last step).")
    keep: int = Field(3, ge=0, description="Complete checkpoints kept (0: all).")
    dir: str | None = Field(None, description="fsspec URL; default {out}/checkpoints.")


class RCRLConfig(BaseModel):
    """One RCRL run. Every field is documented here; YAML files only set values."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., description="HF model folder: the RAWS SFT model (actor init and reference).")
    data: str = Field(..., description="rl.parquet (verl layout, from `m3ad-rl data build-ft`).")
    out: str = Field(..., description="Run folder: metrics.jsonl, tensorboard/, checkpoints/, model/.")
    seed: int = 0
    steps: int = Field(..., ge=1, description="Optimiser steps (one rollout batch each).")
    batch_prompts: int = Field(8, ge=1, description="Prompts per step; rows = batch_prompts × sampling.n.")
    address: str | None = Field(None, description="Ray address (default: start local Ray).")
    num_cpus: int | None = Field(None, description="Logical CPUs for a local Ray (default: enough for all workers).")
    rollout: RolloutConfig = RolloutConfig()
    actor: ActorConfig = ActorConfig()
    ref: RefConfig = RefConfig()
    grpo: GRPOConfig = GRPOConfig()
    reward: RewardConfig = RewardConfig()
    reward_service: RewardServiceConfig = RewardServiceConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    logging: LoggingConfig = LoggingConfig()
    length_check: Literal["refuse", "warn", "off"] = Field(
        "refuse",
        description="rollout.sampling.max_new_tokens below the longest SFT target (the model's m3ad_lengths.json, "
        "else lengths.json beside data): refuse to start, warn, or say nothing (m3ad_rl.data.lengths).",
    )

    @model_validator(mode="after")
    def _divisible(self) -> RCRLConfig:
        if self.rollout.sampling.n < 2:
            raise ValueError(f"rollout.sampling.n={self.rollout.sampling.n}: GRPO compares each response with the "
                             "others of its prompt's group, so a group of one has no advantage and nothing is "
                             "learned; use n ≥ 2 (SPEC §6: 4)")  # fmt: skip
        rows = self.batch_prompts * self.rollout.sampling.n
        if self.actor.workers % self.actor.nodes:
            raise ValueError(f"actor.workers={self.actor.workers} must be a multiple of actor.nodes={self.actor.nodes}")
        mini = self.actor.ppo_mini_batch_prompts or self.batch_prompts
        if self.batch_prompts % mini or (rows // self.actor.workers) % (self.batch_prompts // mini):
            raise ValueError(
                f"actor.ppo_mini_batch_prompts={mini} must divide batch_prompts={self.batch_prompts}, and each "
                f"rank's {rows // max(self.actor.workers, 1)} rows must split into {self.batch_prompts // mini} "
                "equal mini-batches"
            )
        if rows % self.actor.workers:
            raise ValueError(
                f"batch_prompts × rollout.sampling.n = {rows} rows must divide among actor.workers="
                f"{self.actor.workers}; set batch_prompts to a multiple of {self.actor.workers}"
            )
        return self

    @property
    def mini_batches(self) -> int:
        return self.batch_prompts // (self.actor.ppo_mini_batch_prompts or self.batch_prompts)

    @property
    def ref_in_update(self) -> bool:
        """The reference pass runs inside the actor's update call (see ``RefConfig.in_update``)."""
        one_step = self.optimizer_steps_per_batch == 1
        return self.grpo.kl_coef > 0 and self.ref.colocate and self.ref.in_update and one_step

    @property
    def optimizer_steps_per_batch(self) -> int:
        return self.mini_batches * self.actor.ppo_epochs

    @property
    def checkpoint_root(self) -> str:
        return self.checkpoint.dir or f"{self.out.rstrip('/')}/checkpoints"
