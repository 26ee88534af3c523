"""Checks across the documents of one render (or one set of loose files): names that one object
gives and another uses.

- every ``serviceAccountName`` (and RoleBinding subject) is a ServiceAccount the manifests define
  (or ``default``), else the pods are never created (``serviceaccount "x" not found``);
- an overlay that moves images to a registry moves all of the project's images: an ``m3ad-rl-*``
  image left with no registry beside registry ones is one that ``images:`` forgot (typically the
  RayJob submitter's), and its pod waits in ``ImagePullBackOff``.
"""

from __future__ import annotations

from m3ad_rl.k8s.validate.kuberay import containers, pods

PROJECT_IMAGE = "m3ad-rl"


def check_service_accounts(docs: list[dict]) -> list[tuple[int, str, str]]:
    """(document index, field path, message) for service accounts no document defines."""
    defined = {(d.get("metadata") or {}).get("name") for d in docs if d.get("kind") == "ServiceAccount"}
    defined.add("default")
    problems = []
    for i, d in enumerate(docs):
        for pod in pods(d):
            name = pod.spec.get("serviceAccountName")
            if name and name not in defined:
                why = "the pods are never created (serviceaccount not found)"
                fix = f"add a ServiceAccount {name!r} to the manifests or correct the name"
                problems.append(
                    (i, f"{pod.path}.spec.serviceAccountName", f"{name!r} is not defined here: {why}; {fix}")
                )
        if d.get("kind") in ("RoleBinding", "ClusterRoleBinding"):
            for s, subject in enumerate(d.get("subjects") or []):
                if subject.get("kind") == "ServiceAccount" and subject.get("name") not in defined:
                    why = f"binds {subject.get('name')!r}, which no manifest here defines: the permission goes nowhere"
                    problems.append((i, f"subjects[{s}].name", why))
    return problems


def _images(doc: dict) -> list[tuple[str, str]]:
    """(field path, image) for every container of ``doc``, and a RayCluster's autoscaler image."""
    out = []
    for pod in pods(doc):
        out += [(f"{pod.path}.{cpath}.image", c.get("image") or "") for cpath, c in containers(pod.template)]
    return out


def _registry(image: str) -> str | None:
    """The registry host of an image reference, None for a Docker Hub short name."""
    first, slash, _ = image.partition("/")
    return first if slash and ("." in first or ":" in first or first == "localhost") else None


def check_images(docs: list[dict]) -> list[tuple[int, str, str]]:
    """The project's images either all come from a registry or none do."""
    found = [(i, path, image) for i, d in enumerate(docs) for path, image in _images(d)]
    moved = sorted({img.rsplit(":", 1)[0] for _, _, img in found if _registry(img) and PROJECT_IMAGE in img})
    if not moved:
        return []
    problems = []
    for i, path, image in found:
        if image.split("/")[-1].startswith(PROJECT_IMAGE) and not _registry(image):
            name = image.split("@")[0].rsplit(":", 1)[0]
            why = f"{image!r} has no registry while the overlay moved the others ({', '.join(moved)})"
            fix = f"add `- name: {name}` with its newName (and newTag) under images: in the kustomization"
            problems.append((i, path, f"{why}: the node cannot pull it; {fix}"))
    return problems
