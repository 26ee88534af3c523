"""Checkpoints on any fsspec URL: ``{root}/step_000012/`` with a ``COMPLETE`` marker written last.

A checkpoint is written to a local staging folder, copied up file by file, and only then marked
complete, so a job killed mid-copy leaves a folder that ``latest_complete`` never returns. Old
complete checkpoints beyond ``keep`` are deleted after the new one is marked.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import fsspec
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

MARKER = "COMPLETE"
_STEP = re.compile(r"step_(\d+)$")


def step_dir(root: str, step: int) -> str:
    return f"{root.rstrip('/')}/step_{step:06d}"


def complete_steps(root: str) -> list[int]:
    """Steps of the checkpoints under ``root`` whose marker exists, ascending."""
    fs, path = url_to_fs(root)
    if not fs.exists(path):
        return []
    return sorted(
        int(m.group(1))
        for e in fs.ls(path, detail=False)
        if (m := _STEP.search(e.rstrip("/"))) and fs.exists(f"{e.rstrip('/')}/{MARKER}")
    )


def latest_complete(root: str) -> tuple[int, str] | None:
    """(step, url) of the newest checkpoint whose marker exists, or None."""
    steps = complete_steps(root)
    return (steps[-1], step_dir(root, steps[-1])) if steps else None


def upload(local: str | Path, url: str) -> None:
    """Copy a local folder's files to ``url`` (no marker)."""
    fs, dest = url_to_fs(url)
    local = Path(local)
    for f in sorted(p for p in local.rglob("*") if p.is_file()):
        target = f"{dest}/{f.relative_to(local).as_posix()}"
        fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(f), target)


def download(url: str, local: str | Path | None = None) -> Path:
    """The checkpoint's files in a local folder (the folder itself when ``url`` is already local)."""
    fs, src = url_to_fs(url)
    if isinstance(fs, LocalFileSystem):
        return Path(src)
    local = Path(local or tempfile.mkdtemp(prefix="m3ad-ckpt-"))
    fs.get(src, str(local), recursive=True)
    return local


def mark_complete(url: str, meta: dict) -> None:
    """Write the marker (with a small JSON summary) - the last file of a checkpoint."""
    with fsspec.open(f"{url.rstrip('/')}/{MARKER}", "w") as fh:
        json.dump(meta, fh)


def prune(root: str, keep: int) -> list[int]:
    """Delete all but the newest ``keep`` complete checkpoints; returns the steps removed."""
    if keep <= 0:
        return []
    gone = complete_steps(root)[:-keep]
    for s in gone:
        fs, path = url_to_fs(step_dir(root, s))
        fs.rm(path, recursive=True)
    return gone
