"""Offline validation of the Kubernetes manifests, so a typo fails in CI instead of vanishing.

The API server prunes fields a CRD schema does not know, silently: ``replicaz: 2`` is accepted and
dropped. This module checks every rendered document (each kustomize overlay, sweep outputs, raw
files) the way the API server and the KubeRay operator would, but stricter:

1. the KubeRay v1 CRD ``openAPIV3Schema`` with unknown fields rejected (``additionalProperties:
   false`` wherever a schema lists properties and does not preserve unknown fields), after nulls are
   pruned and defaults filled in as the API server does (so ``minReplicas`` may be left out);
2. every pod template with ``kubernetes-validate --strict`` (core/v1 ``PodTemplate``);
3. the operator's own checks that the schema does not hold (``ray-operator/.../utils/validation.go``);
4. this project's rules: pinned images, GPU requests = limits, requests and limits everywhere, secrets
   only through ``secretKeyRef``, non-root pods, ``/dev/shm`` as a memory ``emptyDir``;
5. ``serveConfigV2`` with Ray Serve's own ``ServeDeploySchema`` (plus unknown keys, which it ignores).

    python -m m3ad_rl.k8s_validate manifests/            # every overlay + loose YAML; exit 1 on findings

CEL rules (``x-kubernetes-validations``) in the CRDs are not evaluated; the ones that matter for a
create are restated in the operator checks.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CRDS_ENV = "M3AD_KUBERAY_CRDS"
RAY_VERSION = "2.60.0"  # the images' and manifests' rayVersion; a test ties it to the installed Ray
GROUP_VERSION = "ray.io/v1"
SUBMISSION_MODES = ("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode")
UPGRADE_TYPES = ("NewClusterWithIncrementalUpgrade", "NewCluster", "None")
# RayCluster names get "-serve-svc" appended (63 - 10); RayJob/RayService names get 6 more characters.
MAX_NAME = {"RayCluster": 53, "RayJob": 47, "RayService": 47}
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
SECRET_NAME = re.compile(r"(KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL)", re.I)
GPU = "nvidia.com/gpu"


@dataclass(frozen=True)
class Finding:
    """One problem: where (file, object, dotted field path) and what is wrong."""

    source: str
    obj: str
    path: str
    message: str
    check: str

    def __str__(self) -> str:
        return f"{self.source}: {self.obj}: {self.path or '.'}: {self.message} [{self.check}]"


def crd_dir() -> Path | None:
    """The KubeRay CRDs: $M3AD_KUBERAY_CRDS, else ../shared/kuberay-crds next to the repository."""
    path = Path(os.environ.get(CRDS_ENV) or ROOT.parent / "shared" / "kuberay-crds")
    return path if (path / "ray.io_rayjobs.yaml").exists() else None


# ---------------------------------------------------------------------------------------------
# Loading documents


def kustomize_roots(path: Path) -> list[Path]:
    """Kustomizations under ``path`` that are meant to be applied (overlays, or a lone base)."""
    roots = sorted(p.parent for p in path.rglob("kustomization.yaml"))
    leaves = [r for r in roots if "components" not in r.parts]
    overlays = [r for r in leaves if "overlays" in r.parts]
    return overlays or leaves


def render_kustomization(path: Path) -> str:
    """``kubectl kustomize`` output; raises RuntimeError with kubectl's message on failure."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise RuntimeError("kubectl not found: install it or validate raw files")
    res = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {path} failed: {res.stderr.strip()}")
    return res.stdout


def load_documents(paths: Iterable[str | Path]) -> Iterator[tuple[str, dict]]:
    """(source, document) for every object: each kustomization rendered, other YAML read as is.

    Files inside a kustomization (patches, config files) are not documents of their own.
    """
    for p in map(Path, paths):
        if p.is_file():
            yield from _read_yaml_docs(p.read_text(), str(p))
            continue
        roots = kustomize_roots(p) if shutil.which("kubectl") else []
        for root in roots:
            yield from _read_yaml_docs(render_kustomization(root), f"{root} (kustomize)")
        inside = {q.parent for q in p.rglob("kustomization.yaml")}
        for f in sorted([*p.rglob("*.yaml"), *p.rglob("*.yml")]):
            if not roots and f.name == "kustomization.yaml":
                continue
            if roots and any(f.is_relative_to(k) for k in inside):
                continue
            if not roots and f.parent.name == "config":  # a ConfigMap's payload, not an object
                continue
            yield from _read_yaml_docs(f.read_text(), str(f))


