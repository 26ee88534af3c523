"""An RCRL run gets its ranks and rollout workers all at once or not at all (cluster.reserve), so runs that
share a cluster wait for each other instead of each holding part of it forever: four sweep variants on
8 CPUs once took four actors and four rollout workers, and no reward replica could start."""

from __future__ import annotations

import threading
import time

import pytest

ray = pytest.importorskip("ray")

BASE = {"model": "m", "data": "d", "out": "o", "steps": 1, "batch_prompts": 4}


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    ray.init(num_cpus=6, num_gpus=5, include_dashboard=False, _temp_dir=str(tmp_path_factory.mktemp("ray")))
    yield
    ray.shutdown()


def _bundles(pg) -> list[dict]:
    return list(ray.util.placement_group_table(pg)["bundles"].values())


def test_a_run_that_does_not_fit_waits_holding_nothing_and_says_why(local_ray):
    from m3ad_rl.train.rcrl import RCRLConfig
    from m3ad_rl.train.rcrl.cluster import reserve

    cfg = RCRLConfig(**BASE, actor={"workers": 2}, rollout={"workers": 2})  # 4 CPUs a run, 6 in the cluster
    first, _ = reserve(cfg, "run-a")
    assert ray.available_resources()["CPU"] == 2
    got, logs = [], []
    waiter = threading.Thread(target=lambda: got.append(reserve(cfg, "run-b", log=logs.append, every=0.2)))
    waiter.start()
    try:
        deadline = time.time() + 30
        while not logs and time.time() < deadline:
            time.sleep(0.1)
        assert logs and "waiting" in logs[0] and "'CPU': 4.0" in logs[0] and "'CPU': 2.0" in logs[0], logs
        time.sleep(0.5)
        assert ray.available_resources()["CPU"] == 2  # the waiting run took none of the 2 free CPUs
        assert not got
    finally:
        ray.util.remove_placement_group(first)  # the first run ends: the second gets everything
        waiter.join(30)
    assert got, "the second run never got its workers"
    second, where = got[0]
    assert where == {"actor": 0, "rollout": 2}
    ray.util.remove_placement_group(second)


def test_the_group_holds_each_role_in_its_own_bundles(local_ray):
    from m3ad_rl.train.rcrl import RCRLConfig
    from m3ad_rl.train.rcrl.cluster import reserve

    cfg = RCRLConfig(**BASE, actor={"workers": 2, "use_gpu": True}, ref={"colocate": False},
                     rollout={"workers": 1, "num_gpus": 0.5})  # fmt: skip
    pg, first = reserve(cfg, "layout")
    try:
        assert first == {"actor": 0, "ref": 2, "rollout": 4}
        assert _bundles(pg) == [{"CPU": 1.0, "GPU": 1.0}] * 4 + [{"CPU": 1.0, "GPU": 0.5}]
    finally:
        ray.util.remove_placement_group(pg)
    # β = 0 loads no reference; ranks spread over nodes get their own per-node groups
    pg, first = reserve(cfg.model_copy(update={"grpo": cfg.grpo.model_copy(update={"kl_coef": 0.0})}), "no-ref")
    assert first == {"actor": 0, "rollout": 2} and len(_bundles(pg)) == 3
    ray.util.remove_placement_group(pg)
    spread = cfg.model_copy(update={"actor": cfg.actor.model_copy(update={"nodes": 2})})
    pg, first = reserve(spread, "spread")
    assert first == {"rollout": 0} and _bundles(pg) == [{"CPU": 1.0, "GPU": 0.5}]
    ray.util.remove_placement_group(pg)
