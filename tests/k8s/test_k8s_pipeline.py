"""The stage runner (m3ad_rl/k8s/pipeline.py) against a fake Kubernetes API server that speaks as a
real one does: HTTPS with its own CA, bearer tokens (401 otherwise), the real REST paths for RayJobs
(GET, merge-PATCH only), pods (list by label selector) and ConfigMaps (GET, POST, merge-PATCH), and
``Status`` bodies on errors. A resumed (or Kueue-admitted) job goes Initializing, then Running/RUNNING,
then to its scripted end; the scripts cover what a real cluster does to a stage (Retrying, never
admitted, deleted after success or mid-run, a submitter that cannot pull its image, API hiccups)."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import re
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from m3ad_rl.cli import main
from m3ad_rl.k8s import api
from m3ad_rl.k8s.pipeline import DEFAULT_JOBS, QUEUE_LABEL, RECORD

NS, TOKEN = "m3ad-dev", "t0ken"
RAYJOB = re.compile(r"^/apis/ray\.io/v1/namespaces/([^/]+)/rayjobs/([^/]+)$")
PODS = re.compile(r"^/api/v1/namespaces/([^/]+)/pods$")
CONFIGMAP = re.compile(r"^/api/v1/namespaces/([^/]+)/configmaps(?:/([^/]+))?$")
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
    """Suspended RayJobs in memory; each GET of a resumed (or Kueue-admitted) job moves it on.

    Outcomes: SUCCEEDED, FAILED, HANG (runs forever), DONE (succeeded before), RETRY (one failed
    attempt, then success), NEVER_ADMITTED (stays suspended), HELD (suspended again whenever resumed:
    a policy or GitOps tool holding ``spec.suspend``, no Kueue), VANISH (deleted while running),
    IMAGE_PULL (its submitter pod cannot pull its image).
    """

    def __init__(self, outcomes: dict[str, str], flaky: int = 0) -> None:
        self.jobs = {
            name: {"apiVersion": "ray.io/v1", "kind": "RayJob",
                   "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}"},
                   "spec": {"suspend": True, "shutdownAfterJobFinishes": True}, "status": {}}
            for name in outcomes
        }  # fmt: skip
        self.outcomes, self.polls, self.flaky = outcomes, dict.fromkeys(outcomes, 0), flaky
        self.patches: list[tuple[str, dict, dict]] = []  # (job, body, every job's deployment status then)
        self.configmaps: dict[str, dict] = {}
        self.pods: list[dict] = []
        self.tokens = {TOKEN}  # accepted bearer tokens
        self.seen_tokens: list[str] = []
        self.requests = 0
        self.on_request = lambda fake: None

    def get(self, name: str) -> dict | None:
        job, outcome = self.jobs.get(name), self.outcomes.get(name)
        if job is None:
            return None
        if QUEUE_LABEL in (job["metadata"].get("labels") or {}) and outcome != "NEVER_ADMITTED":
            job["spec"]["suspend"] = False  # Kueue admits it
        if outcome == "HELD":
            job["spec"]["suspend"] = True
        if job["spec"]["suspend"]:
            if job["status"].get("jobDeploymentStatus"):
                job["status"]["jobDeploymentStatus"] = "Suspended"
            return job
        if outcome == "DONE":
            return job
        self.polls[name] += 1
        n, status = self.polls[name], job["status"]
        if n == 1:
            status.update(jobDeploymentStatus="Initializing", jobStatus="", rayClusterName=f"{name}-raycluster-x")
        elif outcome == "VANISH" and n >= 3:
            del self.jobs[name]
            return None
        elif outcome == "IMAGE_PULL" or (n in (2, 3) or outcome == "HANG"):
            status.update(jobDeploymentStatus="Running", jobStatus="RUNNING" if outcome != "IMAGE_PULL" else "")
            if outcome == "IMAGE_PULL":
                self.pods = [submitter_pod(name, "ghcr.io/acme/m3ad-rl-submitter:0.1.0")]
        elif outcome == "RETRY" and n in (4, 5):
            status.update(jobDeploymentStatus="Retrying", jobStatus="FAILED", failed=1,
                          message="Job entrypoint command failed with exit code 1")  # fmt: skip
        else:
            end = "SUCCEEDED" if outcome == "RETRY" else outcome
            dep, js, reason, message = ENDS[end]
            status.update(jobDeploymentStatus=dep, jobStatus=js, reason=reason, message=message)
        return job

    def patch(self, name: str, body: dict) -> dict:
        seen = {n: j["status"].get("jobDeploymentStatus", "") for n, j in self.jobs.items()}
        self.patches.append((name, body, seen))
        return merge_patch(self.jobs[name], body)


def submitter_pod(job: str, image: str) -> dict:
    """The submitter pod as the kubelet reports it when its image cannot be pulled."""
    waiting = {"reason": "ImagePullBackOff", "message": f'Back-off pulling image "{image}"'}
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"{job}-abcde", "namespace": NS, "labels": {"batch.kubernetes.io/job-name": job}},
        "status": {"phase": "Pending", "containerStatuses": [
            {"name": "ray-job-submitter", "image": image, "ready": False, "restartCount": 0,
             "imageID": "", "state": {"waiting": waiting}}]},
    }  # fmt: skip


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

        def status(self, code: int, message: str, reason: str = "") -> None:
            body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": message, "reason": reason, "code": code}  # fmt: skip
            self.reply(code, body)

        def authorized(self) -> bool:
            fake.requests += 1
            fake.on_request(fake)
            scheme, _, token = self.headers.get("Authorization", "").partition(" ")  # the scheme is case-blind
            fake.seen_tokens.append(token)
            if scheme.lower() != "bearer" or token not in fake.tokens:
                self.status(401, "Unauthorized", "Unauthorized")
                return False
            return True

        def body(self) -> dict:
            return json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")

        def do_GET(self) -> None:
            if not self.authorized():
                return
            url = urlparse(self.path)
            if m := RAYJOB.match(url.path):
                if fake.flaky and m.group(2) in fake.jobs and not fake.jobs[m.group(2)]["spec"]["suspend"]:
                    fake.flaky -= 1  # the API server hiccups while a stage runs
                    return self.status(503, "etcdserver: leader changed", "ServiceUnavailable")
                job = fake.get(m.group(2)) if m.group(1) == NS else None
                if job is None:
                    return self.status(404, f'rayjobs.ray.io "{m.group(2)}" not found', "NotFound")
                return self.reply(200, job)
            if m := PODS.match(url.path):
                selector = parse_qs(url.query).get("labelSelector", [""])[0]
                key, _, value = selector.partition("=")
                items = [p for p in fake.pods if p["metadata"]["labels"].get(key) == value]
                return self.reply(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})
            if (m := CONFIGMAP.match(url.path)) and m.group(2):
                if m.group(2) not in fake.configmaps:
                    return self.status(404, f'configmaps "{m.group(2)}" not found', "NotFound")
                return self.reply(200, fake.configmaps[m.group(2)])
            self.status(404, "the server could not find the requested resource", "NotFound")

        def do_POST(self) -> None:
            if not self.authorized():
                return
            body = self.body()
            if (m := CONFIGMAP.match(urlparse(self.path).path)) and not m.group(2):
                name = body["metadata"]["name"]
                if name in fake.configmaps:
                    return self.status(409, f'configmaps "{name}" already exists', "AlreadyExists")
                fake.configmaps[name] = {**body, "kind": "ConfigMap", "apiVersion": "v1"}
                return self.reply(201, fake.configmaps[name])
            self.status(405, "method not allowed", "MethodNotAllowed")

        def do_PATCH(self) -> None:
            if not self.authorized():
                return
            if self.headers.get("Content-Type") != "application/merge-patch+json":
                return self.status(415, f"unsupported patch type {self.headers.get('Content-Type')}")
            body, path = self.body(), urlparse(self.path).path
            if (m := RAYJOB.match(path)) and m.group(2) in fake.jobs:
                return self.reply(200, fake.patch(m.group(2), body))
            if (m := CONFIGMAP.match(path)) and m.group(2) in fake.configmaps:
                return self.reply(200, merge_patch(fake.configmaps[m.group(2)], body))
            self.status(404, "not found", "NotFound")

    return Handler


def _certificates(folder: Path) -> tuple[Path, Path, str]:
    """A CA and a server certificate for 127.0.0.1 signed by it: (cert, key, CA as base64 PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def cert(subject: str, key, issuer: str, issuer_key, ca: bool):
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        return b.sign(issuer_key, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = cert("fake-kube-ca", ca_key, "fake-kube-ca", ca_key, True)
    server = cert("kube-apiserver", key, "fake-kube-ca", ca_key, False)
    pem = serialization.Encoding.PEM
    (folder / "server.crt").write_bytes(server.public_bytes(pem))
    no_password = serialization.NoEncryption()
    (folder / "server.key").write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, no_password))
    (folder / "ca.crt").write_bytes(ca.public_bytes(pem))
    return folder / "server.crt", folder / "server.key", base64.b64encode(ca.public_bytes(pem)).decode()


