"""The KubeRay operator's own checks that the CRD schema does not hold (``ray-operator/.../utils/
validation.go``), Ray Serve's schema for ``serveConfigV2``, and walking objects down to their pods."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from m3ad_rl.k8s.validate.schema import dotted, yaml_problem

RAY_VERSION = "2.60.0"  # the images' and manifests' rayVersion; a test ties it to the installed Ray
GROUP_VERSION = "ray.io/v1"
GPU = "nvidia.com/gpu"
CLUSTER_SELECTOR_KEY = "ray.io/cluster"
SUBMISSION_MODES = ("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode")
UPGRADE_TYPES = ("NewClusterWithIncrementalUpgrade", "NewCluster", "None")
# RayCluster names get "-serve-svc" appended (63 - 10); RayJob/RayService names get 6 more characters.
MAX_NAME = {"RayCluster": 53, "RayJob": 47, "RayService": 47}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
V2_ENV = "RAY_enable_autoscaler_v2"
DELETION_POLICIES = ("DeleteCluster", "DeleteWorkers", "DeleteSelf", "DeleteNone")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


@dataclass(frozen=True)
class Pod:
    """One pod template of an object and what the rules need to know about it."""

    path: str  # the template's field path, e.g. spec.rayClusterSpec.workerGroupSpecs[0].template
    template: dict
    role: str  # head, worker, submitter or workload
    group: dict = field(default_factory=dict)  # the head or worker group spec
    group_path: str = ""
    cluster: dict = field(default_factory=dict)  # the RayCluster spec it belongs to

    @property
    def spec(self) -> dict:
        return self.template.get("spec") or {}

    @property
    def runs_ray(self) -> bool:
        return self.role in ("head", "worker")


def cluster_specs(doc: dict) -> list[tuple[str, dict]]:
    """(path, RayCluster spec) inside a RayCluster, RayJob or RayService."""
    spec = doc.get("spec") or {}
    key = {"RayCluster": None, "RayJob": "rayClusterSpec", "RayService": "rayClusterConfig"}.get(doc.get("kind"), "")
    if key is None:
        return [("spec", spec)]
    if key and isinstance(spec.get(key), dict):
        return [(f"spec.{key}", spec[key])]
    return []


def pods(doc: dict) -> list[Pod]:
    """Every pod template: Ray heads, worker groups and the submitter, or a workload's template."""
    out = []
    for base, cs in cluster_specs(doc):
        groups = [("headGroupSpec", cs.get("headGroupSpec"), "head")]
        groups += [(f"workerGroupSpecs[{i}]", g, "worker") for i, g in enumerate(cs.get("workerGroupSpecs") or [])]
        for where, g, role in groups:
            if isinstance(g, dict) and isinstance(g.get("template"), dict):
                gp = f"{base}.{where}"
                out.append(Pod(f"{gp}.template", g["template"], role, g, gp, cs))
    spec = doc.get("spec") or {}
    if doc.get("kind") == "RayJob" and isinstance(spec.get("submitterPodTemplate"), dict):
        cs = spec.get("rayClusterSpec") or {}
        out.append(Pod("spec.submitterPodTemplate", spec["submitterPodTemplate"], "submitter", cluster=cs))
    if doc.get("kind") in WORKLOADS and isinstance(spec.get("template"), dict):
        out.append(Pod("spec.template", spec["template"], "workload"))
    if doc.get("kind") == "CronJob":
        template = ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template")
        if isinstance(template, dict):
            out.append(Pod("spec.jobTemplate.spec.template", template, "workload"))
    return out


def containers(template: dict) -> list[tuple[str, dict]]:
    """(path, container) for the init containers and containers of a pod template."""
    spec = template.get("spec") or {}
    return [
        (f"spec.{kind}[{i}]", c)
        for kind in ("initContainers", "containers")
        for i, c in enumerate(spec.get(kind) or [])
        if isinstance(c, dict)
    ]


