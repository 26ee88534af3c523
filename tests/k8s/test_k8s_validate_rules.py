"""One test per validator rule (m3ad_rl/k8s/validate): start from a clean manifest, inject exactly
that mistake, and check the finding names the field and says what to write instead."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from m3ad_rl.k8s import validate as kv
from m3ad_rl.k8s.validate.load import SHIPPED_CRDS

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
RCRL = yaml.safe_load((MANIFESTS / "base" / "rayjob.rcrl.yaml").read_text())
CLUSTER = yaml.safe_load((MANIFESTS / "base" / "raycluster.autoscaler.yaml").read_text())
CONFIGMAP = {"m3ad-config": {f.name for f in (MANIFESTS / "base" / "config").glob("*.yaml")}}
RCS = "spec.rayClusterSpec"
HEAD = f"{RCS}.headGroupSpec.template.spec"
ROLLOUT = f"{RCS}.workerGroupSpecs[0]"
ROLLOUT_C0 = f"{ROLLOUT}.template.spec.containers[0]"


def rcrl() -> dict:
    return copy.deepcopy(RCRL)


def spec_at(doc: dict, dotted: str):
    """The object at a dotted path like ``spec.rayClusterSpec.workerGroupSpecs[0].template``."""
    target = doc
    for part in dotted.replace("[", ".").replace("]", "").split("."):
        target = target[int(part)] if part.isdigit() else target[part]
    return target


def findings(doc: dict, **kw) -> list[kv.Finding]:
    return kv.validate_document(doc, "test.yaml", **kw)


def assert_finding(doc: dict, path: str, *words: str, **kw) -> str:
    """The one finding at exactly ``path``, whose message has every word; returns it as printed."""
    found = findings(doc, **kw)
    hits = [f for f in found if f.path == path and all(w in f.message for w in words)]
    assert hits, f"no finding at {path} with {words}; got:\n" + "\n".join(map(str, found))
    return str(hits[0])


@pytest.mark.parametrize("doc", [RCRL, CLUSTER], ids=["rayjob", "raycluster"])
def test_the_clean_manifests_have_no_findings(doc):
    assert findings(copy.deepcopy(doc), configmaps=CONFIGMAP, strict=True) == []


def test_the_shipped_crds_are_used_by_default(monkeypatch):
    """The validator needs nothing outside the package (no ../shared); the env var still overrides."""
    monkeypatch.delenv(kv.CRDS_ENV, raising=False)
    assert kv.crd_dir() == SHIPPED_CRDS
    assert {f.name for f in SHIPPED_CRDS.glob("ray.io_*.yaml")} == {
        "ray.io_rayclusters.yaml", "ray.io_rayjobs.yaml", "ray.io_rayservices.yaml"
    }  # fmt: skip
    monkeypatch.setenv(kv.CRDS_ENV, "/nowhere")
    assert kv.crd_dir() is None


# --- GPUs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("hint", ["name", "num-gpus", "requests", "nodeSelector", "toleration"])
def test_gpu_group_without_gpu_limit(hint):
    doc = rcrl()
    group, res = spec_at(doc, ROLLOUT), spec_at(doc, f"{ROLLOUT_C0}.resources")
    pod = spec_at(doc, f"{ROLLOUT}.template.spec")
    del res["limits"]["nvidia.com/gpu"]
    if hint != "requests":
        del res["requests"]["nvidia.com/gpu"]
    if hint != "nodeSelector":  # placed on GPU nodes by the selector alone (issue 21) ...
        del pod["nodeSelector"]
    if hint != "toleration":  # ... or by the toleration alone
        del pod["tolerations"]
    if hint == "name":
        group["groupName"] = "gpu-rollout"
    if hint == "num-gpus":
        group["rayStartParams"] = {"num-gpus": "1"}
    line = assert_finding(doc, f"{ROLLOUT_C0}.resources.limits", "implies GPUs", 'add limits: {nvidia.com/gpu: "1"}')
    print(line)


def test_num_gpus_differs_from_the_gpu_limit():
    doc = rcrl()
    spec_at(doc, ROLLOUT)["rayStartParams"] = {"num-gpus": "2"}
    print(assert_finding(doc, f"{ROLLOUT}.rayStartParams.num-gpus", "limit is 1", "make them equal"))


# --- RayJob cluster choice ----------------------------------------------------------------------


def test_cluster_selector_together_with_a_cluster_spec():
    doc = rcrl()
    doc["spec"]["clusterSelector"] = {"ray.io/cluster": "m3ad-cluster"}
    doc["spec"]["suspend"], doc["spec"]["backoffLimit"] = False, 0
    print(assert_finding(doc, "spec.clusterSelector", "ignores rayClusterSpec", "keep only one"))


def test_cluster_selector_without_the_cluster_key():
    doc = rcrl()
    del doc["spec"]["rayClusterSpec"]
    doc["spec"]["clusterSelector"] = {"app": "m3ad-cluster"}
    doc["spec"]["suspend"], doc["spec"]["backoffLimit"] = False, 0
    print(assert_finding(doc, "spec.clusterSelector", "needs the key ray.io/cluster"))


# --- images, resources -----------------------------------------------------------------------------


def test_ray_image_version_differs_from_ray_version():
    doc = rcrl()
    spec_at(doc, HEAD)["containers"][0]["image"] = "rayproject/ray:2.41.0-py311"
    line = assert_finding(
        doc, f"{HEAD}.containers[0].image", "runs Ray 2.41.0", "rayVersion is '2.60.0'", "2.60.0-py311"
    )
    print(line)


@pytest.mark.parametrize(
    ("resource", "asked", "limit"),
    [("cpu", "12", "11500m"), ("memory", "120Gi", "100G"), ("ephemeral-storage", "50Gi", "2e3"),
     ("nvidia.com/gpu", "2", "1")],
)  # fmt: skip
def test_limit_below_request(resource, asked, limit):
    doc = rcrl()
    res = spec_at(doc, f"{ROLLOUT_C0}.resources")
    res["requests"][resource], res["limits"][resource] = asked, limit
    path = f"{ROLLOUT_C0}.resources.limits.{resource}"
    print(assert_finding(doc, path, f"limit {limit} is below the request {asked}", f"at least {asked}"))


def test_quantities_parse_like_kubernetes():
    q = kv.parse_quantity
    assert q("500m") < q("1") < q("1G") < q("1Gi") < q("2e9")
    assert q("1.5") == q("1500m") and q(4) == q("4") and q("1Ki") == 1024
    assert q("one") is None and q(None) is None and q(True) is None


def test_ray_container_without_a_memory_limit():
    doc = rcrl()
    del spec_at(doc, HEAD)["containers"][0]["resources"]["limits"]["memory"]
    print(assert_finding(doc, f"{HEAD}.containers[0].resources.limits.memory", "Ray containers need a memory limit"))


# --- volumes, config files --------------------------------------------------------------------------


def test_volume_mount_naming_no_volume():
    doc = rcrl()
    spec_at(doc, ROLLOUT_C0)["volumeMounts"].append({"name": "runs", "mountPath": "/mnt/runs"})
    print(assert_finding(doc, f"{ROLLOUT_C0}.volumeMounts[3].name", "'runs' is not a volume", "add it under"))


def test_entrypoint_names_a_config_the_configmap_lacks():
    doc = rcrl()
    doc["spec"]["entrypoint"] = doc["spec"]["entrypoint"].replace("/etc/m3ad/rcrl.yaml", "/etc/m3ad/rcrl-4b.yaml")
    line = assert_finding(doc, "spec.entrypoint", "no key 'rcrl-4b.yaml'", "add the file", configmaps=CONFIGMAP)
    print(line)


def test_entrypoint_configs_without_the_configmap_are_checked_only_when_strict():
    doc = rcrl()
    assert [f for f in findings(doc, configmaps={}) if f.check == "config-files"] == []
    print(assert_finding(doc, "spec.entrypoint", "not among the documents checked", configmaps={}, strict=True))


def test_entrypoint_configs_checked_against_a_configmap_in_the_same_files(tmp_path):
    doc = rcrl()
    doc["spec"]["entrypoint"] += " /etc/m3ad/missing.yaml"
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "m3ad-config"},
          "data": {k: "{}" for k in CONFIGMAP["m3ad-config"]}}  # fmt: skip
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(doc))
    (tmp_path / "cm.yaml").write_text(yaml.safe_dump(cm))
    found = [f for f in kv.validate_paths([tmp_path]) if f.check == "config-files"]
    assert [f.path for f in found] == ["spec.entrypoint"] and "'missing.yaml'" in found[0].message


# --- security -----------------------------------------------------------------------------------------


def test_privileged_container():
    doc = rcrl()
    spec_at(doc, ROLLOUT_C0)["securityContext"]["privileged"] = True
    print(assert_finding(doc, f"{ROLLOUT_C0}.securityContext.privileged", "remove privileged: true"))


def test_host_network():
    doc = rcrl()
    spec_at(doc, f"{ROLLOUT}.template.spec")["hostNetwork"] = True
    print(assert_finding(doc, f"{ROLLOUT}.template.spec.hostNetwork", "remove it"))


def test_host_path_volume():
    doc = rcrl()
    spec_at(doc, f"{ROLLOUT}.template.spec")["volumes"].append({"name": "host", "hostPath": {"path": "/data"}})
    print(assert_finding(doc, f"{ROLLOUT}.template.spec.volumes[3].hostPath", "use an emptyDir"))


def test_seccomp_capabilities_and_token():
    doc = rcrl()
    pod = spec_at(doc, f"{ROLLOUT}.template.spec")
    del pod["securityContext"]["seccompProfile"], pod["automountServiceAccountToken"]
    del pod["containers"][0]["securityContext"]["capabilities"]
    assert_finding(doc, f"{ROLLOUT}.template.spec.securityContext.seccompProfile", "{type: RuntimeDefault}")
    assert_finding(doc, f"{ROLLOUT_C0}.securityContext.capabilities.drop", "drop: [ALL]")
    assert_finding(doc, f"{ROLLOUT}.template.spec.automountServiceAccountToken", "false")


def test_the_autoscaling_head_keeps_its_token():
    """The autoscaler sidecar calls the API: its head must not turn the token off (and need not say so)."""
    doc = copy.deepcopy(CLUSTER)
    doc["spec"]["headGroupSpec"]["template"]["spec"]["automountServiceAccountToken"] = False
    print(assert_finding(doc, "spec.headGroupSpec.template.spec.automountServiceAccountToken", "autoscaler"))


def test_secret_values_only_in_a_marked_dev_secret():
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"k": "v"}}
    assert_finding(secret, "data", "out of band", "m3ad.io/dev-only")
    secret["metadata"]["annotations"] = {"m3ad.io/dev-only": "true"}
    assert [f for f in findings(secret) if f.check == "secrets"] == []


def test_workload_pods_get_the_same_rules():
    """Deployments and Jobs (the dev object store, the pipeline runner) are held to the pod rules."""
    dev = yaml.safe_load_all((MANIFESTS / "overlays" / "dev" / "objectstore.yaml").read_text())
    deployment = next(d for d in dev if d["kind"] == "Deployment")
    assert findings(copy.deepcopy(deployment)) == []
    deployment["spec"]["template"]["spec"]["hostNetwork"] = True
    assert_finding(deployment, "spec.template.spec.hostNetwork", "remove it")


def test_core_objects_are_checked_strictly():
    policy = yaml.safe_load((MANIFESTS / "base" / "networkpolicy.yaml").read_text())
    assert findings(copy.deepcopy(policy)) == []
    policy["spec"]["ingres"] = policy["spec"].pop("ingress")
    assert any(f.check == "core-schema" and "ingres" in f.message for f in findings(policy))


# --- the command --------------------------------------------------------------------------------------


@pytest.mark.skipif(kv.load.kustomize_command() is None, reason="kubectl or kustomize renders the overlays")
def test_the_shipped_manifests_are_clean(capsys):
    from m3ad_rl.cli import main

    assert main(["k8s", "validate", str(MANIFESTS)]) == 0, capsys.readouterr().out


def test_exit_codes(tmp_path, capsys):
    from m3ad_rl.cli import main

    broken = rcrl()
    spec_at(broken, ROLLOUT_C0)["securityContext"]["privileged"] = True
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(broken))
    assert main(["k8s", "validate", str(tmp_path / "job.yaml")]) == 1
    assert f"RayJob/m3ad-rcrl: {ROLLOUT_C0}.securityContext.privileged" in capsys.readouterr().out
    assert main(["k8s", "validate", str(tmp_path / "nope")]) == 2
    with pytest.raises(SystemExit) as e:
        main(["k8s", "validate"])
    assert e.value.code == 2


def test_python_dash_m_runs_the_validator(tmp_path):
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(rcrl()))
    res = subprocess.run([sys.executable, "-m", "m3ad_rl.k8s.validate", str(tmp_path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


# --- GPU placement (placement.py) ---------------------------------------------------------------

TRAIN = f"{RCS}.workerGroupSpecs[1]"


@pytest.mark.parametrize("drop", ["both", "rollout", "train"])
def test_rcrl_gpu_pods_that_the_scheduler_would_strand(drop):
    """Issue 21: 4 one-GPU rollout pods spread 2 + 2 over two 8-GPU nodes leave no node for the 8-GPU
    train pod. Without the rollouts' packing affinity the replay strands it; the train pod's
    anti-affinity alone does not pack them (it only guards larger nodes), so dropping just it passes."""
    doc = rcrl()
    if drop in ("both", "rollout"):
        del spec_at(doc, f"{ROLLOUT}.template.spec")["affinity"]
    if drop in ("both", "train"):
        del spec_at(doc, f"{TRAIN}.template.spec")["affinity"]
    found = [f for f in findings(doc) if f.check == "placement"]
    if drop == "train":
        assert found == []
        return
    assert len(found) == 1 and "8 GPUs" in found[0].message and "podAffinity" in found[0].message, found
    print(found[0])


def test_the_placement_replay():
    from m3ad_rl.k8s.validate.placement import _GpuPod, replay

    sel = (("m3ad.io/gpu-pack", "j"),)  # one selector: its (label, value) pairs
    loose = [_GpuPod("r", "rollout", 1, {}, (), ())] * 4 + [_GpuPod("t", "train", 8, {}, (), ())]
    assert replay(loose, 8, 2).name == "train"  # spread 2 + 2: stranded
    assert replay(loose[::-1], 8, 2) is None  # train first: the rollouts fill the other node
    packed = [_GpuPod("r", "rollout", 1, dict(sel), (sel,), ())] * 4 + [_GpuPod("t", "train", 8, {}, (), (sel,))]
    assert replay(packed, 8, 2) is None and replay(packed[::-1], 8, 2) is None
    # anti-affinity alone is symmetric but does not pack: rollouts spread, train stranded
    anti_only = [_GpuPod("r", "rollout", 1, dict(sel), (), ())] * 4 + [_GpuPod("t", "train", 8, {}, (), (sel,))]
    assert replay(anti_only, 8, 2).name == "train"
    # anti-affinity is symmetric: a pod already on the node keeps out the pods it selects, room or not
    assert (
        replay([_GpuPod("t", "train", 8, {}, (), (sel,)), _GpuPod("r", "rollout", 1, dict(sel), (), ())], 16, 1).name
        == "rollout"
    )
    # a third pod set too big for what is left is stranded whatever the affinity
    assert replay([*packed, _GpuPod("x", "x", 8, {}, (), ())], 8, 2).name == "x"


# --- mistakes engineers make (issue 21) -----------------------------------------------------------


def test_dashboard_bound_to_loopback():
    doc = rcrl()
    spec_at(doc, f"{RCS}.headGroupSpec")["rayStartParams"]["dashboard-host"] = "127.0.0.1"
    print(assert_finding(doc, f"{RCS}.headGroupSpec.rayStartParams.dashboard-host", "loopback", "0.0.0.0"))


def test_duplicated_port_names():
    doc = rcrl()
    spec_at(doc, ROLLOUT_C0)["ports"] = [{"name": "metrics", "containerPort": 8080},
                                         {"name": "metrics", "containerPort": 8081}]  # fmt: skip
    print(assert_finding(doc, f"{ROLLOUT_C0}.ports", "'metrics'", "twice"))


def test_kueue_label_on_the_pod_template_instead_of_the_rayjob():
    doc = rcrl()
    spec_at(doc, f"{ROLLOUT}.template")["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] = "m3ad"
    print(assert_finding(doc, f"{ROLLOUT}.template.metadata.labels", "owning object", "RayJob"))


@pytest.mark.parametrize("level", ["pod", "container"])
def test_run_as_root(level):
    doc = rcrl()
    where = f"{ROLLOUT}.template.spec" if level == "pod" else ROLLOUT_C0
    spec_at(doc, where)["securityContext"]["runAsUser"] = 0
    print(assert_finding(doc, f"{where}.securityContext.runAsUser", "root", "runAsUser: 1000"))


def test_a_dropped_gpu_toleration():
    doc = rcrl()
    del spec_at(doc, f"{ROLLOUT}.template.spec")["tolerations"]
    print(assert_finding(doc, f"{ROLLOUT}.template.spec.tolerations", "Pending", "operator: Exists"))


def test_a_dropped_dns_egress_rule():
    policy = yaml.safe_load((MANIFESTS / "base" / "networkpolicy.yaml").read_text())
    assert [f for f in findings(copy.deepcopy(policy)) if f.check == "network"] == []
    policy["spec"]["egress"] = [r for r in policy["spec"]["egress"]
                                if not any(p.get("port") == 53 for p in r.get("ports", []))]  # fmt: skip
    print(assert_finding(policy, "spec.egress", "DNS (port 53)", "kube-dns"))


def test_messages_are_one_readable_line(tmp_path):
    """Issue 21: PyYAML's five-line error and the quantity regex are said in one line an engineer reads."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n data: {a: 1}\n")
    (found,) = kv.validate_paths([bad])
    assert f"{bad}:5:2: not valid YAML" in found.message and "\n" not in found.message, found
    doc = rcrl()
    spec_at(doc, f"{ROLLOUT_C0}.resources")["limits"]["cpu"] = "12 cores"
    line = assert_finding(doc, f"{ROLLOUT_C0}.resources.limits.cpu", "not a Kubernetes quantity", "500m")
    assert "[0-9]" not in line, line


