"""This project's rules for every pod: what a platform engineer would otherwise catch in review.

Each rule returns (field path, message) pairs; a message says what is wrong and what to write
instead. Ray containers are ``containers[0]`` of a head or worker group (KubeRay's convention).
"""

from __future__ import annotations

import re

from m3ad_rl.k8s.validate.kuberay import GPU, Pod, containers
from m3ad_rl.k8s.validate.quantity import parse_quantity

RESOURCES = ("cpu", "memory", "ephemeral-storage")
COMPARED = (*RESOURCES, GPU)
SECRET_NAME = re.compile(r"(KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL)", re.I)
RAY_IMAGES = {"ray", "ray-ml", "ray-llm"}  # rayproject/<name>:<ray version>[-pyXY][-cuXYZ|-cpu]
SECCOMP_OK = ("RuntimeDefault", "Localhost")


def check_pod(pod: Pod) -> list[tuple[str, str]]:
    """Every rule for one pod template and its containers."""
    problems = check_pod_security(pod) + check_pod_wiring(pod) + check_volume_mounts(pod)
    for cpath, c in containers(pod.template):
        where = f"{pod.path}.{cpath}"
        ray_container = pod.runs_ray and cpath == "spec.containers[0]"
        problems += check_image(where, c, pod)
        problems += check_resources(where, c, ray_container)
        problems += check_env(where, c)
        problems += check_container_security(where, c, pod)
        if ray_container:
            problems += check_gpus(where, c, pod) + check_shm(where, c, pod.spec)
    return problems


def check_autoscaler(base: str, cs: dict) -> list[tuple[str, str]]:
    """The autoscaler container KubeRay adds to the head pod (built from ``autoscalerOptions``) is
    part of that pod for Pod Security: ``restricted`` refuses the whole head for it."""
    if not cs.get("enableInTreeAutoscaling"):
        return []
    head = cs.get("headGroupSpec") or {}
    pod = Pod(f"{base}.headGroupSpec.template", head.get("template") or {}, "head", head, f"{base}.headGroupSpec", cs)
    opts = cs.get("autoscalerOptions") or {}
    sidecar = {"securityContext": opts.get("securityContext") or {}, "image": opts.get("image")}
    where = f"{base}.autoscalerOptions"
    problems = check_container_security(where, sidecar, pod)
    if sidecar["securityContext"].get("runAsUser") == 0:
        problems.append((f"{where}.securityContext.runAsUser", "runAsUser: 0 is root: remove it (runAsNonRoot: true)"))
    if opts.get("image"):
        problems += check_image(where, sidecar, pod)
    why = "the autoscaler sidecar KubeRay adds to the head pod"
    return [(path, f"{why}: {message}") for path, message in problems]


def check_image(where: str, c: dict, pod: Pod) -> list[tuple[str, str]]:
    """Pinned by a tag other than latest (or a digest); a Ray image's version equals rayVersion."""
    image = c.get("image") or ""
    name, _, tag = image.split("@")[0].rsplit("/", 1)[-1].partition(":")
    if "@sha256:" not in image and (not tag or tag == "latest"):
        return [(f"{where}.image", f"{image!r} must be pinned by a tag other than latest (or a digest)")]
    version = re.match(r"^(\d+\.\d+\.\d+)", tag)
    want = pod.cluster.get("rayVersion")
    if name in RAY_IMAGES and version and want and version.group(1) != str(want):
        fix = f"use an image built on Ray {want} (e.g. rayproject/ray:{want}-py311) or set rayVersion to match"
        return [(f"{where}.image", f"{image!r} runs Ray {version.group(1)} but rayVersion is {want!r}: {fix}")]
    return []