def check_name(doc: dict) -> list[tuple[str, str]]:
    """Names the operator and the API server accept (DNS-1035 labels for Ray objects)."""
    kind, name = doc.get("kind"), (doc.get("metadata") or {}).get("name")
    if not isinstance(name, str) or not name:
        return [("metadata.name", "required field 'name' is missing")]
    if kind in MAX_NAME:
        if len(name) > MAX_NAME[kind]:
            return [("metadata.name", f"{name!r} is longer than {MAX_NAME[kind]} characters (KubeRay limit)")]
        if not DNS1035.match(name):
            why = "is not a DNS-1035 label (lower case, digits, '-', starts with a letter)"
            return [("metadata.name", f"{name!r} {why}")]
    elif not DNS1123_SUBDOMAIN.match(name) or len(name) > 253:
        return [("metadata.name", f"{name!r} is not a DNS-1123 subdomain")]
    problems = []
    for key, value in ((doc.get("metadata") or {}).get("labels") or {}).items():
        if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.match(value):
            problems.append((f"metadata.labels.{key}", f"{value!r} is not a valid label value"))
    return problems


def check_cluster_spec(base: str, cs: dict) -> list[tuple[str, str]]:
    """ValidateRayClusterSpec plus replica bounds, group names and rayVersion."""
    problems = []
    autoscaling = bool(cs.get("enableInTreeAutoscaling"))
    v2 = autoscaling and (cs.get("autoscalerOptions") or {}).get("version") == "v2"
    if cs.get("rayVersion") != RAY_VERSION:
        problems.append((f"{base}.rayVersion", f"{cs.get('rayVersion')!r} must be {RAY_VERSION!r} (the images' Ray)"))
    groups = [("headGroupSpec", cs.get("headGroupSpec") or {})]
    groups += [(f"workerGroupSpecs[{i}]", g) for i, g in enumerate(cs.get("workerGroupSpecs") or [])]
    seen: set = set()
    for where, g in groups:
        path = f"{base}.{where}"
        if not isinstance(g, dict):
            continue
        tspec = (g.get("template") or {}).get("spec") or {}
        if not tspec.get("containers"):
            problems.append((f"{path}.template.spec.containers", "needs at least one container"))
        params = g.get("rayStartParams") or {}
        if g.get("resources") and any(params.get(k) for k in ("num-cpus", "num-gpus", "memory", "resources")):
            problems.append((f"{path}.resources", "set resources in rayStartParams or in resources, not both"))
        if "labels" in params:
            problems.append((f"{path}.rayStartParams.labels", "not supported; use the group's labels field"))
        if v2 and tspec.get("restartPolicy") not in (None, "", "Never"):
            problems.append((f"{path}.template.spec.restartPolicy", "must be Never or unset with autoscaler v2"))
        if where != "headGroupSpec":
            problems += _check_group(path, g, seen, autoscaling)
    return problems + _check_autoscaler_switches(base, cs, autoscaling)


def _check_autoscaler_switches(base: str, cs: dict, autoscaling: bool) -> list[tuple[str, str]]:
    """The operator's rules for ``RAY_enable_autoscaler_v2`` on the head and ``autoscalerOptions``."""
    head = ((cs.get("headGroupSpec") or {}).get("template") or {}).get("spec") or {}
    ray = (head.get("containers") or [{}])[0]
    env = {e.get("name"): (i, e) for i, e in enumerate(ray.get("env") or []) if isinstance(e, dict)}
    problems = []
    if V2_ENV in env:
        i, var = env[V2_ENV]
        where = f"{base}.headGroupSpec.template.spec.containers[0].env[{i}]"
        if not autoscaling and str(var.get("value")) in ("1", "true"):
            why = "KubeRay rejects the cluster: the autoscaler v2 needs the autoscaler"
            fix = "set enableInTreeAutoscaling: true with autoscalerOptions.version: v2, or remove the variable"
            problems.append((where, f"{V2_ENV}={var.get('value')} with enableInTreeAutoscaling off: {why}; {fix}"))
        elif autoscaling and (cs.get("autoscalerOptions") or {}).get("version"):
            fix = "remove the variable: autoscalerOptions.version alone selects the autoscaler (KubeRay rejects both)"
            problems.append((where, f"{V2_ENV} is set and so is autoscalerOptions.version: {fix}"))
    idle = (cs.get("autoscalerOptions") or {}).get("idleTimeoutSeconds")
    if isinstance(idle, int) and idle < 0:
        problems.append((f"{base}.autoscalerOptions.idleTimeoutSeconds", f"{idle} must be >= 0"))
    return problems


