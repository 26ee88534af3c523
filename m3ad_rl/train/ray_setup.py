"""Joining or starting Ray the same way for every job (SFT, RCRL, evaluation, the reward service, the demo)."""

from __future__ import annotations

import os

# glibc's malloc hands freed memory back to the kernel (blocks above 32 MB are mmap'd and unmapped on free,
# the heap top is trimmed), so every training step faults the same memory in again. On a VM whose host
# reclaims freed guest pages that refault is slow and erratic: the RCRL update on the tiny model took
# 0.47-1.10 s instead of a steady 0.45 s (docs/benchmarks.md). CPU workers therefore keep what they freed
# (glibc's documented MALLOC_* variables: no mmap'd blocks, no trimming), as jemalloc or tcmalloc would.
KEEP_FREED_MEMORY = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}
_USER_ALLOCATOR_VARS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_",
                        "GLIBC_TUNABLES", "LD_PRELOAD")  # fmt: skip


def worker_env() -> dict[str, str]:
    """Environment for every Ray worker of a job. (DeepSpeed's accelerator is chosen in each worker by
    ``init_distributed`` from that worker's own devices: a GPU-less head must not choose it for GPU pods.)"""
    return {"TOKENIZERS_PARALLELISM": "false"}


def cpu_worker_env(use_gpu: bool) -> dict[str, str]:
    """Extra environment for a CPU worker process (none for a GPU one, whose host memory peaks once, at
    loading, and should go back): ``KEEP_FREED_MEMORY``, unless the user chose an allocator setting of
    their own (in this process's environment or the job's runtime environment), which then stays.
    ``M3AD_KEEP_FREED_MEMORY=0`` leaves glibc's defaults."""
    if use_gpu or os.environ.get("M3AD_KEEP_FREED_MEMORY", "1") == "0":
        return {}
    job: dict = {}
    try:
        import ray

        if ray.is_initialized():
            job = (ray.get_runtime_context().runtime_env or {}).get("env_vars") or {}
    except ImportError:
        pass
    if any(k in os.environ or k in job for k in _USER_ALLOCATOR_VARS):
        return {}
    return dict(KEEP_FREED_MEMORY)


def init_ray(
    address: str | None = None, num_cpus: int | None = None, log_to_driver: bool = True, dashboard: bool | None = None
) -> None:
    """Connect to ``address`` or start local Ray with ``num_cpus`` logical CPUs (no-op if connected).

    Locally the logical CPUs may exceed the cores: the RCRL phases run one after another, so the
    rollout, actor and reward workers can share them as verl's colocated workers share GPUs. A local
    Ray on a machine without a GPU gives every worker ``cpu_worker_env`` as well.
    ``log_to_driver=False`` keeps workers' output out of a job's own (evaluation's progress bar).
    """
    import ray

    if ray.is_initialized():
        return
    joining = address or os.environ.get("RAY_ADDRESS")  # inside a RayJob, Ray sets RAY_ADDRESS
    kw = {} if joining else {"num_cpus": num_cpus, "include_dashboard": dashboard}
    env = worker_env()
    if not joining:
        env.update(cpu_worker_env(_has_gpu()))
    ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=log_to_driver, **kw)


def _has_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # an evaluation over an HTTP endpoint needs no torch
        return False
