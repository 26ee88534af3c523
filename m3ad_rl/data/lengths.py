"""Token lengths of the SFT targets, and the one check every generation or training limit goes through.

A limit shorter than the data silently changes the experiment: an RL rollout cut before ``<answer>`` has
no final answer, so a confirming reflection scores as an erroneous one, and an SFT target cut short teaches
a response that never ends. So ``build-ft`` records the targets' token lengths (with the model's tokenizer,
the end-of-turn token included) in ``lengths.json`` beside ``sft.parquet``; SFT copies the record into the
model it writes (``m3ad_lengths.json``) and RCRL passes it on, so a model carries the lengths it was trained
to produce; and SFT (``max_response_tokens``), RCRL (``rollout.sampling.max_new_tokens``) and evaluation
(``sampling.max_new_tokens``) check their limit against it when they start (``length_check``: ``refuse``,
the default, ``warn`` or ``off``).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable
from typing import Literal

from m3ad_rl.core import storage
from m3ad_rl.core.errors import UsageError

LENGTHS_FILE = "lengths.json"  # beside sft.parquet / rl.parquet
MODEL_LENGTHS_FILE = "m3ad_lengths.json"  # inside a model folder trained on those targets
LengthCheck = Literal["refuse", "warn", "off"]


def target_lengths(targets: Iterable[tuple[str, str]], tokenizer, tokenizer_name: str) -> dict:
    """The distribution of ``(mode, target text)`` token lengths, each with the end-of-turn token."""
    by_mode: dict[str, list[int]] = {}
    for mode, text in targets:
        n = len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1  # + <|im_end|>
        by_mode.setdefault(mode or "all", []).append(n)
    every = sorted(n for v in by_mode.values() for n in v)
    return {
        "tokenizer": tokenizer_name,
        "includes_end_token": True,
        **_summary(every),
        "by_mode": {m: _summary(sorted(v)) for m, v in sorted(by_mode.items())},
        "counts": {str(n): every.count(n) for n in sorted(set(every))},  # exact: length -> targets
    }


def _summary(values: list[int]) -> dict:
    if not values:
        return {"count": 0, "max": 0}

    def q(p: float) -> int:
        return values[min(len(values) - 1, math.ceil(p * len(values)) - 1)]

    return {"count": len(values), "min": values[0], "p50": q(0.5), "p90": q(0.9), "p99": q(0.99),
            "max": values[-1], "mean": round(sum(values) / len(values), 1)}  # fmt: skip


def write_lengths(folder: str, record: dict) -> str:
    url = f"{folder.rstrip('/')}/{LENGTHS_FILE}"
    storage.write_text(url, json.dumps(record, indent=1) + "\n")
    return url


def _parent(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[0] if "/" in url.rstrip("/") else "."


def find_lengths(model: str | None = None, data: str | None = None) -> tuple[dict, str] | None:
    """(record, where) for a run: the model's own record first, else the one beside its data file."""
    candidates = []
    if model and not model.startswith(("hf://",)) and (storage.is_local(model) or "://" in model):
        candidates.append(f"{model.rstrip('/')}/{MODEL_LENGTHS_FILE}")
    if data:
        candidates.append(f"{_parent(data)}/{LENGTHS_FILE}")
    for url in candidates:
        try:
            if storage.exists(url):
                return json.loads(storage.read_text(url)), url
        except (OSError, ValueError):
            continue
    return None


def suggested_limit(record: dict, margin: float = 1.25, multiple: int = 16) -> int:
    """A generation limit with room above the longest target: ``max × margin``, rounded up to ``multiple``."""
    return int(math.ceil(record["max"] * margin / multiple) * multiple)


def check_limit(limit: int, key: str, found: tuple[dict, str] | None, policy: LengthCheck = "refuse") -> str | None:
    """Refuse (or warn about) ``limit`` below the longest recorded target; returns the warning, if any."""
    if policy == "off" or found is None:
        return None
    record, where = found
    longest = int(record.get("max", 0))
    if limit >= longest:
        return None
    over = _count_over(record, limit)
    what = (f"{key}={limit} is below the longest training target ({longest} tokens, p99 {record.get('p99')}, "
            f"{over} of {record.get('count')} targets longer; {where})")  # fmt: skip
    why = "responses in the trained format would be cut before <answer> and score as unanswered"
    if policy == "refuse":
        fix = f"set {key} to at least {longest} (e.g. {suggested_limit(record)}), or length_check=warn"
        raise UsageError(f"{what}: {why}", fix)
    message = f"warning: {what}: {why}"
    print(message, file=sys.stderr)
    return message


def _count_over(record: dict, limit: int) -> int:
    """How many recorded targets are longer than ``limit``."""
    return sum(n for length, n in record.get("counts", {}).items() if int(length) > limit)


def copy_into_model(found: tuple[dict, str] | None, model_dir) -> None:
    """Write the record into a model folder being saved (a local ``Path``), so the model carries it."""
    if found is not None:
        (model_dir / MODEL_LENGTHS_FILE).write_text(json.dumps(found[0], indent=1) + "\n")
