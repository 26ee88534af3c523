"""Sweeps of RCRL reward variants on Kubernetes: one RayJob per variant, the same jobs through the
Ray Jobs API, and one table and plot of their benchmark reports.

    m3ad-rl sweep render --config configs/sweeps/presets.yaml --out runs/sweep-presets   # kubectl apply -f
    m3ad-rl sweep submit --config configs/sweeps/presets.yaml --address http://HEAD:8265
    m3ad-rl sweep report --config configs/sweeps/presets.yaml [--runs DIR]

A variant is a reward file from ``configs/rewards/`` plus optional reward overrides, crossed with
the ``grid`` (λ values) and the ``seeds``. Each variant trains with ``m3ad-rl train rcrl`` and then
evaluates its model with ``m3ad-rl eval run`` in the same job, writing ``{out}/{variant}/`` and
``{out}/{variant}/eval/report.json``.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

LABEL_PREFIX = "m3ad.io"
PACK_LABEL = f"{LABEL_PREFIX}/gpu-pack"  # base/rayjob.rcrl.yaml: the rollout pods that pack on one node
CONFIG_DIR = "/etc/m3ad"


class Variant(BaseModel):
    """One row of the sweep before the grid and seeds multiply it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., description="Short name in job names, labels and the table (e.g. 'b', 'con1-acc0').")
    reward: str = Field(..., description="Reward config file (configs/rewards/*.yaml), passed as --reward-config.")
    set: dict[str, Any] = Field(default_factory=dict, description="Reward overrides, e.g. {weights.reflection: 0.5}.")


class TemplateRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(..., description="A RayJob YAML file or a kustomization folder (rendered by kubectl).")
    job: str = Field("m3ad-rcrl", description="The RayJob in it whose cluster, submitter and limits are reused.")


class SweepSpec(BaseModel):
    """A sweep: what varies, what is fixed, where results go, and which RayJob to copy."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., description="Sweep name: job names m3ad-<name>-<variant>, label m3ad.io/sweep.")
    template: TemplateRef
    train_config: str = Field(..., description="RCRL config (configs/train/rcrl-*.yaml).")
    eval_config: str = Field(..., description="Evaluation config (EvalRunConfig YAML).")
    model: str = Field(..., description="The RAWS SFT model every variant starts from.")
    data: str = Field(..., description="rl.parquet URL.")
    bench: str = Field(..., description="Benchmark dataset URL for the evaluation.")
    out: str = Field(..., description="fsspec URL; variant v writes {out}/{v}/ and {out}/{v}/eval/.")
    engine: str = Field("vllm", description="Evaluation engine (hf on CPU).")
    eval_workers: int = Field(4, ge=1)
    seeds: list[int] = Field(default_factory=lambda: [0])
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="Reward key → values, crossed.")
    train_set: dict[str, Any] = Field(default_factory=dict, description="Extra RCRL overrides for every variant.")
    kueue_queue: str | None = Field(None, description="Kueue LocalQueue: label the jobs and create them suspended.")
    variants: list[Variant]


class Job(BaseModel):
    """One concrete run of the sweep."""

    variant: str
    reward: str
    seed: int
    overrides: dict[str, Any]
    labels: dict[str, str]


def label_value(text: str) -> str:
    """A valid Kubernetes label value (≤ 63 of [A-Za-z0-9._-], alphanumeric at both ends)."""
    value = re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-._")
    if len(value) > 63:
        value = value[:54].rstrip("-._") + "-" + hashlib.sha1(text.encode()).hexdigest()[:8]
    return value


def job_name(sweep: str, variant: str, limit: int = 47) -> str:
    """m3ad-<sweep>-<variant> as a DNS-1035 label within KubeRay's RayJob limit."""
    name = re.sub(r"[^a-z0-9-]+", "-", f"m3ad-{sweep}-{variant}".lower()).strip("-")
    name = re.sub(r"-+", "-", name)
    if len(name) > limit:
        name = name[: limit - 9].rstrip("-") + "-" + hashlib.sha1(name.encode()).hexdigest()[:8]
    return name