@pytest.mark.parametrize("where", ["runtimeEnvYAML", "serveConfigV2", "schema type", "kustomize"])
def test_every_message_is_one_bounded_line(tmp_path, where):
    """No raw library message: YAML inside a field, a value of the wrong type and a failed render are
    said in one line that names where (PyYAML's errors span five lines, jsonschema repeats the value)."""
    if where == "runtimeEnvYAML":
        doc = rcrl()
        doc["spec"]["runtimeEnvYAML"] = "env_vars: [a, b\npip: x\n"
        found = [f for f in findings(doc) if f.path == "spec.runtimeEnvYAML"]
    elif where == "serveConfigV2":
        doc = yaml.safe_load((MANIFESTS / "base" / "rayservice.rewards.yaml").read_text())
        doc["spec"]["serveConfigV2"] = "applications:\n  - name: [x\n"
        found = findings(doc)
    elif where == "schema type":
        doc = rcrl()
        spec_at(doc, ROLLOUT)["replicas"] = {"many": ["x" * 300]}
        found = [f for f in findings(doc) if "replicas" in f.path]
    else:
        (tmp_path / "kustomization.yaml").write_text("resources: [missing.yaml]\n")
        found = kv.validate_paths([tmp_path])
    assert found, where
    for f in found:
        assert "\n" not in f.message and len(f.message) <= 260, f.message
    print(found[0])
    if where in ("runtimeEnvYAML", "serveConfigV2"):
        assert "not valid YAML" in found[0].message and "line " in found[0].message, found[0]


