"""Kueue objects as Kueue's webhooks check them, and the references between them and the RayJobs.

Schema: ResourceFlavor, ClusterQueue, LocalQueue and WorkloadPriorityClass (``kueue.x-k8s.io``
v1beta1/v1beta2), unknown fields rejected, each flavor listing exactly the resource group's
``coveredResources``. References, across every document checked together: a LocalQueue's
ClusterQueue, a ClusterQueue's flavors, the queue a RayJob is labelled with (or that the pipeline
runner hands its stages to), and whether each queued RayJob's pods (head, every worker, the
submitter) fit in the quota with every resource covered. A RayJob Kueue manages must also delete its
cluster when done and not autoscale (Kueue's RayJob webhook).
"""

from __future__ import annotations

from decimal import Decimal

from m3ad_rl.k8s.validate.kuberay import pods
from m3ad_rl.k8s.validate.quantity import parse_quantity

GROUP = "kueue.x-k8s.io"
VERSIONS = (f"{GROUP}/v1beta1", f"{GROUP}/v1beta2")
QUEUE_LABEL = f"{GROUP}/queue-name"
STRATEGIES = ("StrictFIFO", "BestEffortFIFO")
SPEC_KEYS = {
    "ResourceFlavor": {"nodeLabels", "nodeTaints", "tolerations", "topologyName"},
    "ClusterQueue": {"cohort", "cohortName", "namespaceSelector", "queueingStrategy", "resourceGroups", "preemption",
                     "flavorFungibility", "fairSharing", "admissionChecks", "admissionChecksStrategy", "stopPolicy",
                     "admissionScope"},
    "LocalQueue": {"clusterQueue", "stopPolicy", "fairSharing"},
}  # fmt: skip
QUOTA_KEYS = {"name", "nominalQuota", "borrowingLimit", "lendingLimit"}
RUNNER_JOBS = ("m3ad-prepare", "m3ad-sft", "m3ad-rcrl", "m3ad-eval")  # `k8s pipeline`'s default --jobs


def is_kueue(doc: dict) -> bool:
    return doc.get("apiVersion") in VERSIONS or str(doc.get("apiVersion", "")).startswith(f"{GROUP}/")


def check_object(doc: dict) -> list[tuple[str, str]]:
    """One Kueue object against the fields Kueue defines."""
    kind, spec = doc.get("kind"), doc.get("spec")
    if doc.get("apiVersion") not in VERSIONS:
        return [("apiVersion", f"{doc.get('apiVersion')!r} is not a Kueue API version: use {VERSIONS[-1]}")]
    if kind == "WorkloadPriorityClass":
        ok = isinstance(doc.get("value"), int)
        return [] if ok else [("value", "required: an integer priority (higher is admitted first)")]
    if kind not in SPEC_KEYS:
        return []
    if spec is None and kind == "ResourceFlavor":
        return []
    if not isinstance(spec, dict):
        return [("spec", f"a {kind} needs a spec")]
    problems = [
        (f"spec.{k}", f"unknown field for a {kind}: {_near(k, SPEC_KEYS[kind])}")
        for k in spec
        if k not in SPEC_KEYS[kind]
    ]
    if kind == "LocalQueue" and not isinstance(spec.get("clusterQueue"), str):
        problems.append(("spec.clusterQueue", "required: the name of the ClusterQueue this queue feeds"))
    if kind == "ClusterQueue":
        problems += _check_cluster_queue(spec)
    return problems


