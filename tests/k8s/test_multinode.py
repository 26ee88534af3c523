"""The dev overlay's RayJobs on a cluster laid out like KubeRay's, with everything in S3.

A Ray head with 0 CPUs (where every job's driver runs), two worker nodes each in its own mount
namespace (private /tmp as its working directory, /dev/shm, home and torch-extensions folder: no
shared disk), each on its own loopback address (head 127.0.0.2, workers .3 and .4) and under its own
memory limit (a cgroup), the ConfigMap mounted at /etc/m3ad on every node, and a real S3 API (moto)
on 127.0.0.1. Every job's driver is checked to have run on the head, and RCRL's two DeepSpeed ranks
on the two different worker nodes. The entrypoints are the manifests' own, sent
through the Ray Jobs API as a RayJob's submitter sends them; only the ConfigMap's run lengths are
shrunk. Faults: SIGKILL of the RCRL driver, then the RayJob's retry; SIGKILL of a worker node's
raylet, then the retry once the node is back.

Slow (about 15 minutes on 2 cores): ``pytest -m "not multinode"`` skips it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import shaped_reward_service

ROOT = Path(__file__).resolve().parents[2]
DEV = ROOT / "manifests" / "overlays" / "dev"
BUCKET = "s3://m3ad-dev"

pytestmark = [
    pytest.mark.multinode,
    pytest.mark.slow,
    pytest.mark.timeout(3600),
    pytest.mark.skipif(os.geteuid() != 0, reason="private mount namespaces need root"),
]

# The ConfigMap's configs, shrunk in size only (steps, counts), never in kind.
SHRINK = {
    "sft.yaml": {"max_steps": 48, "checkpoint": {"every": 24, "keep": 2}},
    "rcrl.yaml": {"steps": 6, "batch_prompts": 4, "checkpoint": {"every": 2, "keep": 3},
                  "actor": {"workers": 2, "nodes": 2, "micro_batch_rows": 8},
                  "rollout": {"sampling": {"max_new_tokens": 96}}},
    "eval.yaml": {"sampling": {"max_new_tokens": 96}},
}  # fmt: skip


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out.get(k) or {}, v) if isinstance(v, dict) else v
    return out


def rendered_jobs() -> dict[str, str]:
    """RayJob name → entrypoint, from `kubectl kustomize manifests/overlays/dev`."""
    from m3ad_rl.k8s.validate import render_kustomization

    docs = [d for d in yaml.safe_load_all(render_kustomization(DEV)) if isinstance(d, dict)]
    return {d["metadata"]["name"]: " ".join(d["spec"]["entrypoint"].split()) for d in docs if d["kind"] == "RayJob"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from m3ad_rl.k8s.localcluster import LocalCluster

    configs = tmp_path_factory.mktemp("configmap")
    for f in sorted((DEV / "config").glob("*.yaml")):
        cfg = yaml.safe_load(f.read_text()) or {}
        (configs / f.name).write_text(yaml.safe_dump(_merge(cfg, SHRINK.get(f.name, {}))))
    from tests.pipeline.test_reproduce import TOY

    (configs / "reproduce-toy.yaml").write_text(yaml.safe_dump({**TOY, "seeds": [0]}))
    c = LocalCluster(tmp_path_factory.mktemp("cluster"), workers=2, cpus=4, config_dir=configs,
                     memory_mb=8192, head_memory_mb=6144)  # fmt: skip
    c.up()
    os.environ.update(c.client_env())  # this process reads the results from the same S3
    try:
        yield c
    finally:
        c.down()
        print(f"peak memory per node (MiB): {c.peak_memory_mb}", file=sys.stderr)
        for k in c.client_env():
            os.environ.pop(k, None)
        for n in c.root.glob("*.log"):
            print(f"--- {n.name} (tail)\n{n.read_text()[-1500:]}", file=sys.stderr)


class Jobs:
    """The Ray Jobs API, as a RayJob's submitter uses it."""

    def __init__(self, cluster):
        from ray.job_submission import JobSubmissionClient

        self.cluster = cluster
        self.client = JobSubmissionClient(cluster.dashboard_url)

    def submit(self, entrypoint: str) -> str:
        return self.client.submit_job(entrypoint=entrypoint)

    def wait(self, sid: str, timeout: float = 1200, until=("SUCCEEDED", "FAILED", "STOPPED")) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            status = str(self.client.get_job_status(sid)).split(".")[-1]
            if status in until:
                return status
            time.sleep(2)
        raise TimeoutError(f"job {sid} still not in {until} after {timeout} s\n{self.explain(sid)}")

    def run(self, entrypoint: str, timeout: float = 1200) -> str:
        sid = self.submit(entrypoint)
        status = self.wait(sid, timeout)
        logs = self.client.get_job_logs(sid)
        assert status == "SUCCEEDED", f"{entrypoint}\n{status}\n{logs[-6000:]}"
        self.last = sid
        driver = self.client.get_job_info(sid).driver_info
        assert driver is not None and driver.node_ip_address == self.cluster.head_ip, (entrypoint, driver)
        return logs

    def nodes_of(self, sid: str, class_name: str) -> list[str]:
        """The node addresses the job's actors of ``class_name`` ran on (Ray keeps dead actors' records)."""
        from ray.util.state import list_actors, list_nodes

        job_id = self.client.get_job_info(sid).job_id
        ips = {n.node_id: n.node_ip for n in list_nodes(address=self.cluster.dashboard_url, limit=1000)}
        actors = list_actors(address=self.cluster.dashboard_url, filters=[("job_id", "=", job_id)], limit=10000,
                             detail=True)  # fmt: skip
        found = [ips.get(a.node_id, a.node_id) for a in actors if class_name in (a.class_name or "")]
        assert found, f"no {class_name} actor in job {job_id}: {sorted({a.class_name for a in actors})}"
        return found

    def logs(self, sid: str) -> str:
        return self.client.get_job_logs(sid)

    def explain(self, sid: str, tail: int = 3000) -> str:
        """Why a job ended as it did: Ray's message and exit code, then the log's tail."""
        info = self.client.get_job_info(sid)
        return (f"status={info.status} exit_code={getattr(info, 'driver_exit_code', None)} message={info.message!r}\n"
                f"{self.logs(sid)[-tail:]}")  # fmt: skip

    def driver_pid(self, sid: str) -> int:
        deadline = time.time() + 120
        while time.time() < deadline:
            info = self.client.get_job_info(sid).driver_info
            if info is not None and info.pid:
                return int(info.pid)
            time.sleep(1)
        raise TimeoutError(f"job {sid} has no driver yet")