def test_serve_replicas_larger_than_any_worker():
    """Issue 21: a deployment asking for more CPUs per replica than any worker has waits forever."""
    service = yaml.safe_load((MANIFESTS / "base" / "rayservice.rewards.yaml").read_text())
    assert [f for f in findings(copy.deepcopy(service)) if "largest worker" in f.message] == []
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    config["applications"][0]["deployments"][0]["ray_actor_options"]["num_cpus"] = 64
    service["spec"]["serveConfigV2"] = yaml.safe_dump(config)
    path = "spec.serveConfigV2: applications[0].deployments[0].ray_actor_options.num_cpus"
    print(assert_finding(service, path, "64 CPUs per replica", "largest worker"))


# --- KubeRay's own rejections (kuberay.py) --------------------------------------------------------

HEAD_ENV = f"{HEAD}.containers[0].env"


def test_autoscaler_v2_env_with_autoscaling_off():
    doc = rcrl()
    spec_at(doc, f"{HEAD}.containers[0]").setdefault("env", []).append(
        {"name": "RAY_enable_autoscaler_v2", "value": "1"}
    )
    i = len(spec_at(doc, HEAD_ENV)) - 1
    print(assert_finding(doc, f"{HEAD_ENV}[{i}]", "enableInTreeAutoscaling off", "autoscalerOptions.version: v2"))