def _check_cluster_queue(spec: dict) -> list[tuple[str, str]]:
    problems = []
    strategy = spec.get("queueingStrategy")
    if strategy is not None and strategy not in STRATEGIES:
        problems.append(("spec.queueingStrategy", f"{strategy!r} is not one of {', '.join(STRATEGIES)}"))
    groups = spec.get("resourceGroups")
    if not isinstance(groups, list) or not groups:
        return [*problems, ("spec.resourceGroups", "required: at least one group of covered resources and flavors")]
    for g, group in enumerate(groups):
        where = f"spec.resourceGroups[{g}]"
        covered = group.get("coveredResources") if isinstance(group, dict) else None
        if not isinstance(covered, list) or not covered:
            problems.append((f"{where}.coveredResources", "required: the resources this group's quota covers"))
            continue
        for f, flavor in enumerate(group.get("flavors") or []):
            fwhere = f"{where}.flavors[{f}]"
            names = [r.get("name") for r in flavor.get("resources") or [] if isinstance(r, dict)]
            if names != covered:
                why = f"lists {names}, but coveredResources is {covered}"
                problems.append((f"{fwhere}.resources", f"{why}: Kueue wants the same resources in the same order"))
            for r, res in enumerate(flavor.get("resources") or []):
                for key in set(res) - QUOTA_KEYS:
                    problems.append((f"{fwhere}.resources[{r}].{key}", f"unknown field: {_near(key, QUOTA_KEYS)}"))
                for key in ("nominalQuota", "borrowingLimit", "lendingLimit"):
                    if key in res and parse_quantity(res[key]) is None:
                        problems.append(
                            (f"{fwhere}.resources[{r}].{key}", f"{res[key]!r} is not a quantity (8, 500m, 64Gi)")
                        )
            if not flavor.get("name"):
                problems.append((f"{fwhere}.name", "required: a ResourceFlavor's name"))
    return problems


def check_references(docs: list[dict], strict: bool = False) -> list[tuple[int, str, str]]:
    """(document index, field path, message) for references that lead nowhere, and queued RayJobs that
    Kueue would refuse or never admit. A reference to a kind that none of ``docs`` has (the cluster
    objects are applied apart, by an admin) is reported only when ``strict``."""
    by_kind: dict[str, dict[str, int]] = {}
    for i, d in enumerate(docs):
        by_kind.setdefault(d.get("kind", ""), {})[(d.get("metadata") or {}).get("name")] = i
    flavors, cqs, lqs = (by_kind.get(k, {}) for k in ("ResourceFlavor", "ClusterQueue", "LocalQueue"))
    problems: list[tuple[int, str, str]] = []

    def missing(i: int, path: str, kind: str, name: str, pool: dict) -> bool:
        if name in pool or (not pool and not strict):
            return False
        have = ", ".join(sorted(map(str, pool))) or "none"
        problems.append((i, path, f"no {kind} named {name!r} among these manifests (have: {have})"))
        return True

    for i in lqs.values():
        target = (docs[i].get("spec") or {}).get("clusterQueue")
        if isinstance(target, str):
            missing(i, "spec.clusterQueue", "ClusterQueue", target, cqs)
    for i in cqs.values():
        for g, group in enumerate((docs[i].get("spec") or {}).get("resourceGroups") or []):
            for f, flavor in enumerate((group or {}).get("flavors") or []):
                missing(i, f"spec.resourceGroups[{g}].flavors[{f}].name", "ResourceFlavor", flavor.get("name"), flavors)
    for i, queue, path in _queued_rayjobs(docs):
        if docs[i].get("kind") == "RayJob":
            problems += [(i, p, m) for p, m in _kueue_rayjob_rules(docs[i], queue)]
        if missing(i, path, "LocalQueue", queue, lqs) or queue not in lqs:
            continue
        cq_name = (docs[lqs[queue]].get("spec") or {}).get("clusterQueue")
        if cq_name in cqs:
            problems += [(i, "spec", m) for m in _fits(docs[i], docs[cqs[cq_name]], queue)]
    return problems