def _check_group(path: str, g: dict, seen: set, autoscaling: bool) -> list[tuple[str, str]]:
    problems = []
    name = g.get("groupName")
    if not name:
        problems.append((f"{path}.groupName", "required field 'groupName' is missing"))
    elif not (isinstance(name, str) and DNS1123_LABEL.match(name) and len(name) <= 63):
        problems.append((f"{path}.groupName", f"{name!r} is not a DNS-1123 label (it names pods and labels)"))
    elif name in seen:
        problems.append((f"{path}.groupName", f"duplicate groupName {name!r}"))
    seen.add(name)
    lo, hi, n = g.get("minReplicas", 0), g.get("maxReplicas", 2**31 - 1), g.get("replicas")
    if all(isinstance(x, int) for x in (lo, hi)):
        if lo > hi:
            problems.append((f"{path}.minReplicas", f"minReplicas {lo} > maxReplicas {hi}"))
        if isinstance(n, int) and not lo <= n <= hi:
            problems.append((f"{path}.replicas", f"replicas {n} is outside [minReplicas {lo}, maxReplicas {hi}]"))
    if g.get("suspend") and autoscaling:
        problems.append((f"{path}.suspend", "a worker group cannot be suspended with the autoscaler enabled"))
    return problems


def check_rayjob(spec: dict) -> list[tuple[str, str]]:
    """ValidateRayJobSpec: submission modes, suspend/TTL need shutdownAfterJobFinishes, bounds."""
    problems = []
    mode = spec.get("submissionMode", "K8sJobMode")
    shutdown = bool(spec.get("shutdownAfterJobFinishes"))
    if mode not in SUBMISSION_MODES:
        problems.append(("spec.submissionMode", f"{mode!r} is not one of {', '.join(SUBMISSION_MODES)}"))
    if spec.get("suspend") and not shutdown:
        problems.append(("spec.suspend", "a RayJob can be suspended only with shutdownAfterJobFinishes: true"))
    ttl = spec.get("ttlSecondsAfterFinished", 0)
    if isinstance(ttl, int) and ttl > 0 and not shutdown:
        problems.append(("spec.ttlSecondsAfterFinished", "needs shutdownAfterJobFinishes: true"))
    if isinstance(ttl, int) and ttl < 0:
        problems.append(("spec.ttlSecondsAfterFinished", "must be >= 0"))
    deadline, backoff = spec.get("activeDeadlineSeconds"), spec.get("backoffLimit")
    if isinstance(deadline, int) and deadline <= 0:
        problems.append(("spec.activeDeadlineSeconds", "must be > 0"))
    if isinstance(backoff, int) and backoff < 0:
        problems.append(("spec.backoffLimit", "must be >= 0"))
    if mode == "InteractiveMode" and isinstance(backoff, int) and backoff > 0:
        problems.append(("spec.backoffLimit", "InteractiveMode does not support retries"))
    problems += _check_cluster_choice(spec) + _check_deletion(spec)
    if mode == "SidecarMode" and (spec.get("submitterPodTemplate") or spec.get("submitterConfig")):
        problems.append(("spec.submitterPodTemplate", "SidecarMode takes no submitter pod or config"))
    if not spec.get("entrypoint") and mode != "InteractiveMode":
        problems.append(("spec.entrypoint", "required field 'entrypoint' is missing"))
    try:
        yaml.safe_load(spec.get("runtimeEnvYAML") or "")
    except yaml.YAMLError as e:
        problems.append(("spec.runtimeEnvYAML", yaml_problem(e)))
    return problems