def kill_entrypoint(entrypoint: str) -> list[int]:
    """SIGKILL every process running exactly this entrypoint (the shell Ray starts and the driver in it)."""
    import psutil

    want = shlex.split(entrypoint)[1:]
    pids = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if (any(c.endswith("m3ad-rl") for c in cmd[:2]) and cmd[-len(want) :] == want) or entrypoint in " ".join(cmd):
            p.kill()
            pids.append(p.pid)
    assert pids, f"no process runs {entrypoint}"
    return pids


def s3():
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    return s3fs.S3FileSystem()


def wait_for(url: str, timeout: float = 900) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if s3().exists(url):
            return
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not appear in {timeout} s")


def metrics(url: str) -> list[dict]:
    with s3().open(url, "r") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def comparable(row: dict) -> dict:
    return {k: round(v, 5) for k, v in row.items() if not k.startswith(("timing/", "perf/")) and isinstance(v, float)}


def with_sets(entrypoint: str, **sets: str) -> str:
    """The same entrypoint with extra ``--set`` values after its own (the last value of a key wins)."""
    argv = shlex.split(entrypoint)
    i = argv.index("--set") + 1
    while i < len(argv) and not argv[i].startswith("--"):
        i += 1
    argv[i:i] = [f"{k}={v}" for k, v in sets.items()]
    return shlex.join(argv)


def test_nodes_are_isolated_like_pods(cluster):
    """Each node: its own address, mount namespace, working directory (/tmp), torch-extensions folder
    and memory limit, which Ray itself reads (as it reads a pod's)."""

    own_ns = os.readlink("/proc/self/ns/mnt")
    alive = {n["node_ip"]: n for n in cluster.alive_nodes()}
    assert sorted(alive) == [cluster.node_ip(i) for i in range(3)], sorted(alive)
    for i, node in enumerate(cluster.nodes):
        raylet = _raylet(node)
        assert raylet.cwd() == "/tmp" and os.readlink(f"/proc/{raylet.pid}/ns/mnt") != own_ns, node.name
        assert raylet.environ()["TORCH_EXTENSIONS_DIR"] == "/tmp/torch_extensions"
        limit = cluster.describe()["memory_limit_mb"]
        if limit:  # where cgroups can be written: Ray sizes the node from the limit, not the machine
            memory = alive[cluster.node_ip(i)]["resources_total"]["memory"] / 2**20
            assert memory < limit[node.name], (node.name, memory, limit)
    # each node's /tmp (its working directory, with its torch-extensions folder) is a file system of its own
    devices = {os.stat(f"/proc/{_raylet(n).pid}/root/tmp/torch_extensions").st_dev for n in cluster.nodes}
    assert len(devices) == len(cluster.nodes) and os.stat("/tmp").st_dev not in devices, devices