def _short(key: str, value: Any) -> str:
    """weights.reflection=0.5 → 'reflection0.5' for variant names."""
    return f"{key.rsplit('.', 1)[-1]}{value}"


def expand(spec: SweepSpec) -> list[Job]:
    """Variants × grid × seeds, in a stable order, with unique names."""
    keys = list(spec.grid)
    jobs, seen = [], set()
    for v in spec.variants:
        for values in itertools.product(*(spec.grid[k] for k in keys)):
            for seed in spec.seeds:
                overrides = {**v.set, **dict(zip(keys, values, strict=True))}
                parts = [v.name, *(_short(k, x) for k, x in zip(keys, values, strict=True))]
                if len(spec.seeds) > 1:
                    parts.append(f"s{seed}")
                name = label_value("-".join(parts))
                if name in seen:
                    raise ValueError(f"two variants are both named {name!r}; give them different names")
                seen.add(name)
                labels = {
                    f"{LABEL_PREFIX}/sweep": label_value(spec.name),
                    f"{LABEL_PREFIX}/variant": name,
                    f"{LABEL_PREFIX}/reward": label_value(Path(v.reward).stem),
                    f"{LABEL_PREFIX}/seed": str(seed),
                }
                jobs.append(Job(variant=name, reward=v.reward, seed=seed, overrides=overrides, labels=labels))
    return jobs


def _fmt(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict, bool)) or value is None else str(value)


def entrypoint(spec: SweepSpec, job: Job, config_dir: str = CONFIG_DIR) -> str:
    """train rcrl for the variant, then eval run of its model, as one shell command."""
    out = f"{spec.out.rstrip('/')}/{job.variant}"
    sets = ["address=auto", f"seed={job.seed}", f"model={spec.model}", f"data={spec.data}", f"out={out}"]
    sets += [f"{k}={_fmt(v)}" for k, v in spec.train_set.items()]
    sets += [f"reward.{k}={_fmt(v)}" for k, v in job.overrides.items()]
    reward = f"{config_dir}/{Path(job.reward).name}"
    train = ["m3ad-rl", "train", "rcrl", "--config", f"{config_dir}/rcrl.yaml", "--reward-config", reward,
             "--resume", "--no-progress", "--set", *sets]  # fmt: skip
    evaluate = ["m3ad-rl", "eval", "run", "--config", f"{config_dir}/eval.yaml", "--engine", spec.engine,
                "--workers", str(spec.eval_workers), "--address", "auto", "--model", f"{out}/model",
                "--dataset", spec.bench, "--out", f"{out}/eval"]  # fmt: skip
    return f"{shlex.join(train)} && {shlex.join(evaluate)}"


def config_files(spec: SweepSpec) -> dict[str, str]:
    """ConfigMap key → file text: rcrl.yaml, eval.yaml and every reward file the variants use."""
    files = {"rcrl.yaml": Path(spec.train_config).read_text(), "eval.yaml": Path(spec.eval_config).read_text()}
    for v in spec.variants:
        files[Path(v.reward).name] = Path(v.reward).read_text()
    return files


def load_template(ref: TemplateRef) -> dict:
    """The template RayJob, from a file or a rendered kustomization."""
    from m3ad_rl.k8s.validate import render_kustomization

    path = Path(ref.path)
    text = render_kustomization(path) if path.is_dir() else path.read_text()
    for doc in yaml.safe_load_all(text):
        if isinstance(doc, dict) and doc.get("kind") == "RayJob" and doc["metadata"]["name"] == ref.job:
            return doc
    raise ValueError(f"no RayJob named {ref.job!r} in {ref.path}")


def _use_configmap(obj: Any, name: str) -> None:
    """Point every configMap volume of the template at the sweep's ConfigMap."""
    if isinstance(obj, dict):
        if isinstance(obj.get("configMap"), dict):
            obj["configMap"]["name"] = name
        for v in obj.values():
            _use_configmap(v, name)
    elif isinstance(obj, list):
        for v in obj:
            _use_configmap(v, name)


