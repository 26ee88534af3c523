"""``m3ad-rl``: the command line. Each command is a few lines over the library.

Errors a user can fix are one line, ``m3ad-rl: <what> — <what to do>`` (``--debug`` adds the
traceback); the exit codes are listed in ``m3ad_rl/core/errors.py`` and README.md ("Exit codes").
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

from m3ad_rl.core.errors import (  # noqa: F401 (the table of exit codes, m3ad_rl/core/errors.py; callers import them here)
    EXIT_DATA,
    EXIT_INTERRUPTED,
    EXIT_LOST_WORKER,  # a node or worker died: rerun with --resume once the cluster is whole
    EXIT_SKIPPED,
    EXIT_USAGE,
)


def build_parser() -> argparse.ArgumentParser:
    from m3ad_rl.cli import data, eval, ops, serve, train

    parser = argparse.ArgumentParser(prog="m3ad-rl", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error, not just its line")
    sub = parser.add_subparsers(dest="group", required=True)
    data.add_commands(sub)
    train.add_commands(sub)
    eval.add_commands(sub)
    serve.add_commands(sub)
    ops.add_sweep_commands(sub)
    ops.add_k8s_commands(sub)
    ops.add_cluster_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; an error a user can fix is one line on stderr and an exit code (errors.py)."""
    args = build_parser().parse_args(argv)
    from m3ad_rl.core.errors import explain

    try:
        check_output_options(args)
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
        if args.debug:
            traceback.print_exc()
        why = str(e) if type(e).__name__ == "LostWorkerError" else type(e).__name__
        print(f"m3ad-rl: a Ray worker or node was lost ({why}); nothing after the last complete "
              "checkpoint was kept. Run the same command with --resume once the cluster has its nodes back "
              "(a RayJob's retry does this).", file=sys.stderr)  # fmt: skip
        return EXIT_LOST_WORKER


OUTPUT_OPTIONS = ("out", "output", "markdown", "plot")


def check_output_options(args: argparse.Namespace) -> None:
    """What every command's output options must be, checked once here: somewhere that outlasts the process
    (no ``memory://``) and a real path (``-`` is not standard output here)."""
    from m3ad_rl.core.errors import UsageError
    from m3ad_rl.core.outputs import require_lasting

    for name in OUTPUT_OPTIONS:
        value = getattr(args, name, None)
        if not isinstance(value, str):
            continue
        if value.strip() in ("", "-"):
            raise UsageError(f"--{name} {value!r}: not a path (standard output is not supported)", "give a path")
        require_lasting(value, f"--{name}")


def _lost_worker(e: BaseException) -> bool:
    """A dead actor, node or object owner anywhere in the exception's chain (Ray wraps them)."""
    try:
        from ray import exceptions as rex
    except ImportError:
        return False
    from m3ad_rl.core.errors import LostWorkerError

    lost = (
        LostWorkerError,
        rex.RayActorError,
        rex.NodeDiedError,
        rex.OwnerDiedError,
        rex.ObjectLostError,
        rex.WorkerCrashedError,
    )
    seen = 0
    while e is not None and seen < 10:
        if isinstance(e, lost) or "RayActorError" in type(e).__name__ or "ActorDiedError" in type(e).__name__:
            return True
        e, seen = (e.__cause__ or getattr(e, "cause", None) or e.__context__), seen + 1
    return False


if __name__ == "__main__":
    sys.exit(main())
