"""``m3ad-rl sweep run``: see a sweep through on a Ray cluster whose worker pool may autoscale.

    m3ad-rl sweep run --config configs/sweeps/presets-dev.yaml --address http://HEAD:8265 \\
        --max-in-flight 2 --pool manifests/base/raycluster.autoscaler.yaml

Submitting is not finishing. This keeps at most ``--max-in-flight`` variants running (the rest wait
their turn, so a pool that grows to ``maxReplicas`` is not asked for more), prints a line whenever a
variant or the number of worker nodes changes, resubmits a variant whose job failed because a node
was lost (its entrypoint has ``--resume``; up to ``--retries`` times), fails at once a variant whose
pending actors or placement groups ask for a bundle that no node type of ``--pool`` can hold (Ray
would leave it pending forever: "infeasible"), and ends with ``sweep report``.

Every decision is derived from the cluster's job list (submission ids are ``<job>-<sweep key>`` and
``…-r1``, ``…-r2`` for retries) and the reports in storage, so running the same command again after
the controller itself was killed picks up where the sweep stands.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
LOST_NODE_EXIT = 4  # m3ad-rl's exit code for "a Ray worker or node was lost … run again with --resume"
LOST_NODE_WORDS = ("node was lost", "node died", "NodeDiedError", "ActorDiedError", "raylet")


@dataclass
class Task:
    """One variant's job: its name (the submission id's stem), what runs, and the job's metadata."""

    name: str
    entrypoint: str
    metadata: dict[str, str] = field(default_factory=dict)
    runtime_env: dict | None = None  # instead of the runner's


@dataclass
class Outcome:
    name: str
    state: str  # SUCCEEDED, FAILED, INFEASIBLE, or the last seen state
    attempts: list[str]
    message: str = ""


def fits(bundle: dict[str, float], node_types: dict[str, dict[str, float]]) -> bool:
    """Some node type can hold this resource bundle (``memory``/object store aside)."""
    need = {  # a placement group's own resources (CPU_group_<id>, bundle_group_<id>) are not a node's
        k: v
        for k, v in bundle.items()
        if v and k not in ("memory", "object_store_memory") and "_group_" not in k and not k.startswith("node:")
    }  # nor a pin to a node (node:<ip>, node:__internal_head__ for Ray's own actors on the head)
    return any(all(res.get(k, 0) >= v for k, v in need.items()) for res in node_types.values())


