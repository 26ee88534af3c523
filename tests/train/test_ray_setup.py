"""Worker environments: the CPU allocator setting where it helps, never on GPU workers, never over the user's."""

from __future__ import annotations

import os

import pytest

from m3ad_rl.train import ray_setup
from m3ad_rl.train.ray_setup import KEEP_FREED_MEMORY, cpu_worker_env, worker_env


@pytest.fixture
def clean_env(monkeypatch):
    for k in (*ray_setup._USER_ALLOCATOR_VARS, "M3AD_KEEP_FREED_MEMORY"):
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def test_cpu_workers_keep_freed_memory_gpu_workers_and_user_choices_are_left_alone(clean_env):
    assert cpu_worker_env(use_gpu=False) == KEEP_FREED_MEMORY
    assert cpu_worker_env(use_gpu=True) == {}
    users = {"MALLOC_TRIM_THRESHOLD_": "131072", "GLIBC_TUNABLES": "glibc.malloc.arena_max=2",
             "LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "M3AD_KEEP_FREED_MEMORY": "0"}  # fmt: skip
    for var, value in users.items():
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(var, value)
            assert cpu_worker_env(use_gpu=False) == {}, var


def test_the_job_environment_never_picks_the_deepspeed_accelerator():
    """A GPU-less head (the driver's pod) must not send DS_ACCELERATOR=cpu to GPU pods: each worker's
    ``init_distributed`` picks it from its own devices."""
    assert "DS_ACCELERATOR" not in worker_env()


def test_a_local_cpu_ray_gives_every_worker_the_setting_and_a_user_setting_wins(clean_env):
    """Started locally without a GPU, every worker (a plain task here) starts with the setting; with the
    user's own allocator variable in the job's runtime environment, no actor is given ours on top."""
    ray = pytest.importorskip("ray")
    ray.shutdown()
    try:
        ray_setup.init_ray(None, 2, dashboard=False)

        @ray.remote(num_cpus=0)
        def env():
            return {k: os.environ.get(k) for k in KEEP_FREED_MEMORY}

        assert ray.get(env.remote()) == KEEP_FREED_MEMORY
        ray.shutdown()
        ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"MALLOC_TRIM_THRESHOLD_": "4096"}})
        assert cpu_worker_env(use_gpu=False) == {}  # seen in the job's runtime environment
    finally:
        ray.shutdown()
