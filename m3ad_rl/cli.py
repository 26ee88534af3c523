"""``m3ad-rl``: the command line. Each command is a few lines over the library.

Exit codes: 0 done; 2 bad usage or config (nothing written); 3 done, but some input lines were
reported on stderr and skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

EXIT_USAGE = 2
EXIT_SKIPPED = 3


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (default: built-in defaults)")
    p.add_argument(
        "--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE", help="dotted overrides, e.g. a.b=1"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="m3ad-rl", description=__doc__.splitlines()[0])
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

    p = sub.add_parser("taxonomy", help="list the anomaly taxonomy or map free text onto it")
    p.add_argument("--lookup", nargs="+", metavar="TEXT", help="texts to map onto the taxonomy")
    p.set_defaults(func=cmd_taxonomy)

    p = sub.add_parser("demo", help="the Quickstart's main job")
    p.add_argument("--out", default="runs/demo", help="where the demo writes its files")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from m3ad_rl.config import ConfigError

    try:
        return args.func(args)
    except ConfigError as e:
        print(f"m3ad-rl: config error:\n{e}", file=sys.stderr)
        return EXIT_USAGE
    except FileNotFoundError as e:
        print(f"m3ad-rl: {e.strerror}: {e.filename}", file=sys.stderr)
        return EXIT_USAGE


def cmd_reward_score(args: argparse.Namespace) -> int:
    from m3ad_rl.jsonl import LineErrors, read_records, require, write_jsonl
    from m3ad_rl.labels import GroundTruth
    from rewards import RewardFunction, load_reward_config

    fn = RewardFunction(load_reward_config(args.config, args.overrides))

    def convert(obj: dict) -> tuple[str, str, GroundTruth]:
        return require(obj, "id"), require(obj, "response"), GroundTruth.from_obj(require(obj, "ground_truth", dict))

    errors = LineErrors(args.input)
    n, total, t0 = 0, 0.0, time.perf_counter()
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    with open(args.output, "wb") as out:
        for _, (rid, response, gt) in read_records(args.input, convert, errors):
            r = fn(response, gt)
            write_jsonl(out, {"id": rid, **r.to_dict()})
            n, total = n + 1, total + r.score
    dt = time.perf_counter() - t0
    mean = total / n if n else 0.0
    print(f"scored {n} responses in {dt:.2f}s, mean score {mean:.3f}; skipped {len(errors.skipped)}", file=sys.stderr)
    return EXIT_SKIPPED if errors else 0


def cmd_eval_score(args: argparse.Namespace) -> int:
    from m3ad_rl.config import load_config
    from m3ad_rl.jsonl import LineErrors, read_records, require
    from m3ad_rl.labels import GroundTruth
    from m3ad_rl.metrics import EvalConfig, Prediction, evaluate
    from m3ad_rl.report import markdown_report, print_report

    cfg = load_config(EvalConfig, args.config, args.overrides)

    def convert(obj: dict) -> Prediction:
        source = obj.get("source")
        if source is not None and not isinstance(source, str):
            raise TypeError("field 'source' must be str")
        return Prediction(
            id=require(obj, "id"),
            scene=require(obj, "scene"),
            response=require(obj, "response"),
            ground_truth=GroundTruth.from_obj(require(obj, "ground_truth", dict)),
            source=source,
        )

    errors = LineErrors(args.input)
    report = evaluate((p for _, p in read_records(args.input, convert, errors)), cfg)
    report["skipped_lines"] = [n for n, _ in errors.skipped]
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(markdown_report(report))
    if report["scenes"]:
        print_report(report)
    else:
        print("no predictions left to score", file=sys.stderr)
    return EXIT_SKIPPED if errors else 0


def cmd_taxonomy(args: argparse.Namespace) -> int:
    from m3ad_rl.taxonomy import default_taxonomy

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
    from m3ad_rl.demo import run_demo

    return run_demo(Path(args.out))


if __name__ == "__main__":
    sys.exit(main())
