"""What an RCRL job will ask Ray for, against the worker groups of the cluster it runs on.

A RayJob whose entrypoint is ``m3ad-rl train rcrl --config /etc/m3ad/X [--set ...]`` gets its config
from a ConfigMap among the same documents; its rollout workers and each node's share of DeepSpeed
ranks (``m3ad_rl.train.rcrl.cluster.resource_requests``) must each fit one worker group's pod, and
all of them the groups together (``replicas``, or ``maxReplicas`` when the cluster autoscales).
Otherwise Ray leaves the run pending ("infeasible") until a deadline ends it.
"""

from __future__ import annotations

import shlex
import tempfile
from pathlib import Path

from m3ad_rl.k8s.validate.configrefs import head_config_mounts
from m3ad_rl.k8s.validate.quantity import parse_quantity


def worker_groups(cluster: dict) -> dict[str, tuple[dict[str, float], int]]:
    """groupName → (one pod's Ray resources, how many pods) for a RayCluster spec."""
    autoscaling = bool(cluster.get("enableInTreeAutoscaling"))
    out = {}
    for g in cluster.get("workerGroupSpecs") or []:
        limits = ((g["template"]["spec"]["containers"][0].get("resources") or {}).get("limits")) or {}
        params = g.get("rayStartParams") or {}
        cpus = parse_quantity(params.get("num-cpus")) or parse_quantity(limits.get("cpu")) or 0
        gpus = parse_quantity(params.get("num-gpus")) or parse_quantity(limits.get("nvidia.com/gpu")) or 0
        count = g.get("maxReplicas", 0) if autoscaling else g.get("replicas", g.get("minReplicas", 0))
        out[g.get("groupName", "?")] = ({"CPU": float(cpus), "GPU": float(gpus)}, int(count or 0))
    return out


def rcrl_command(entrypoint: str) -> tuple[str, str | None, list[str]] | None:
    """(--config, --reward-config, --set values) of the entrypoint's ``m3ad-rl train rcrl``, if any."""
    try:
        argv = shlex.split(entrypoint)
    except ValueError:
        return None
    for i in range(len(argv) - 2):
        if argv[i].endswith("m3ad-rl") and argv[i + 1 : i + 3] == ["train", "rcrl"]:
            rest = argv[i + 3 :]
            if "&&" in rest:
                rest = rest[: rest.index("&&")]
            config = rest[rest.index("--config") + 1] if "--config" in rest[:-1] else None
            reward = rest[rest.index("--reward-config") + 1] if "--reward-config" in rest[:-1] else None
            sets = []
            if "--set" in rest:
                for token in rest[rest.index("--set") + 1 :]:
                    if token.startswith("--"):
                        break
                    sets.append(token)
            return (config, reward, sets) if config else None
    return None


def check_rcrl_requests(docs: list[dict]) -> list[tuple[int, str, str]]:
    """(document index, field, message) for RCRL jobs whose requests their cluster cannot hold."""
    from m3ad_rl.core.config import load_config
    from m3ad_rl.train.rcrl.cluster import resource_requests
    from m3ad_rl.train.rcrl.config import RCRLConfig

    data = {(d.get("metadata") or {}).get("name"): d.get("data") or {} for d in docs if d.get("kind") == "ConfigMap"}
    problems = []
    for i, doc in enumerate(docs):
        spec = doc.get("spec") or {}
        found = rcrl_command(spec.get("entrypoint") or "") if doc.get("kind") == "RayJob" else None
        if found is None or not isinstance(spec.get("rayClusterSpec"), dict):
            continue
        files = _files(doc, data, [f for f in found[:2] if f])
        if found[0] not in files:
            continue  # its ConfigMap is not among these documents (configrefs reports a missing key)
        with tempfile.TemporaryDirectory() as tmp:
            paths = {}
            for name, text in files.items():
                paths[name] = Path(tmp) / Path(name).name
                paths[name].write_text(text)
            sections = {"reward": paths[found[1]]} if found[1] in paths else None
            sets = [s for s in found[2] if not s.startswith("address=")]
            try:
                cfg = load_config(RCRLConfig, paths[found[0]], sets, sections=sections)
            except Exception as e:  # the job would stop at the same place
                problems.append((i, "spec.entrypoint", f"its RCRL config does not load: {' '.join(str(e).split())}"))
                continue
        problems += [
            (i, "spec.entrypoint", m) for m in _fit(resource_requests(cfg), worker_groups(spec["rayClusterSpec"]))
        ]
    return problems


def _files(doc: dict, data: dict[str, dict], refs: list[str]) -> dict[str, str]:
    """Entrypoint path → file text, for the paths that lie in a ConfigMap mounted on the head."""
    out = {}
    for mount, (name, _) in head_config_mounts(doc).items():
        for ref in refs:
            if ref.startswith(mount + "/") and ref[len(mount) + 1 :] in data.get(name, {}):
                out[ref] = data[name][ref[len(mount) + 1 :]]
    return out


def _fit(requests: list[tuple[str, dict[str, float]]], groups: dict[str, tuple[dict[str, float], int]]) -> list[str]:
    """Each request fits one pod of some group, and all of them the groups' pods together."""
    shown = "; ".join(f"{n}: {c} x {r}" for n, (r, c) in groups.items()) or "no worker groups"
    problems, seen = [], set()
    for what, bundle in requests:
        need = {k: v for k, v in bundle.items() if v}
        key = (what, tuple(sorted(need.items())))
        fits = any(count and all(res.get(k, 0) >= v for k, v in need.items()) for res, count in groups.values())
        if not fits and key not in seen:
            seen.add(key)
            why = f"RCRL asks for {what} with {need}, which no worker group's pod has ({shown})"
            fix = "change actor/rollout in the config or the group's limits"
            problems.append(f"{why}: Ray leaves it pending; {fix}")
    for key in ("CPU", "GPU"):
        total = sum(b.get(key, 0) for _, b in requests)
        have = sum(r.get(key, 0) * c for r, c in groups.values())
        if total > have:
            problems.append(f"RCRL asks for {total:g} {key} in all, more than the worker groups have together "
                            f"({have:g}: {shown}): add replicas or shrink actor/rollout")  # fmt: skip
    return problems
