"""``m3ad-rl train sft|rcrl`` and ``m3ad-rl model tiny``."""

from __future__ import annotations

import argparse


def add_commands(sub) -> None:
    train = sub.add_parser("train", help="RAWS SFT and RCRL (GRPO) on Ray").add_subparsers(dest="cmd", required=True)
    p = train.add_parser("sft", help="RAWS SFT: Ray Train TorchTrainer + DeepSpeed over sft.parquet")
    p.add_argument("--config", help="YAML config (configs/train/sft-*.yaml)")
    p.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE", help="dotted overrides")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint under out")
    p.add_argument("--overwrite", action="store_true", help="replace an SFT run already in out (default: refuse)")
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
    check = sub.add_parser("check", help="checks that the loop learns").add_subparsers(dest="cmd", required=True)
    p = check.add_parser("learning", help="from a weak start RCRL must raise the reward and held-out accuracy")
    p.add_argument("--out", required=True, help="work folder (one subfolder per seed)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--sabotage", choices=["advantage_sign", "no_weight_push", "zero_lr"],
                   help="break the loop on purpose: the check must then fail")  # fmt: skip
    p.set_defaults(func=cmd_check_learning)
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
    p.add_argument("--overwrite", action="store_true", help="replace an earlier tiny model in --out (nothing else)")
    p.set_defaults(func=cmd_model_tiny)


def cmd_train_sft(args: argparse.Namespace) -> int:
    from m3ad_rl.core.config import load_config
    from m3ad_rl.train.sft import SFTConfig, run

    cfg = load_config(SFTConfig, args.config, args.overrides)
    result = run(cfg, resume=args.resume, overwrite=args.overwrite)
    print(f"SFT done: {result['steps']} steps, final loss {result['loss']:.4f}; model {result['model']}")
    return 0


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


def cmd_model_tiny(args: argparse.Namespace) -> int:
    from m3ad_rl.models.tiny import TinySpec, write_tiny

    info = write_tiny(args.out, TinySpec(vocab=args.vocab, seed=args.seed), overwrite=args.overwrite)
    print(f"wrote a tiny Qwen3-VL ({info['parameters']:,} parameters, {args.vocab} vocabulary) to {args.out}")
    return 0


def cmd_check_learning(args: argparse.Namespace) -> int:
    """Exit 0 only if every seed passes (1 otherwise: a loop that does not learn is a failure)."""
    from m3ad_rl.core.outputs import LEARNING_CHECK, claim_dir
    from m3ad_rl.pipeline.learning_check import LearningCheck, run_learning_check

    claim_dir(args.out, LEARNING_CHECK, resume=True)  # a new folder or an earlier check's (its seeds start over)
    results = [run_learning_check(f"{args.out.rstrip('/')}/seed-{s}", LearningCheck(seed=s, sabotage=args.sabotage))
               for s in args.seeds]  # fmt: skip
    for r in results:
        print(r.line())
    return 0 if all(r.passed for r in results) else 1
