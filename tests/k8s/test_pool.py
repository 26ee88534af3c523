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


OK_TASK = "import ray, time; ray.init(); ray.get(ray.remote(num_cpus=1)(lambda: time.sleep(4)).remote())"
LOST_ONCE = (
    "import pathlib, sys, ray; ray.init(); flag = pathlib.Path('/tmp/m3ad-lost-once'); "
    "sys.exit(0) if flag.exists() else (flag.touch(), print('a Ray worker or node was lost'), sys.exit(4))"
)
HUGE = ("import ray; ray.init(); A = ray.remote(num_gpus=64)(type('A', (), {'f': lambda self: 1})); "
        "ray.get(A.remote().f.remote())")  # fmt: skip


@pytest.mark.slow
@pytest.mark.multinode
@pytest.mark.timeout(900)
@pytest.mark.skipif(os.geteuid() != 0, reason="private mount namespaces need root")
def test_the_sweep_controller_finishes_a_sweep_on_the_pool(tmp_path):
    """K at a time on a pool that grows from zero; a variant that lost its node is resubmitted (and its
    retry succeeds); one that asks for 64 GPUs of 1-GPU nodes is failed at once, not left pending; a
    second controller (the first one "killed" after one look) picks up without resubmitting anything."""
    from ray.job_submission import JobSubmissionClient

    from m3ad_rl.k8s.localcluster import LocalCluster
    from m3ad_rl.k8s.sweeprun import SweepRunner, Task

    manifest = yaml.safe_load(MANIFEST.read_text())
    manifest["spec"]["workerGroupSpecs"] = manifest["spec"]["workerGroupSpecs"][:1]
    manifest["spec"]["workerGroupSpecs"][0]["maxReplicas"] = 2
    (tmp_path / "rc.yaml").write_text(yaml.safe_dump(manifest))
    tasks = [Task(f"ok-{i}", f"python -c {json.dumps(OK_TASK)}") for i in range(3)]
    tasks += [Task("lost", f"python -c {json.dumps(LOST_ONCE)}"), Task("huge", f"python -c {json.dumps(HUGE)}")]
    types = {"rollout": {"CPU": 1, "GPU": 1}}
    with LocalCluster(tmp_path / "pool", workers=0, bucket=None, autoscaling=tmp_path / "rc.yaml", node_cpus=1,
                      idle_timeout_s=30, head_memory_mb=6144) as c:  # fmt: skip
        client = JobSubmissionClient(c.dashboard_url)
        lines: list[str] = []
        first = SweepRunner(client, tasks, "t", max_in_flight=2, retries=1, poll=2, node_types=types, log=lines.append)
        outcomes, done = first.step()  # one look, then the controller "dies"
        assert [o.state for o in outcomes].count("PENDING") == 2 and not done
        second = SweepRunner(client, tasks, "t", max_in_flight=2, retries=1, poll=2, node_types=types,
                             log=lines.append)  # fmt: skip
        outcomes = {o.name: o for o in second.run(timeout=240)}  # an infeasible one left pending hangs it
        print(*lines, sep="\n")
        assert {n: o.state for n, o in outcomes.items()} == {
            "ok-0": "SUCCEEDED", "ok-1": "SUCCEEDED", "ok-2": "SUCCEEDED", "lost": "SUCCEEDED", "huge": "INFEASIBLE"
        }  # fmt: skip
        assert outcomes["lost"].attempts == ["lost-t", "lost-t-r1"]
        assert "'GPU': 64.0" in outcomes["huge"].message and "rollout" in outcomes["huge"].message
        submitted = sorted(j.submission_id for j in client.list_jobs())
        assert submitted == sorted([f"{t.name}-t" for t in tasks] + ["lost-t-r1"])  # nothing twice
        assert any("waiting" in line for line in lines)  # K = 2: the others waited their turn
        assert max(n for _, n, _ in second.nodes) <= 2


PREPARE = (
    "m3ad-rl model tiny --out s3://m3ad-dev/models/tiny && "
    "m3ad-rl data synth --out s3://m3ad-dev/data/synth --n 24 && "
    "m3ad-rl data split --input s3://m3ad-dev/data/synth --out s3://m3ad-dev/data/split && "
    "m3ad-rl eval run --config /etc/m3ad/eval.yaml --model s3://m3ad-dev/models/tiny --engine hf --workers 1 "
    "--dataset s3://m3ad-dev/data/split/ft --out s3://m3ad-dev/base-on-ft --address auto && "
    "m3ad-rl data build-ft --input s3://m3ad-dev/data/split/ft "
    "--predictions s3://m3ad-dev/base-on-ft/predictions.jsonl --out s3://m3ad-dev/ft"
)
REWARDS = ["preset_a", "preset_b", "preset_c", "preset_d", "ablation_con1_acc0_ref1", "ablation_con0_acc1_ref1"]


def _worker_raylets(head_pid: int) -> list:
    """The raylets of the autoscaled nodes: in the head's mount namespace, not the head's own."""
    import psutil

    from m3ad_rl.k8s.pool import head_node_id

    ns = os.readlink(f"/proc/{head_pid}/ns/mnt")
    out = []
    for p in psutil.process_iter(["name"]):
        try:
            ours = p.info["name"] == "raylet" and os.readlink(f"/proc/{p.pid}/ns/mnt") == ns
            if ours and p.environ().get("RAY_OVERRIDE_NODE_ID_FOR_TESTING") != head_node_id():
                out.append(p)
        except (OSError, psutil.Error):
            continue
    return out


