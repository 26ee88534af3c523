"""The stage runner (m3ad_rl/k8s/pipeline.py) against a fake Kubernetes API server: a real HTTP server
on 127.0.0.1 with the real RayJob REST paths (GET, and PATCH with merge-patch), where a resumed job
goes Initializing, then Running/RUNNING, then to its scripted end after a few polls."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from m3ad_rl.cli import main
from m3ad_rl.k8s import api
from m3ad_rl.k8s.pipeline import DEFAULT_JOBS, QUEUE_LABEL

NS, TOKEN = "m3ad-dev", "t0ken"
PATH = re.compile(r"^/apis/ray\.io/v1/namespaces/([^/]+)/rayjobs/([^/]+)$")
ENDS = {  # outcome → (jobDeploymentStatus, jobStatus, reason, message), as KubeRay writes them
    "SUCCEEDED": ("Complete", "SUCCEEDED", "", "Job finished successfully."),
    "FAILED": ("Failed", "FAILED", "AppFailed", "Job entrypoint command failed with exit code 1"),
}


def merge_patch(target: dict, patch: dict) -> dict:
    """RFC 7386: objects merge, null deletes, anything else replaces."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            merge_patch(target[key], value)
        else:
            target[key] = value
    return target


class FakeKube:
    """Suspended RayJobs in memory; each GET of a resumed (or Kueue-admitted) job moves it on."""

    def __init__(self, outcomes: dict[str, str], flaky: int = 0) -> None:
        self.jobs = {
            name: {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": name, "namespace": NS},
                   "spec": {"suspend": True, "shutdownAfterJobFinishes": True}, "status": {}}
            for name in outcomes
        }  # fmt: skip
        self.outcomes, self.polls, self.flaky = outcomes, dict.fromkeys(outcomes, 0), flaky
        self.patches: list[tuple[str, dict, dict]] = []  # (job, body, every job's deployment status then)

    def get(self, name: str) -> dict:
        job = self.jobs[name]
        if QUEUE_LABEL in (job["metadata"].get("labels") or {}):
            job["spec"]["suspend"] = False  # Kueue admits it
        if not job["spec"]["suspend"] and self.outcomes[name] != "DONE":
            self.polls[name] += 1
            n, status = self.polls[name], job["status"]
            if n == 1:
                status.update(jobDeploymentStatus="Initializing", jobStatus="")
            elif n in (2, 3) or self.outcomes[name] == "HANG":
                status.update(jobDeploymentStatus="Running", jobStatus="RUNNING")
            else:
                dep, js, reason, message = ENDS[self.outcomes[name]]
                status.update(jobDeploymentStatus=dep, jobStatus=js, reason=reason, message=message)
        return job

    def patch(self, name: str, body: dict) -> dict:
        seen = {n: j["status"].get("jobDeploymentStatus", "") for n, j in self.jobs.items()}
        self.patches.append((name, body, seen))
        return merge_patch(self.jobs[name], body)


def _handler(fake: FakeKube) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet
            pass

        def reply(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def status(self, code: int, message: str) -> None:
            self.reply(
                code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "code": code}
            )

        def route(self) -> str | None:
            m = PATH.match(self.path)
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                return self.status(401, "Unauthorized")
            if not m or m.group(1) != NS or m.group(2) not in fake.jobs:
                name = m.group(2) if m else self.path
                return self.status(404, f'rayjobs.ray.io "{name}" not found')
            return m.group(2)

        def do_GET(self) -> None:
            name = self.route()
            if name and fake.flaky and not fake.jobs[name]["spec"]["suspend"]:
                fake.flaky -= 1  # the API server hiccups while a stage runs
                self.status(503, "etcdserver: leader changed")
            elif name:
                self.reply(200, fake.get(name))

        def do_PATCH(self) -> None:
            if self.headers.get("Content-Type") != "application/merge-patch+json":
                return self.status(415, f"unsupported patch type {self.headers.get('Content-Type')}")
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if name := self.route():
                self.reply(200, fake.patch(name, body))

    return Handler


@pytest.fixture
def kube():
    """Start a fake API server for the given outcomes; yields (fake, url)."""
    servers = []

    def start(outcomes: dict[str, str], flaky: int = 0) -> tuple[FakeKube, str]:
        fake = FakeKube(outcomes, flaky)
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return fake, f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def run(url: str, *extra: str) -> int:
    return main(["k8s", "pipeline", "--namespace", NS, "--server", url, "--token", TOKEN, "--poll", "0.01", *extra])