def check_resources(where: str, c: dict, ray_container: bool) -> list[tuple[str, str]]:
    """Requests and limits for cpu, memory and ephemeral-storage; no limit below its request."""
    res = c.get("resources") or {}
    req, lim = res.get("requests") or {}, res.get("limits") or {}
    problems = []
    for kind, block in (("requests", req), ("limits", lim)):
        for r in RESOURCES:
            if r in block:
                continue
            if ray_container and (kind, r) == ("limits", "memory"):
                why = "Ray sizes its object store and its OOM killer from the container's memory limit"
                msg = f"Ray containers need a memory limit: {why}; set limits.memory (equal to the request)"
            else:
                msg = f"{kind} must set {r} (write resources.{kind}.{r})"
            problems.append((f"{where}.resources.{kind}.{r}", msg))
    for r in COMPARED:
        low, high = parse_quantity(lim.get(r)), parse_quantity(req.get(r))
        if low is not None and high is not None and low < high:
            extra = f"; {GPU} requests must equal limits" if r == GPU else ""
            why = f"limit {lim[r]} is below the request {req[r]} (the API server rejects it)"
            problems.append((f"{where}.resources.limits.{r}", f"{why}: set limits.{r} to at least {req[r]}{extra}"))
    gpu_req, gpu_lim = parse_quantity(req.get(GPU)), parse_quantity(lim.get(GPU))
    if gpu_req is not None and gpu_lim is not None and gpu_lim > gpu_req:
        problems.append((f"{where}.resources", f"{GPU} requests ({req[GPU]}) must equal limits ({lim[GPU]})"))
    return problems


def check_gpus(where: str, c: dict, pod: Pod) -> list[tuple[str, str]]:
    """A group that implies GPUs has an nvidia.com/gpu limit, and num-gpus agrees with it."""
    res = c.get("resources") or {}
    req, lim = res.get("requests") or {}, res.get("limits") or {}
    params = pod.group.get("rayStartParams") or {}
    name = pod.group.get("groupName") or pod.role
    num_gpus = parse_quantity(params.get("num-gpus"))
    hints = []
    if re.search("gpu", str(name), re.I):
        hints.append("its name")
    if num_gpus:
        hints.append(f'rayStartParams num-gpus "{params["num-gpus"]}"')
    if parse_quantity(req.get(GPU)):
        hints.append(f"requests {GPU}: {req[GPU]}")
    selector = pod.spec.get("nodeSelector") or {}
    gpu_labels = [
        k
        for k in selector
        if isinstance(k, str) and k.startswith(("nvidia.com/gpu", "cloud.google.com/gke-accelerator"))
    ]
    if gpu_labels:
        hints.append(f"nodeSelector {gpu_labels[0]}")
    tolerations = [t for t in pod.spec.get("tolerations") or [] if isinstance(t, dict) and t.get("key") == GPU]
    if tolerations:
        hints.append(f"a toleration for {GPU}")
    if hints and GPU not in lim:
        n = params.get("num-gpus") or req.get(GPU) or 1
        why = f"group {name!r} implies GPUs ({', '.join(hints)}) but sets no {GPU} limit, so its pods get no GPU"
        return [(f"{where}.resources.limits", f'{why}: add limits: {{{GPU}: "{n}"}} (and the same request)')]
    if parse_quantity(lim.get(GPU)) and not tolerations:
        why = f"group {name!r} asks for GPUs but tolerates no {GPU} taint"
        fix = f"add tolerations: [{{key: {GPU}, operator: Exists, effect: NoSchedule}}]"
        why += f": GPU node pools are tainted {GPU}:NoSchedule (GKE, EKS, AKS), so its pods stay Pending"
        return [(f"{pod.path}.spec.tolerations", f"{why}; {fix}")]
    limit = parse_quantity(lim.get(GPU))
    if num_gpus is not None and limit is not None and num_gpus != limit:
        why = f'num-gpus "{params["num-gpus"]}" but the Ray container\'s {GPU} limit is {lim[GPU]}'
        fix = "drop num-gpus (Ray reads the limit) or make them equal"
        return [(f"{pod.group_path}.rayStartParams.num-gpus", f"{why}: Ray would schedule on GPUs it lacks; {fix}")]
    return []


def check_env(where: str, c: dict) -> list[tuple[str, str]]:
    """Secrets only through ``valueFrom.secretKeyRef``, never as values in the manifest."""
    problems = []
    for i, env in enumerate(c.get("env") or []):
        if SECRET_NAME.search(env.get("name", "")) and "value" in env:
            why = f"{env['name']} looks like a secret: use valueFrom.secretKeyRef"
            problems.append((f"{where}.env[{i}].value", why))
    return problems


