"""Sweeps (m3ad_rl/k8s/sweep.py): rendered RayJobs pass the manifest validation, names and labels are
valid, reports gather into one table and plot, and `submit` sends jobs to a real local Ray head."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from m3ad_rl.core.config import load_config
from m3ad_rl.k8s import validate as kv
from m3ad_rl.k8s.sweep import SweepSpec, entrypoint, expand, job_name, label_value, render, report, write_rendered

ROOT = Path(__file__).resolve().parents[2]
SWEEPS = ROOT / "configs" / "sweeps"
needs_crds = pytest.mark.skipif(kv.crd_dir() is None, reason=f"KubeRay CRDs not found (set {kv.CRDS_ENV})")
needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="the sweep templates are overlays")


def spec(name: str, *overrides: str) -> SweepSpec:
    return load_config(SweepSpec, SWEEPS / f"{name}.yaml", list(overrides))


@pytest.fixture(autouse=True)
def _at_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # sweep configs name files relative to the repository


@needs_crds
@needs_kubectl
def test_render_presets_gives_four_valid_rayjobs(tmp_path):
    paths = write_rendered(render(spec("presets")), tmp_path)
    docs = [d for p in paths for d in yaml.safe_load_all(p.read_text()) if d]
    jobs = [d for d in docs if d["kind"] == "RayJob"]
    assert [j["metadata"]["labels"]["m3ad.io/variant"] for j in jobs] == ["a", "b", "c", "d"]
    assert [j["metadata"]["name"] for j in jobs] == [f"m3ad-presets-{v}" for v in "abcd"]
    findings = kv.validate_paths([tmp_path])
    assert findings == [], "\n".join(map(str, findings))
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    for j in jobs:  # each variant packs its own rollout pods: the gpu-pack label and selectors name the job
        packs = {m.group(1) for m in re.finditer(r"m3ad\.io/gpu-pack: (\S+)", yaml.safe_dump(j, width=10_000))}
        assert packs == {j["metadata"]["name"]}, packs
    for j in jobs:
        v = j["metadata"]["labels"]["m3ad.io/variant"]
        assert f"--reward-config /etc/m3ad/preset_{v}.yaml" in j["spec"]["entrypoint"]
        assert f"preset_{v}.yaml" in cm["data"]
        assert j["spec"]["suspend"] is False
        vols = j["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["volumes"]
        assert {"name": "config", "configMap": {"name": cm["metadata"]["name"]}} in vols


def test_a_sweep_whose_jobs_ask_for_more_than_their_cluster_has(tmp_path):
    """Issue 22: each variant's RCRL requests are checked against the worker groups of its RayJob."""
    s = spec("presets")
    s.train_set = {**s.train_set, "actor.workers": 16}  # 16 ranks on one node; the train pod has 8 GPUs
    write_rendered(render(s), tmp_path)
    found = [f for f in kv.validate_paths([tmp_path]) if f.check == "requests"]
    assert len(found) == 8, "\n".join(map(str, found))  # per variant: no pod holds them, nor all pods together
    assert "16 actor rank(s) on one node" in found[0].message and "train: 1 x" in found[0].message


