"""``m3ad-rl reward score``, ``eval score|run|sweep`` and ``taxonomy``."""

from __future__ import annotations

import argparse
import sys

from m3ad_rl.cli.common import EXIT_SKIPPED, config_args, overwrite_arg


def add_commands(sub) -> None:
    """reward score, eval score|run|sweep, taxonomy"""
    reward = sub.add_parser("reward", help="reward functions").add_subparsers(dest="cmd", required=True)
    p = reward.add_parser("score", help="score responses (JSONL) with the RCRL reward")
    p.add_argument("--input", required=True, help="JSONL: {id, response, ground_truth}")
    p.add_argument("--output", required=True, help="JSONL: {id, score, consistency, answer, ...}")
    overwrite_arg(p, "output file")
    config_args(p)
    p.set_defaults(func=cmd_reward_score)

    ev = sub.add_parser("eval", help="benchmark evaluation").add_subparsers(dest="cmd", required=True)
    p = ev.add_parser("score", help="M3-AD-Bench metrics over a predictions JSONL")
    p.add_argument("--input", required=True, help="JSONL: {id, scene, source?, response, ground_truth}")
    p.add_argument("--output", required=True, help="REPORT.json")
    p.add_argument("--markdown", help="also write the tables as Markdown here")
    overwrite_arg(p, "output file")
    config_args(p)
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
    config_args(p)
    p.set_defaults(func=cmd_eval_run)

    p = ev.add_parser("sweep", help="evaluate several models/endpoints and compare them (Table 1)")
    p.add_argument("--config", required=True, help="YAML: dataset, out, models: [{name, model, engine, ...}]")
    p.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_eval_sweep)

    p = ev.add_parser("gallery", help="HTML gallery (+ PNG contact sheet) of cases from one or more `eval run`s")
    p.add_argument("--eval", dest="evals", nargs="+", required=True, metavar="URL",
                   help="`eval run` outputs (or predictions.jsonl files), same images; one column each")  # fmt: skip
    p.add_argument("--name", dest="names", nargs="+", metavar="NAME", help="a model name per --eval (default: "
                   "the parts of the paths that differ)")  # fmt: skip
    p.add_argument("--dataset", help="the images (default: the dataset each run.json names)")
    p.add_argument("--out", required=True, help="the page, e.g. gallery.html (any URL)")
    p.add_argument("--sheet", help="the PNG contact sheet (default: --out with .png)")
    p.add_argument("--per-outcome", type=int, default=12, help="cases sampled per model and outcome (default 12)")
    p.add_argument("--seed", type=int, default=0, help="which cases are sampled")
    p.add_argument("--title", help="page title")
    overwrite_arg(p, "page and sheet")
    p.set_defaults(func=cmd_eval_gallery)

    p = sub.add_parser("taxonomy", help="list the anomaly taxonomy or map free text onto it")
    p.add_argument("--lookup", nargs="+", metavar="TEXT", help="texts to map onto the taxonomy")
    p.set_defaults(func=cmd_taxonomy)


def cmd_reward_score(args: argparse.Namespace) -> int:
    from rewards import RewardFunction, load_reward_config
    from rewards.files import score_file

    fn = RewardFunction(load_reward_config(args.config, args.overrides))
    r = score_file(args.input, args.output, fn, config_file=args.config, overwrite=args.overwrite)
    print(f"scored {r.n} responses in {r.seconds:.2f}s, mean score {r.mean:.3f}; skipped {len(r.errors.skipped)}",
          file=sys.stderr)  # fmt: skip
    return EXIT_SKIPPED if r.errors else 0


def cmd_eval_score(args: argparse.Namespace) -> int:
    from m3ad_rl.core.config import load_config
    from m3ad_rl.eval.metrics import EvalConfig
    from m3ad_rl.eval.report import print_report
    from m3ad_rl.eval.score import score_file

    cfg = load_config(EvalConfig, args.config, args.overrides)
    report, errors = score_file(
        args.input, args.output, args.markdown, cfg, config_file=args.config, overwrite=args.overwrite
    )
    if report["scenes"]:
        print_report(report)
    else:
        print("no predictions left to score", file=sys.stderr)
    return EXIT_SKIPPED if errors else 0


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
    print(f"wrote {cfg.out}/report.md, report.json, predictions.jsonl, reflection.png, iou_sweep.png, "
          "gallery.html (the cases to look at), gallery.png")  # fmt: skip
    return 0


def cmd_eval_gallery(args: argparse.Namespace) -> int:
    from m3ad_rl.core.errors import UsageError
    from m3ad_rl.eval.gallery import write_gallery

    if args.per_outcome < 1:
        raise UsageError(f"--per-outcome {args.per_outcome}: must be at least 1", "give a positive number")
    g = write_gallery(
        args.evals, args.out, names=args.names, dataset=args.dataset, sheet=args.sheet,
        per_outcome=args.per_outcome, seed=args.seed, title=args.title, overwrite=args.overwrite,
    )  # fmt: skip
    for problem in g.problems[:20]:
        print(f"warning: {problem}", file=sys.stderr)
    if len(g.problems) > 20:
        print(f"warning: … {len(g.problems) - 20} more problems, listed in the page", file=sys.stderr)
    counts = "; ".join(f"{m}: " + ", ".join(f"{k} {v}" for k, v in c.items() if v) for m, c in g.counts.items())
    print(f"wrote {args.out} ({g.shown} of {g.total} images shown) and its contact sheet; {counts}")
    return EXIT_SKIPPED if g.problems else 0


def cmd_eval_sweep(args: argparse.Namespace) -> int:
    from m3ad_rl.core.config import load_config
    from m3ad_rl.eval.compare import SweepConfig, run_sweep

    cfg = load_config(SweepConfig, args.config, args.overrides)
    table = run_sweep(cfg)
    print(table)
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