def _raylet(node):
    import psutil

    return next(p for p in psutil.Process(node.proc.pid).children(recursive=True) if "raylet" in p.name())


def test_an_environment_and_checkout_under_tmp_reach_every_node(tmp_path):
    """Issue 21: from a venv under /tmp (un-activated, with no `ray` script of its own) and a checkout
    under /tmp, nodes used to die with `ray: not found`; now both are bound into each node read-only."""
    venv, clone = tmp_path / "venv", tmp_path / "clone"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    subprocess.run(["cp", "-r", str(ROOT / "m3ad_rl"), str(clone)], check=True)  # the working tree, not HEAD
    script = clone / "probe.py"
    script.write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = "/usr/bin:/bin"  # not activated: the nodes must not need PATH to find ray or python
    res = subprocess.run([str(venv / "bin" / "python"), str(script), str(tmp_path / "cluster")], cwd=clone, env=env,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    lines = [line.split(" ", 1)[1] for line in res.stdout.splitlines() if line[:6] in ("driver", "task  ")]
    driver, task = map(json.loads, lines)
    assert driver == [str(venv / "bin" / "python"), str(clone / "m3ad_rl" / "__init__.py"), "/tmp", "127.0.0.2",
                      "read-only", "read-only"]  # fmt: skip
    assert task[:3] == driver[:3] and task[3:] == ["127.0.0.3", "read-only", "read-only"], task


PROBE = """\
import json, os, sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parent))  # the checkout on the import path, as an editable install
os.environ["PYTHONPATH"] = str(Path(__file__).parent)  # puts it for every process of this environment
from m3ad_rl.k8s.localcluster import LocalCluster
from ray.job_submission import JobSubmissionClient

code = (
    "import json, os, sys, ray, m3ad_rl; ray.init(); "
    "writable = lambda d: 'writable' if os.access(d, os.W_OK) else 'read-only'; "  # (EROFS even for root)
    "where = lambda: [sys.executable, m3ad_rl.__file__, os.getcwd(), ray.util.get_node_ip_address(), "
    "writable(os.path.dirname(sys.executable)), writable(os.path.dirname(m3ad_rl.__file__))]; "
    "print('driver', json.dumps(where())); "
    "print('task  ', json.dumps(ray.get(ray.remote(num_cpus=1)(where).remote())))"
)
with LocalCluster(Path(sys.argv[1]), workers=1, cpus=1, bucket=None, memory_mb=4096, head_memory_mb=4096) as c:
    jobs = JobSubmissionClient(c.dashboard_url)
    sid = jobs.submit_job(entrypoint=f"python -c {json.dumps(code)}")
    for _ in range(300):
        status = str(jobs.get_job_status(sid)).split(".")[-1]
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(1)
    logs = jobs.get_job_logs(sid)
    print("\\n".join(line for line in logs.splitlines() if line.startswith(("driver", "task  "))))
    sys.exit(0 if status == "SUCCEEDED" else f"{status}: {logs[-2000:]}")
"""


def test_dev_pipeline_on_multinode_cluster_with_s3(cluster):
    jobs = Jobs(cluster)
    entry = rendered_jobs()
    for name in ("m3ad-prepare", "m3ad-sft", "m3ad-rcrl", "m3ad-eval"):
        assert BUCKET in entry[name] and "/mnt/" not in entry[name], f"{name} does not use object storage"

    # prepare → sft: every input and output in S3, nothing on a shared disk
    jobs.run(entry["m3ad-prepare"])
    fs = s3()
    assert fs.exists(f"{BUCKET}/ft/rl.parquet") and fs.exists(f"{BUCKET}/models/tiny/config.json")
    jobs.run(entry["m3ad-sft"])
    assert fs.exists(f"{BUCKET}/sft/model/model.safetensors")

    # RCRL, uninterrupted (the reference), then the manifest's own job killed and retried. Rewards come
    # from the reward service's protocol with a length term, so the policy provably moves every step.
    with shaped_reward_service() as url:
        rcrl = with_sets(entry["m3ad-rcrl"], **{"reward_service.url": url})
        ref_out = f"{BUCKET}/rcrl-uninterrupted"
        jobs.run(with_sets(rcrl, out=ref_out))
        ranks = jobs.nodes_of(jobs.last, "PolicyWorker")  # actor.workers: 2, actor.nodes: 2
        print(f"DeepSpeed ranks ran on {ranks}")
        assert len(ranks) == 2 and set(ranks) == {cluster.node_ip(1), cluster.node_ip(2)}, ranks
        sid = jobs.submit(rcrl)
        jobs.driver_pid(sid)
        wait_for(f"{BUCKET}/rcrl/checkpoints/step_000002/COMPLETE")
        killed = kill_entrypoint(rcrl)  # mid-run: the driver dies, its actors with it
        assert jobs.wait(sid) == "FAILED", jobs.logs(sid)[-3000:]
        print(f"killed the RCRL driver {killed}; its log ends:\n{jobs.logs(sid)[-1500:]}")
        logs = jobs.run(rcrl)  # the RayJob's retry: same entrypoint, which has --resume
    resumed = re.search(r"resumed from step (\d+)", logs)
    assert resumed and int(resumed.group(1)) in (2, 4), logs[-3000:]  # killed before the end
    resumed = int(resumed.group(1))

    # the final checkpoint: every rank's shards uploaded by that rank, the marker listing them
    ckpt = f"{BUCKET}/rcrl/checkpoints/step_000006"
    names = sorted(p.split("step_000006/")[1] for p in fs.find(ckpt))
    print("checkpoint listing:", *names, sep="\n  ")
    listed = json.loads(fs.cat(f"{ckpt}/COMPLETE"))["files"]
    assert {n for n in names if n != "COMPLETE"} == set(listed)
    for rank in (0, 1):
        assert any(f"zero_pp_rank_{rank}_" in n for n in listed), f"rank {rank}'s optimiser shard is missing"
    assert "trainer_state.json" in listed and any("mp_rank_00_model_states" in n for n in listed)
    # the S3 server's own log: the marker is the last object written into the checkpoint
    puts = [line.split("PUT /", 1)[1].split()[0] for line in (cluster.root / "s3.log").read_text().splitlines()
            if "PUT /m3ad-dev/rcrl/checkpoints/step_000006/" in line]  # fmt: skip
    print("upload order:", *puts, sep="\n  ")
    assert puts[-1].endswith("/COMPLETE") and len(puts) == len(listed) + 1

    # the resumed run ends exactly where the uninterrupted one does, and the policy moved before the kill
    got, want = metrics(f"{BUCKET}/rcrl/metrics.jsonl"), metrics(f"{ref_out}/metrics.jsonl")
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5, 6]
    assert [comparable(r) for r in got] == [comparable(r) for r in want]
    moved = _weight_change(f"{BUCKET}/rcrl/checkpoints/step_{resumed:06d}", f"{BUCKET}/sft/model")
    assert moved > 0, "the actor's weights at step 2 equal the SFT model's: the resume proves nothing"
    assert fs.exists(f"{BUCKET}/rcrl/model/model.safetensors")

    # evaluation of the RCRL model: predictions and report written to S3 by a driver on the head
    jobs.run(entry["m3ad-eval"])
    report = json.loads(fs.cat(f"{BUCKET}/eval-rcrl/report.json"))
    assert report["run"]["n"] > 0 and fs.exists(f"{BUCKET}/eval-rcrl/predictions.jsonl")