def _label_pods(doc: dict, labels: dict[str, str]) -> None:
    """The variant's labels on every pod too (head, workers, submitter), so pods, their metrics and
    logs can be selected by sweep, variant, reward and seed, not only the RayJob."""
    from m3ad_rl.k8s.validate.kuberay import pods

    for pod in pods(doc):
        meta = pod.template.setdefault("metadata", {})
        meta["labels"] = {**(meta.get("labels") or {}), **labels}


def _retarget_pack(obj: Any, old: str, new: str) -> None:
    """The template's ``m3ad.io/gpu-pack`` labels and (anti-)affinity selectors name its job: renamed,
    each variant packs only its own rollout pods (two variants' pods never hold each other's node)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == PACK_LABEL and v == old:
                obj[k] = new
            else:
                _retarget_pack(v, old, new)
    elif isinstance(obj, list):
        for v in obj:
            _retarget_pack(v, old, new)


def render(spec: SweepSpec, template: dict | None = None) -> list[dict]:
    """The sweep's ConfigMap followed by one RayJob per variant."""
    template = template or load_template(spec.template)
    namespace = template["metadata"].get("namespace")
    cm_name = job_name(spec.name, "config", limit=63)
    meta = {"name": cm_name, "labels": {f"{LABEL_PREFIX}/sweep": label_value(spec.name)}}
    if namespace:
        meta["namespace"] = namespace
    docs: list[dict] = [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": config_files(spec)}]
    for job in expand(spec):
        doc = copy.deepcopy(template)
        md = doc["metadata"]
        _retarget_pack(doc["spec"], md["name"], job_name(spec.name, job.variant))
        md["name"] = job_name(spec.name, job.variant)
        md["labels"] = {**md.get("labels", {}), **job.labels, "app.kubernetes.io/component": "sweep"}
        if spec.kueue_queue:
            md["labels"]["kueue.x-k8s.io/queue-name"] = label_value(spec.kueue_queue)
        for key in ("uid", "resourceVersion", "creationTimestamp", "annotations"):
            md.pop(key, None)
        doc.pop("status", None)
        doc["spec"]["entrypoint"] = entrypoint(spec, job)
        doc["spec"]["suspend"] = bool(spec.kueue_queue)  # variants are independent: start now, or when admitted
        doc["spec"]["metadata"] = {k.split("/")[-1]: v for k, v in job.labels.items()}  # Ray job metadata
        _label_pods(doc, job.labels)
        _use_configmap(doc["spec"], cm_name)
        docs.append(doc)
    return docs


def write_rendered(docs: list[dict], out: str | Path, overwrite: bool = False) -> list[Path]:
    """One file per object: 00-configmap.yaml, then <job-name>.yaml, published together into a new folder (an
    earlier render there only with ``overwrite``; a folder holding anything else is refused: ``core.outputs``)."""
    from m3ad_rl.core.outputs import SWEEP_MANIFESTS, publish_local_dir

    names = []
    with publish_local_dir(str(out), SWEEP_MANIFESTS, overwrite=overwrite) as d:
        for i, doc in enumerate(docs):
            name = "00-configmap.yaml" if doc["kind"] == "ConfigMap" else f"{doc['metadata']['name']}.yaml"
            header = (f"# Rendered by `m3ad-rl sweep render` ({i}/{len(docs) - 1}); edit the sweep config, "
                      "not this file.\n")  # fmt: skip
            (d / name).write_text(header + "---\n" + yaml.safe_dump(doc, sort_keys=False, width=10_000))
            names.append(name)
    return [Path(out) / n for n in names]


def submit(spec: SweepSpec, address: str, dry_run: bool = False) -> list[str]:
    """Send every variant to a running cluster through the Ray Jobs API; returns submission ids.

    The configs travel as the job's working_dir, so the entrypoints read them from ``.``.
    """
    import tempfile

    from ray.job_submission import JobSubmissionClient

    client = None if dry_run else JobSubmissionClient(address)
    ids = []
    with tempfile.TemporaryDirectory(prefix="m3ad-sweep-") as tmp:
        files = config_files(spec)
        for job in expand(spec):
            name = job_name(spec.name, job.variant)
            sid = f"{name}-{hashlib.sha1(str(spec.out).encode()).hexdigest()[:6]}"
            if client is not None:
                sid = _submit_retrying(
                    client,
                    entrypoint=entrypoint(spec, job, config_dir="."),
                    submission_id=sid,
                    runtime_env={"working_dir": str(variant_dir(Path(tmp), name, files))},
                    metadata={k.split("/")[-1]: v for k, v in job.labels.items()},
                )
            ids.append(sid)
    return ids


TRANSIENT = ("No available agent", "status code 502", "status code 503", "status code 504")


def _submit_retrying(client, wait_s: float = 120.0, **kwargs) -> str:
    """``submit_job``, again while the head answers that it is not ready yet: a fresh head's Jobs API
    lists jobs before its job agent can take one ("No available agent ... try again later"), and a
    head behind a Service or ingress answers 502-504 while it restarts."""
    import time

    deadline, pause = time.monotonic() + wait_s, 1.0
    while True:
        try:
            return client.submit_job(**kwargs)
        except RuntimeError as e:
            if not any(t in str(e) for t in TRANSIENT) or time.monotonic() + pause > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 10.0)


