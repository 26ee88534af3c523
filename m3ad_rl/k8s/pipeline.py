"""Run RayJob stages in order: resume one, wait until it finishes, go on; stop at the first failure.

    m3ad-rl k8s pipeline --namespace m3ad-dev                                   # prepare, sft, rcrl, eval
    m3ad-rl k8s pipeline --namespace m3ad --jobs m3ad-sft,m3ad-rcrl,m3ad-eval --queue m3ad-gpu

The stages are created suspended (``spec.suspend: true``). Unlike ``kubectl wait`` on SUCCEEDED,
which waits forever when a stage fails, this:

- stops at a failed stage with its reason, leaves the later stages suspended, and exits 1;
- records each success in a ConfigMap (``--record``), so a stage whose RayJob was deleted after it
  succeeded (a ``deletionStrategy``, a clean-up, a TTL) counts as done, and a stage re-applied with
  ``kubectl apply -k`` is not run twice; ``--rerun NAME`` runs a recorded stage again;
- logs every change of state, and a line every ``--log-every`` seconds while nothing changes;
- fails a stage that is not admitted (still suspended: Kueue quota, a held workload) within
  ``--admission-timeout``, and one whose pods cannot start (an image that cannot be pulled, a
  missing Secret) for ``--pod-grace`` seconds: that stage is suspended again, so KubeRay deletes
  its cluster and its GPUs go back to the pool instead of waiting for ``activeDeadlineSeconds``;
- retries transient API errors (no connection, 429, 5xx) with backoff, and re-authenticates on 401.
"""

from __future__ import annotations

import datetime
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from m3ad_rl.k8s.api import Connection, Kube, KubeError, connect

DEFAULT_JOBS = ("m3ad-prepare", "m3ad-sft", "m3ad-rcrl", "m3ad-eval")
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
RECORD = "m3ad-pipeline-record"
FAILED_DEPLOYMENT = ("Failed", "ValidationFailed")
WAITING_DEPLOYMENT = ("", "New", "Suspended", "Suspending")  # not admitted yet, or held
POD_ERRORS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull", "CreateContainerConfigError")
MAX_TRANSIENT = 10  # consecutive API errors tolerated (a 72-hour stage sees some)


class StageFailed(RuntimeError):
    """A stage failed, or did not finish in time; the message is the one line to print."""


def state(job: dict) -> str:
    """'succeeded', 'failed', 'waiting' (suspended, not admitted) or 'running'.

    >>> state({"status": {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}})
    'succeeded'
    >>> state({"status": {"jobDeploymentStatus": "Retrying", "jobStatus": "FAILED"}})  # backoffLimit left
    'running'
    >>> state({"spec": {"suspend": True}, "status": {"jobDeploymentStatus": "Suspended"}})
    'waiting'
    """
    status = job.get("status") or {}
    deployment, ray_job = status.get("jobDeploymentStatus", ""), status.get("jobStatus", "")
    if deployment == "Complete":
        return "succeeded" if ray_job == "SUCCEEDED" else "failed"
    if deployment in FAILED_DEPLOYMENT:
        return "failed"
    if (job.get("spec") or {}).get("suspend") or deployment in WAITING_DEPLOYMENT:
        return "waiting"
    return "running"


def describe(name: str, job: dict) -> str:
    """``RayJob m3ad-sft: Failed/FAILED (AppFailed): <status.message>`` on one line."""
    status = job.get("status") or {}
    where = f"{status.get('jobDeploymentStatus') or 'New'}/{status.get('jobStatus') or '-'}"
    reason = f" ({status['reason']})" if status.get("reason") else ""
    message = " ".join(str(status.get("message") or "no message").split())
    return f"RayJob {name}: {where}{reason}: {message}"