def _queued_rayjobs(docs: list[dict]) -> list[tuple[int, str, str]]:
    """(index, queue, where the queue is named) for RayJobs and RayClusters labelled for a queue (an
    autoscaling RayCluster counted at every group's ``maxReplicas``), and for the stages
    the pipeline runner (a Job running `m3ad-rl k8s pipeline --queue Q`) hands to one."""
    out, runner_queue, runner_jobs = [], None, RUNNER_JOBS
    for d in docs:
        for pod in pods(d):
            for c in pod.spec.get("containers") or []:
                argv = [*(c.get("command") or []), *(c.get("args") or [])]
                if "pipeline" in argv and "--queue" in argv[:-1]:
                    runner_queue = argv[argv.index("--queue") + 1]
                    if "--jobs" in argv[:-1]:
                        runner_jobs = tuple(argv[argv.index("--jobs") + 1].split(","))
    for i, d in enumerate(docs):
        if d.get("kind") not in ("RayJob", "RayCluster"):
            continue
        labels = (d.get("metadata") or {}).get("labels") or {}
        if QUEUE_LABEL in labels:
            out.append((i, labels[QUEUE_LABEL], f"metadata.labels.{QUEUE_LABEL}"))
        elif runner_queue and d["kind"] == "RayJob" and d["metadata"].get("name") in runner_jobs:
            out.append((i, runner_queue, "(the pipeline runner's --queue)"))
    return out


def _kueue_rayjob_rules(job: dict, queue: str) -> list[tuple[str, str]]:
    """Kueue's RayJob webhook: the cluster is deleted when the job ends, no autoscaling, no selected cluster."""
    spec, problems = job.get("spec") or {}, []
    why = f"Kueue (queue {queue!r}) refuses a RayJob"
    if not spec.get("shutdownAfterJobFinishes"):
        problems.append(("spec.shutdownAfterJobFinishes", f"{why} that keeps its cluster: set it to true"))
    if (spec.get("rayClusterSpec") or {}).get("enableInTreeAutoscaling"):
        fix = "turn autoscaling off for queued jobs (Kueue admits a fixed size; the pool autoscales instead)"
        problems.append(("spec.rayClusterSpec.enableInTreeAutoscaling", f"{why} with an autoscaling cluster: {fix}"))
    if spec.get("clusterSelector"):
        problems.append(("spec.clusterSelector", f"{why} on a selected cluster: give it a rayClusterSpec"))
    return problems


def _fits(job: dict, cq: dict, queue: str) -> list[str]:
    """Every resource the job's pods request is covered, and the sum fits the largest flavor's quota."""
    need: dict[str, Decimal] = {}
    for pod in pods(job):
        count = 1
        if pod.role == "worker":  # an autoscaling cluster may grow every group to maxReplicas
            grows = pod.cluster.get("enableInTreeAutoscaling") and "maxReplicas" in pod.group
            count = pod.group["maxReplicas"] if grows else pod.group.get("replicas", pod.group.get("minReplicas", 1))
        for c in pod.spec.get("containers") or []:
            for r, q in ((c.get("resources") or {}).get("requests") or {}).items():
                if (value := parse_quantity(q)) is not None:
                    need[r] = need.get(r, Decimal(0)) + count * value
    quota: dict[str, Decimal] = {}
    for group in (cq.get("spec") or {}).get("resourceGroups") or []:
        for flavor in group.get("flavors") or []:
            for res in flavor.get("resources") or []:
                if (value := parse_quantity(res.get("nominalQuota"))) is not None:
                    quota[res["name"]] = max(quota.get(res["name"], Decimal(0)), value)
    cq_name = (cq.get("metadata") or {}).get("name")
    problems = []
    for r in sorted(need):
        if r not in quota:
            problems.append(
                f"its pods request {r} but ClusterQueue {cq_name!r} (queue {queue!r}) does not cover it: Kueue never "
                f"admits the job; add {r} to coveredResources with a quota"
            )
        elif need[r] > quota[r]:
            problems.append(
                f"its pods request {_fmt(need[r])} {r} in all, more than ClusterQueue {cq_name!r}'s quota "
                f"{_fmt(quota[r])}: Kueue never admits it; raise nominalQuota or shrink the job"
            )
    return problems


def _fmt(x: Decimal) -> str:
    return f"{x.normalize():f}" if x < 10**6 else f"{x / 2**30:.0f}Gi"


def _near(key: str, known: set[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, sorted(known), n=1)
    return f"did you mean {close[0]!r}?" if close else f"known: {', '.join(sorted(known))}"
