"""Reading manifests: files, folders and kustomizations, rendered as ``kubectl apply -k`` would."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path

import yaml

from m3ad_rl.core.package_data import package_path
from m3ad_rl.k8s.validate.schema import yaml_problem

CRDS_ENV = "M3AD_KUBERAY_CRDS"
RENDERED = " (kustomize)"  # the source suffix of a rendered kustomization
SHIPPED_CRDS = package_path("resources/kuberay-crds")


def crd_dir() -> Path | None:
    """The KubeRay CRDs: ``$M3AD_KUBERAY_CRDS`` if set, else the copies shipped in the package."""
    path = Path(os.environ.get(CRDS_ENV) or SHIPPED_CRDS)
    return path if (path / "ray.io_rayjobs.yaml").exists() else None


def _kustomizations(path: Path) -> tuple[dict[Path, Path], set[Path], set[Path]]:
    """Every kustomization folder under ``path`` (resolved → as found), the folders some other one
    includes (resources or components), and the ``kind: Component`` folders."""
    found = {p.parent.resolve(): p.parent for p in path.rglob("kustomization.yaml")}
    included, components = set(), set()
    for folder in found:
        k = yaml.safe_load((folder / "kustomization.yaml").read_text()) or {}
        if k.get("kind") == "Component":
            components.add(folder)
        for ref in [*(k.get("resources") or []), *(k.get("components") or [])]:
            included.add((folder / ref).resolve())
    return found, included, components


def kustomize_roots(path: Path) -> list[Path]:
    """Kustomizations under ``path`` meant to be applied: every ``kind: Kustomization`` that no other
    kustomization there includes (so overlays, not their base; never a ``kind: Component``)."""
    found, included, components = _kustomizations(path)
    return sorted(found[f] for f in found if f not in included and f not in components)


def lone_components(path: Path) -> list[Path]:
    """``kind: Component`` folders under ``path`` that no kustomization there includes: rendered on
    their own (``render_component``), or nothing would ever check them."""
    found, included, components = _kustomizations(path)
    return sorted(found[f] for f in components if f not in included)


def render_component(path: Path) -> str:
    """A Component rendered on its own: a throwaway kustomization that lists only it."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="m3ad-component-") as tmp:
        wrapper = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization"}
        wrapper["components"] = [os.path.relpath(path.resolve(), tmp)]
        (Path(tmp) / "kustomization.yaml").write_text(yaml.safe_dump(wrapper))
        try:
            return render_kustomization(Path(tmp))
        except RuntimeError as e:
            raise RuntimeError(str(e).replace(tmp, f"<component {path}>")) from None


def kustomize_command() -> list[str] | None:
    """``kubectl kustomize``, else a standalone ``kustomize build``, else None."""
    if kubectl := shutil.which("kubectl"):
        return [kubectl, "kustomize"]
    if kustomize := shutil.which("kustomize"):
        return [kustomize, "build"]
    return None


def render_kustomization(path: Path) -> str:
    """The kustomization rendered; RuntimeError with the tool's message on failure."""
    cmd = kustomize_command()
    if cmd is None:
        raise RuntimeError("neither kubectl nor kustomize found: install one, or validate raw files")
    res = subprocess.run([*cmd, str(path)], capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        said = tool_error(res.stderr) or f"exit status {res.returncode}"
        raise RuntimeError(f"{' '.join(cmd[1:])} {path} failed: {said}")
    return res.stdout


def tool_error(stderr: str, limit: int = 300) -> str:
    """kubectl's / kustomize's error in one line: klog's prefix and quoting off, the chain of causes
    without its repeats, and past ``limit`` characters its first and last links (the cause)."""
    import re

    text = " ".join(stderr.split())
    text = re.sub(r'^[EWIF]\d{4} [\d:.]+\s+\d+ [\w.]+:\d+\] "command failed" err="(.*)"$', r"\1", text)
    text = text.removeprefix("Error: ").removeprefix("error: ")
    chain = [link.strip(" '") for link in re.split(r": ", text) if link.strip(" '")]
    links = [link for i, link in enumerate(chain) if link not in chain[i + 1 :]]  # a repeat kept where it is last
    said = ": ".join(links)
    if len(said) > limit and len(links) > 3:
        said = f"{links[0]}: … : {': '.join(links[-2:])}"
    return said


def load_documents(paths: Iterable[str | Path]) -> Iterator[tuple[str, dict]]:
    """(source, document) for every object: each kustomization rendered, other YAML read as is.

    Files inside a kustomization (patches, config files) are not documents of their own; without
    kubectl or kustomize the raw files are read instead (ConfigMap payloads under ``config/`` skipped).
    """
    for p in map(Path, paths):
        if str(p) == "-":  # `kustomize build ... | m3ad-rl k8s validate -`
            yield from read_yaml_docs(stdin_text(), f"<stdin>{RENDERED}")
            continue
        if p.is_file():
            yield from read_yaml_docs(p.read_text(), str(p))
            continue
        roots = kustomize_roots(p) if kustomize_command() else []
        for root in roots:
            yield from read_yaml_docs(render_kustomization(root), f"{root}{RENDERED}")
        components = lone_components(p) if kustomize_command() else []
        for component in components:
            yield from read_yaml_docs(render_component(component), f"{component}{RENDERED}")
        roots = roots + components
        inside = {q.parent for q in p.rglob("kustomization.yaml")}
        for f in sorted([*p.rglob("*.yaml"), *p.rglob("*.yml")]):
            if not roots and f.name == "kustomization.yaml":
                continue
            if roots and any(f.is_relative_to(k) for k in inside):
                continue
            if not roots and f.parent.name == "config":
                continue
            yield from read_yaml_docs(f.read_text(), str(f))


_STDIN: list[str] = []


def stdin_text() -> str:
    """Standard input, read once (the documents are loaded more than once per run)."""
    import sys

    if not _STDIN:
        _STDIN.append(sys.stdin.read())
    return _STDIN[0]


def read_yaml_docs(text: str, source: str) -> Iterator[tuple[str, dict]]:
    """The objects (mappings with a ``kind``) of a multi-document YAML text; a syntax error is one line
    naming the file, line and column (PyYAML's own message spans five)."""
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as e:
        raise RuntimeError(yaml_problem(e, source)) from None
    for doc in docs:
        if isinstance(doc, dict) and "kind" in doc:
            yield source, doc