def gather(spec: SweepSpec, runs: str | None = None) -> tuple[dict[str, dict], list[str]]:
    """{variant: report.json} from {runs or out}/{variant}/eval/report.json; and the missing ones."""
    import fsspec

    base = (runs or spec.out).rstrip("/")
    reports, missing = {}, []
    for job in expand(spec):
        url = f"{base}/{job.variant}/eval/report.json"
        try:
            with fsspec.open(url, "r") as f:
                reports[job.variant] = json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            missing.append(job.variant)
    return reports, missing


def plot(reports: dict[str, dict], path: str | Path) -> None:
    """Grouped bars per variant: average accuracy, balanced accuracy, Type F1 and Loc F1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [("accuracy", "Acc"), ("balanced_accuracy", "Bal"), ("type_f1", "Type F1"), ("loc_f1", "Loc F1")]
    names = list(reports)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(names) + 2), 3.6))
    width = 0.8 / len(metrics)
    for i, (key, label) in enumerate(metrics):
        xs = [j + (i - (len(metrics) - 1) / 2) * width for j in range(len(names))]
        ax.bar(xs, [reports[n]["average"].get(key, 0.0) for n in names], width, label=label)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("benchmark average")
    ax.legend(ncols=4, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 1.18))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(spec: SweepSpec, runs: str | None = None, out: str | None = None) -> tuple[str, list[str]]:
    """Write sweep.md (comparison table) and sweep.png into ``out`` (any storage URL); returns (table, missing)."""
    from m3ad_rl.core.storage import staged_dir
    from m3ad_rl.eval.compare import comparison_table

    reports, missing = gather(spec, runs)
    table = comparison_table(reports) if reports else "(no reports yet)"
    note = f"\n\nNo report yet: {', '.join(missing)}\n" if missing else "\n"
    timeline = _timeline((runs or spec.out).rstrip("/"))
    with staged_dir(out or runs or ".") as target:
        cost = ""
        if timeline is not None:
            plot_timeline(timeline["rows"], timeline.get("pool_max"), target / "sweep-nodes.png")
            c = node_hours(timeline["rows"], timeline.get("pool_max"))
            share = f" ({100 * c['node_hours'] / c['fixed_node_hours']:.0f} % of it)" if c["fixed_node_hours"] else ""
            used = f"**{c['node_hours']:.2f} worker node-hours** ({c['gpu_hours']:.2f} GPU-hours)"
            fixed = f"a fixed pool of {c['fixed_nodes']} nodes for as long is {c['fixed_node_hours']:.2f} node-hours"
            cost = (f"\n## What it cost\n\n![nodes over time](sweep-nodes.png)\n\nThe sweep ran {c['hours']:.2f} h "
                    f"(`sweep run`) and used {used}; {fixed}{share}.\n")  # fmt: skip
        (target / "sweep.md").write_text(f"# Sweep {spec.name}\n\n{table}{note}{cost}")
        if reports:
            plot(reports, target / "sweep.png")
    return table, missing


def _timeline(base: str) -> dict | None:
    """The pool's size over the sweep, as `sweep run` recorded it (``sweep-nodes.json``), if it did."""
    import fsspec

    try:
        with fsspec.open(f"{base}/sweep-nodes.json", "r") as f:
            data = json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data if data.get("rows") else None