def _check_deletion(spec: dict) -> list[tuple[str, str]]:
    """validateDeletionConfiguration: ``deletionStrategy`` rules exclude ``shutdownAfterJobFinishes``
    and the legacy ``onSuccess``/``onFailure`` pair; the pair comes whole; no DeleteWorkers with the
    autoscaler or DeleteCluster/DeleteWorkers on a selected cluster."""
    strategy = spec.get("deletionStrategy")
    if not isinstance(strategy, dict):
        return []
    rules = strategy.get("deletionRules") or []
    legacy = [k for k in ("onSuccess", "onFailure") if k in strategy]
    path = "spec.deletionStrategy"
    if rules and spec.get("shutdownAfterJobFinishes"):
        why = "KubeRay rejects the RayJob: they are mutually exclusive"
        fix = "drop shutdownAfterJobFinishes (and ttlSecondsAfterFinished) and say when to delete in the rules"
        return [(f"{path}.deletionRules", f"deletionRules with shutdownAfterJobFinishes: true: {why}; {fix}")]
    if rules and legacy:
        return [(path, "deletionRules and onSuccess/onFailure cannot be used together: keep deletionRules")]
    if not rules and len(legacy) != 2:
        return [(path, "needs both onSuccess and onFailure, or deletionRules (KubeRay rejects it otherwise)")]
    problems = []
    autoscaling = bool((spec.get("rayClusterSpec") or {}).get("enableInTreeAutoscaling"))
    for i, rule in enumerate(rules if isinstance(rules, list) else []):
        policy = (rule or {}).get("policy") if isinstance(rule, dict) else None
        if policy == "DeleteWorkers" and autoscaling:
            why = "KubeRay cannot delete the workers of an autoscaling cluster"
            problems.append((f"{path}.deletionRules[{i}].policy", f"DeleteWorkers with the autoscaler on: {why}"))
        if policy in ("DeleteCluster", "DeleteWorkers") and spec.get("clusterSelector"):
            why = "the cluster is not the RayJob's to delete"
            problems.append((f"{path}.deletionRules[{i}].policy", f"{policy} with clusterSelector: {why}"))
    return problems


def _check_cluster_choice(spec: dict) -> list[tuple[str, str]]:
    """A RayJob brings its own cluster (rayClusterSpec) or names a running one (clusterSelector)."""
    selector = spec.get("clusterSelector")
    if not spec.get("rayClusterSpec") and not selector:
        return [("spec.rayClusterSpec", "one of rayClusterSpec or clusterSelector must be set")]
    if not selector:
        return []
    problems = []
    if spec.get("rayClusterSpec"):
        why = "KubeRay then submits to the selected cluster and ignores rayClusterSpec: keep only one of them"
        problems.append(("spec.clusterSelector", f"set together with rayClusterSpec; {why}"))
    if not (selector or {}).get(CLUSTER_SELECTOR_KEY):
        why = "KubeRay finds the cluster by that key only"
        problems.append(("spec.clusterSelector", f"needs the key {CLUSTER_SELECTOR_KEY}: <RayCluster name> ({why})"))
    if spec.get("suspend"):
        problems.append(("spec.suspend", "clusterSelector mode cannot be suspended"))
    if spec.get("backoffLimit"):
        problems.append(("spec.backoffLimit", "clusterSelector mode does not retry: remove backoffLimit"))
    return problems


def check_rayservice(spec: dict) -> list[tuple[str, str]]:
    """Upgrade strategy and serveConfigV2 (Ray Serve's schema, unknown keys rejected)."""
    problems = []
    kind = (spec.get("upgradeStrategy") or {}).get("type")
    if kind is not None and kind not in UPGRADE_TYPES:
        problems.append(("spec.upgradeStrategy.type", f"{kind!r} is not one of {', '.join(UPGRADE_TYPES)}"))
    text = spec.get("serveConfigV2")
    if text is None:
        return [*problems, ("spec.serveConfigV2", "required for this project's RayService")]
    problems += [(f"spec.serveConfigV2: {p}" if p else "spec.serveConfigV2", m) for p, m in check_serve_config(text)]
    return problems + check_serve_fits(text, spec.get("rayClusterConfig") or {})