def test_autoscaler_v2_env_beside_autoscaler_options_version():
    doc = copy.deepcopy(CLUSTER)
    head = doc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    head.setdefault("env", []).append({"name": "RAY_enable_autoscaler_v2", "value": "1"})
    path = f"spec.headGroupSpec.template.spec.containers[0].env[{len(head['env']) - 1}]"
    print(assert_finding(doc, path, "autoscalerOptions.version", "remove the variable"))


def test_deletion_rules_with_shutdown_after_job_finishes():
    doc = rcrl()
    assert doc["spec"]["shutdownAfterJobFinishes"] is True
    doc["spec"]["deletionStrategy"] = {
        "deletionRules": [{"policy": "DeleteCluster", "condition": {"jobStatus": "SUCCEEDED", "ttlSeconds": 60}}]
    }
    print(
        assert_finding(
            doc, "spec.deletionStrategy.deletionRules", "mutually exclusive", "drop shutdownAfterJobFinishes"
        )
    )
    doc["spec"]["deletionStrategy"] = {"onSuccess": {"policy": "DeleteCluster"}}  # the legacy pair, half of it
    print(assert_finding(doc, "spec.deletionStrategy", "both onSuccess and onFailure"))


def test_the_autoscaler_sidecar_is_held_to_pod_security():
    """KubeRay adds the autoscaler container to the head from autoscalerOptions: Pod Security sees it."""
    doc = copy.deepcopy(CLUSTER)
    del doc["spec"]["autoscalerOptions"]["securityContext"]
    print(assert_finding(doc, "spec.autoscalerOptions.securityContext.allowPrivilegeEscalation", "autoscaler sidecar"))
    assert_finding(doc, "spec.autoscalerOptions.securityContext.capabilities.drop", "autoscaler sidecar", "drop: [ALL]")


