"""An autoscaling pool laid out like ``manifests/base/raycluster.autoscaler.yaml``, run by Ray's own
autoscaler (v2) on one machine: the node types are the manifest's worker groups (their CPU and
``nvidia.com/gpu`` limits as Ray resources: fake GPUs here), ``minReplicas``/``maxReplicas`` and
``autoscalerOptions.idleTimeoutSeconds`` from the same file, behind a 0-CPU head.

    m3ad-rl cluster up --dir runs/pool --autoscaling manifests/base/raycluster.autoscaler.yaml --node-cpus 2

Ray's fake multi-node provider launches each node as local Ray processes when the autoscaler asks
for one and stops it when the autoscaler lets it go: real autoscaling decisions, local nodes. It is
loaded as an ``external`` provider (``PoolProvider``) because Ray's wheel lacks the default config
file its ``fake_multinode`` type reads.
"""

from __future__ import annotations

from pathlib import Path

import yaml

HEAD_TYPE = "ray.head.default"
PROVIDER = "m3ad_rl.k8s.pool.PoolProvider"


def _fake_provider():
    from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider

    return FakeMultiNodeProvider


try:  # the class must exist at import time for Ray's external-provider loader
    _Base = _fake_provider()
except ImportError:  # pragma: no cover - Ray without its autoscaler
    _Base = object


class PoolProvider(_Base):  # type: ignore[misc,valid-type]
    """Ray's fake multi-node provider, loadable as ``type: external``, with one change: each node gets
    its own Ray temp folder (as each pod has its own disk). The stock provider starts every node in
    the head's session folder, so a node's runtime-env cleanup deleted the unpacked ``working_dir`` a
    driver on the head was still using (a later sweep variant: ``./eval.yaml does not exist``)."""

    def _create_node_with_resources_and_labels(self, node_config, tags, count, resources, labels):
        import ray._private.parameter as parameter

        stock, n = parameter.RayParams, self._next_node_id + 1

        def own_temp_dir(*args, **kwargs):
            kwargs.setdefault("temp_dir", f"/tmp/ray-node-{n}")
            return stock(*args, **kwargs)

        parameter.RayParams = own_temp_dir
        try:
            return super()._create_node_with_resources_and_labels(node_config, tags, count, resources, labels)
        finally:
            parameter.RayParams = stock


def head_node_id() -> str:
    from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID

    return FAKE_HEAD_NODE_ID


def node_types(manifest: dict, node_cpus: float | None = None) -> dict[str, dict]:
    """The autoscaler's ``available_node_types`` from a RayCluster's worker groups: CPUs and GPUs.

    ``node_cpus`` replaces each group's CPU count (a 64-CPU pod does not fit a laptop); GPUs stay as
    written, so a job asking for GPUs still needs a GPU group. Memory is left out: the fake provider
    cannot give a node a memory resource, and local nodes share the machine's."""
    from m3ad_rl.k8s.validate.quantity import parse_quantity

    spec = manifest.get("spec") or {}
    types = {HEAD_TYPE: {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0}}
    for group in spec.get("workerGroupSpecs") or []:
        limits = ((group["template"]["spec"]["containers"][0].get("resources") or {}).get("limits")) or {}
        params = group.get("rayStartParams") or {}
        cpus = float(params.get("num-cpus") or parse_quantity(limits.get("cpu")) or 1)
        gpus = float(params.get("num-gpus") or parse_quantity(limits.get("nvidia.com/gpu")) or 0)
        resources = {"CPU": node_cpus if node_cpus is not None else cpus}
        if gpus:
            resources["GPU"] = gpus
        types[group["groupName"]] = {
            "resources": resources,
            "node_config": {},
            "min_workers": int(group.get("minReplicas", 0)),
            "max_workers": int(group.get("maxReplicas", group.get("replicas", 1))),
        }
    return types


def autoscaling_config(
    manifest_path: str | Path, gcs_address: str, node_cpus: float | None = None, idle_timeout_s: float | None = None
) -> dict:
    """The cluster config Ray's monitor reads (``ray start --head --autoscaling-config``)."""
    try:
        docs = [d for d in yaml.safe_load_all(Path(manifest_path).read_text()) if isinstance(d, dict)]
    except yaml.YAMLError as e:
        raise RuntimeError(f"{manifest_path}: not valid YAML: {' '.join(str(e).split())}") from None
    manifest = next((d for d in docs if d.get("kind") == "RayCluster"), None)
    if manifest is None:
        raise RuntimeError(f"{manifest_path}: no RayCluster in it: name the standing cluster's manifest")
    spec = manifest.get("spec") or {}
    if not spec.get("enableInTreeAutoscaling"):
        raise RuntimeError(f"{manifest_path}: enableInTreeAutoscaling is off: this RayCluster does not autoscale")
    idle = (
        idle_timeout_s
        if idle_timeout_s is not None
        else (spec.get("autoscalerOptions") or {}).get("idleTimeoutSeconds", 60)
    )
    types = node_types(manifest, node_cpus)
    return {
        "cluster_name": (manifest.get("metadata") or {}).get("name", "m3ad-pool"),
        "max_workers": sum(t.get("max_workers", 0) for t in types.values()),
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": float(idle) / 60,
        "provider": {
            "type": "external",
            "module": PROVIDER,
            "launch_multiple": True,
            "head_node_id": head_node_id(),
            "gcs_address": gcs_address,
        },
        "auth": {"ssh_user": "ray"},
        "available_node_types": types,
        "head_node_type": HEAD_TYPE,
        **{
            k: []
            for k in (
                "cluster_synced_files",
                "rsync_exclude",
                "rsync_filter",
                "initialization_commands",
                "setup_commands",
                "head_setup_commands",
                "worker_setup_commands",
                "head_start_ray_commands",
                "worker_start_ray_commands",
            )
        },
        "file_mounts": {},
        "file_mounts_sync_continuously": False,
    }


def head_env() -> dict[str, str]:
    """What Ray's monitor needs to run the v2 autoscaler with the fake provider."""
    node = head_node_id()
    return {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_enable_autoscaler_v2": "1",
            "RAY_CLOUD_INSTANCE_ID": node, "RAY_OVERRIDE_NODE_ID_FOR_TESTING": node}  # fmt: skip