@needs_crds
@needs_kubectl
@pytest.mark.parametrize(("name", "n"), [("ablations", 8), ("lambda-grid", 12), ("presets-dev", 4)])
def test_other_sweeps_render_valid(name, n, tmp_path):
    docs = render(spec(name))
    jobs = [d for d in docs if d["kind"] == "RayJob"]
    assert len(jobs) == n and len({j["metadata"]["name"] for j in jobs}) == n
    findings = [f for d in docs for f in kv.validate_document(d, name)]
    assert findings == [], "\n".join(map(str, findings))
    if name == "lambda-grid":
        assert all(j["spec"]["suspend"] and j["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] for j in jobs)
        assert "reward.weights.reflection=2.0" in jobs[-1]["spec"]["entrypoint"]


@needs_kubectl
def test_sweep_entrypoints_parse_and_load(tmp_path, monkeypatch):
    from tests.k8s.test_manifests import check_entrypoint

    docs = render(spec("presets-dev"))
    configs = docs[0]["data"]
    for job in docs[1:]:
        seen = check_entrypoint(job["spec"]["entrypoint"], configs, tmp_path, monkeypatch)
        assert seen == ["train rcrl", "eval run"]


def test_names_and_labels_are_valid_kubernetes_values():
    long = "x" * 80 + "-λ=0.5"
    assert len(label_value(long)) <= 63 and kv.LABEL_VALUE.match(label_value(long))
    assert label_value("weights.reflection=0.5") == "weights.reflection-0.5"
    name = job_name("lambda", "d-reflection0.5-consistency1.0-s1")
    assert len(name) <= 47 and kv.DNS1035.match(name)
    assert job_name("a" * 60, "b") != job_name("a" * 60, "c")
    s = spec("presets")
    assert "\n" not in entrypoint(s, expand(s)[0])


def test_duplicate_variant_names_are_refused():
    s = spec("presets")
    s.variants[1].name = "a"
    with pytest.raises(ValueError, match="both named 'a'"):
        expand(s)


def _report(acc: float) -> dict:
    row = {"n": 10, "accuracy": acc, "balanced_accuracy": acc, "type_f1": acc / 2, "loc_f1": acc / 3}
    return {"scenes": {"industrial": row}, "average": row}


def test_report_gathers_table_and_plot(tmp_path):
    from m3ad_rl.cli import main

    for v, acc in (("a", 0.6), ("c", 0.7)):
        (tmp_path / v / "eval").mkdir(parents=True)
        (tmp_path / v / "eval" / "report.json").write_text(json.dumps(_report(acc)))
    table, missing = report(spec("presets"), runs=str(tmp_path))
    assert missing == ["b", "d"]
    assert "| a | 60.0 | 60.0 |" in table and "| c | 70.0 |" in table
    assert (tmp_path / "sweep.png").stat().st_size > 1000
    assert "No report yet: b, d" in (tmp_path / "sweep.md").read_text()
    rc = main(["sweep", "report", "--config", str(SWEEPS / "presets.yaml"), "--runs", str(tmp_path)])
    assert rc == 3  # done, but some variants have no report yet
    # what `sweep run` recorded of the pool: 2 nodes for 30 of 60 minutes, against a fixed pool of 4
    rows = [(0, 0, 0), (600, 2, 2), (2400, 0, 0), (3600, 0, 0)]
    (tmp_path / "sweep-nodes.json").write_text(json.dumps({"rows": rows, "pool_max": 4}))
    report(spec("presets"), runs=str(tmp_path))
    text = (tmp_path / "sweep.md").read_text()
    assert "**1.00 worker node-hours** (1.00 GPU-hours)" in text and "4 nodes for as long is 4.00" in text
    assert "(25 % of it)" in text and (tmp_path / "sweep-nodes.png").stat().st_size > 1000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path, monkeypatch):
    """A local Ray head with the dashboard (the Jobs API), started and stopped by this test only.
    Token auth off, as on a KubeRay cluster without authOptions (a local head turns it on when a
    token exists in ~/.ray)."""
    pytest.importorskip("aiohttp")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    port, dash = _free_port(), _free_port()
    temp = Path("/tmp") / f"m3ad-ray-{os.getpid()}"
    cmd = [shutil.which("ray") or "ray", "start", "--head", "--block", f"--port={port}", "--num-cpus=1",
           "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
           f"--temp-dir={temp}", "--disable-usage-stats"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        from ray.job_submission import JobSubmissionClient

        deadline = time.time() + 90
        while True:
            try:
                JobSubmissionClient(address).list_jobs()
                break
            except Exception:
                if time.time() > deadline or proc.poll() is not None:
                    pytest.skip("the local Ray dashboard (Jobs API) did not come up")
                time.sleep(2)
        yield address
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=60)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.timeout(300)
def test_submit_sends_the_jobs_to_ray(ray_head, tmp_path):
    """One variant through the real Jobs API: configs travel as working_dir, metadata carries the
    labels, and the entrypoint runs the real CLI (which stops at the missing SFT model)."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    from m3ad_rl.k8s.sweep import submit

    s = spec("presets-dev", f"out={tmp_path}/sweep", f"model={tmp_path}/none", f"data={tmp_path}/none.parquet")
    s.variants = s.variants[1:2]
    (sid,) = submit(s, ray_head)
    client = JobSubmissionClient(ray_head)
    info = client.get_job_info(sid)
    assert info.metadata["variant"] == "b" and info.metadata["sweep"] == "presets-dev"
    assert info.entrypoint.startswith("m3ad-rl train rcrl --config ./rcrl.yaml --reward-config ./preset_b.yaml")
    deadline = time.time() + 240
    while client.get_job_status(sid) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.time() < deadline, client.get_job_logs(sid)[-2000:]
        time.sleep(2)
    logs = client.get_job_logs(sid)
    assert client.get_job_status(sid) == JobStatus.FAILED
    assert f"{tmp_path}/none" in logs, logs[-2000:]  # the CLI ran with the uploaded config and stopped cleanly


def test_sweep_run_fails_an_infeasible_variant_before_sending_it():
    """`sweep run --pool`: a variant whose RCRL ranks fit no node type of the pool is not submitted."""
    from m3ad_rl.k8s.sweep import expand
    from m3ad_rl.k8s.sweeprun import infeasible_before_submit

    s = spec("presets-dev")
    job = expand(s)[0]
    assert infeasible_before_submit(s, job, {"cpu": {"CPU": 8.0}}) is None
    s.train_set = {**s.train_set, "actor.workers": 16}
    why = infeasible_before_submit(s, job, {"cpu": {"CPU": 8.0}})
    assert why and "16 actor rank(s) on one node" in why and "cpu: {'CPU': 8.0}" in why


def test_sweep_run_lowers_k_to_what_the_full_pool_holds():
    """K variants that each fill part of a maxed-out pool would wait for each other's CPUs forever."""
    from m3ad_rl.k8s.sweeprun import fit_in_flight

    s, lines = spec("presets-dev"), []
    pool = {"cpu": {"resources": {"CPU": 2.0}, "max_workers": 2}}  # a variant needs 1 + 1 + 0.5 reward CPUs
    assert fit_in_flight(s, pool, 2, lines.append) == 1 and "lowered to 1" in lines[0]
    assert fit_in_flight(s, {"cpu": {"resources": {"CPU": 3.0}, "max_workers": 2}}, 2, lines.append) == 2