# --- across the documents of a render (crossrefs.py, kueue.py) ------------------------------------


def set_findings(docs: list[dict], strict: bool = False) -> list[kv.Finding]:
    return kv.check_document_sets([("overlay (kustomize)", d) for d in docs], strict)


def assert_set_finding(docs: list[dict], path: str, *words: str, strict: bool = False) -> str:
    found = set_findings(docs, strict)
    hits = [f for f in found if f.path == path and all(w in f.message for w in words)]
    assert hits, f"no finding at {path} with {words}; got:\n" + "\n".join(map(str, found))
    return str(hits[0])


def test_a_service_account_no_manifest_defines():
    doc = rcrl()
    spec_at(doc, f"{ROLLOUT}.template.spec")["serviceAccountName"] = "m3ad-traner"
    print(assert_set_finding([doc], f"{ROLLOUT}.template.spec.serviceAccountName", "'m3ad-traner'", "ServiceAccount"))
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "m3ad-traner"}}
    assert [f for f in set_findings([doc, account]) if f.check == "references"] == []


def test_an_overlay_whose_images_miss_the_submitter():
    """Issue 21: `images:` rewrote the Ray images to a registry but not the submitter's."""
    doc = rcrl()
    for pod in kv.pods(doc):
        for _, c in kv.containers(pod.template):
            if pod.role != "submitter":
                c["image"] = "ghcr.io/acme/" + c["image"]
    assert spec_at(doc, "spec.submitterPodTemplate.spec.containers[0]")["image"].startswith("m3ad-rl-submitter:")
    path = "spec.submitterPodTemplate.spec.containers[0].image"
    print(assert_set_finding([doc], path, "no registry", "- name: m3ad-rl-submitter", "images:"))
    spec_at(doc, "spec.submitterPodTemplate.spec.containers[0]")["image"] = "ghcr.io/acme/m3ad-rl-submitter:0.1.0"
    assert [f for f in set_findings([doc]) if f.check == "images"] == []