def _worker_cpus(group: dict) -> float | None:
    """The CPUs Ray gives a worker of ``group``: rayStartParams num-cpus, else the container's limit."""
    from m3ad_rl.k8s.validate.quantity import parse_quantity

    value = (group.get("rayStartParams") or {}).get("num-cpus")
    if value is None:
        cs = ((group.get("template") or {}).get("spec") or {}).get("containers") or [{}]
        res = (cs[0] or {}).get("resources") or {}
        value = (res.get("limits") or {}).get("cpu", (res.get("requests") or {}).get("cpu"))
    q = parse_quantity(value)
    return float(q) if q is not None else None


def check_serve_fits(text: str, cluster: dict) -> list[tuple[str, str]]:
    """Every deployment's replica fits on some worker: ``ray_actor_options.num_cpus`` (default 1) no more
    than the largest worker's CPUs, else Serve waits for a node that never comes."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        return []  # check_serve_config says so
    sizes = [_worker_cpus(g) for g in cluster.get("workerGroupSpecs") or [] if isinstance(g, dict)]
    if not sizes or any(c is None for c in sizes):
        return []
    largest, problems = max(sizes), []
    for i, app in enumerate(data.get("applications") or []):
        for j, dep in enumerate((app or {}).get("deployments") or []):
            opts = (dep or {}).get("ray_actor_options") or {}
            need = opts.get("num_cpus", 1)
            if isinstance(need, int | float) and need > largest:
                where = f"spec.serveConfigV2: applications[{i}].deployments[{j}].ray_actor_options.num_cpus"
                fix = f"ask for at most {largest:g} or give a worker group more CPUs"
                problems.append((where, f"{need:g} CPUs per replica, but the largest worker has {largest:g}: {fix}"))
    return problems


def check_serve_config(text: str) -> list[tuple[str, str]]:
    """Parse with ``ray.serve.schema.ServeDeploySchema``; also reject keys it would ignore and
    import paths that do not resolve."""
    import importlib

    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        return [("", yaml_problem(e))]
    problems = _unknown_keys(data, ServeDeploySchema, [])
    try:
        parsed = ServeDeploySchema.model_validate(data)
    except ValidationError as e:
        return problems + [(dotted(err["loc"]), err["msg"]) for err in e.errors()]
    for i, app in enumerate(parsed.applications):
        module, _, attr = app.import_path.partition(":")
        try:
            ok = hasattr(importlib.import_module(module), attr or module.rsplit(".", 1)[-1])
        except ImportError as e:
            ok, why = False, str(e)
        else:
            why = f"module {module} has no attribute {attr!r}"
        if not ok:
            problems.append((f"applications[{i}].import_path", f"{app.import_path!r} does not resolve: {why}"))
    return problems


def _unknown_keys(data: Any, model: Any, path: list) -> list[tuple[str, str]]:
    import typing

    from pydantic import BaseModel

    if not (isinstance(data, dict) and isinstance(model, type) and issubclass(model, BaseModel)):
        return []
    problems = []
    fields = model.model_fields
    for key, value in data.items():
        if key not in fields:
            hint = difflib.get_close_matches(key, list(fields), n=1)
            more = f"; did you mean '{hint[0]}'?" if hint else ""
            problems.append((dotted([*path, key]), f"unknown key '{key}'{more}"))
            continue
        ann = fields[key].annotation
        while typing.get_args(ann) and not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            args = [a for a in typing.get_args(ann) if a is not type(None)]
            ann = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), args[0])
        items = value if isinstance(value, list) else [value]
        for j, item in enumerate(items):
            sub = [*path, key, j] if isinstance(value, list) else [*path, key]
            problems += _unknown_keys(item, ann, sub)
    return problems
