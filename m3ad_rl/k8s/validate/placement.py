"""Will a Ray cluster's fixed GPU pods all fit on the nodes they are sized for?

KubeRay creates a job's pods one by one (head, then each worker group in order), and the default
scheduler scores nodes ``LeastAllocated``: it spreads. Four 1-GPU rollout pods on two 8-GPU nodes
land 2 + 2, and an 8-GPU train pod created after them finds no node with 8 free GPUs: it stays
Pending until ``preRunningDeadlineSeconds`` fails the job. This module replays that on the smallest
set of nodes the job's GPUs need (each node the size of the largest GPU pod), in both group orders,
honouring required pod (anti-)affinity on ``kubernetes.io/hostname`` — the fix: the small pods pack
on one node (required affinity to each other) and the big one keeps away from them (anti-affinity).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from m3ad_rl.k8s.validate.kuberay import GPU, Pod, pods
from m3ad_rl.k8s.validate.quantity import parse_quantity

HOSTNAME = "kubernetes.io/hostname"


@dataclass
class _Node:
    free: float
    pods: list[_GpuPod] = field(default_factory=list)  # the pods placed here


@dataclass(frozen=True)
class _GpuPod:
    group: str  # the group's field path
    name: str
    gpus: float
    labels: dict
    affinity: tuple  # required pod-affinity label selectors (hostname topology)
    anti: tuple  # required pod-anti-affinity label selectors (hostname topology)


def _gpus(pod: Pod) -> float:
    total = 0.0
    for c in (pod.spec.get("containers") or [])[:1]:
        res = (c or {}).get("resources") or {}
        value = (res.get("limits") or {}).get(GPU, (res.get("requests") or {}).get(GPU))
        if value is not None:
            total += float(parse_quantity(str(value)) or 0)
    return total


def _selectors(terms) -> tuple:
    """``matchLabels`` of the required terms on the hostname topology (other terms are not replayed)."""
    out = []
    for t in terms or []:
        if isinstance(t, dict) and t.get("topologyKey") == HOSTNAME:
            sel = (t.get("labelSelector") or {}).get("matchLabels") or {}
            if sel:
                out.append(tuple(sorted(sel.items())))
    return tuple(out)


def _matches(selector: tuple, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector)


def gpu_pods(doc: dict) -> list[_GpuPod]:
    """Every GPU pod KubeRay would create for ``doc``, in creation order (groups, then replicas)."""
    out = []
    for pod in pods(doc):
        if not pod.runs_ray or pod.role != "worker":
            continue
        try:  # a malformed quantity or count is the schema check's finding, not this one's
            gpus = _gpus(pod)
            replicas = int(pod.group.get("replicas", pod.group.get("minReplicas", 1)) or 0)
        except (TypeError, ValueError):
            continue
        if gpus <= 0:
            continue
        aff = pod.spec.get("affinity") or {}
        req = "requiredDuringSchedulingIgnoredDuringExecution"
        affinity = _selectors((aff.get("podAffinity") or {}).get(req))
        anti = _selectors((aff.get("podAntiAffinity") or {}).get(req))
        labels = dict((pod.template.get("metadata") or {}).get("labels") or {})
        name = str(pod.group.get("groupName", "?"))
        out += [_GpuPod(pod.group_path, name, gpus, labels, affinity, anti)] * replicas
    return out


def _fits(node: _Node, p: _GpuPod, nodes: list[_Node]) -> bool:
    if node.free < p.gpus:
        return False
    if any(_matches(s, other.labels) for s in p.anti for other in node.pods):
        return False
    # symmetry: a pod already here whose anti-affinity selects the newcomer keeps it out
    if any(_matches(s, p.labels) for other in node.pods for s in other.anti):
        return False
    for s in p.affinity:
        anywhere = any(_matches(s, other.labels) for n in nodes for other in n.pods)
        here = any(_matches(s, other.labels) for other in node.pods)
        # the first pod of a self-affine set may go anywhere (the scheduler's own exception)
        if not here and (anywhere or not _matches(s, p.labels)):
            return False
    return True


def replay(order: list[_GpuPod], node_gpus: float, n_nodes: int) -> _GpuPod | None:
    """Place ``order`` one by one, least-allocated node first; the first pod that fits nowhere."""
    nodes = [_Node(node_gpus) for _ in range(n_nodes)]
    for p in order:
        fit = [n for n in nodes if _fits(n, p, nodes)]
        if not fit:
            return p
        best = max(fit, key=lambda n: n.free)  # LeastAllocated: the emptiest node wins (first on a tie)
        best.free -= p.gpus
        best.pods.append(p)
    return None


def check_gpu_placement(doc: dict) -> list[tuple[str, str]]:
    """A finding when the GPU pods, created in either group order, strand one of them on the nodes
    their GPUs add up to (each node as large as the largest GPU pod)."""
    gp = gpu_pods(doc)
    if len({p.group for p in gp}) < 2:
        return []
    node_gpus = max(p.gpus for p in gp)
    n_nodes = math.ceil(sum(p.gpus for p in gp) / node_gpus)
    groups = list(dict.fromkeys(p.group for p in gp))
    for order in (groups, groups[::-1]):
        stuck = replay([p for g in order for p in gp if p.group == g], node_gpus, n_nodes)
        if stuck is not None:
            small = [g for g in groups if g != stuck.group]
            names = ", ".join(sorted({p.name for p in gp if p.group in small}))
            return [(f"{stuck.group}.template.spec.affinity",
                     f"the {stuck.name!r} pod ({stuck.gpus:g} GPUs) finds no node with room on the "
                     f"{n_nodes} × {node_gpus:g}-GPU nodes this job needs: the scheduler spreads the "
                     f"{names} pods over them first. Pack them: give their pods a label and a required "
                     f"podAffinity to it on {HOSTNAME}, and the {stuck.name!r} pod a required "
                     f"podAntiAffinity to the same label (or put each group on its own node pool)")]  # fmt: skip
    return []
