"""Joining or starting Ray the same way for every job (SFT, RCRL, evaluation, the reward service, the demo)."""

from __future__ import annotations

import os


def worker_env() -> dict[str, str]:
    """Environment for every Ray worker: DeepSpeed's CPU accelerator when there is no GPU."""
    try:
        import torch

        gpu = torch.cuda.is_available()
    except ImportError:  # an evaluation over an HTTP endpoint needs no torch
        gpu = False
    env = {"TOKENIZERS_PARALLELISM": "false"}
    if not gpu:
        env["DS_ACCELERATOR"] = "cpu"
    return env


def init_ray(
    address: str | None = None, num_cpus: int | None = None, log_to_driver: bool = True, dashboard: bool | None = None
) -> None:
    """Connect to ``address`` or start local Ray with ``num_cpus`` logical CPUs (no-op if connected).

    Locally the logical CPUs may exceed the cores: the RCRL phases run one after another, so the
    rollout, actor and reward workers can share them as verl's colocated workers share GPUs.
    ``log_to_driver=False`` keeps workers' output out of a job's own (evaluation's progress bar).
    """
    import ray

    if ray.is_initialized():
        return
    joining = address or os.environ.get("RAY_ADDRESS")  # inside a RayJob, Ray sets RAY_ADDRESS
    kw = {} if joining else {"num_cpus": num_cpus, "include_dashboard": dashboard}
    ray.init(address=address, runtime_env={"env_vars": worker_env()}, log_to_driver=log_to_driver, **kw)