@pytest.fixture
def kube(tmp_path):
    """Start a fake HTTPS API server for the given outcomes; yields a start function returning
    (fake, url, kubeconfig path) with a token user in the ``dev`` context's namespace."""
    servers = []
    crt, key, ca_b64 = _certificates(tmp_path)

    def start(outcomes: dict[str, str], flaky: int = 0, user: dict | None = None) -> tuple[FakeKube, str, Path]:
        fake = FakeKube(outcomes, flaky)
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(crt, key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        url = f"https://127.0.0.1:{server.server_address[1]}"
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "dev",
            "contexts": [{"name": "other", "context": {"cluster": "x", "user": "x"}},
                         {"name": "dev", "context": {"cluster": "fake", "user": "me", "namespace": NS}}],
            "clusters": [{"name": "fake", "cluster": {"server": url, "certificate-authority-data": ca_b64}}],
            "users": [{"name": "me", "user": user or {"token": TOKEN}}],
        }  # fmt: skip
        path = tmp_path / f"kubeconfig-{len(servers)}"
        path.write_text(yaml.safe_dump(config))
        return fake, url, path

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def _outside_a_cluster(monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBECONFIG", raising=False)


def run(config: Path, *extra: str) -> int:
    return main(["k8s", "pipeline", "--kubeconfig", str(config), "--poll", "0.01", *extra])


def last_line(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_stages_run_in_order_over_tls(kube, capsys):
    fake, _, config = kube(dict.fromkeys(DEFAULT_JOBS, "SUCCEEDED"))
    assert run(config) == 0
    assert [name for name, _, _ in fake.patches] == list(DEFAULT_JOBS)
    for i, (name, body, seen) in enumerate(fake.patches):
        assert body == {"spec": {"suspend": False}}
        assert all(seen[prev] == "Complete" for prev in DEFAULT_JOBS[:i]), (name, seen)  # the previous ones done
        assert all(seen[later] == "" for later in DEFAULT_JOBS[i:]), (name, seen)  # the later ones untouched
    assert all(j["status"]["jobStatus"] == "SUCCEEDED" for j in fake.jobs.values())
    assert set(fake.seen_tokens) == {TOKEN}
    record = {k: json.loads(v) for k, v in fake.configmaps[RECORD]["data"].items()}
    assert set(record) == set(DEFAULT_JOBS) and record["m3ad-sft"]["uid"] == "uid-m3ad-sft"
    err = capsys.readouterr().err
    assert "m3ad-sft: Initializing/-" in err and "m3ad-sft: Running/RUNNING" in err  # each change, once
    assert err.count("m3ad-sft: Running/RUNNING") == 1 and "succeeded in m3ad-dev" in err.splitlines()[-1]


def test_a_failed_stage_stops_the_pipeline(kube, capsys):
    fake, _, config = kube(
        {"m3ad-prepare": "SUCCEEDED", "m3ad-sft": "FAILED", "m3ad-rcrl": "SUCCEEDED", "m3ad-eval": "SUCCEEDED"}
    )
    assert run(config) == 1
    line = last_line(capsys)
    assert "RayJob m3ad-sft: Failed/FAILED (AppFailed): Job entrypoint command failed with exit code 1" in line
    assert [name for name, _, _ in fake.patches] == ["m3ad-prepare", "m3ad-sft"]
    assert fake.jobs["m3ad-rcrl"]["spec"]["suspend"] and fake.jobs["m3ad-eval"]["spec"]["suspend"]
    assert set(fake.configmaps[RECORD]["data"]) == {"m3ad-prepare"}


def test_a_missing_job_stops_before_anything_starts(kube, capsys):
    fake, _, config = kube({"m3ad-prepare": "SUCCEEDED", "m3ad-sft": "SUCCEEDED", "m3ad-rcrl": "SUCCEEDED"})
    assert run(config) == 2
    assert "RayJob m3ad-dev/m3ad-eval not found" in last_line(capsys)
    assert fake.patches == [] and all(j["spec"]["suspend"] for j in fake.jobs.values())


def test_timeout_names_the_running_stage(kube, capsys):
    fake, _, config = kube({"m3ad-sft": "SUCCEEDED", "m3ad-rcrl": "HANG", "m3ad-eval": "SUCCEEDED"})
    assert run(config, "--jobs", "m3ad-sft,m3ad-rcrl,m3ad-eval", "--timeout", "0.5") == 1
    line = last_line(capsys)
    assert "RayJob m3ad-rcrl: Running/RUNNING" in line and "--timeout" in line
    assert fake.jobs["m3ad-eval"]["spec"]["suspend"]


def test_a_stage_that_already_succeeded_is_skipped(kube, capsys):
    fake, _, config = kube({"m3ad-sft": "DONE", "m3ad-rcrl": "SUCCEEDED"})
    fake.jobs["m3ad-sft"]["spec"]["suspend"] = False
    fake.jobs["m3ad-sft"]["status"] = {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}
    assert run(config, "--jobs", "m3ad-sft,m3ad-rcrl") == 0
    assert [name for name, _, _ in fake.patches] == ["m3ad-rcrl"]
    assert "m3ad-sft: already succeeded, skipped" in capsys.readouterr().err


def test_a_stage_deleted_after_success_counts_as_done_and_is_not_rerun(kube, capsys):
    """KubeRay's deletionStrategy removes the RayJob after it succeeded: the runner goes on; a re-run
    (even after `kubectl apply -k` created the stage again, suspended) skips it from the record."""
    fake, _, config = kube({"m3ad-sft": "SUCCEEDED", "m3ad-rcrl": "HANG"})
    assert run(config, "--jobs", "m3ad-sft,m3ad-rcrl", "--timeout", "0.3") == 1  # stopped during rcrl
    del fake.jobs["m3ad-sft"]  # KubeRay's deletionStrategy, after it succeeded
    fake.outcomes["m3ad-rcrl"] = "SUCCEEDED"
    assert run(config, "--jobs", "m3ad-sft,m3ad-rcrl") == 0  # not "m3ad-sft not found"
    assert [name for name, _, _ in fake.patches] == ["m3ad-sft", "m3ad-rcrl"]  # once each: rcrl left to run on
    fake.jobs["m3ad-sft"] = {"apiVersion": "ray.io/v1", "kind": "RayJob", "status": {},
                             "metadata": {"name": "m3ad-sft", "namespace": NS, "uid": "uid-new"},
                             "spec": {"suspend": True}}  # fmt: skip
    fake.patches.clear()
    capsys.readouterr()
    assert run(config, "--jobs", "m3ad-sft,m3ad-rcrl") == 0
    assert fake.patches == [] and fake.jobs["m3ad-sft"]["spec"]["suspend"]
    assert "m3ad-sft: succeeded at" in capsys.readouterr().err
    del fake.jobs["m3ad-sft"]  # gone again, and recorded: not "apply the manifests first"
    assert run(config, "--jobs", "m3ad-sft,m3ad-rcrl") == 0
    assert run(config, "--jobs", "m3ad-sft", "--rerun", "m3ad-sft") == 2  # asked to re-run: it must exist
    assert "m3ad-sft not found" in last_line(capsys)


def test_rerun_runs_a_recorded_stage_again(kube):
    fake, _, config = kube({"m3ad-sft": "SUCCEEDED"})
    fake.configmaps[RECORD] = {"metadata": {"name": RECORD}, "data": {"m3ad-sft": json.dumps({"state": "succeeded"})}}
    assert run(config, "--jobs", "m3ad-sft") == 0 and fake.patches == []
    assert run(config, "--jobs", "m3ad-sft", "--rerun", "m3ad-sft") == 0
    assert [name for name, _, _ in fake.patches] == ["m3ad-sft"]


def test_a_stage_deleted_while_running_fails(kube, capsys):
    fake, _, config = kube({"m3ad-sft": "VANISH", "m3ad-rcrl": "SUCCEEDED"})
    assert run(config, "--jobs", "m3ad-sft,m3ad-rcrl") == 1
    line = last_line(capsys)
    assert "RayJob m3ad-sft: Running/RUNNING" in line and "deleted before this runner saw it finish" in line
    assert fake.jobs["m3ad-rcrl"]["spec"]["suspend"] and RECORD not in fake.configmaps


def test_retrying_is_logged_and_waited_for(kube, capsys):
    _, _, config = kube({"m3ad-sft": "RETRY"})
    assert run(config, "--jobs", "m3ad-sft") == 0
    assert "m3ad-sft: Retrying/FAILED, 1 failed attempt(s): Job entrypoint command failed" in capsys.readouterr().err


def test_a_stage_never_admitted_fails_after_the_admission_timeout(kube, capsys):
    fake, _, config = kube({"m3ad-sft": "NEVER_ADMITTED", "m3ad-rcrl": "SUCCEEDED"})
    assert run(config, "--jobs", "m3ad-sft,m3ad-rcrl", "--queue", "m3ad-gpu", "--admission-timeout", "0.3",
               "--log-every", "0.1") == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "m3ad-sft: New/- (waiting for Kueue to admit it from m3ad-gpu)" in err
    assert "m3ad-sft: still New/- (waiting for Kueue" in err  # the wait is visible
    assert "not admitted within --admission-timeout" in err and "kubectl describe workloads" in err
    assert fake.patches[-1][1] == {"spec": {"suspend": True}, "metadata": {"labels": {QUEUE_LABEL: None}}}
    assert QUEUE_LABEL not in fake.jobs["m3ad-sft"]["metadata"]["labels"]  # out of the queue
    assert QUEUE_LABEL not in (fake.jobs["m3ad-rcrl"]["metadata"].get("labels") or {})


def test_a_stage_held_suspended_without_kueue_fails_after_the_admission_timeout(kube, capsys):
    """No queue: something keeps ``spec.suspend: true`` after the runner clears it. The wait is logged
    as suspended, and after --admission-timeout the stage fails naming the field to look at."""
    fake, _, config = kube({"m3ad-sft": "HELD", "m3ad-rcrl": "SUCCEEDED"})
    assert run(config, "--jobs", "m3ad-sft,m3ad-rcrl", "--admission-timeout", "0.3", "--log-every", "0.1") == 1
    err = capsys.readouterr().err
    assert "m3ad-sft: New/- (suspended)" in err and "m3ad-sft: still New/- (suspended)" in err, err
    assert "not admitted within --admission-timeout 0.3 s; is spec.suspend held?" in err
    assert fake.patches[0][1] == {"spec": {"suspend": False}}  # the runner did resume it
    assert fake.polls["m3ad-rcrl"] == 0 and fake.jobs["m3ad-rcrl"]["spec"]["suspend"] is True  # never started


def test_a_submitter_that_cannot_pull_its_image_fails_the_stage_and_frees_the_cluster(kube, capsys):
    fake, _, config = kube({"m3ad-sft": "IMAGE_PULL", "m3ad-rcrl": "SUCCEEDED"})
    assert run(config, "--jobs", "m3ad-sft,m3ad-rcrl", "--pod-grace", "0.2") == 1
    line = last_line(capsys)
    assert "image 'ghcr.io/acme/m3ad-rl-submitter:0.1.0': ImagePullBackOff" in line and "--pod-grace" in line
    assert fake.jobs["m3ad-sft"]["spec"]["suspend"] is True  # KubeRay deletes the cluster of a suspended job
    assert [name for name, _, _ in fake.patches] == ["m3ad-sft", "m3ad-sft"]


def test_kueue_queue_label_instead_of_resume(kube):
    fake, _, config = kube({"m3ad-sft": "SUCCEEDED", "m3ad-rcrl": "SUCCEEDED"})
    assert run(config, "--jobs", "m3ad-sft,m3ad-rcrl", "--queue", "m3ad-gpu") == 0
    assert [body for _, body, _ in fake.patches] == [{"metadata": {"labels": {QUEUE_LABEL: "m3ad-gpu"}}}] * 2


def test_transient_api_errors_are_retried(kube, capsys):
    fake, _, config = kube({"m3ad-sft": "SUCCEEDED"}, flaky=3)
    assert run(config, "--jobs", "m3ad-sft") == 0, capsys.readouterr().err
    assert fake.flaky == 0 and fake.jobs["m3ad-sft"]["status"]["jobStatus"] == "SUCCEEDED"
    assert "transient API error" in capsys.readouterr().err


def test_an_unreachable_server_is_one_line(kube, capsys, tmp_path):
    _, url, config = kube({"m3ad-sft": "SUCCEEDED"})
    text = config.read_text().replace(url, "https://127.0.0.1:9")  # nothing listens on port 9
    (tmp_path / "down").write_text(text)
    from m3ad_rl.k8s import pipeline

    pipeline.MAX_TRANSIENT, saved = 1, pipeline.MAX_TRANSIENT
    try:
        assert run(tmp_path / "down", "--jobs", "m3ad-sft") == 2
    finally:
        pipeline.MAX_TRANSIENT = saved
    line = last_line(capsys)
    assert "cannot reach the API server https://127.0.0.1:9" in line and "Traceback" not in line


def test_wrong_token_is_a_clear_error(kube, capsys):
    _, _, config = kube({"m3ad-sft": "SUCCEEDED"}, user={"token": "nope"})
    assert run(config, "--jobs", "m3ad-sft") == 2
    assert "HTTP 401: Unauthorized: the credentials from" in last_line(capsys)


def test_a_server_with_an_unknown_ca_is_refused(kube, capsys, tmp_path):
    _, _, config = kube({"m3ad-sft": "SUCCEEDED"})
    cfg = yaml.safe_load(config.read_text())
    del cfg["clusters"][0]["cluster"]["certificate-authority-data"]  # the system CAs do not know it
    (tmp_path / "noca").write_text(yaml.safe_dump(cfg))
    from m3ad_rl.k8s import pipeline

    pipeline.MAX_TRANSIENT, saved = 0, pipeline.MAX_TRANSIENT
    try:
        assert run(tmp_path / "noca", "--jobs", "m3ad-sft") == 2
    finally:
        pipeline.MAX_TRANSIENT = saved
    assert "CERTIFICATE_VERIFY_FAILED" in last_line(capsys)


EXEC_PLUGIN = """\
import datetime, json, pathlib, sys
counter = pathlib.Path(sys.argv[1])
n = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(n))
expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=float(sys.argv[2]))
print(json.dumps({"apiVersion": "client.authentication.k8s.io/v1beta1", "kind": "ExecCredential",
                  "status": {"token": f"exec-{n}", "expirationTimestamp": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}}))
"""


def _exec_user(tmp_path: Path, lifetime: float) -> dict:
    """A kubeconfig user whose token comes from a plugin, as EKS/GKE/AKS kubeconfigs have."""
    (tmp_path / "plugin.py").write_text(EXEC_PLUGIN)
    return {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": sys.executable,
                     "args": [str(tmp_path / "plugin.py"), str(tmp_path / "count"), str(lifetime)],
                     "interactiveMode": "Never"}}  # fmt: skip


def test_exec_plugin_tokens_are_fetched_again_before_they_expire(kube, tmp_path):
    """Tokens that expire within the client's 5-minute margin are renewed on the next request."""
    fake, _, config = kube({"m3ad-sft": "SUCCEEDED"}, user=_exec_user(tmp_path, lifetime=60))
    fake.tokens = {f"exec-{n}" for n in range(1, 500)}
    assert run(config, "--jobs", "m3ad-sft") == 0
    assert len(set(fake.seen_tokens)) > 3  # a new token for (nearly) every request


def test_a_revoked_token_is_replaced_on_401(kube, tmp_path, capsys):
    """A long-lived plugin token revoked mid-run: the 401 re-runs the plugin and the run goes on."""
    fake, _, config = kube({"m3ad-sft": "SUCCEEDED", "m3ad-rcrl": "SUCCEEDED"}, user=_exec_user(tmp_path, 86400))
    fake.tokens = {"exec-1"}

    def rotate(fake: FakeKube) -> None:
        if fake.requests == 6:
            fake.tokens = {"exec-2"}

    fake.on_request = rotate
    assert run(config, "--jobs", "m3ad-sft,m3ad-rcrl") == 0, capsys.readouterr().err
    assert "exec-1" in fake.seen_tokens and "exec-2" in fake.seen_tokens
    assert (tmp_path / "count").read_text() == "2"


def test_in_cluster_service_account_with_a_rotated_token(kube, tmp_path, monkeypatch):
    """Inside a pod: the service account's token, CA and namespace; a rotated token is read again."""
    from kubernetes.config import incluster_config

    fake, url, _ = kube({"m3ad-sft": "SUCCEEDED", "m3ad-rcrl": "SUCCEEDED"})
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("sa-1")
    (sa / "namespace").write_text(f"{NS}\n")
    (sa / "ca.crt").write_bytes((tmp_path / "ca.crt").read_bytes())
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(sa / "token"))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(sa / "ca.crt"))
    monkeypatch.setattr(api, "SERVICE_ACCOUNT_NAMESPACE", str(sa / "namespace"))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", url.rsplit(":", 1)[1])
    fake.tokens = {"sa-1"}

    def rotate(fake: FakeKube) -> None:
        if fake.requests == 6:
            (sa / "token").write_text("sa-2")  # the kubelet rotates the projected token
            fake.tokens = {"sa-2"}

    fake.on_request = rotate
    assert main(["k8s", "pipeline", "--jobs", "m3ad-sft,m3ad-rcrl", "--poll", "0.01"]) == 0
    assert {"sa-1", "sa-2"} <= set(fake.seen_tokens)


def test_missing_or_broken_kubeconfig_is_one_line(tmp_path, capsys):
    assert run(tmp_path / "nope", "--jobs", "m3ad-sft") == 2
    assert "no kubeconfig at" in last_line(capsys)
    (tmp_path / "bad").write_text("apiVersion: v1\nkind: Config\ncurrent-context: gone\ncontexts: []\n")
    assert run(tmp_path / "bad", "--jobs", "m3ad-sft") == 2
    line = last_line(capsys)
    assert "not a usable kubeconfig" in line and "Traceback" not in line