def main_render(spec: SweepSpec, out: str, overwrite: bool = False) -> int:
    """CLI body of `sweep render`."""
    paths = write_rendered(render(spec), out, overwrite)
    print(f"wrote {len(paths) - 1} RayJob(s) and their ConfigMap to {out}; kubectl apply -f {out}", file=sys.stderr)
    return 0


TIMELINE = "sweep-nodes.json"


def variant_dir(root: Any, name: str, files: dict[str, str]) -> Any:
    """The configs as one variant's own ``working_dir``. Variants that shared one package lost it now
    and then: Ray unpacks a working_dir once per node and reference-counts it per job, and a variant
    started after another one ended read ``./eval.yaml does not exist`` (seen on the local pool)."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for key, text in files.items():
        (folder / key).write_text(text)
    (folder / ".variant").write_text(name)  # a different package (content hash) per variant
    return folder


def write_timeline(url: str, rows: list[tuple[float, int, float]], pool_max: int | None) -> None:
    """The pool's size over the sweep, for `sweep report`'s cost section (best effort: never stops a sweep)."""
    import json

    import fsspec

    try:
        with fsspec.open(url, "w") as f:
            json.dump({"rows": rows, "pool_max": pool_max}, f)
    except OSError as e:
        print(f"m3ad-rl sweep run: could not write {url}: {e}", file=sys.stderr)


def node_hours(rows: list[tuple[float, int, float]], pool_max: int | None = None) -> dict[str, float]:
    """Worker node-hours (and GPU-hours) the pool used, against a fixed pool of its maximum size for
    as long.

    >>> node_hours([(0, 0, 0), (1800, 2, 2), (5400, 0, 0)])
    {'hours': 1.5, 'node_hours': 2.0, 'gpu_hours': 2.0, 'fixed_nodes': 2, 'fixed_node_hours': 3.0}
    """
    rows = [r for r in rows if r[1] >= 0]
    used = gpu = 0.0
    for (t0, n0, g0), (t1, _, _) in itertools.pairwise(rows):
        used += n0 * (t1 - t0) / 3600
        gpu += g0 * (t1 - t0) / 3600
    hours = (rows[-1][0] - rows[0][0]) / 3600 if rows else 0.0
    fixed = pool_max if pool_max is not None else max((r[1] for r in rows), default=0)
    return {"hours": round(hours, 4), "node_hours": round(used, 4), "gpu_hours": round(gpu, 4),
            "fixed_nodes": fixed, "fixed_node_hours": round(fixed * hours, 4)}  # fmt: skip


def plot_timeline(rows: list[tuple[float, int, float]], pool_max: int | None, path: Any) -> None:
    """Worker nodes and GPUs over the sweep as steps, with the fixed pool it is compared against."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r[1] >= 0]
    t = [r[0] / 60 for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 3.0))
    ax.step(t, [r[1] for r in rows], where="post", label="worker nodes")
    if any(r[2] for r in rows):
        ax.step(t, [r[2] for r in rows], where="post", label="GPUs", linestyle="--")
    fixed = node_hours(rows, pool_max)["fixed_nodes"]
    ax.axhline(fixed, color="grey", linewidth=0.8, linestyle=":", label=f"fixed pool ({fixed} nodes)")
    ax.set_xlabel("minutes since the sweep started")
    ax.set_ylabel("count")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