def _read_yaml_docs(text: str, source: str) -> Iterator[tuple[str, dict]]:
    for doc in yaml.safe_load_all(text):
        if isinstance(doc, dict) and "kind" in doc:
            yield source, doc


# ---------------------------------------------------------------------------------------------
# 1. CRD schemas, closed and defaulted like the API server


@cache
def crd_schemas(directory: str) -> dict[str, dict]:
    """kind → the v1 openAPIV3Schema with unknown fields rejected."""
    out = {}
    for f in sorted(Path(directory).glob("ray.io_*.yaml")):
        crd = yaml.safe_load(f.read_text())
        for v in crd["spec"]["versions"]:
            if v["name"] == "v1":
                out[crd["spec"]["names"]["kind"]] = close_schema(v["schema"]["openAPIV3Schema"])
    return out


def close_schema(schema: Any) -> Any:
    """A copy with ``additionalProperties: false`` where properties are listed and unknown fields
    are not preserved, and ``nullable`` turned into a JSON-schema null type."""
    if isinstance(schema, list):
        return [close_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    s = {k: close_schema(v) if k in ("properties", "items", "additionalProperties", "anyOf", "allOf") else v
         for k, v in schema.items()}  # fmt: skip
    if "properties" in s:
        s["properties"] = {k: close_schema(v) for k, v in schema["properties"].items()}
        if not s.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in s:
            s["additionalProperties"] = False
    if s.get("nullable") and isinstance(s.get("type"), str):
        s["type"] = [s["type"], "null"]
    return s


def apply_defaults(obj: Any, schema: dict) -> Any:
    """What the API server stores: nulls of non-nullable fields pruned, then defaults filled in."""
    if isinstance(obj, dict):
        props = schema.get("properties", {})
        for key in [k for k, v in obj.items() if v is None and not props.get(k, {}).get("nullable")]:
            del obj[key]
        for key, sub in props.items():
            if key not in obj and "default" in sub:
                obj[key] = copy.deepcopy(sub["default"])
            if key in obj:
                apply_defaults(obj[key], sub)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in obj.keys() - props.keys():
                apply_defaults(obj[key], extra)
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for item in obj:
            apply_defaults(item, schema["items"])
    return obj


def dotted(path: Iterable[Any]) -> str:
    """``['spec', 'workerGroupSpecs', 0, 'groupName']`` → ``spec.workerGroupSpecs[0].groupName``."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def check_schema(doc: dict, schema: dict) -> list[tuple[str, str]]:
    """(field path, message) for every violation of the closed, defaulted schema."""
    from jsonschema import Draft7Validator

    obj = apply_defaults(copy.deepcopy(doc), schema)
    problems = []
    for err in sorted(Draft7Validator(schema).iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))):
        path = list(err.absolute_path)
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            known = list(err.schema.get("properties", {}))
            for key in sorted(set(err.instance) - set(known)):
                hint = difflib.get_close_matches(key, known, n=1)
                more = f"; did you mean '{hint[0]}'?" if hint else f"; known fields: {', '.join(known)}"
                problems.append((dotted([*path, key]), f"unknown field '{key}'{more}"))
        elif err.validator == "required":
            field = err.message.split("'")[1] if "'" in err.message else err.message
            problems.append((dotted([*path, field]), f"required field '{field}' is missing"))
        else:
            problems.append((dotted(path), err.message))
    return problems


# ---------------------------------------------------------------------------------------------
# Walking RayCluster specs and pod templates


def cluster_specs(doc: dict) -> list[tuple[str, dict]]:
    """(path, RayCluster spec) inside a RayCluster, RayJob or RayService."""
    spec = doc.get("spec") or {}
    key = {"RayCluster": None, "RayJob": "rayClusterSpec", "RayService": "rayClusterConfig"}.get(doc.get("kind"), "")
    if key is None:
        return [("spec", spec)]
    if key and isinstance(spec.get(key), dict):
        return [(f"spec.{key}", spec[key])]
    return []


def pod_templates(doc: dict) -> list[tuple[str, dict, bool]]:
    """(path, pod template, runs Ray) for the head, every worker group and the submitter."""
    out = []
    for base, cs in cluster_specs(doc):
        head = (cs.get("headGroupSpec") or {}).get("template")
        if isinstance(head, dict):
            out.append((f"{base}.headGroupSpec.template", head, True))
        for i, g in enumerate(cs.get("workerGroupSpecs") or []):
            if isinstance(g, dict) and isinstance(g.get("template"), dict):
                out.append((f"{base}.workerGroupSpecs[{i}].template", g["template"], True))
    sub = (doc.get("spec") or {}).get("submitterPodTemplate")
    if doc.get("kind") == "RayJob" and isinstance(sub, dict):
        out.append(("spec.submitterPodTemplate", sub, False))
    return out


def containers(template: dict) -> list[tuple[str, dict]]:
    spec = template.get("spec") or {}
    return [
        (f"spec.{kind}[{i}]", c)
        for kind in ("initContainers", "containers")
        for i, c in enumerate(spec.get(kind) or [])
        if isinstance(c, dict)
    ]


# ---------------------------------------------------------------------------------------------
# 2. Pod templates with kubernetes-validate --strict


def check_pod_template(template: dict) -> list[tuple[str, str]]:
    """Strict core/v1 validation of one pod template (kubernetes-validate stops at the first error)."""
    import kubernetes_validate as kv

    wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template}
    try:
        kv.validate(wrapped, kv.latest_version(), strict=True)
    except kv.ValidationError as e:
        path = list(e.path)[1:] if list(e.path)[:1] == ["template"] else list(e.path)
        return [(dotted(path), e.message)]
    return []


# ---------------------------------------------------------------------------------------------
# 3. KubeRay operator rules beyond the schema


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
    seen = set()
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
        if where == "headGroupSpec":
            continue
        problems += _check_group(path, g, seen, autoscaling)
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
    selector = spec.get("clusterSelector")
    if not spec.get("rayClusterSpec") and not selector:
        problems.append(("spec.rayClusterSpec", "one of rayClusterSpec or clusterSelector must be set"))
    if selector and spec.get("suspend"):
        problems.append(("spec.suspend", "clusterSelector mode cannot be suspended"))
    if mode == "SidecarMode" and (spec.get("submitterPodTemplate") or spec.get("submitterConfig")):
        problems.append(("spec.submitterPodTemplate", "SidecarMode takes no submitter pod or config"))
    if not spec.get("entrypoint") and mode != "InteractiveMode":
        problems.append(("spec.entrypoint", "required field 'entrypoint' is missing"))
    try:
        yaml.safe_load(spec.get("runtimeEnvYAML") or "")
    except yaml.YAMLError as e:
        problems.append(("spec.runtimeEnvYAML", f"not valid YAML: {e}"))
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
    return problems + [
        (f"spec.serveConfigV2: {p}" if p else "spec.serveConfigV2", m) for p, m in check_serve_config(text)
    ]


def check_serve_config(text: str) -> list[tuple[str, str]]:
    """Parse with ``ray.serve.schema.ServeDeploySchema``; also reject keys it would ignore and
    import paths that do not resolve."""
    import importlib

    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        return [("", f"not valid YAML: {e}")]
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


# ---------------------------------------------------------------------------------------------
# 4. This project's rules


def check_pod_rules(path: str, template: dict, runs_ray: bool) -> list[tuple[str, str]]:
    """Pinned images, requests and limits, GPU requests = limits, secrets, non-root, /dev/shm."""
    problems = []
    spec = template.get("spec") or {}
    pod_sc = spec.get("securityContext") or {}
    for cpath, c in containers(template):
        where = f"{path}.{cpath}"
        image = c.get("image") or ""
        tag = image.rsplit("/", 1)[-1]
        if "@sha256:" not in image and (":" not in tag or tag.endswith(":latest")):
            problems.append((f"{where}.image", f"{image!r} must be pinned by a tag other than latest (or a digest)"))
        res = c.get("resources") or {}
        req, lim = res.get("requests") or {}, res.get("limits") or {}
        for kind, block in (("requests", req), ("limits", lim)):
            for r in ("cpu", "memory"):
                if r not in block:
                    problems.append((f"{where}.resources.{kind}.{r}", f"{kind} must set {r}"))
        if (GPU in req or GPU in lim) and str(req.get(GPU)) != str(lim.get(GPU)):
            why = f"{GPU} requests ({req.get(GPU)}) must equal limits ({lim.get(GPU)})"
            problems.append((f"{where}.resources", why))
        for i, env in enumerate(c.get("env") or []):
            if SECRET_NAME.search(env.get("name", "")) and "value" in env:
                why = f"{env['name']} looks like a secret: use valueFrom.secretKeyRef"
                problems.append((f"{where}.env[{i}].value", why))
        sc = c.get("securityContext") or {}
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
            problems.append((f"{where}.securityContext.runAsNonRoot", "pods must run as non-root"))
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append((f"{where}.securityContext.allowPrivilegeEscalation", "must be false"))
        if runs_ray and cpath.startswith("spec.containers"):
            problems += _check_shm(where, c, spec)
    return problems


def _check_shm(where: str, c: dict, spec: dict) -> list[tuple[str, str]]:
    mount = next((m for m in c.get("volumeMounts") or [] if m.get("mountPath") == "/dev/shm"), None)
    if mount is None:
        return [(f"{where}.volumeMounts", "Ray containers need /dev/shm (object store) from a memory emptyDir")]
    vol = next((v for v in spec.get("volumes") or [] if v.get("name") == mount.get("name")), {})
    if (vol.get("emptyDir") or {}).get("medium") != "Memory":
        return [(f"{where}.volumeMounts", f"volume {mount.get('name')!r} for /dev/shm must be emptyDir medium Memory")]
    return []


def check_plain_secrets(doc: dict) -> list[tuple[str, str]]:
    """Secrets are created out of band; a manifest never carries their values."""
    if doc.get("kind") == "Secret" and (doc.get("data") or doc.get("stringData")):
        return [("data", "Secret values must not be committed; create the Secret out of band")]
    return []


# ---------------------------------------------------------------------------------------------
# Putting it together


def validate_document(doc: dict, source: str = "<doc>", crds: Path | None = None) -> list[Finding]:
    """Every check that applies to one object."""
    kind = doc.get("kind", "?")
    obj = f"{kind}/{(doc.get('metadata') or {}).get('name', '?')}"
    found: list[tuple[str, str, str]] = [(p, m, "name") for p, m in check_name(doc)]
    found += [(p, m, "secrets") for p, m in check_plain_secrets(doc)]
    if doc.get("apiVersion") == GROUP_VERSION and kind in MAX_NAME:
        crds = crds or crd_dir()
        if crds is None:
            found.append(("", f"KubeRay CRDs not found (set {CRDS_ENV})", "crd-schema"))
        else:
            found += [(p, m, "crd-schema") for p, m in check_schema(doc, crd_schemas(str(crds))[kind])]
        for base, cs in cluster_specs(doc):
            found += [(p, m, "kuberay") for p, m in check_cluster_spec(base, cs)]
        spec = doc.get("spec") or {}
        if kind == "RayJob":
            found += [(p, m, "kuberay") for p, m in check_rayjob(spec)]
        if kind == "RayService":
            found += [(p, m, "serve-config") for p, m in check_rayservice(spec)]
        for path, template, runs_ray in pod_templates(doc):
            found += [(f"{path}.{p}" if p else path, m, "pod-template") for p, m in check_pod_template(template)]
            found += [(p, m, "project") for p, m in check_pod_rules(path, template, runs_ray)]
    return [Finding(source, obj, p, m, c) for p, m, c in found]


def validate_paths(paths: Iterable[str | Path]) -> list[Finding]:
    """Findings for every document under ``paths`` (see ``load_documents``)."""
    findings = []
    try:
        docs = list(load_documents(paths))
    except (RuntimeError, yaml.YAMLError) as e:
        return [Finding(str(list(paths)), "-", "", str(e), "load")]
    for source, doc in docs:
        findings += validate_document(doc, source)
    return findings


def yamllint_paths(paths: Iterable[str | Path], config: str | Path = ROOT / ".yamllint.yaml") -> list[str]:
    """yamllint problems (``file:line:col: [level] message``) for YAML files under ``paths``."""
    from yamllint import linter
    from yamllint.config import YamlLintConfig

    conf = YamlLintConfig(file=str(config))
    out = []
    for p in map(Path, paths):
        files = [p] if p.is_file() else sorted([*p.rglob("*.yaml"), *p.rglob("*.yml")])
        for f in files:
            name = str(f.resolve().relative_to(ROOT)) if f.resolve().is_relative_to(ROOT) else str(f)
            for problem in linter.run(f.read_text(), conf, name):
                out.append(f"{f}:{problem.line}:{problem.column}: [{problem.level}] {problem.message}")
    return out


def main(argv: list[str] | None = None) -> int:
    """Print findings for the given paths (default: manifests/); exit 1 if there are any."""
    paths = (argv if argv is not None else sys.argv[1:]) or [str(ROOT / "manifests")]
    findings = validate_paths(paths)
    for f in findings:
        print(f)
    n_docs = sum(1 for _ in load_documents(paths)) if not any(f.check == "load" for f in findings) else 0
    print(f"{n_docs} documents checked, {len(findings)} finding(s)", file=sys.stderr)
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
