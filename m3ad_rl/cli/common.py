"""What the command modules share: config flags, number types and the write summary."""

from __future__ import annotations

import argparse
import sys

from m3ad_rl.core.errors import EXIT_DATA, EXIT_SKIPPED  # noqa: F401 (the commands import them from here)


def config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (default: built-in defaults)")
    p.add_argument(
        "--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE", help="dotted overrides, e.g. a.b=1"
    )


def overwrite_arg(p: argparse.ArgumentParser, what: str = "output") -> None:
    """``--overwrite``: replace an earlier output of the same kind (never a folder of anything else)."""
    why = f"replace an earlier {what} of the same kind (a folder holding anything else is never touched)"
    p.add_argument("--overwrite", action="store_true", help=why)


def int_at_least(minimum: int, maximum: int | None = None):
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


POSITIVE = int_at_least(1)


PORT = int_at_least(1, 65535)


def finish_write(report, url: str) -> int:
    print(
        f"wrote {report.rows} samples in {len(report.shards)} shard(s) to {url}; rejected {len(report.rejected)}",
        file=sys.stderr,
    )
    return EXIT_SKIPPED if report.rejected else 0