def check_container_security(where: str, c: dict, pod: Pod) -> list[tuple[str, str]]:
    """Pod Security ``restricted`` for one container: non-root, no escalation, no capabilities."""
    sc, pod_sc = c.get("securityContext") or {}, pod.spec.get("securityContext") or {}
    problems = []
    if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
        problems.append((f"{where}.securityContext.runAsNonRoot", "pods must run as non-root: runAsNonRoot: true"))
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.append((f"{where}.securityContext.allowPrivilegeEscalation", "must be false"))
    if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
        problems.append((f"{where}.securityContext.capabilities.drop", "drop every capability: drop: [ALL]"))
    if sc.get("privileged"):
        why = "a privileged container gets every device and capability of the node"
        fix = f"remove privileged: true (GPUs come from the {GPU} limit)"
        problems.append((f"{where}.securityContext.privileged", f"{why}: {fix}"))
    return problems


def check_pod_security(pod: Pod) -> list[tuple[str, str]]:
    """Pod-level isolation: seccomp, no host namespaces or paths, no API token unless needed."""
    spec, problems = pod.spec, []
    pod_seccomp = ((spec.get("securityContext") or {}).get("seccompProfile") or {}).get("type")
    unconfined = [
        cpath
        for cpath, c in containers(pod.template)
        if (((c.get("securityContext") or {}).get("seccompProfile") or {}).get("type") or pod_seccomp) not in SECCOMP_OK
    ]
    if unconfined:
        fix = "set securityContext.seccompProfile: {type: RuntimeDefault} on the pod"
        problems.append(
            (f"{pod.path}.spec.securityContext.seccompProfile", f"{', '.join(unconfined)} unconfined: {fix}")
        )
    for ctx_path, ctx in [(f"{pod.path}.spec.securityContext", spec.get("securityContext") or {})] + [
        (f"{pod.path}.{cpath}.securityContext", c.get("securityContext") or {}) for cpath, c in containers(pod.template)
    ]:
        if isinstance(ctx, dict) and ctx.get("runAsUser") == 0:
            fix = "run as the image's user (runAsUser: 1000, runAsNonRoot: true); Pod Security restricted refuses root"
            problems.append((f"{ctx_path}.runAsUser", f"runAsUser: 0 is root: {fix}"))
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            problems.append((f"{pod.path}.spec.{key}", f"{key}: true shares the node's namespace: remove it"))
    for i, vol in enumerate(spec.get("volumes") or []):
        if isinstance(vol, dict) and "hostPath" in vol:
            fix = "use an emptyDir, a PersistentVolumeClaim or object storage"
            problems.append((f"{pod.path}.spec.volumes[{i}].hostPath", f"hostPath exposes the node's files: {fix}"))
    return problems + _check_token(pod)


def check_pod_wiring(pod: Pod) -> list[tuple[str, str]]:
    """What makes a pod unreachable or unqueued: the Kueue label on the pod instead of its owner,
    duplicated port names, a head dashboard bound to loopback."""
    problems = []
    labels = (pod.template.get("metadata") or {}).get("labels") or {}
    if "kueue.x-k8s.io/queue-name" in labels:
        fix = "put kueue.x-k8s.io/queue-name on the RayJob's (or RayCluster's) metadata.labels instead"
        problems.append(
            (f"{pod.path}.metadata.labels", f"Kueue reads the queue from the owning object, not its pods: {fix}")
        )
    for cpath, c in containers(pod.template):
        names = [p.get("name") for p in c.get("ports") or [] if isinstance(p, dict) and p.get("name")]
        for dup in sorted({n for n in names if names.count(n) > 1}):
            problems.append((f"{pod.path}.{cpath}.ports", f"port name {dup!r} is used twice: names must be unique"))
    if pod.role == "head":
        host = str((pod.group.get("rayStartParams") or {}).get("dashboard-host", "0.0.0.0"))
        if host in ("127.0.0.1", "localhost", "::1"):
            why = "the KubeRay operator, the submitter and Serve health checks reach the dashboard by pod IP"
            problems.append(
                (f"{pod.group_path}.rayStartParams.dashboard-host", f"{host!r} is loopback only: {why}; write 0.0.0.0")
            )
    return problems


