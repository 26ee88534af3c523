"""A RayJob's entrypoint reads its configs from a ConfigMap mounted on the head (``/etc/m3ad``):
every file it names under that mount must be a key of the ConfigMap, or the job fails at start."""

from __future__ import annotations

import re

from m3ad_rl.k8s.validate.kuberay import cluster_specs


def configmap_keys(docs: list[dict]) -> dict[str, set[str]]:
    """ConfigMap name → the file names it holds (data and binaryData keys)."""
    return {
        (d.get("metadata") or {}).get("name", ""): {*(d.get("data") or {}), *(d.get("binaryData") or {})}
        for d in docs
        if d.get("kind") == "ConfigMap"
    }


def head_config_mounts(doc: dict) -> dict[str, tuple[str, set[str] | None]]:
    """mountPath → (ConfigMap name, the keys it projects, or None for all) for the head's Ray container."""
    out: dict[str, tuple[str, set[str] | None]] = {}
    for _, cs in cluster_specs(doc):
        spec = ((cs.get("headGroupSpec") or {}).get("template") or {}).get("spec") or {}
        volumes = {v.get("name"): v.get("configMap") for v in spec.get("volumes") or [] if isinstance(v, dict)}
        ray = (spec.get("containers") or [{}])[0]
        for m in ray.get("volumeMounts") or []:
            cm = volumes.get(m.get("name"))
            if isinstance(cm, dict) and m.get("mountPath"):
                items = {i.get("path") for i in cm["items"]} if cm.get("items") else None
                out[m["mountPath"].rstrip("/")] = (cm.get("name", ""), items)
    return out


def check_config_files(
    doc: dict, configmaps: dict[str, set[str]] | None, strict: bool = False
) -> list[tuple[str, str]]:
    """(``spec.entrypoint``, message) for every file the entrypoint names under a ConfigMap mount that
    the ConfigMap does not hold. A ConfigMap not among the documents is skipped, or reported with
    ``strict``."""
    entry = (doc.get("spec") or {}).get("entrypoint")
    if doc.get("kind") != "RayJob" or not isinstance(entry, str):
        return []
    problems = []
    for mount, (name, items) in head_config_mounts(doc).items():
        refs = dict.fromkeys(m.group(0) for m in re.finditer(re.escape(mount) + r"/[^\s'\"=,;&|)]+", entry))
        for ref in refs:
            key, held = ref[len(mount) + 1 :].split("/")[0], (configmaps or {}).get(name)
            if held is None:
                if strict:
                    why = f"ConfigMap {name!r} (mounted at {mount}) is not among the documents checked"
                    problems.append(("spec.entrypoint", f"{why}: cannot check {ref}; validate them together"))
                continue
            visible = held if items is None else held & items
            if key not in visible:
                has = ", ".join(sorted(visible)) or "nothing"
                why = f"names {ref}, but ConfigMap {name!r} mounted at {mount} has no key {key!r} (it has {has})"
                problems.append(("spec.entrypoint", f"{why}: add the file to the ConfigMap or fix the path"))
    return problems