class SweepRunner:
    """The controller loop; ``client`` is a ``ray.job_submission.JobSubmissionClient``."""

    def __init__(
        self,
        client: Any,
        tasks: Sequence[Task],
        key: str,
        max_in_flight: int = 2,
        retries: int = 2,
        poll: float = 5.0,
        node_types: dict[str, dict[str, float]] | None = None,
        runtime_env: dict | None = None,
        log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client, self.tasks, self.key = client, list(tasks), key
        self.max_in_flight, self.retries, self.poll = max_in_flight, retries, poll
        self.node_types, self.runtime_env, self.log, self.clock = node_types, runtime_env, log, clock
        self.infeasible: dict[str, str] = {}
        self.nodes: list[tuple[float, int, float]] = []  # (seconds since start, worker nodes alive, their GPUs)
        self.timeline: Callable[[list[tuple[float, int, float]]], None] | None = None  # called as it grows

    def sid(self, task: Task, attempt: int) -> str:
        return f"{task.name}-{self.key}" + (f"-r{attempt}" if attempt else "")

    # ---- what the cluster says ------------------------------------------------------------------
    def _jobs(self) -> dict[str, Any]:
        return {j.submission_id: j for j in self.client.list_jobs() if j.submission_id}

    def _attempts(self, task: Task, jobs: dict[str, Any]) -> list[str]:
        return [self.sid(task, i) for i in range(self.retries + 1) if self.sid(task, i) in jobs]

    def _status(self, job: Any) -> str:
        return str(job.status).split(".")[-1]

    def _lost_node(self, job: Any) -> bool:
        if getattr(job, "driver_exit_code", None) == LOST_NODE_EXIT:
            return True
        text = str(job.message or "")
        if not any(w in text for w in LOST_NODE_WORDS):
            try:
                text = self.client.get_job_logs(job.submission_id)[-4000:]
            except Exception:  # logs of a job whose driver never started
                return False
        return any(w in text for w in LOST_NODE_WORDS)

    def _worker_nodes(self) -> tuple[int, float]:
        """(worker nodes alive, their GPUs); (-1, 0) when the dashboard does not answer."""
        import json
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.client._address}/api/v0/nodes?limit=1000&detail=1", timeout=10) as r:
                rows = json.load(r)["data"]["result"]["result"]
        except (OSError, KeyError, ValueError):
            return -1, 0.0
        alive = [n for n in rows if n.get("state") == "ALIVE" and not n.get("is_head_node")]
        return len(alive), sum(float((n.get("resources_total") or {}).get("GPU", 0)) for n in alive)

    def _pending_bundles(self, job_id: str) -> list[dict[str, float]]:
        """Resource bundles of this Ray job that wait for a node: pending actors and placement groups."""
        from ray.util.state import list_actors, list_placement_groups

        address = self.client._address
        actors = list_actors(
            address=address, filters=[("job_id", "=", job_id)], detail=True, limit=10000, raise_on_missing_output=False
        )
        waiting = ("PENDING_CREATION", "DEPENDENCIES_UNREADY")
        out = [dict(a.required_resources or {}) for a in actors if a.state in waiting]
        for pg in list_placement_groups(address=address, detail=True, limit=10000, raise_on_missing_output=False):
            if pg.state == "PENDING" and pg.creator_job_id == job_id:
                out += [dict(b.get("unit_resources") or {}) for b in pg.bundles or []]
        return out

    def _check_infeasible(self, task: Task, job: Any) -> str | None:
        if not self.node_types or not job.job_id:
            return None
        try:
            bundles = self._pending_bundles(job.job_id)
        except Exception:  # the state API is best effort; never stop a sweep over it
            return None
        for bundle in bundles:
            if not fits(bundle, self.node_types):
                types = "; ".join(f"{n}: {r}" for n, r in self.node_types.items())
                return f"asks for {bundle}, which no node type can hold ({types})"
        return None

    # ---- the loop -------------------------------------------------------------------------------
    def step(self) -> tuple[list[Outcome], bool]:
        """Look once, act once: resubmit, fail, submit. Returns every variant's outcome and whether all ended."""
        jobs = self._jobs()
        outcomes, in_flight, waiting = [], 0, []
        for task in self.tasks:
            attempts = self._attempts(task, jobs)
            if task.name in self.infeasible:  # found so before it was sent, or while it waited
                outcomes.append(Outcome(task.name, "INFEASIBLE", attempts, self.infeasible[task.name]))
                continue
            if not attempts:
                waiting.append(task)
                outcomes.append(Outcome(task.name, "WAITING", []))
                continue
            job = jobs[attempts[-1]]
            status = self._status(job)
            if status == "FAILED" and len(attempts) <= self.retries and self._lost_node(job):
                nxt = self.sid(task, len(attempts))
                self.log(f"{task.name}: {attempts[-1]} lost a node; resubmitted as {nxt} (it resumes)")
                self._submit(task, nxt)
                outcomes.append(Outcome(task.name, "PENDING", [*attempts, nxt], "resubmitted after a lost node"))
                in_flight += 1
                continue
            if status not in TERMINAL:
                why = self._check_infeasible(task, job)
                if why:
                    self.infeasible[task.name] = why
                    self.client.stop_job(attempts[-1])
                    self.log(f"{task.name}: infeasible, stopped: {why}")
                    outcomes.append(Outcome(task.name, "INFEASIBLE", attempts, why))
                    continue
                in_flight += 1
            outcomes.append(Outcome(task.name, status, attempts, " ".join(str(job.message or "").split())[:200]))
        for task in waiting[: max(0, self.max_in_flight - in_flight)]:
            self._submit(task, self.sid(task, 0))
            for o in outcomes:
                if o.name == task.name:
                    o.state, o.attempts = "PENDING", [self.sid(task, 0)]
        done = all(o.state in (*TERMINAL, "INFEASIBLE") for o in outcomes)
        return outcomes, done

    def _submit(self, task: Task, sid: str) -> None:
        from m3ad_rl.k8s.sweep import _submit_retrying

        kwargs: dict[str, Any] = {"entrypoint": task.entrypoint, "submission_id": sid, "metadata": task.metadata}
        if task.runtime_env or self.runtime_env:
            kwargs["runtime_env"] = task.runtime_env or self.runtime_env
        try:
            _submit_retrying(self.client, **kwargs)
        except RuntimeError as e:
            if "already exists" not in str(e):  # another controller (or our last life) got there first
                raise

    def run(self, timeout: float | None = None) -> list[Outcome]:
        """Until every variant succeeded, failed for good or was infeasible (or ``timeout`` passed)."""
        start, last = self.clock(), ""
        while True:
            outcomes, done = self.step()
            nodes, gpus = self._worker_nodes()
            if not self.nodes or self.nodes[-1][1:] != (nodes, gpus) or done:
                self.nodes.append((round(self.clock() - start, 1), nodes, gpus))
                if self.timeline is not None:
                    self.timeline(self.nodes)
            counts: dict[str, int] = {}
            for o in outcomes:
                counts[o.state] = counts.get(o.state, 0) + 1
            line = ", ".join(f"{v} {k.lower()}" for k, v in sorted(counts.items())) + f"; {nodes} worker node(s)"
            if line != last:
                elapsed = self.clock() - start
                detail = "  ".join(f"{o.name}={o.state.lower()}" for o in outcomes)
                self.log(f"[{elapsed:6.0f} s] {line} | {detail}")
                last = line
            if done:
                return outcomes
            if timeout is not None and self.clock() - start > timeout:
                raise TimeoutError(f"sweep not finished after {timeout:g} s: {line}")
            time.sleep(self.poll)