KUEUE = MANIFESTS / "components" / "kueue"


def kueue_objects() -> tuple[dict, dict, dict]:
    """(ResourceFlavor, ClusterQueue, LocalQueue) as shipped."""
    flavor = yaml.safe_load((KUEUE / "cluster" / "resourceflavor.yaml").read_text())
    cq = yaml.safe_load((KUEUE / "cluster" / "clusterqueue.yaml").read_text())
    return flavor, cq, yaml.safe_load((KUEUE / "localqueue.yaml").read_text())


def queued_rcrl(queue: str = "m3ad-gpu") -> dict:
    doc = rcrl()
    doc["metadata"].setdefault("labels", {})["kueue.x-k8s.io/queue-name"] = queue
    return doc


def test_the_shipped_kueue_objects_and_a_queued_rcrl_job_are_clean():
    docs = [*kueue_objects(), queued_rcrl()]
    assert [f for d in docs for f in findings(d) if f.check.startswith("kueue")] == []
    assert set_findings(docs, strict=True) == []


def test_kueue_schema_mistakes():
    flavor, cq, lq = kueue_objects()
    resources = cq["spec"]["resourceGroups"][0]["flavors"][0]["resources"]
    resources[0]["nominalquota"] = resources[0].pop("nominalQuota")
    print(
        assert_finding(cq, "spec.resourceGroups[0].flavors[0].resources[0].nominalquota", "did you mean 'nominalQuota'")
    )
    _, cq, _ = kueue_objects()
    cq["spec"]["resourceGroups"][0]["flavors"][0]["resources"].pop()  # ephemeral-storage gone from the flavor
    print(assert_finding(cq, "spec.resourceGroups[0].flavors[0].resources", "coveredResources", "same order"))
    _, cq, _ = kueue_objects()
    cq["spec"]["queueingStrategy"] = "FIFO"
    assert_finding(cq, "spec.queueingStrategy", "StrictFIFO")
    lq["spec"] = {"clusterqueue": "m3ad-gpu"}
    assert_finding(lq, "spec.clusterqueue", "did you mean 'clusterQueue'")
    assert_finding(lq, "spec.clusterQueue", "required")
    flavor["apiVersion"] = "kueue.x-k8s.io/v1alpha1"
    assert_finding(flavor, "apiVersion", "kueue.x-k8s.io/v1beta2")


