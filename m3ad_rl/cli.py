"""``m3ad-rl``: the command line. Each command is a few lines over the library.

Errors a user can fix are one line, ``m3ad-rl: <what> — <what to do>`` (``--debug`` adds the
traceback); the exit codes are listed in ``m3ad_rl/core/errors.py`` and README.md ("Exit codes").
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from m3ad_rl.core.errors import (  # the table of exit codes: m3ad_rl/core/errors.py
    EXIT_DATA,
    EXIT_INTERRUPTED,
    EXIT_LOST_WORKER,  # a node or worker died: rerun with --resume once the cluster is whole
    EXIT_SKIPPED,
    EXIT_USAGE,  # noqa: F401 (callers import the codes from here)
)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (default: built-in defaults)")
    p.add_argument(
        "--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE", help="dotted overrides, e.g. a.b=1"
    )


def _int_at_least(minimum: int, maximum: int | None = None):
    """An argparse type: a whole number in [minimum, maximum]; anything else is a usage error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"at least {minimum}" if maximum is None else f"between {minimum} and {maximum}"
            raise argparse.ArgumentTypeError(f"{value} is out of range: give a number {bounds}")
        return value

    return parse


POSITIVE = _int_at_least(1)
PORT = _int_at_least(1, 65535)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="m3ad-rl", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error, not just its line")
    sub = parser.add_subparsers(dest="group", required=True)

    reward = sub.add_parser("reward", help="reward functions").add_subparsers(dest="cmd", required=True)
    p = reward.add_parser("score", help="score responses (JSONL) with the RCRL reward")
    p.add_argument("--input", required=True, help="JSONL: {id, response, ground_truth}")
    p.add_argument("--output", required=True, help="JSONL: {id, score, consistency, answer, ...}")
    _add_config_args(p)
    p.set_defaults(func=cmd_reward_score)

    ev = sub.add_parser("eval", help="benchmark evaluation").add_subparsers(dest="cmd", required=True)
    p = ev.add_parser("score", help="M3-AD-Bench metrics over a predictions JSONL")
    p.add_argument("--input", required=True, help="JSONL: {id, scene, source?, response, ground_truth}")
    p.add_argument("--output", required=True, help="REPORT.json")
    p.add_argument("--markdown", help="also write the tables as Markdown here")
    _add_config_args(p)
    p.set_defaults(func=cmd_eval_score)

    p = ev.add_parser("run", help="run a model over the benchmark on Ray (resumable), score, report")
    p.add_argument("--model", help="model folder, or the served name for --engine openai (or `model` in --config)")
    p.add_argument("--engine", choices=["hf", "vllm", "openai"], help="default hf (or `engine` in --config)")
    p.add_argument("--dataset", help="benchmark dataset URL (or `dataset` in --config)")
    p.add_argument("--out", help="output folder (or `out` in --config)")
    p.add_argument("--workers", type=int, help="engine replicas (default 1)")
    p.add_argument("--exclude-source", action="append", default=[], help="leave out a source dataset")
    p.add_argument("--address", help="Ray cluster address (default: local Ray)")
    p.add_argument("--base-url", help="OpenAI-compatible endpoint (--engine openai)")
    p.add_argument("--overwrite", action="store_true", help="replace predictions in --out made by another run")
    _add_config_args(p)
    p.set_defaults(func=cmd_eval_run)

    p = ev.add_parser("sweep", help="evaluate several models/endpoints and compare them (Table 1)")
    p.add_argument("--config", required=True, help="YAML: dataset, out, models: [{name, model, engine, ...}]")
    p.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_eval_sweep)

    _add_data_commands(sub)
    _add_serve_commands(sub)
    _add_train_commands(sub)
    _add_sweep_commands(sub)
    _add_k8s_commands(sub)

    model = sub.add_parser("model", help="models").add_subparsers(dest="cmd", required=True)
    p = model.add_parser("tiny", help="build the tiny offline Qwen3-VL (random weights, real architecture)")
    p.add_argument("--out", required=True, help="folder to save the model and processor in")
    p.add_argument(
        "--vocab",
        choices=["small", "qwen"],
        default="small",
        help="small: a BPE trained here (fast tests); qwen: Qwen's real 151k vocabulary",
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_model_tiny)

    cl = sub.add_parser("cluster", help="a local Ray cluster laid out like KubeRay's").add_subparsers(
        dest="cmd", required=True
    )
    p = cl.add_parser("up", help="0-CPU head, worker nodes in private mount namespaces, an S3 API (root only)")
    p.add_argument("--dir", required=True, help="logs and cluster.json go here")
    p.add_argument("--workers", type=int, default=2, help="worker nodes")
    p.add_argument("--cpus", type=int, default=4, help="logical CPUs per worker node")
    p.add_argument("--config-dir", help="mounted read-only at /etc/m3ad on every node (the ConfigMap)")
    p.set_defaults(func=cmd_cluster_up)
    p = cl.add_parser("down", help="stop what `cluster up` started")
    p.add_argument("--dir", required=True)
    p.set_defaults(func=cmd_cluster_down)

    p = sub.add_parser("taxonomy", help="list the anomaly taxonomy or map free text onto it")
    p.add_argument("--lookup", nargs="+", metavar="TEXT", help="texts to map onto the taxonomy")
    p.set_defaults(func=cmd_taxonomy)

    p = sub.add_parser("demo", help="the Quickstart's main job")
    p.add_argument("--out", default="runs/demo", help="where the demo writes its files")
    p.add_argument("--quick", action="store_true", help="fewer images and steps (about half the time)")
    p.set_defaults(func=cmd_demo)
    return parser


