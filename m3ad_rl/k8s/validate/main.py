"""Putting the checks together: one object, a set of paths, and the command line.

m3ad-rl k8s validate manifests/            # every overlay + loose YAML; exit 1 on findings
m3ad-rl k8s validate runs/sweep-presets --strict
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from m3ad_rl.k8s.validate import crossrefs, kuberay, kueue, requests, rules
from m3ad_rl.k8s.validate.configrefs import check_config_files, configmap_keys
from m3ad_rl.k8s.validate.load import CRDS_ENV, RENDERED, crd_dir, load_documents
from m3ad_rl.k8s.validate.placement import check_gpu_placement
from m3ad_rl.k8s.validate.schema import check_core_object, check_pod_template, check_schema, crd_schemas

EXIT_FINDINGS, EXIT_USAGE = 1, 2


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


def validate_document(
    doc: dict,
    source: str = "<doc>",
    crds: Path | None = None,
    configmaps: dict[str, set[str]] | None = None,
    strict: bool = False,
) -> list[Finding]:
    """Every check that applies to one object; ``configmaps`` (name → keys) are the other documents'
    ConfigMaps, for the entrypoint config-file check."""
    kind = doc.get("kind", "?")
    obj = f"{kind}/{(doc.get('metadata') or {}).get('name', '?')}"
    found: list[tuple[str, str, str]] = [(p, m, "name") for p, m in kuberay.check_name(doc)]
    found += [(p, m, "secrets") for p, m in rules.check_plain_secrets(doc)]
    found += [(p, m, "network") for p, m in rules.check_network_policy(doc)]
    found += [(p, m, "core-schema") for p, m in check_core_object(doc)]
    if kueue.is_kueue(doc):
        found += [(p, m, "kueue-schema") for p, m in kueue.check_object(doc)]
    ray = doc.get("apiVersion") == kuberay.GROUP_VERSION and kind in kuberay.MAX_NAME
    if ray:
        found += _ray_checks(doc, crds)
        found += [(p, m, "config-files") for p, m in check_config_files(doc, configmaps, strict)]
    for pod in kuberay.pods(doc):
        if ray:
            found += [
                (f"{pod.path}.{p}" if p else pod.path, m, "pod-template") for p, m in check_pod_template(pod.template)
            ]
        found += [(p, m, "project") for p, m in rules.check_pod(pod)]
    return [Finding(source, obj, p, m, c) for p, m, c in found]


def _ray_checks(doc: dict, crds: Path | None) -> list[tuple[str, str, str]]:
    """The CRD schema and the operator's rules for a RayCluster, RayJob or RayService."""
    kind, found = doc["kind"], []
    crds = crds or crd_dir()
    if crds is None:
        found.append(("", f"KubeRay CRDs not found (set {CRDS_ENV})", "crd-schema"))
    else:
        found += [(p, m, "crd-schema") for p, m in check_schema(doc, crd_schemas(str(crds))[kind])]
    for base, cs in kuberay.cluster_specs(doc):
        found += [(p, m, "kuberay") for p, m in kuberay.check_cluster_spec(base, cs)]
        found += [(p, m, "project") for p, m in rules.check_autoscaler(base, cs)]
    spec = doc.get("spec") or {}
    if kind == "RayJob":
        found += [(p, m, "kuberay") for p, m in kuberay.check_rayjob(spec)]
    if kind in ("RayJob", "RayCluster"):
        found += [(p, m, "placement") for p, m in check_gpu_placement(doc)]
    if kind == "RayService":
        found += [(p, m, "serve-config") for p, m in kuberay.check_rayservice(spec)]
    return found


