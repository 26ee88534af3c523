"""``m3ad-rl serve openai|rewards``."""

from __future__ import annotations

import argparse
import sys

from m3ad_rl.cli.common import PORT, POSITIVE, config_args


def add_commands(sub) -> None:
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
    p.add_argument(
        "--batch-max-requests",
        type=POSITIVE,
        default=1,
        help="small requests a replica gathers into one scoring call with @serve.batch (default 1: off)",
    )
    config_args(p)
    p.set_defaults(func=cmd_serve_rewards)


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
    start(
        cfg,
        host=args.host,
        port=args.port,
        replicas=args.replicas,
        blocking=True,
        batch_max_requests=args.batch_max_requests,
    )
    return 0