@pytest.mark.slow
@pytest.mark.multinode
@pytest.mark.timeout(1500)
@pytest.mark.skipif(os.geteuid() != 0, reason="private mount namespaces need root")
def test_a_sweep_on_an_autoscaling_pool_from_zero(tmp_path, monkeypatch):
    """Issue 22 end to end: six tiny RCRL variants through `m3ad-rl sweep run` on a pool of at most 2
    worker nodes that starts at zero; a worker node killed mid-sweep; every variant finishes with its
    report, and the pool is back to zero within the idle timeout + 60 s."""
    import subprocess
    import sys

    import fsspec
    from ray.job_submission import JobSubmissionClient

    from m3ad_rl.k8s.localcluster import LocalCluster

    manifest = yaml.safe_load(MANIFEST.read_text())
    manifest["spec"]["workerGroupSpecs"] = manifest["spec"]["workerGroupSpecs"][:1]  # one type, CPUs only
    group = manifest["spec"]["workerGroupSpecs"][0]
    group["maxReplicas"] = 2
    for block in ("limits", "requests"):
        group["template"]["spec"]["containers"][0]["resources"][block].pop("nvidia.com/gpu")
    (tmp_path / "rc.yaml").write_text(yaml.safe_dump(manifest))
    idle = 20
    sweep = yaml.safe_load((ROOT / "configs/sweeps/presets-dev.yaml").read_text())
    sweep.update(name="pool", model="s3://m3ad-dev/models/tiny", out="s3://m3ad-dev/sweeps/pool", eval_workers=1,
                 train_set={"steps": 2, "checkpoint.every": 1, "rollout.sampling.max_new_tokens": 48},
                 variants=[{"name": r.replace("ablation_", "").replace("_", "-"), "reward": f"configs/rewards/{r}.yaml"}
                           for r in REWARDS])  # fmt: skip
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    with LocalCluster(tmp_path / "pool", workers=0, autoscaling=tmp_path / "rc.yaml", node_cpus=3, idle_timeout_s=idle,
                      head_memory_mb=16384, config_dir=ROOT / "manifests/overlays/dev/config") as c:  # fmt: skip
        env = {**os.environ, **c.client_env()}
        for k, v in c.client_env().items():  # this process reads the reports from the same S3 (undone after)
            monkeypatch.setenv(k, v)
        jobs = JobSubmissionClient(c.dashboard_url)
        sid = jobs.submit_job(entrypoint=PREPARE)
        deadline = time.time() + 600
        while str(jobs.get_job_status(sid)).split(".")[-1] not in ("SUCCEEDED", "FAILED", "STOPPED"):
            assert time.time() < deadline
            time.sleep(3)
        assert str(jobs.get_job_status(sid)).endswith("SUCCEEDED"), jobs.get_job_logs(sid)[-3000:]
        start = time.time()
        run = subprocess.Popen(
            [sys.executable, "-m", "m3ad_rl.cli", "sweep", "run", "--config", str(tmp_path / "sweep.yaml"),
             "--address", c.dashboard_url, "--max-in-flight", "2", "--retries", "2", "--poll", "2",
             "--pool", str(tmp_path / "rc.yaml"), "--node-cpus", "3"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        fs = fsspec.filesystem("s3", skip_instance_cache=True)  # a cached one may point at an earlier test's S3
        killed = None
        while killed is None and run.poll() is None:  # kill a worker node once a variant has a checkpoint
            fs.invalidate_cache()  # s3fs caches listings: a stale one never shows the new checkpoint
            if fs.glob("m3ad-dev/sweeps/pool/*/checkpoints/step_000001/COMPLETE"):
                from ray.util.state import list_actors

                busy = {a.node_id for a in list_actors(address=c.dashboard_url, filters=[
                    ("class_name", "=", "PolicyWorker"), ("state", "=", "ALIVE")])}  # fmt: skip
                raylets = [p for p in _worker_raylets(c.nodes[0].proc.pid)
                           if p.environ().get("RAY_OVERRIDE_NODE_ID_FOR_TESTING") in busy]  # fmt: skip
                if raylets:  # a node that runs a variant's DeepSpeed rank
                    raylets[0].kill()
                    killed = time.time() - start
            time.sleep(1)
        out, _ = run.communicate(timeout=1200)
        print(out[-6000:])
        fs.invalidate_cache()  # the listings cached while polling predate every report
        took = time.time() - start
        assert run.returncode == 0, out[-4000:]
        assert killed is not None, "no worker node was killed: the sweep ended before any checkpoint"
        assert "lost a node; resubmitted" in out, out[-4000:]
        lines = [line for line in out.splitlines() if line.startswith("[")]
        assert any("waiting" in line for line in lines)  # K = 2: the others waited
        nodes = [int(line.split("; ")[1].split(" worker")[0]) for line in lines if "worker node(s)" in line]
        assert max(nodes) == 2 and max(nodes) <= group["maxReplicas"], nodes  # grew, never past maxReplicas
        for v in sweep["variants"]:
            assert fs.exists(f"m3ad-dev/sweeps/pool/{v['name']}/eval/report.json"), v["name"]
        assert "What it cost" in fs.cat("m3ad-dev/sweeps/pool/sweep.md").decode()
        if keep := os.environ.get("M3AD_KEEP_SWEEP"):  # the docs' plot and table come from this run
            for name in ("sweep.md", "sweep-nodes.png", "sweep-nodes.json", "sweep.png"):
                if fs.exists(f"m3ad-dev/sweeps/pool/{name}"):
                    fs.get(f"m3ad-dev/sweeps/pool/{name}", f"{keep}/{name}")
            with open(f"{keep}/run.log", "w") as f:
                f.write(out)
        ended = time.time()
        while [n for n in c.alive_nodes() if not n.get("is_head_node")]:
            assert time.time() - ended < idle + 60, "the pool did not shrink back to zero"
            time.sleep(2)
        print(f"sweep {took:.0f} s (a node killed at {killed:.0f} s); pool at zero {time.time() - ended:.0f} s later")