def _add_data_commands(sub) -> None:
    data = sub.add_parser("data", help="datasets: synthesize, import, split, build FT sets, inspect")
    ds = data.add_subparsers(dest="cmd", required=True)
    p = ds.add_parser("synth", help="synthetic industrial scenes with labelled defects")
    p.add_argument("--out", required=True, help="dataset URL (folder, memory://, s3://...)")
    p.add_argument("--n", type=POSITIVE, default=1000, help="number of images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=POSITIVE, default=1, help="processes (the output is the same for any number)")
    _add_config_args(p)
    p.set_defaults(func=cmd_data_synth)

    p = ds.add_parser("import", help="import a public dataset's on-disk layout")
    p.add_argument("--dataset", required=True, choices=["mvtec-ad", "mvtec-loco", "visa", "real-iad", "folder"])
    p.add_argument("--root", required=True, help="the dataset's root folder")
    p.add_argument("--out", required=True, help="dataset URL")
    p.add_argument("--scene", help="scene of a 'folder' dataset (texture, workpiece, electronic, logical)")
    p.add_argument("--category", help="category of a 'folder' dataset")
    p.add_argument("--source", default="custom", help="source name of a 'folder' dataset")
    p.add_argument("--embed-images", action="store_true", help="store image bytes instead of their paths")
    p.set_defaults(func=cmd_data_import)

    p = ds.add_parser("split", help="cross-category FT / benchmark split")
    p.add_argument("--input", required=True, nargs="+", help="dataset URL(s) to pool")
    p.add_argument("--out", required=True, help="writes OUT/ft and OUT/bench")
    _add_config_args(p)
    p.set_defaults(func=cmd_data_split)

    p = ds.add_parser("build-ft", help="difficulty, Thinking/Reflective trajectories, SFT and RL sets")
    p.add_argument("--input", required=True, help="the FT dataset URL")
    p.add_argument("--predictions", required=True, help="base model JSONL: {id, answer} or {id, response}")
    p.add_argument("--out", required=True, help="writes OUT/samples, OUT/sft.parquet, OUT/rl.parquet")
    p.add_argument("--captioner", choices=["template", "openai"], default="template")
    p.add_argument("--base-url", help="OpenAI-compatible endpoint (captioner openai)")
    p.add_argument("--model", help="model name at that endpoint")
    p.add_argument("--cache-dir", default=".cache/captions", help="caption cache (captioner openai)")
    _add_config_args(p)
    p.set_defaults(func=cmd_data_build_ft)

    p = ds.add_parser("stats", help="counts per scene / category / type / split, and a plot")
    p.add_argument("--input", required=True)
    p.add_argument("--plot", help="write the counts as a PNG")
    p.add_argument("--check-images", action="store_true", help="also decode every image; exit 5 if one does not")
    p.set_defaults(func=cmd_data_stats)

    p = ds.add_parser("gallery", help="contact sheet of samples with their boxes drawn")
    p.add_argument("--input", required=True)
    p.add_argument("--out", required=True, help="image file (.png or .jpg)")
    p.add_argument("--n", type=POSITIVE, default=36, help="number of samples")
    p.add_argument("--cols", type=POSITIVE, default=6)
    p.add_argument("--anomalous-only", action="store_true")
    p.add_argument("--seed", type=int, default=0, help="which samples to show")
    p.set_defaults(func=cmd_data_gallery)


def _add_train_commands(sub) -> None:
    train = sub.add_parser("train", help="RAWS SFT and RCRL (GRPO) on Ray").add_subparsers(dest="cmd", required=True)
    p = train.add_parser("sft", help="RAWS SFT: Ray Train TorchTrainer + DeepSpeed over sft.parquet")
    p.add_argument("--config", help="YAML config (configs/train/sft-*.yaml)")
    p.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE", help="dotted overrides")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint under out")
    p.set_defaults(func=cmd_train_sft)
    p = train.add_parser("rcrl", help="RCRL: GRPO with rollout workers, the reward service and DeepSpeed actors")
    p.add_argument("--config", help="YAML config (configs/train/rcrl-*.yaml)")
    p.add_argument("--reward-config", help="reward YAML (configs/rewards/*.yaml), merged under `reward`")
    p.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE", help="dotted overrides")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in out (default: refuse)")
    p.add_argument("--force", action="store_true", help="--resume even if run-defining settings changed")
    p.set_defaults(func=cmd_train_rcrl)