def _weight_change(checkpoint: str, model: str) -> float:
    """Largest |Δ| between the checkpoint's actor weights and the model's (downloaded here)."""
    import tempfile

    import torch
    from safetensors.torch import load_file

    from m3ad_rl.core import storage

    with tempfile.TemporaryDirectory() as tmp:
        storage.download_dir(checkpoint, tmp, include=lambda n: "mp_rank_00_model_states" in n)
        states = next(Path(tmp).rglob("mp_rank_00_model_states.pt"))
        ckpt = torch.load(states, map_location="cpu", weights_only=False)["module"]
        base = load_file(Path(storage.local_model(model)) / "model.safetensors")
    common = [k for k in ckpt if k in base]
    assert common, "no weight names in common"
    return max(float((ckpt[k].float() - base[k].float()).abs().max()) for k in common)


def test_lost_worker_node_fails_clearly_and_retry_resumes(cluster):
    """A worker node's raylet dies mid-run: the job fails with a one-line reason; the retry resumes."""
    jobs = Jobs(cluster)
    entry = with_sets(rendered_jobs()["m3ad-rcrl"], out=f"{BUCKET}/rcrl-node-loss", steps="3",
                      **{"checkpoint.every": "1"})  # fmt: skip
    if not s3().exists(f"{BUCKET}/sft/model/config.json"):
        pytest.skip("needs the pipeline test's SFT model")
    sid = jobs.submit(entry)
    wait_for(f"{BUCKET}/rcrl-node-loss/checkpoints/step_000001/COMPLETE")
    cluster.kill_raylet(1)
    try:
        assert jobs.wait(sid, timeout=600) == "FAILED", jobs.explain(sid)
        logs = jobs.logs(sid)
        assert "a Ray worker or node was lost" in logs, jobs.explain(sid)
        assert "Traceback" not in logs.split("a Ray worker")[-1], jobs.explain(sid)
    finally:  # later tests need both worker nodes, whatever happened here
        cluster.restart_worker(1)
        cluster.wait_nodes(3)
    logs = jobs.run(entry)
    assert "resumed from step" in logs, logs[-3000:]


