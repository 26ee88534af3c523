"""Run RayJob stages in order: resume one, wait until it finishes, go on; stop at the first failure.

    m3ad-rl k8s pipeline --namespace m3ad-dev                                   # prepare, sft, rcrl, eval
    m3ad-rl k8s pipeline --namespace m3ad --jobs m3ad-sft,m3ad-rcrl,m3ad-eval

The stages are created suspended (``spec.suspend: true``). Unlike ``kubectl wait`` on SUCCEEDED,
which waits forever when a stage fails, this stops at a failed stage with its reason, leaves the
later stages suspended, and exits 1; a stage stuck before Running fails by its own
``preRunningDeadlineSeconds``. A stage that already succeeded is skipped, so a stopped pipeline is
re-run with the same command after the failed stage is fixed (delete it, apply it again).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence

from m3ad_rl.k8s.api import Connection, KubeError, RayJobs, from_kubeconfig, in_cluster

DEFAULT_JOBS = ("m3ad-prepare", "m3ad-sft", "m3ad-rcrl", "m3ad-eval")
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
FAILED_DEPLOYMENT = ("Failed", "ValidationFailed")
MAX_TRANSIENT = 10  # consecutive API errors tolerated while waiting (a 72-hour stage sees some)


class StageFailed(RuntimeError):
    """A stage failed, or did not finish in time; the message is the one line to print."""


def state(job: dict) -> str:
    """'succeeded', 'failed' or 'running' from ``status.jobDeploymentStatus`` and ``status.jobStatus``.

    >>> state({"status": {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}})
    'succeeded'
    >>> state({"status": {"jobDeploymentStatus": "Retrying", "jobStatus": "FAILED"}})  # backoffLimit left
    'running'
    """
    status = job.get("status") or {}
    deployment, ray_job = status.get("jobDeploymentStatus", ""), status.get("jobStatus", "")
    if deployment == "Complete":
        return "succeeded" if ray_job == "SUCCEEDED" else "failed"
    return "failed" if deployment in FAILED_DEPLOYMENT else "running"


def describe(name: str, job: dict) -> str:
    """``RayJob m3ad-sft: Failed/FAILED (AppFailed): <status.message>`` on one line."""
    status = job.get("status") or {}
    where = f"{status.get('jobDeploymentStatus') or 'New'}/{status.get('jobStatus') or '-'}"
    reason = f" ({status['reason']})" if status.get("reason") else ""
    message = " ".join(str(status.get("message") or "no message").split())
    return f"RayJob {name}: {where}{reason}: {message}"


def start(api: RayJobs, namespace: str, name: str, queue: str | None) -> dict:
    """Let a stage run: label it for Kueue (``queue``), or clear ``spec.suspend``. A job already in a
    Kueue queue is Kueue's to resume, so it is left alone."""
    job = api.get(namespace, name)
    labels = (job.get("metadata") or {}).get("labels") or {}
    if state(job) != "running":
        return job
    if queue:
        return api.patch(namespace, name, {"metadata": {"labels": {QUEUE_LABEL: queue}}})
    if QUEUE_LABEL not in labels and (job.get("spec") or {}).get("suspend"):
        return api.patch(namespace, name, {"spec": {"suspend": False}})
    return job


def wait(api: RayJobs, namespace: str, name: str, poll: float, deadline: float, clock: Callable[[], float]) -> dict:
    """Poll until the stage succeeds or fails; StageFailed when ``deadline`` passes first."""
    errors, job = 0, {}
    while True:
        try:
            job, errors = api.get(namespace, name), 0
        except KubeError as e:
            errors += 1
            if not e.transient or errors > MAX_TRANSIENT:
                raise
        if job and state(job) != "running":
            return job
        if clock() > deadline:
            raise StageFailed(f"{describe(name, job)} [still not finished at --timeout; left as it is]")
        time.sleep(poll)


def run_pipeline(
    api: RayJobs,
    namespace: str,
    jobs: Sequence[str] = DEFAULT_JOBS,
    poll: float = 10.0,
    timeout: float | None = None,
    queue: str | None = None,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Each stage in order; StageFailed at the first that fails, later ones left suspended."""
    deadline = clock() + timeout if timeout else float("inf")
    for name in jobs:  # every stage exists before any starts: a typo stops nothing halfway
        api.get(namespace, name)
    for name in jobs:
        before = start(api, namespace, name, queue)
        if state(before) == "succeeded":
            log(f"{name}: already succeeded, skipped")
            continue
        if state(before) == "failed":
            raise StageFailed(f"{describe(name, before)} [failed before this run: delete it and apply it again]")
        log(f"{name}: started, waiting (every {poll:g} s)")
        job = wait(api, namespace, name, poll, deadline, clock)
        if state(job) == "failed":
            raise StageFailed(describe(name, job))
        log(f"{name}: succeeded")


def connect(server: str | None = None, token: str | None = None, kubeconfig: str | None = None) -> Connection:
    """``--server``/``--token`` if given, else the pod's service account, else the kubeconfig."""
    if server:
        return Connection(server.rstrip("/"), lambda: token)
    conn = in_cluster() or from_kubeconfig(kubeconfig)
    if token:
        conn.token = lambda: token
    return conn


def main(
    namespace: str | None,
    jobs: Sequence[str] = DEFAULT_JOBS,
    poll: float = 10.0,
    timeout: float | None = None,
    queue: str | None = None,
    server: str | None = None,
    token: str | None = None,
    kubeconfig: str | None = None,
) -> int:
    """The command: 0 every stage succeeded, 1 a stage failed or the timeout passed, 2 the API said no
    (a missing RayJob, no credentials)."""
    try:
        conn = connect(server, token, kubeconfig)
        namespace = namespace or conn.namespace or "default"
        run_pipeline(RayJobs(conn), namespace, jobs, poll, timeout, queue)
    except StageFailed as e:
        print(f"m3ad-rl k8s pipeline: {e}", file=sys.stderr)
        return 1
    except KubeError as e:
        print(f"m3ad-rl k8s pipeline: {e}", file=sys.stderr)
        return 2
    print(f"m3ad-rl k8s pipeline: {', '.join(jobs)} succeeded in {namespace}", file=sys.stderr)
    return 0