def validate_paths(paths: Iterable[str | Path], strict: bool = False) -> list[Finding]:
    """Findings for every document under ``paths`` (see ``load_documents``); the entrypoints'
    config files are checked against the ConfigMaps found among the same documents."""
    paths = list(paths)
    try:
        docs = list(load_documents(paths))
    except (RuntimeError, yaml.YAMLError) as e:
        return [Finding(", ".join(map(str, paths)), "-", "", str(e), "load")]
    loose = configmap_keys([d for s, d in docs if not s.endswith(RENDERED)])
    by_source: dict[str, dict[str, set[str]]] = {}
    findings = []
    for source, doc in docs:  # a kustomize render refers to itself only; loose files to each other
        if source not in by_source:
            by_source[source] = (
                configmap_keys([d for s, d in docs if s == source]) if source.endswith(RENDERED) else loose
            )
        findings += validate_document(doc, source, None, by_source[source], strict)
    return findings + check_document_sets(docs, strict)


def check_document_sets(docs: list[tuple[str, dict]], strict: bool = False) -> list[Finding]:
    """Names one object gives and another uses: within each render (loose files only with ``strict``:
    they may rely on objects applied apart), and Kueue's queues across everything checked."""
    findings = []

    def report(group: list[tuple[str, dict]], found: list[tuple[int, str, str]], check: str) -> None:
        for i, path, message in found:
            source, doc = group[i]
            obj = f"{doc.get('kind', '?')}/{(doc.get('metadata') or {}).get('name', '?')}"
            findings.append(Finding(source, obj, path, message, check))

    sets = [[(s, d) for s, d in docs if s == src] for src in dict.fromkeys(s for s, _ in docs if s.endswith(RENDERED))]
    loose = [(s, d) for s, d in docs if not s.endswith(RENDERED)]
    for group in [*sets, loose]:
        plain = [d for _, d in group]
        if group is not loose or strict:
            report(group, crossrefs.check_service_accounts(plain), "references")
            report(group, crossrefs.check_images(plain), "images")
        report(group, requests.check_rcrl_requests(plain), "requests")  # a ConfigMap it lacks is skipped
    report(docs, kueue.check_references([d for _, d in docs], strict), "kueue")
    return findings


def yamllint_paths(paths: Iterable[str | Path], config: str | Path = ".yamllint.yaml") -> list[str]:
    """yamllint problems (``file:line:col: [level] message``) for YAML files under ``paths`` (``config``:
    the yamllint settings, by default the current folder's, as yamllint itself looks)."""
    from yamllint import linter
    from yamllint.config import YamlLintConfig

    conf = YamlLintConfig(file=str(config))
    out = []
    for p in map(Path, paths):
        files = [p] if p.is_file() else sorted([*p.rglob("*.yaml"), *p.rglob("*.yml")])
        for f in files:
            here = Path.cwd().resolve()
            name = str(f.resolve().relative_to(here)) if f.resolve().is_relative_to(here) else str(f)
            for problem in linter.run(f.read_text(), conf, name):
                out.append(f"{f}:{problem.line}:{problem.column}: [{problem.level}] {problem.message}")
    return out


def run(paths: list[str], strict: bool = False) -> int:
    """Print the findings for ``paths``; 0 clean, 1 findings, 2 a path that does not exist."""
    missing = [p for p in paths if p != "-" and not Path(p).exists()]
    if missing or not paths:
        print(f"m3ad-rl k8s validate: no such file or folder: {', '.join(missing) or '(none given)'}", file=sys.stderr)
        return EXIT_USAGE
    findings = validate_paths(paths, strict)
    for f in findings:
        print(f)
    n_docs = 0 if any(f.check == "load" for f in findings) else sum(1 for _ in load_documents(paths))
    print(f"{n_docs} documents checked, {len(findings)} finding(s)", file=sys.stderr)
    return EXIT_FINDINGS if findings else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m m3ad_rl.k8s.validate [PATH...] [--strict]`` (default: ./manifests)."""
    parser = argparse.ArgumentParser(prog="python -m m3ad_rl.k8s.validate", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", help="files, folders or kustomizations (default: manifests/)")
    parser.add_argument("--strict", action="store_true", help="report checks that cannot be made (a missing ConfigMap)")
    args = parser.parse_args(argv)
    return run(args.paths or ["manifests"], args.strict)
