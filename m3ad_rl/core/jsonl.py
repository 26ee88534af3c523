"""JSON Lines in and out, where a bad line is reported with its number and skipped, never fatal."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson

T = TypeVar("T")


@dataclass
class LineErrors:
    """Lines that were skipped, as (line number, reason)."""

    path: str
    skipped: list[tuple[int, str]] = field(default_factory=list)

    quiet: bool = False

    def add(self, lineno: int, reason: str) -> None:
        self.skipped.append((lineno, reason))
        if not self.quiet:
            print(f"{self.path}:{lineno}: skipped: {reason}", file=sys.stderr)

    def __bool__(self) -> bool:
        return bool(self.skipped)


def read_records(
    path: str | Path, convert: Callable[[dict], T], errors: LineErrors | None = None
) -> Iterator[tuple[int, T]]:
    """Yield ``(line number, convert(obj))`` from a local path or any fsspec URL; a line that is not a JSON
    object, or that ``convert`` rejects with KeyError/ValueError/TypeError, goes to ``errors`` instead."""
    import fsspec

    errors = errors if errors is not None else LineErrors(str(path))
    with fsspec.open(str(path), "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if lineno == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark is not part of the first line
            if not raw.strip():
                continue
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError as e:
                bad = "not UTF-8 text" if _not_utf8(raw) else f"not valid JSON ({e})"
                errors.add(lineno, bad)
                continue
            if not isinstance(obj, dict):
                errors.add(lineno, f"expected a JSON object, got {type(obj).__name__}")
                continue
            try:
                yield lineno, convert(obj)
            except KeyError as e:
                errors.add(lineno, f"missing field {e.args[0]!r}")
            except (ValueError, TypeError) as e:
                errors.add(lineno, str(e))


def _not_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def require(obj: dict, key: str, kind: type | tuple[type, ...] = str) -> Any:
    """``obj[key]``, checked for presence and type (a KeyError / TypeError names the field)."""
    if key not in obj:
        raise KeyError(key)
    value = obj[key]
    if not isinstance(value, kind):
        raise TypeError(f"field {key!r} must be {_kind_name(kind)}, got {type(value).__name__}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    return " or ".join(k.__name__ for k in kind) if isinstance(kind, tuple) else kind.__name__


def write_jsonl(fh, obj: Any) -> None:
    """One object per line, compact."""
    fh.write(orjson.dumps(obj) + b"\n")