def fit_in_flight(spec: Any, types: dict[str, dict], wanted: int, log: Callable[[str], None]) -> int:
    """``wanted``, lowered so that that many variants fit the pool at its largest: K variants that each
    hold part of a full pool while waiting for the rest would wait for each other forever."""
    from m3ad_rl.core.config import load_config
    from m3ad_rl.k8s.sweep import _fmt
    from m3ad_rl.train.rcrl.cluster import resource_requests
    from m3ad_rl.train.rcrl.config import RCRLConfig

    cfg = load_config(RCRLConfig, spec.train_config, [f"{k}={_fmt(v)}" for k, v in spec.train_set.items()])
    need = {k: sum(b.get(k, 0) for _, b in resource_requests(cfg)) for k in ("CPU", "GPU")}
    have = {k: sum(t["resources"].get(k, 0) * t["max_workers"] for t in types.values()) for k in ("CPU", "GPU")}
    fit = min((int(have[k] // need[k]) for k in need if need[k]), default=wanted)
    if fit < wanted:
        log(f"--max-in-flight {wanted} lowered to {max(fit, 1)}: a variant needs {need}, the pool holds at most {have}")
    return max(1, min(wanted, fit))


def infeasible_before_submit(spec: Any, job: Any, types: dict[str, dict[str, float]]) -> str | None:
    """Why the variant's RCRL run cannot be placed on any node type of the pool, or None."""
    from m3ad_rl.core.config import load_config
    from m3ad_rl.k8s.sweep import _fmt
    from m3ad_rl.train.rcrl.cluster import resource_requests
    from m3ad_rl.train.rcrl.config import RCRLConfig

    sets = [f"{k}={_fmt(v)}" for k, v in spec.train_set.items()]
    cfg = load_config(RCRLConfig, spec.train_config, sets, sections={"reward": job.reward})
    shown = "; ".join(f"{n}: {r}" for n, r in types.items())
    for what, bundle in resource_requests(cfg):
        if not fits(bundle, types):
            return f"its RCRL run asks for {what} with {bundle}, which no node type can hold ({shown})"
    return None


def main(
    spec: Any,
    address: str,
    max_in_flight: int,
    retries: int,
    poll: float,
    pool: str | None,
    node_cpus: float | None = None,
) -> int:
    """CLI body: run the sweep to its end, then write its report; 0 when every variant succeeded."""
    import hashlib
    import tempfile
    from pathlib import Path

    import yaml
    from ray.job_submission import JobSubmissionClient

    from m3ad_rl.k8s.pool import HEAD_TYPE, node_types
    from m3ad_rl.k8s.sweep import (
        TIMELINE,
        config_files,
        entrypoint,
        expand,
        job_name,
        report,
        variant_dir,
        write_timeline,
    )

    types, pool_max = None, None
    if pool:
        manifest = next(d for d in yaml.safe_load_all(Path(pool).read_text()) if d and d.get("kind") == "RayCluster")
        nt = {n: t for n, t in node_types(manifest, node_cpus).items() if n != HEAD_TYPE}
        types = {n: t["resources"] for n, t in nt.items()}
        pool_max = sum(t["max_workers"] for t in nt.values())
    key = hashlib.sha1(str(spec.out).encode()).hexdigest()[:6]  # as `sweep submit` names them
    tasks = [
        Task(job_name(spec.name, job.variant), entrypoint(spec, job, config_dir="."),
             {k.split("/")[-1]: v for k, v in job.labels.items()})
        for job in expand(spec)
    ]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="m3ad-sweep-") as tmp:
        for task in tasks:  # one working_dir per variant: see variant_dirs
            task.runtime_env = {"working_dir": str(variant_dir(Path(tmp), task.name, config_files(spec)))}
        runner = SweepRunner(JobSubmissionClient(address), tasks, key, max_in_flight, retries, poll, types)
        runner.timeline = lambda rows: write_timeline(f"{spec.out.rstrip('/')}/{TIMELINE}", rows, pool_max)
        if types:  # what each variant will ask for, against the pool's node types, before sending any
            for task, job in zip(tasks, expand(spec), strict=True):
                if why := infeasible_before_submit(spec, job, types):
                    runner.infeasible[task.name] = why
                    runner.log(f"{task.name}: infeasible, not submitted: {why}")
            runner.max_in_flight = fit_in_flight(spec, nt, max_in_flight, runner.log)
        outcomes = runner.run()
    table, _ = report(spec, out=spec.out)  # beside the variants' folders, not in the current folder
    print(table)
    bad = [o for o in outcomes if o.state != "SUCCEEDED"]
    for o in bad:
        print(f"m3ad-rl sweep run: {o.name}: {o.state.lower()} after {len(o.attempts)} attempt(s): {o.message}",
              file=sys.stderr)  # fmt: skip
        if o.state == "FAILED" and o.attempts:
            tail = runner.client.get_job_logs(o.attempts[-1]).strip().splitlines()[-12:]
            print("\n".join(f"    {line}" for line in tail), file=sys.stderr)
    return 1 if bad else 0