def last_line(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_stages_run_in_order(kube, capsys):
    fake, url = kube(dict.fromkeys(DEFAULT_JOBS, "SUCCEEDED"))
    assert run(url) == 0
    assert [name for name, _, _ in fake.patches] == list(DEFAULT_JOBS)
    for i, (name, body, seen) in enumerate(fake.patches):
        assert body == {"spec": {"suspend": False}}
        assert all(seen[prev] == "Complete" for prev in DEFAULT_JOBS[:i]), (name, seen)  # the previous ones done
        assert all(seen[later] == "" for later in DEFAULT_JOBS[i:]), (name, seen)  # the later ones untouched
    assert all(j["status"]["jobStatus"] == "SUCCEEDED" for j in fake.jobs.values())
    assert "succeeded in m3ad-dev" in last_line(capsys)


def test_a_failed_stage_stops_the_pipeline(kube, capsys):
    fake, url = kube(
        {"m3ad-prepare": "SUCCEEDED", "m3ad-sft": "FAILED", "m3ad-rcrl": "SUCCEEDED", "m3ad-eval": "SUCCEEDED"}
    )
    assert run(url) == 1
    line = last_line(capsys)
    assert "RayJob m3ad-sft: Failed/FAILED (AppFailed): Job entrypoint command failed with exit code 1" in line
    assert [name for name, _, _ in fake.patches] == ["m3ad-prepare", "m3ad-sft"]
    assert fake.jobs["m3ad-rcrl"]["spec"]["suspend"] and fake.jobs["m3ad-eval"]["spec"]["suspend"]


def test_a_missing_job_stops_before_anything_starts(kube, capsys):
    fake, url = kube({"m3ad-prepare": "SUCCEEDED", "m3ad-sft": "SUCCEEDED", "m3ad-rcrl": "SUCCEEDED"})
    assert run(url) == 2
    assert "RayJob m3ad-dev/m3ad-eval not found" in last_line(capsys)
    assert fake.patches == [] and all(j["spec"]["suspend"] for j in fake.jobs.values())


def test_timeout_names_the_running_stage(kube, capsys):
    fake, url = kube({"m3ad-sft": "SUCCEEDED", "m3ad-rcrl": "HANG", "m3ad-eval": "SUCCEEDED"})
    assert run(url, "--jobs", "m3ad-sft,m3ad-rcrl,m3ad-eval", "--timeout", "0.5") == 1
    line = last_line(capsys)
    assert "RayJob m3ad-rcrl: Running/RUNNING" in line and "--timeout" in line
    assert fake.jobs["m3ad-eval"]["spec"]["suspend"]


def test_a_stage_that_already_succeeded_is_skipped(kube, capsys):
    fake, url = kube({"m3ad-sft": "DONE", "m3ad-rcrl": "SUCCEEDED"})
    fake.jobs["m3ad-sft"]["spec"]["suspend"] = False
    fake.jobs["m3ad-sft"]["status"] = {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}
    assert run(url, "--jobs", "m3ad-sft,m3ad-rcrl") == 0
    assert [name for name, _, _ in fake.patches] == ["m3ad-rcrl"]
    assert "m3ad-sft: already succeeded, skipped" in capsys.readouterr().err


def test_kueue_queue_label_instead_of_resume(kube):
    fake, url = kube({"m3ad-sft": "SUCCEEDED", "m3ad-rcrl": "SUCCEEDED"})
    assert run(url, "--jobs", "m3ad-sft,m3ad-rcrl", "--queue", "m3ad-gpu") == 0
    assert [body for _, body, _ in fake.patches] == [{"metadata": {"labels": {QUEUE_LABEL: "m3ad-gpu"}}}] * 2


def test_transient_api_errors_while_waiting_are_retried(kube, capsys):
    fake, url = kube({"m3ad-sft": "SUCCEEDED"}, flaky=3)
    assert run(url, "--jobs", "m3ad-sft") == 0, capsys.readouterr().err
    assert fake.flaky == 0 and fake.jobs["m3ad-sft"]["status"]["jobStatus"] == "SUCCEEDED"


def test_wrong_token_is_a_clear_error(kube, capsys):
    _, url = kube({"m3ad-sft": "SUCCEEDED"})
    assert main(["k8s", "pipeline", "-n", NS, "--server", url, "--token", "nope", "--jobs", "m3ad-sft"]) == 2
    assert "HTTP 401: Unauthorized" in last_line(capsys)


def test_kubeconfig_current_context(kube, tmp_path, monkeypatch):
    """Server, token and namespace from the kubeconfig's current context (no in-cluster account here)."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    _, url = kube({"m3ad-sft": "SUCCEEDED"})
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "dev",
        "contexts": [{"name": "other", "context": {"cluster": "x", "user": "x"}},
                     {"name": "dev", "context": {"cluster": "kind", "user": "me", "namespace": NS}}],
        "clusters": [{"name": "kind", "cluster": {"server": url}}],
        "users": [{"name": "me", "user": {"token": TOKEN}}],
    }  # fmt: skip
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump(config))
    assert main(["k8s", "pipeline", "--kubeconfig", str(path), "--jobs", "m3ad-sft", "--poll", "0.01"]) == 0
    config["users"][0]["user"] = {"exec": {"command": "aws"}}
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(api.KubeError, match="pass --token"):
        api.from_kubeconfig(path)


def test_in_cluster_service_account(tmp_path, monkeypatch):
    (tmp_path / "token").write_text("sa-token\n")
    (tmp_path / "namespace").write_text("m3ad\n")
    monkeypatch.setattr(api, "SERVICE_ACCOUNT", tmp_path)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    conn = api.in_cluster()
    assert (conn.server, conn.token(), conn.namespace) == ("https://10.96.0.1:443", "sa-token", "m3ad")
    assert conn.ca_file == str(tmp_path / "ca.crt")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    assert api.in_cluster() is None
