"""``m3ad-rl sweep …``, ``k8s validate|pipeline``, ``cluster up|down`` and ``demo``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from m3ad_rl.cli.common import EXIT_SKIPPED


def add_sweep_commands(sub) -> None:
    sweep = sub.add_parser("sweep", help="reward-variant sweeps as RayJobs (docs/kubernetes.md)")
    sw = sweep.add_subparsers(dest="cmd", required=True)
    p = sw.add_parser("render", help="one RayJob YAML per variant (and their ConfigMap) for kubectl apply -f")
    p.add_argument("--config", required=True, help="configs/sweeps/*.yaml")
    p.add_argument("--out", required=True, help="folder for the YAML files")
    p.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier render in --out (nothing else)")
    p.set_defaults(func=cmd_sweep_render)
    p = sw.add_parser("submit", help="the same jobs to a running Ray cluster through the Ray Jobs API")
    p.add_argument("--config", required=True, help="configs/sweeps/*.yaml")
    p.add_argument("--address", required=True, help="Ray dashboard URL, e.g. http://HEAD:8265")
    p.add_argument("--dry-run", action="store_true", help="print the entrypoints, submit nothing")
    p.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_sweep_submit)
    p = sw.add_parser("run", help="see a sweep through: K variants at a time, lost nodes resumed, then report")
    p.add_argument("--config", required=True, help="configs/sweeps/*.yaml")
    p.add_argument("--address", required=True, help="the cluster's Jobs API (http://HEAD:8265)")
    p.add_argument("--max-in-flight", type=int, default=2, help="variants running at once")
    p.add_argument("--retries", type=int, default=2, help="resubmissions of a variant whose node was lost")
    p.add_argument("--poll", type=float, default=5.0, help="seconds between looks at the cluster")
    p.add_argument("--pool", help="the RayCluster manifest of the target cluster: a variant asking for more than "
                   "any of its worker groups has is failed at once (infeasible)")  # fmt: skip
    p.add_argument("--node-cpus", type=float, help="with --pool: CPUs per node, as given to `cluster up --autoscaling`")
    p.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_sweep_run)
    p = sw.add_parser("report", help="every variant's eval report in one table (sweep.md) and plot (sweep.png)")
    p.add_argument("--config", required=True, help="configs/sweeps/*.yaml")
    p.add_argument("--runs", help="read <runs>/<variant>/eval/report.json instead of the config's out URL")
    p.add_argument("--out", help="folder for sweep.md and sweep.png (default: --runs or .)")
    p.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_sweep_report)


def add_k8s_commands(sub) -> None:
    k8s = sub.add_parser("k8s", help="Kubernetes: check manifests offline, run the RayJob stages in order")
    kc = k8s.add_subparsers(dest="cmd", required=True)
    p = kc.add_parser("validate", help="KubeRay schemas and rules for files, folders or kustomizations")
    p.add_argument("paths", nargs="+", metavar="PATH", help="e.g. manifests/ or runs/sweep-presets")
    p.add_argument("--strict", action="store_true", help="also report checks that cannot be made (missing ConfigMap)")
    p.set_defaults(func=cmd_k8s_validate)
    p = kc.add_parser("pipeline", help="resume each suspended RayJob in order; stop at the first failure")
    p.add_argument("--namespace", "-n", help="default: the kubeconfig context's or the pod's namespace")
    p.add_argument("--jobs", default="m3ad-prepare,m3ad-sft,m3ad-rcrl,m3ad-eval", help="RayJob names, in order")
    p.add_argument("--poll", type=float, default=10.0, help="seconds between status checks")
    p.add_argument("--timeout", type=float, help="give up after this many seconds in all (default: never)")
    p.add_argument("--queue", help="hand each stage to this Kueue LocalQueue instead of resuming it")
    p.add_argument("--server", help="API server URL (default: in-cluster, else the kubeconfig's)")
    p.add_argument("--token", help="bearer token (default: the service account's or the kubeconfig's)")
    p.add_argument("--kubeconfig", help="default: $KUBECONFIG or ~/.kube/config (exec plugins work)")
    p.add_argument(
        "--record",
        default="m3ad-pipeline-record",
        help="ConfigMap that records finished stages, so a deleted or re-applied one is not re-run ('' for none)",
    )
    p.add_argument("--rerun", default="", help="stages to run again although recorded as succeeded (comma list)")
    p.add_argument(
        "--admission-timeout",
        type=float,
        default=7200.0,
        help="fail a stage still suspended (not admitted by Kueue) after this many seconds (0: never)",
    )
    p.add_argument(
        "--pod-grace",
        type=float,
        default=600.0,
        help="fail a stage whose pods cannot start (image pull, missing Secret) for this many seconds",
    )
    p.add_argument("--log-every", type=float, default=600.0, help="a progress line at least this often (seconds)")
    p.set_defaults(func=cmd_k8s_pipeline)


def add_cluster_commands(sub) -> None:
    """cluster up|down, demo"""
    cl = sub.add_parser("cluster", help="a local Ray cluster laid out like KubeRay's").add_subparsers(
        dest="cmd", required=True
    )
    p = cl.add_parser("up", help="0-CPU head, worker nodes in private mount namespaces, an S3 API (root only)")
    p.add_argument("--dir", required=True, help="logs and cluster.json go here")
    p.add_argument("--workers", type=int, default=2, help="worker nodes")
    p.add_argument("--cpus", type=int, default=4, help="logical CPUs per worker node")
    p.add_argument("--config-dir", help="mounted read-only at /etc/m3ad on every node (the ConfigMap)")
    p.add_argument("--memory-mb", type=int, default=8192, help="memory limit of each worker node (a cgroup)")
    p.add_argument("--head-memory-mb", type=int, default=4096, help="memory limit of the head node")
    p.add_argument(
        "--autoscaling",
        metavar="RAYCLUSTER_YAML",
        help="grow worker nodes on demand with Ray's autoscaler, node types from this manifest's "
        "worker groups (e.g. manifests/base/raycluster.autoscaler.yaml); use with --workers 0",
    )
    p.add_argument("--node-cpus", type=float, help="with --autoscaling: CPUs per node (default: the manifest's)")
    p.add_argument("--idle-timeout", type=float, help="with --autoscaling: seconds before an idle node goes "
                   "(default: the manifest's autoscalerOptions.idleTimeoutSeconds)")  # fmt: skip
    p.set_defaults(func=cmd_cluster_up)
    p = cl.add_parser("down", help="stop what `cluster up` started")
    p.add_argument("--dir", required=True)
    p.set_defaults(func=cmd_cluster_down)

    p = sub.add_parser("demo", help="the Quickstart's main job")
    p.add_argument("--out", default="runs/demo", help="where the demo writes its files")
    p.add_argument("--quick", action="store_true", help="fewer images and steps (about half the time)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("reproduce", help="base -> RAWS -> RCRL on a small VLM trained from scratch, with seeds")
    p.add_argument("--config", required=True, help="configs/reproduce/*.yaml (a shipped name or a path)")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds of the RAWS and RCRL runs (default: the config's)")
    p.add_argument("--out", help="where every stage writes (any fsspec URL; default: the config's)")
    p.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE", help="dotted overrides")
    p.add_argument("--redo", nargs="+", default=[], metavar="STAGE", help="run these stages and those after them again")
    p.add_argument("--variants", nargs="+", metavar="REWARD_CONFIG",
                   help="also RCRL with these reward configs from the same RAWS models (e.g. rewards/preset_a.yaml "
                   "rewards/ablation_con0_acc1_ref1.yaml): the Table-3 comparison, with intervals")  # fmt: skip
    p.set_defaults(func=cmd_reproduce)


def cmd_sweep_render(args: argparse.Namespace) -> int:
    from m3ad_rl.core.config import load_config
    from m3ad_rl.core.guards import refuse_overwrite
    from m3ad_rl.k8s.sweep import SweepSpec, main_render

    refuse_overwrite([args.config], [args.out])
    return main_render(load_config(SweepSpec, args.config, args.overrides), args.out, args.overwrite)


def cmd_sweep_submit(args: argparse.Namespace) -> int:
    from m3ad_rl.core.config import load_config
    from m3ad_rl.k8s.sweep import SweepSpec, entrypoint, expand, submit

    spec = load_config(SweepSpec, args.config, args.overrides)
    if args.dry_run:
        for job in expand(spec):
            print(f"{job.variant}: {entrypoint(spec, job, config_dir='.')}")
    for sid in submit(spec, args.address, dry_run=args.dry_run):
        print(sid)
    return 0


def cmd_sweep_run(args: argparse.Namespace) -> int:
    from m3ad_rl.core.config import load_config
    from m3ad_rl.k8s.sweep import SweepSpec
    from m3ad_rl.k8s.sweeprun import main

    spec = load_config(SweepSpec, args.config, args.overrides)
    return main(spec, args.address, args.max_in_flight, args.retries, args.poll, args.pool, args.node_cpus)


def cmd_sweep_report(args: argparse.Namespace) -> int:
    from m3ad_rl.core.config import load_config
    from m3ad_rl.k8s.sweep import SweepSpec, report

    table, missing = report(load_config(SweepSpec, args.config, args.overrides), args.runs, args.out)
    print(table)
    if missing:
        print(f"no report yet for: {', '.join(missing)}", file=sys.stderr)
    return EXIT_SKIPPED if missing else 0


def cmd_k8s_validate(args: argparse.Namespace) -> int:
    from m3ad_rl.k8s.validate import run

    return run(args.paths, strict=args.strict)


def cmd_k8s_pipeline(args: argparse.Namespace) -> int:
    from m3ad_rl.k8s.pipeline import main as pipeline

    def names(text: str) -> list[str]:
        return [j.strip() for j in text.split(",") if j.strip()]

    return pipeline(
        args.namespace, names(args.jobs), args.poll, args.timeout, args.queue, args.server, args.token,
        args.kubeconfig, record=args.record or None, rerun=names(args.rerun),
        admission_timeout=args.admission_timeout or None, pod_grace=args.pod_grace, log_every=args.log_every,
    )  # fmt: skip


def cmd_cluster_up(args: argparse.Namespace) -> int:
    from m3ad_rl.k8s.localcluster import up_cli

    return up_cli(
        args.dir, args.workers, args.cpus, args.config_dir, args.memory_mb, args.head_memory_mb,
        autoscaling=args.autoscaling, node_cpus=args.node_cpus, idle_timeout_s=args.idle_timeout,
    )  # fmt: skip


def cmd_cluster_down(args: argparse.Namespace) -> int:
    from m3ad_rl.k8s.localcluster import down_cli

    return down_cli(args.dir)


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Exit 0 once every stage is done and the report written (a missed target is reported, not an error)."""
    from m3ad_rl.core.config import load_config
    from m3ad_rl.core.package_data import config_file
    from m3ad_rl.pipeline.reproduce import ReproduceConfig, reproduce

    path = args.config if Path(args.config).exists() else str(config_file(args.config))
    overrides = [*args.overrides, *([f"out={args.out}"] if args.out else [])]
    cfg = load_config(ReproduceConfig, path, overrides)
    if args.seeds:
        cfg = cfg.model_copy(update={"seeds": args.seeds})
    if args.variants:
        cfg = ReproduceConfig(**{**cfg.model_dump(), "variants": args.variants})  # validated (distinct names)
    reproduce(cfg, redo=args.redo)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from m3ad_rl.pipeline.demo import run_demo

    return run_demo(Path(args.out), quick=args.quick)
