"""Offline validation of the Kubernetes manifests, so a typo fails in CI instead of vanishing.

Every rendered document (each kustomize overlay, sweep outputs, raw files) is checked the way the
API server and the KubeRay operator would, but stricter:

1. ``schema``: the KubeRay v1 CRD ``openAPIV3Schema`` (shipped in ``m3ad_rl/resources/kuberay-crds``)
   with unknown fields rejected and defaults applied; core objects and pod templates with
   ``kubernetes-validate --strict``;
2. ``kuberay``: the operator's own checks the schema does not hold, and ``serveConfigV2`` with Ray
   Serve's ``ServeDeploySchema``;
3. ``rules``: this project's rules for every pod (pinned images matching ``rayVersion``, requests and
   limits, GPUs, secrets, Pod Security ``restricted``, volumes, ``/dev/shm``);
4. ``configrefs``: every config file an entrypoint names is in the ConfigMap mounted there.

    m3ad-rl k8s validate manifests/            # exit 0 clean, 1 findings, 2 usage error
"""

from m3ad_rl.k8s.validate.configrefs import check_config_files, configmap_keys
from m3ad_rl.k8s.validate.kuberay import (
    DNS1035,
    GPU,
    GROUP_VERSION,
    LABEL_VALUE,
    RAY_VERSION,
    Pod,
    check_cluster_spec,
    check_name,
    check_rayjob,
    check_rayservice,
    check_serve_config,
    cluster_specs,
    containers,
    pods,
)
from m3ad_rl.k8s.validate.load import CRDS_ENV, crd_dir, kustomize_roots, load_documents, render_kustomization
from m3ad_rl.k8s.validate.main import (
    Finding,
    check_document_sets,
    main,
    run,
    validate_document,
    validate_paths,
    yamllint_paths,
)
from m3ad_rl.k8s.validate.quantity import parse_quantity
from m3ad_rl.k8s.validate.rules import check_plain_secrets, check_pod
from m3ad_rl.k8s.validate.schema import apply_defaults, check_schema, close_schema, crd_schemas, dotted

__all__ = [
    "CRDS_ENV",
    "DNS1035",
    "GPU",
    "GROUP_VERSION",
    "LABEL_VALUE",
    "RAY_VERSION",
    "Finding",
    "Pod",
    "apply_defaults",
    "check_cluster_spec",
    "check_config_files",
    "check_document_sets",
    "check_name",
    "check_plain_secrets",
    "check_pod",
    "check_rayjob",
    "check_rayservice",
    "check_schema",
    "check_serve_config",
    "close_schema",
    "cluster_specs",
    "configmap_keys",
    "containers",
    "crd_dir",
    "crd_schemas",
    "dotted",
    "kustomize_roots",
    "load_documents",
    "main",
    "parse_quantity",
    "pods",
    "render_kustomization",
    "run",
    "validate_document",
    "validate_paths",
    "yamllint_paths",
]  # fmt: skip