def pod_problem(pods: list[dict]) -> str | None:
    """The first container that cannot start for a reason that waiting will not fix, as one line."""
    for pod in pods:
        status = pod.get("status") or {}
        for c in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
            waiting = (c.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in POD_ERRORS:
                image = f" image {c.get('image')!r}" if "Image" in waiting["reason"] else ""
                why = " ".join(str(waiting.get("message") or "").split())[:300]
                return f"pod {pod['metadata']['name']} container {c.get('name')!r}{image}: {waiting['reason']}: {why}"
    return None


@dataclass
class Runner:
    """One pass over the stages. ``log`` gets one line per event; ``clock``/``sleep`` are injectable."""

    kube: Kube
    namespace: str
    jobs: Sequence[str] = DEFAULT_JOBS
    poll: float = 10.0
    timeout: float | None = None
    queue: str | None = None
    record: str | None = RECORD
    rerun: Sequence[str] = ()
    admission_timeout: float | None = 7200.0
    pod_grace: float = 600.0
    log_every: float = 600.0
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    done: dict[str, dict] = field(default_factory=dict)

    def run(self) -> None:
        """Each stage in order; StageFailed at the first that fails, later ones left suspended."""
        self.deadline = self.clock() + self.timeout if self.timeout else float("inf")
        self.done = self._read_record()
        jobs = {name: self._retry(lambda n=name: self.kube.get_rayjob(self.namespace, n)) for name in self.jobs}
        missing = [n for n, job in jobs.items() if job is None and (n not in self.done or n in self.rerun)]
        if missing:  # every stage exists (or is recorded) before any starts: a typo stops nothing halfway
            fix = "apply the manifests first (kubectl apply -k ...)"
            raise KubeError(f"RayJob {', '.join(f'{self.namespace}/{n}' for n in missing)} not found: {fix}")
        for name in self.jobs:
            if name in self.done and name not in self.rerun:
                at = self.done[name].get("at", "?")
                self.log(f"{name}: succeeded at {at} (ConfigMap {self.record}), skipped; --rerun {name} runs it again")
                continue
            job = jobs[name]
            if state(job) == "succeeded":
                self.log(f"{name}: already succeeded, skipped")
                self._remember(name, job)
                continue
            if state(job) == "failed":
                raise StageFailed(f"{describe(name, job)} [failed before this run: delete it and apply it again]")
            self._start(name, job)
            job = self._wait(name)
            if state(job) == "failed":
                raise StageFailed(describe(name, job))
            self.log(f"{name}: succeeded")
            self._remember(name, job)

    # ---- one stage -------------------------------------------------------------------------------
    def _start(self, name: str, job: dict) -> None:
        """Label it for Kueue (``queue``), or clear ``spec.suspend``. A job already in a Kueue queue
        is Kueue's to resume, so it is left alone."""
        labels = (job.get("metadata") or {}).get("labels") or {}
        if self.queue:
            body: dict | None = {"metadata": {"labels": {QUEUE_LABEL: self.queue}}}
        elif QUEUE_LABEL not in labels and (job.get("spec") or {}).get("suspend"):
            body = {"spec": {"suspend": False}}
        else:
            body = None
        if body is not None:
            self._retry(lambda: self.kube.patch_rayjob(self.namespace, name, body))
        if self.queue:
            how = f"queued in {self.queue}"
        else:
            how = "started" if body else f"left to Kueue ({labels[QUEUE_LABEL]})"
        self.log(f"{name}: {how}, waiting (every {self.poll:g} s)")

    def _wait(self, name: str) -> dict:
        """Poll until the stage succeeds or fails; StageFailed when it vanishes, is not admitted in
        time, has pods that cannot start, or ``--timeout`` passes."""
        started = last_log = self.clock()
        seen, job, pods_bad_since = "", {}, None
        while True:
            current = self._retry(lambda: self.kube.get_rayjob(self.namespace, name))
            if current is None:
                before = describe(name, job) if job else f"RayJob {name}"
                why = "deleted before this runner saw it finish"
                fix = "if it succeeded, keep it longer than --poll (ttlSecondsAfterFinished / deletionStrategy)"
                raise StageFailed(f"{before} [{why}: apply it again and re-run; {fix}]")
            job, now = current, self.clock()
            st = state(job)
            if st in ("succeeded", "failed"):
                return job
            label = self._label(job)
            if label != seen:
                self.log(f"{name}: {label}")
                seen, last_log = label, now
            elif now - last_log >= self.log_every:
                self.log(f"{name}: still {label} after {(now - started) / 60:.0f} min")
                last_log = now
            if st == "waiting" and self.admission_timeout and now - started > self.admission_timeout:
                hint = "is spec.suspend held?"
                if self._queued(job):
                    hint = f"kubectl describe workloads -n {self.namespace}"
                self._stop(name, job)
                raise StageFailed(
                    f"{describe(name, job)} [not admitted within --admission-timeout "
                    f"{self.admission_timeout:g} s; {hint}; the stage is suspended]"
                )
            problem = self._pod_problem(job) if st == "running" else None
            if problem is None:
                pods_bad_since = None
            else:
                pods_bad_since = pods_bad_since if pods_bad_since is not None else now
                if now - pods_bad_since >= self.pod_grace:
                    self._stop(name, job)
                    raise StageFailed(
                        f"RayJob {name}: {problem} [for {self.pod_grace:g} s (--pod-grace); the stage is suspended "
                        "so its cluster and GPUs are released: fix it, then re-run]"
                    )
            if now > self.deadline:
                raise StageFailed(f"{describe(name, job)} [still not finished at --timeout; left as it is]")
            self.sleep(self.poll)

    def _label(self, job: dict) -> str:
        status = job.get("status") or {}
        text = f"{status.get('jobDeploymentStatus') or 'New'}/{status.get('jobStatus') or '-'}"
        if state(job) == "waiting":
            queue = self._queued(job)
            text += f" (waiting for Kueue to admit it from {queue})" if queue else " (suspended)"
        if status.get("jobDeploymentStatus") == "Retrying" or status.get("failed"):
            text += f", {status.get('failed', 0)} failed attempt(s): {' '.join(str(status.get('message', '')).split())}"
        return text

    def _queued(self, job: dict) -> str | None:
        return ((job.get("metadata") or {}).get("labels") or {}).get(QUEUE_LABEL)

    def _pod_problem(self, job: dict) -> str | None:
        """A pod of the stage's Ray cluster, or its submitter, that cannot start (no RBAC: no check)."""
        selectors = [f"batch.kubernetes.io/job-name={job['metadata']['name']}"]
        if cluster := (job.get("status") or {}).get("rayClusterName"):
            selectors.insert(0, f"ray.io/cluster={cluster}")
        pods: list[dict] = []
        for selector in selectors:
            try:
                pods += self._retry(lambda s=selector: self.kube.list_pods(self.namespace, s))
            except KubeError as e:
                if e.status != 403:
                    raise
                return None
        return pod_problem(pods)

    def _stop(self, name: str, job: dict) -> None:
        """Suspend the stage again (KubeRay deletes its cluster); out of its Kueue queue too."""
        body: dict = {"spec": {"suspend": True}}
        if self._queued(job):
            body["metadata"] = {"labels": {QUEUE_LABEL: None}}
        self._retry(lambda: self.kube.patch_rayjob(self.namespace, name, body))

    # ---- the record and retries -----------------------------------------------------------------
    def _read_record(self) -> dict[str, dict]:
        if not self.record:
            return {}
        cm = self._retry(lambda: self.kube.get_configmap(self.namespace, self.record))
        out = {}
        for name, value in ((cm or {}).get("data") or {}).items():
            try:
                out[name] = json.loads(value)
            except ValueError:
                continue
        return {n: v for n, v in out.items() if v.get("state") == "succeeded"}

    def _remember(self, name: str, job: dict) -> None:
        if not self.record:
            return
        entry = {
            "state": "succeeded",
            "at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "uid": (job.get("metadata") or {}).get("uid"),
            "jobId": (job.get("status") or {}).get("jobId"),
        }
        labels = {"app.kubernetes.io/name": "m3ad-pipeline", "app.kubernetes.io/component": "record"}
        data = {name: json.dumps(entry)}
        self._retry(lambda: self.kube.put_configmap_data(self.namespace, self.record, data, labels))
        self.done[name] = entry

    def _retry(self, call: Callable[[], Any]) -> Any:
        """``call()``, again after a transient API error (backoff up to a minute), at most MAX_TRANSIENT times."""
        for attempt in range(MAX_TRANSIENT + 1):
            try:
                return call()
            except KubeError as e:
                if not e.transient or attempt == MAX_TRANSIENT:
                    raise
                wait = min(60.0, max(self.poll, 0.01) * 2**attempt)
                self.log(f"transient API error ({e}); retrying in {wait:g} s")
                self.sleep(wait)
        raise AssertionError("unreachable")


def main(
    namespace: str | None,
    jobs: Sequence[str] = DEFAULT_JOBS,
    poll: float = 10.0,
    timeout: float | None = None,
    queue: str | None = None,
    server: str | None = None,
    token: str | None = None,
    kubeconfig: str | None = None,
    **options: Any,
) -> int:
    """The command: 0 every stage succeeded, 1 a stage failed or a deadline passed, 2 the API said no
    (a missing RayJob, no credentials, no permission). ``options``: the Runner's other fields."""
    try:
        conn: Connection = connect(server, token, kubeconfig)
        namespace = namespace or conn.namespace or "default"
        Runner(Kube(conn), namespace, jobs, poll, timeout, queue, **options).run()
    except StageFailed as e:
        print(f"m3ad-rl k8s pipeline: {e}", file=sys.stderr)
        return 1
    except KubeError as e:
        print(f"m3ad-rl k8s pipeline: {e}", file=sys.stderr)
        return 2
    print(f"m3ad-rl k8s pipeline: {', '.join(jobs)} succeeded in {namespace}", file=sys.stderr)
    return 0