def _add_sweep_commands(sub) -> None:
    sweep = sub.add_parser("sweep", help="reward-variant sweeps as RayJobs (docs/kubernetes.md)")
    sw = sweep.add_subparsers(dest="cmd", required=True)
    p = sw.add_parser("render", help="one RayJob YAML per variant (and their ConfigMap) for kubectl apply -f")
    p.add_argument("--config", required=True, help="configs/sweeps/*.yaml")
    p.add_argument("--out", required=True, help="folder for the YAML files")
    p.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_sweep_render)
    p = sw.add_parser("submit", help="the same jobs to a running Ray cluster through the Ray Jobs API")
    p.add_argument("--config", required=True, help="configs/sweeps/*.yaml")
    p.add_argument("--address", required=True, help="Ray dashboard URL, e.g. http://HEAD:8265")
    p.add_argument("--dry-run", action="store_true", help="print the entrypoints, submit nothing")
    p.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_sweep_submit)
    p = sw.add_parser("report", help="every variant's eval report in one table (sweep.md) and plot (sweep.png)")
    p.add_argument("--config", required=True, help="configs/sweeps/*.yaml")
    p.add_argument("--runs", help="read <runs>/<variant>/eval/report.json instead of the config's out URL")
    p.add_argument("--out", help="folder for sweep.md and sweep.png (default: --runs or .)")
    p.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_sweep_report)


def cmd_sweep_render(args: argparse.Namespace) -> int:
    from m3ad_rl.core.config import load_config
    from m3ad_rl.k8s.sweep import SweepSpec, main_render

    return main_render(load_config(SweepSpec, args.config, args.overrides), args.out)


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