def test_reproduce_on_multinode_cluster_with_s3(cluster):
    """``m3ad-rl reproduce`` as a job: driver on the 0-CPU head, stage 0's task, SFT, RCRL and the evaluation on
    worker nodes with private disks; every stage's outputs and the report only in S3."""
    import fsspec

    out = f"{BUCKET}/reproduce"
    command = f"m3ad-rl reproduce --config /etc/m3ad/reproduce-toy.yaml --out {out}"
    jobs = Jobs(cluster)
    jobs.run(command, timeout=1500)
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    for key in ("report/results.md", "report/curves.png", "report/gallery.html", "perception/model/model.safetensors",
                "seed-0/sft/model/model.safetensors", "seed-0/rcrl/model/model.safetensors",
                "seed-0/eval/rcrl/bench/report.json", "stages/seed-0-eval.json"):  # fmt: skip
        assert fs.exists(f"{out}/{key}"), key
    report = fs.cat(f"{out}/report/results.md").decode()
    assert "Seen categories" in report and "Reward variants" in report  # (the toy's one variant: preset_a)
    assert fs.exists(f"{out}/seed-0/rcrl-preset_a/model/model.safetensors")
    summary = json.loads(fs.cat(f"{out}/report/summary.json"))
    assert set(summary["differences"]) == {"rcrl", "rcrl-preset_a"}
    assert "perception: done" in jobs.run(command, timeout=600)  # the same job again: resumes from S3's markers


def test_sweep_submit_and_report_on_s3(cluster, tmp_path):
    """The presets (a)-(d) sweep through `m3ad-rl sweep submit`, then `sweep report` from S3."""
    if not s3().exists(f"{BUCKET}/sft/model/config.json"):
        pytest.skip("needs the pipeline test's SFT model")
    from m3ad_rl.core.config import load_config
    from m3ad_rl.k8s.sweep import SweepSpec

    sets = ["train_set.steps=1", "eval_workers=1"]  # shrunk in size only
    spec = load_config(SweepSpec, str(ROOT / "configs/sweeps/presets-dev.yaml"), sets)
    sub = subprocess.run(
        ["m3ad-rl", "sweep", "submit", "--config", "configs/sweeps/presets-dev.yaml", "--address",
         cluster.dashboard_url, "--set", *sets],
        cwd=ROOT, capture_output=True, text=True, env=os.environ,
    )  # fmt: skip
    assert sub.returncode == 0, sub.stderr[-3000:]
    ids = sub.stdout.split()
    assert len(ids) == 4, sub.stdout
    jobs = Jobs(cluster)
    for sid in ids:
        status = jobs.wait(sid, timeout=1500)
        assert status == "SUCCEEDED", jobs.explain(sid, 4000)
    out = subprocess.run(
        ["m3ad-rl", "sweep", "report", "--config", "configs/sweeps/presets-dev.yaml", "--runs", spec.out],
        cwd=ROOT, capture_output=True, text=True, env=os.environ,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert s3().exists(f"{spec.out}/sweep.md") and s3().exists(f"{spec.out}/sweep.png")