def test_kueue_references_that_lead_nowhere():
    flavor, cq, lq = kueue_objects()
    lq["spec"]["clusterQueue"] = "m3ad-gpus"
    print(assert_set_finding([flavor, cq, lq], "spec.clusterQueue", "no ClusterQueue named 'm3ad-gpus'"))
    flavor, cq, lq = kueue_objects()
    cq["spec"]["resourceGroups"][0]["flavors"][0]["name"] = "h100"
    print(
        assert_set_finding([flavor, cq, lq], "spec.resourceGroups[0].flavors[0].name", "no ResourceFlavor named 'h100'")
    )
    flavor, cq, lq = kueue_objects()
    print(assert_set_finding([flavor, cq, lq, queued_rcrl("m3ad")], "metadata.labels.kueue.x-k8s.io/queue-name",
                             "no LocalQueue named 'm3ad'"))  # fmt: skip
    # the cluster objects are applied apart by an admin: a render without them is not wrong unless --strict
    assert set_findings([queued_rcrl()]) == []
    assert_set_finding([queued_rcrl()], "metadata.labels.kueue.x-k8s.io/queue-name", "no LocalQueue", strict=True)


def test_a_queued_job_larger_than_the_quota_or_asking_for_an_uncovered_resource():
    flavor, cq, lq = kueue_objects()
    gpus = next(r for r in cq["spec"]["resourceGroups"][0]["flavors"][0]["resources"] if r["name"] == "nvidia.com/gpu")
    gpus["nominalQuota"] = 8  # one 8-GPU node, but RCRL wants 12
    print(assert_set_finding([flavor, cq, lq, queued_rcrl()], "spec", "12 nvidia.com/gpu", "quota 8", "never admits"))
    flavor, cq, lq = kueue_objects()
    doc = queued_rcrl()
    spec_at(doc, f"{ROLLOUT_C0}.resources")["requests"]["example.com/fpga"] = 1
    print(assert_set_finding([flavor, cq, lq, doc], "spec", "example.com/fpga", "does not cover it"))