def cmd_sweep_report(args: argparse.Namespace) -> int:
    from m3ad_rl.core.config import load_config
    from m3ad_rl.k8s.sweep import SweepSpec, report

    table, missing = report(load_config(SweepSpec, args.config, args.overrides), args.runs, args.out)
    print(table)
    if missing:
        print(f"no report yet for: {', '.join(missing)}", file=sys.stderr)
    return EXIT_SKIPPED if missing else 0


def _add_k8s_commands(sub) -> None:
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
    p.add_argument("--kubeconfig", help="default: $KUBECONFIG or ~/.kube/config")
    p.set_defaults(func=cmd_k8s_pipeline)


def cmd_k8s_validate(args: argparse.Namespace) -> int:
    from m3ad_rl.k8s.validate import run

    return run(args.paths, strict=args.strict)


def cmd_k8s_pipeline(args: argparse.Namespace) -> int:
    from m3ad_rl.k8s.pipeline import main as pipeline

    jobs = [j.strip() for j in args.jobs.split(",") if j.strip()]
    return pipeline(args.namespace, jobs, args.poll, args.timeout, args.queue, args.server, args.token, args.kubeconfig)


def _add_serve_commands(sub) -> None:
    from m3ad_rl.engines import ENGINES

    serve = sub.add_parser("serve", help="serve a model over HTTP").add_subparsers(dest="cmd", required=True)
    p = serve.add_parser("openai", help="OpenAI-compatible chat completions (/v1/chat/completions)")
    p.add_argument("--model", required=True, help="model folder or name, as the engine takes it")
    p.add_argument("--engine", choices=ENGINES, default="hf")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=PORT, default=8000)
    p.add_argument("--served-name", help="model name clients send (default: --model as given)")
    p.set_defaults(func=cmd_serve_openai)

    p = serve.add_parser("rewards", help="the reward service on Ray Serve (POST /rewards/score)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=PORT, default=8000)
    p.add_argument("--replicas", type=POSITIVE, default=1)
    p.add_argument("--address", help="Ray cluster address (default: local Ray)")
    _add_config_args(p)
    p.set_defaults(func=cmd_serve_rewards)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; an error a user can fix is one line on stderr and an exit code (errors.py)."""
    args = build_parser().parse_args(argv)
    from m3ad_rl.core.errors import explain

    try:
        return args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            traceback.print_exc()
        print("m3ad-rl: interrupted — nothing half-written was published; run the command again "
              "(train: add --resume)", file=sys.stderr)  # fmt: skip
        return EXIT_INTERRUPTED
    except Exception as e:
        problem = explain(e)
        if problem is not None:
            if args.debug:
                traceback.print_exc()
            print(problem.line(), file=sys.stderr)
            return problem.exit_code
        if not _lost_worker(e):
            raise
        print(f"m3ad-rl: a Ray worker or node was lost ({type(e).__name__}); nothing after the last complete "
              "checkpoint was kept. Run the same command with --resume once the cluster has its nodes back "
              "(a RayJob's retry does this).", file=sys.stderr)  # fmt: skip
        return EXIT_LOST_WORKER


def _lost_worker(e: BaseException) -> bool:
    """A dead actor, node or object owner anywhere in the exception's chain (Ray wraps them)."""
    try:
        from ray import exceptions as rex
    except ImportError:
        return False
    lost = (rex.RayActorError, rex.NodeDiedError, rex.OwnerDiedError, rex.ObjectLostError, rex.WorkerCrashedError)
    seen = 0
    while e is not None and seen < 10:
        if isinstance(e, lost) or "RayActorError" in type(e).__name__ or "ActorDiedError" in type(e).__name__:
            return True
        e, seen = (e.__cause__ or getattr(e, "cause", None) or e.__context__), seen + 1
    return False


def cmd_train_rcrl(args: argparse.Namespace) -> int:
    from m3ad_rl.core.config import load_config
    from m3ad_rl.train.rcrl import RCRLConfig, run

    sections = {"reward": args.reward_config} if args.reward_config else None
    cfg = load_config(RCRLConfig, args.config, args.overrides, sections=sections)
    result = run(cfg, resume=args.resume, progress=not args.no_progress, overwrite=args.overwrite, force=args.force)
    last = result["history"][-1] if result["history"] else {}
    print(f"RCRL done at step {cfg.steps}: reward {last.get('reward/score', float('nan')):.3f}; "
          f"metrics {cfg.out}/metrics.jsonl; model {result['model']}")  # fmt: skip
    return 0


def cmd_train_sft(args: argparse.Namespace) -> int:
    from m3ad_rl.core.config import load_config
    from m3ad_rl.train.sft import SFTConfig, run

    cfg = load_config(SFTConfig, args.config, args.overrides)
    result = run(cfg, resume=args.resume)
    print(f"SFT done: {result['steps']} steps, final loss {result['loss']:.4f}; model {result['model']}")
    return 0


def cmd_serve_rewards(args: argparse.Namespace) -> int:
    import os

    from m3ad_rl.core.guards import check_port_free
    from rewards import load_reward_config

    cfg = load_reward_config(args.config, args.overrides)
    if args.address is None and not os.environ.get("RAY_ADDRESS"):
        check_port_free(args.host, args.port)  # a local Ray: Serve's proxy will listen here
    from m3ad_rl.train.ray_setup import init_ray
    from rewards.service import start

    init_ray(args.address, dashboard=False)
    print(
        f"reward service on http://{args.host}:{args.port}/rewards/score ({args.replicas} replica(s))", file=sys.stderr
    )
    start(cfg, host=args.host, port=args.port, replicas=args.replicas, blocking=True)
    return 0


def cmd_reward_score(args: argparse.Namespace) -> int:
    from rewards import RewardFunction, load_reward_config
    from rewards.files import score_file

    fn = RewardFunction(load_reward_config(args.config, args.overrides))
    r = score_file(args.input, args.output, fn, config_file=args.config)
    print(f"scored {r.n} responses in {r.seconds:.2f}s, mean score {r.mean:.3f}; skipped {len(r.errors.skipped)}",
          file=sys.stderr)  # fmt: skip
    return EXIT_SKIPPED if r.errors else 0


def cmd_eval_score(args: argparse.Namespace) -> int:
    from m3ad_rl.core.config import load_config
    from m3ad_rl.eval.metrics import EvalConfig
    from m3ad_rl.eval.report import print_report
    from m3ad_rl.eval.score import score_file

    cfg = load_config(EvalConfig, args.config, args.overrides)
    report, errors = score_file(args.input, args.output, args.markdown, cfg, config_file=args.config)
    if report["scenes"]:
        print_report(report)
    else:
        print("no predictions left to score", file=sys.stderr)
    return EXIT_SKIPPED if errors else 0


def _progress(total: int | None, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True, file=sys.stderr)


def _finish_write(report, url: str) -> int:
    print(
        f"wrote {report.rows} samples in {len(report.shards)} shard(s) to {url}; rejected {len(report.rejected)}",
        file=sys.stderr,
    )
    return EXIT_SKIPPED if report.rejected else 0


def cmd_data_synth(args: argparse.Namespace) -> int:
    from m3ad_rl.core.config import load_config
    from m3ad_rl.core.guards import refuse_overwrite
    from m3ad_rl.data.synthetic import SynthConfig, synthesize

    refuse_overwrite([args.config], [args.out])
    cfg = load_config(SynthConfig, args.config, [*args.overrides, f"n={args.n}", f"seed={args.seed}"])
    return _finish_write(synthesize(cfg, args.out, args.workers), args.out)


def cmd_data_import(args: argparse.Namespace) -> int:
    from m3ad_rl.core.errors import DataError, UsageError
    from m3ad_rl.core.guards import refuse_overwrite
    from m3ad_rl.data import importers
    from m3ad_rl.data.store import DatasetWriter

    refuse_overwrite([args.root], [args.out])
    report = importers.ImportReport()
    if args.dataset == "folder":
        if not (args.scene and args.category):
            raise UsageError("--dataset folder needs --scene and --category", "add both")
        samples = importers.import_mask_folder(
            args.root, source=args.source, scene=args.scene, category=args.category, report=report
        )
    else:
        fn = {
            "mvtec-ad": importers.import_mvtec_ad,
            "mvtec-loco": importers.import_mvtec_loco,
            "visa": importers.import_visa,
            "real-iad": importers.import_real_iad,
        }[args.dataset]
        samples = fn(args.root, report=report)  # a root not laid out as the dataset fails here
    with DatasetWriter(args.out) as w, _progress(None, f"import {args.dataset}") as bar:
        for sample in samples:
            if args.embed_images and sample.image_uri:
                with contextlib.suppress(DataError):  # if not, the writer rejects it with the reason, by id
                    sample.image, sample.image_uri = sample.image_bytes(), None
            w.write(sample)
            bar.update()
    rc = _finish_write(w.report, args.out)
    print(f"the importer skipped {len(report.skipped)} image(s)", file=sys.stderr)
    return EXIT_SKIPPED if report.skipped else rc


def cmd_data_split(args: argparse.Namespace) -> int:
    from m3ad_rl.core.config import load_config
    from m3ad_rl.data.splits import SplitConfig, split_datasets

    cfg = load_config(SplitConfig, args.config, args.overrides)
    r = split_datasets(args.input, args.out, cfg, config_file=args.config)
    for name in ("ft", "bench"):
        print(f"{name}: {', '.join(r.categories(name))}")
    rejected = len(r.ft.rejected) + len(r.bench.rejected)
    print(f"wrote {r.ft.rows} FT and {r.bench.rows} benchmark samples under {args.out.rstrip('/')}; "
          f"rejected {rejected}", file=sys.stderr)  # fmt: skip
    return EXIT_SKIPPED if rejected else 0


def cmd_data_build_ft(args: argparse.Namespace) -> int:
    from m3ad_rl.core.config import load_config
    from m3ad_rl.core.errors import UsageError
    from m3ad_rl.core.guards import refuse_overwrite
    from m3ad_rl.data.ft import FTConfig, build_ft, make_captioner

    refuse_overwrite([args.config], [args.out])
    cfg = load_config(FTConfig, args.config, args.overrides)
    if args.captioner == "openai" and not (args.base_url and args.model):
        raise UsageError("--captioner openai needs --base-url and --model", "add both")
    captioner = make_captioner(args.captioner, seed=cfg.seed, base_url=args.base_url, model=args.model,
                               cache_dir=args.cache_dir)  # fmt: skip
    report = build_ft(args.input, args.predictions, args.out, cfg, captioner)
    for sid, why in report.skipped:
        print(f"skipped {sid}: {why}", file=sys.stderr)
    print(f"easy {report.easy}, hard {report.hard}; thinking {report.thinking}, reflective {report.reflective}; "
          f"wrote {report.sft_rows} SFT rows and {report.rl_rows} RL rows under {args.out.rstrip('/')}",
          file=sys.stderr)  # fmt: skip
    return EXIT_SKIPPED if report.skipped else 0


def cmd_data_stats(args: argparse.Namespace) -> int:
    from m3ad_rl.data.stats import check_dataset_stats

    def bad(sid: str, why: str) -> None:
        print(f"sample {sid!r}: {why}", file=sys.stderr)

    stats, n_bad = check_dataset_stats(args.input, args.plot, args.check_images, on_bad=bad)
    if args.check_images:
        print(f"images checked: {stats['n'] - n_bad} decode, {n_bad} do not", file=sys.stderr)
    if args.plot:
        print(f"wrote {args.plot}", file=sys.stderr)
    return EXIT_DATA if n_bad else 0


def cmd_data_gallery(args: argparse.Namespace) -> int:
    from m3ad_rl.data.gallery import write_gallery

    shown, broken = write_gallery(args.input, args.out, args.n, args.cols, args.seed, args.anomalous_only,
                                  on_error=lambda _, e: print(f"left out: {e.what}", file=sys.stderr))  # fmt: skip
    print(f"wrote {args.out} ({shown} samples)", file=sys.stderr)
    return EXIT_SKIPPED if broken else 0


def cmd_cluster_up(args: argparse.Namespace) -> int:
    from m3ad_rl.k8s.localcluster import up_cli

    return up_cli(args.dir, args.workers, args.cpus, args.config_dir)


def cmd_cluster_down(args: argparse.Namespace) -> int:
    from m3ad_rl.k8s.localcluster import down_cli

    return down_cli(args.dir)


def cmd_model_tiny(args: argparse.Namespace) -> int:
    from m3ad_rl.models.tiny import TinySpec, write_tiny

    info = write_tiny(args.out, TinySpec(vocab=args.vocab, seed=args.seed))
    print(f"wrote a tiny Qwen3-VL ({info['parameters']:,} parameters, {args.vocab} vocabulary) to {args.out}")
    return 0


def cmd_eval_run(args: argparse.Namespace) -> int:
    from m3ad_rl.core.config import load_config
    from m3ad_rl.eval.report import print_report
    from m3ad_rl.eval.run import EvalRunConfig, run

    given = {"model": args.model, "engine": args.engine, "dataset": args.dataset, "out": args.out,
             "workers": args.workers}  # fmt: skip
    base = [f"{k}={v}" for k, v in given.items() if v is not None]  # flags override the config file
    if args.overwrite:
        base.append("overwrite=true")
    if args.address:
        base.append(f"address={args.address}")
    if args.exclude_source:
        base.append(f"metrics.exclude_sources=[{','.join(args.exclude_source)}]")
    if args.base_url:
        base.append(f"engine_kwargs.base_url={args.base_url}")
    cfg = load_config(EvalRunConfig, args.config, [*base, *args.overrides])
    report = run(cfg)
    if report["scenes"]:
        print_report(report)
    print(report["verdict"])
    print(f"wrote {cfg.out}/report.md, report.json, predictions.jsonl, reflection.png, iou_sweep.png")
    return 0


def cmd_eval_sweep(args: argparse.Namespace) -> int:
    from m3ad_rl.core.config import load_config
    from m3ad_rl.eval.compare import SweepConfig, run_sweep

    cfg = load_config(SweepConfig, args.config, args.overrides)
    table = run_sweep(cfg)
    print(table)
    return 0


def cmd_serve_openai(args: argparse.Namespace) -> int:
    from m3ad_rl.core.guards import check_port_free
    from m3ad_rl.engines import make_engine
    from m3ad_rl.engines.openai_server import serve

    check_port_free(args.host, args.port)  # before the model is loaded, which takes a while
    engine = make_engine(args.engine, args.model)
    try:
        serve(engine, args.served_name or args.model, host=args.host, port=args.port)
    finally:
        engine.close()
    return 0


def cmd_taxonomy(args: argparse.Namespace) -> int:
    from m3ad_rl.core.taxonomy import default_taxonomy

    tax = default_taxonomy()
    if args.lookup:
        for text in args.lookup:
            node = tax.lookup(text)
            print(f"{text!r} -> " + (f"{node.name} ({node.level}; {node.level1} / {node.level2})" if node else "none"))
        return 0
    for node in tax.fine_types:
        print(f"{node.level1:18} {node.level2:22} {node.name:26} {node.definition}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from m3ad_rl.pipeline.demo import run_demo

    return run_demo(Path(args.out), quick=args.quick)


if __name__ == "__main__":
    sys.exit(main())