def _check_token(pod: Pod) -> list[tuple[str, str]]:
    """Only pods that call the Kubernetes API mount a token: the autoscaler's head, and pods given
    their own ServiceAccount."""
    automount = pod.spec.get("automountServiceAccountToken")
    path = f"{pod.path}.spec.automountServiceAccountToken"
    if pod.role == "head" and pod.cluster.get("enableInTreeAutoscaling"):
        if automount is False:
            return [(path, "the autoscaler sidecar in this head calls the Kubernetes API: remove this line")]
        return []
    if automount is not False and not pod.spec.get("serviceAccountName"):
        why = "nothing in this pod calls the Kubernetes API, and a mounted token is a credential"
        return [(path, f"set automountServiceAccountToken: false ({why})")]
    return []


def check_volume_mounts(pod: Pod) -> list[tuple[str, str]]:
    """Every volumeMount names a volume of the pod."""
    names = [v.get("name") for v in pod.spec.get("volumes") or [] if isinstance(v, dict)]
    problems = []
    for cpath, c in containers(pod.template):
        for i, m in enumerate(c.get("volumeMounts") or []):
            if isinstance(m, dict) and m.get("name") not in names:
                have = ", ".join(map(str, names)) or "none"
                fix = f"add it under {pod.path}.spec.volumes or remove the mount"
                msg = f"{m.get('name')!r} is not a volume of this pod (volumes: {have}): {fix}"
                problems.append((f"{pod.path}.{cpath}.volumeMounts[{i}].name", msg))
    return problems


def check_shm(where: str, c: dict, spec: dict) -> list[tuple[str, str]]:
    """Ray's object store lives in /dev/shm, which must be a memory emptyDir (the default is 64 MiB)."""
    mount = next((m for m in c.get("volumeMounts") or [] if m.get("mountPath") == "/dev/shm"), None)
    if mount is None:
        return [(f"{where}.volumeMounts", "Ray containers need /dev/shm (object store) from a memory emptyDir")]
    vol = next((v for v in spec.get("volumes") or [] if v.get("name") == mount.get("name")), {})
    if (vol.get("emptyDir") or {}).get("medium") != "Memory":
        return [(f"{where}.volumeMounts", f"volume {mount.get('name')!r} for /dev/shm must be emptyDir medium Memory")]
    return []


def check_plain_secrets(doc: dict) -> list[tuple[str, str]]:
    """Secrets are created out of band; only a throwaway dev credential marked as such may carry values."""
    annotations = (doc.get("metadata") or {}).get("annotations") or {}
    if doc.get("kind") != "Secret" or not (doc.get("data") or doc.get("stringData")):
        return []
    if annotations.get("m3ad.io/dev-only") == "true":
        return []
    why = "Secret values must not be committed; create the Secret out of band"
    return [("data", f'{why} (or annotate a throwaway dev credential with m3ad.io/dev-only: "true")')]


def check_network_policy(doc: dict) -> list[tuple[str, str]]:
    """A policy that restricts egress must still let DNS out, or every Service name stops resolving."""
    if doc.get("kind") != "NetworkPolicy":
        return []
    spec = doc.get("spec") or {}
    if "Egress" not in (spec.get("policyTypes") or []):
        return []
    for rule in spec.get("egress") or []:
        rule = rule if isinstance(rule, dict) else {}
        peers = rule.get("to")
        beyond = not peers or any(isinstance(p, dict) and ("namespaceSelector" in p or "ipBlock" in p) for p in peers)
        ports = rule.get("ports")
        if beyond and (not ports or any(str(p.get("port")) == "53" for p in ports if isinstance(p, dict))):
            return []  # a rule that reaches kube-dns's namespace on every port, or on DNS's
    fix = "add an egress rule to kube-dns: ports [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]"
    return [("spec.egress", f"egress is restricted but no rule lets DNS (port 53) out: names stop resolving; {fix}")]