def test_what_kueue_refuses_in_a_rayjob_it_manages():
    flavor, cq, lq = kueue_objects()
    doc = queued_rcrl()
    doc["spec"]["shutdownAfterJobFinishes"] = False
    doc["spec"]["rayClusterSpec"]["enableInTreeAutoscaling"] = True
    assert_set_finding([flavor, cq, lq, doc], "spec.shutdownAfterJobFinishes", "Kueue", "set it to true")
    print(assert_set_finding([flavor, cq, lq, doc], "spec.rayClusterSpec.enableInTreeAutoscaling", "autoscaling"))


def test_the_runners_queue_counts_as_the_stages_queue():
    """The pipeline runner's `--queue Q` hands its stages to Q: they are checked as if labelled."""
    flavor, cq, lq = kueue_objects()
    runner = yaml.safe_load_all((MANIFESTS / "components" / "pipeline-runner" / "job.yaml").read_text())
    job = next(d for d in runner if d and d["kind"] == "Job")
    job["spec"]["template"]["spec"]["containers"][0]["args"] += ["--jobs", "m3ad-rcrl", "--queue", "m3ad-gpus"]
    print(assert_set_finding([flavor, cq, lq, job, rcrl()], "(the pipeline runner's --queue)", "no LocalQueue named"))


# --- what the command line reads ----------------------------------------------------------------


@pytest.mark.skipif(kv.load.kustomize_command() is None, reason="kubectl or kustomize renders components")
def test_components_are_validated_on_their_own(tmp_path, capsys):
    """Issue 21: a Component no overlay includes was never read; now it is rendered on its own."""
    import shutil

    from m3ad_rl.cli import main

    assert main(["k8s", "validate", str(MANIFESTS / "components" / "pipeline-runner")]) == 0
    assert "4 documents checked" in capsys.readouterr().err
    broken = tmp_path / "pipeline-runner"
    shutil.copytree(MANIFESTS / "components" / "pipeline-runner", broken)
    job = broken / "job.yaml"
    job.write_text(job.read_text().replace("runAsNonRoot: true, allowPrivilegeEscalation: false", "runAsNonRoot: true"))
    assert main(["k8s", "validate", str(tmp_path)]) == 1
    assert "Job/m3ad-pipeline: spec.template.spec.containers[0].securityContext.allowPrivilegeEscalation" in (
        capsys.readouterr().out
    )


def test_a_rendered_stream_on_stdin(monkeypatch, capsys):
    """`kustomize build overlay | m3ad-rl k8s validate -`: checked as one render."""
    import io

    from m3ad_rl.cli import main
    from m3ad_rl.k8s.validate import load

    doc = rcrl()
    spec_at(doc, f"{ROLLOUT}.template.spec")["serviceAccountName"] = "nobody"
    monkeypatch.setattr(load, "_STDIN", [])
    monkeypatch.setattr("sys.stdin", io.StringIO(yaml.safe_dump_all([doc])))
    assert main(["k8s", "validate", "-"]) == 1
    assert "<stdin> (kustomize): RayJob/m3ad-rcrl: " in capsys.readouterr().out


def test_a_queued_autoscaling_cluster_is_counted_at_max_replicas():
    """Issue 22: the standing pool in a Kueue queue: maxReplicas x per-pod GPUs must fit the quota."""
    flavor, cq, lq = kueue_objects()
    cluster = copy.deepcopy(CLUSTER)
    cluster["metadata"].setdefault("labels", {})["kueue.x-k8s.io/queue-name"] = "m3ad-gpu"
    # rollout 8 x 1 GPU + train 2 x 8 GPUs = 24 at full size, over the queue's 16: Kueue never admits it
    print(assert_set_finding([flavor, cq, lq, cluster], "spec", "24 nvidia.com/gpu", "quota 16"))
    cluster["spec"]["workerGroupSpecs"][1]["maxReplicas"] = 1  # 8 + 8
    assert [f for f in set_findings([flavor, cq, lq, cluster]) if "nvidia.com/gpu" in f.message] == []
