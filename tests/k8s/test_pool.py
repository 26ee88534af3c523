"""The local autoscaling pool (m3ad_rl/k8s/pool.py): Ray's own autoscaler (v2) grows worker nodes of
the standing RayCluster manifest's types from zero when a job asks for CPUs, never beyond
``maxReplicas``, and lets them go after the idle timeout."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml

from m3ad_rl.k8s.pool import HEAD_TYPE, autoscaling_config

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "manifests" / "base" / "raycluster.autoscaler.yaml"


def test_node_types_come_from_the_manifest():
    cfg = autoscaling_config(MANIFEST, "127.0.0.2:6379", node_cpus=2)
    manifest = yaml.safe_load(MANIFEST.read_text())
    groups = {g["groupName"]: g for g in manifest["spec"]["workerGroupSpecs"]}
    types = cfg["available_node_types"]
    assert types[HEAD_TYPE]["resources"] == {"CPU": 0}
    assert set(types) - {HEAD_TYPE} == set(groups)
    for name, group in groups.items():
        gpus = float(group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
        assert types[name]["resources"] == {"CPU": 2, "GPU": gpus}
        assert (types[name]["min_workers"], types[name]["max_workers"]) == (group["minReplicas"], group["maxReplicas"])
    assert cfg["idle_timeout_minutes"] == manifest["spec"]["autoscalerOptions"]["idleTimeoutSeconds"] / 60
    assert cfg["provider"]["gcs_address"] == "127.0.0.2:6379"


def test_a_manifest_that_does_not_autoscale_is_one_line(tmp_path, capsys):
    from m3ad_rl.cli import main

    manifest = yaml.safe_load(MANIFEST.read_text())
    manifest["spec"]["enableInTreeAutoscaling"] = False
    (tmp_path / "rc.yaml").write_text(yaml.safe_dump(manifest))
    assert main(["cluster", "up", "--dir", str(tmp_path / "c"), "--workers", "0",
                 "--autoscaling", str(tmp_path / "rc.yaml")]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert "enableInTreeAutoscaling is off" in err and "\n" not in err and not (tmp_path / "c").exists()


@pytest.mark.slow
@pytest.mark.multinode
@pytest.mark.timeout(600)
@pytest.mark.skipif(os.geteuid() != 0, reason="private mount namespaces need root")
def test_the_pool_grows_from_zero_and_shrinks_back(tmp_path):
    from ray.job_submission import JobSubmissionClient

    from m3ad_rl.k8s.localcluster import LocalCluster

    manifest = yaml.safe_load(MANIFEST.read_text())
    manifest["spec"]["workerGroupSpecs"] = manifest["spec"]["workerGroupSpecs"][:1]  # rollout only,
    manifest["spec"]["workerGroupSpecs"][0]["maxReplicas"] = 2  # and at most 2 of them
    (tmp_path / "rc.yaml").write_text(yaml.safe_dump(manifest))
    idle = 15
    task = "lambda: (time.sleep(10), ray.get_runtime_context().get_node_id())[1]"
    code = ("import ray, time; ray.init(); "
            f"f = ray.remote(num_cpus=1, num_gpus=1)({task}); "
            "print('nodes', len(set(ray.get([f.remote() for _ in range(4)]))))")  # fmt: skip
    with LocalCluster(tmp_path / "pool", workers=0, bucket=None, autoscaling=tmp_path / "rc.yaml", node_cpus=1,
                      idle_timeout_s=idle, head_memory_mb=6144) as c:  # fmt: skip
        workers = lambda: [n for n in c.alive_nodes() if not n.get("is_head_node")]  # noqa: E731
        assert workers() == []  # minReplicas 0: nothing before there is work
        jobs = JobSubmissionClient(c.dashboard_url)
        sid = jobs.submit_job(entrypoint=f"python -c {json.dumps(code)}")
        seen, deadline = [], time.time() + 300
        while str(jobs.get_job_status(sid)).split(".")[-1] not in ("SUCCEEDED", "FAILED", "STOPPED"):
            assert time.time() < deadline, jobs.get_job_logs(sid)[-2000:]
            seen.append(len(workers()))
            time.sleep(2)
        logs = jobs.get_job_logs(sid)
        assert str(jobs.get_job_status(sid)).endswith("SUCCEEDED"), logs[-2000:]
        # 4 one-GPU tasks, rollout nodes have 1 GPU and max 2: the pool grew, but only to 2 nodes
        assert max(seen) == 2 and "nodes 2" in logs, (seen, logs[-500:])
        ended = time.time()
        while workers():
            assert time.time() - ended < idle + 60, f"still {len(workers())} node(s) after idle timeout + 60 s"
            time.sleep(2)
        print(f"nodes over time (every 2 s): {seen}; back to zero after {time.time() - ended:.0f} s")
