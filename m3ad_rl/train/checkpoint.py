"""Checkpoints on any fsspec URL: ``{root}/step_000012/`` with a ``COMPLETE`` marker written last.

Whoever writes a file uploads it: each actor rank copies its own DeepSpeed shards from its own disk
to the checkpoint URL, the driver writes ``trainer_state.json``, and only after every rank has
returned does the driver write the marker, which lists every file with its size. So a job killed
mid-copy leaves a folder without a marker, and a folder whose files no longer match the listing
(a truncated shard, an emptied state file) is skipped: ``latest_complete`` returns the newest
*intact* checkpoint. Old complete checkpoints beyond ``keep`` are deleted after a new one is marked.
"""

from __future__ import annotations

import json
import re
import sys

import fsspec
from fsspec.core import url_to_fs

from m3ad_rl.core import storage

MARKER = "COMPLETE"
_STEP = re.compile(r"step_(\d+)$")


def step_dir(root: str, step: int) -> str:
    return f"{root.rstrip('/')}/step_{step:06d}"


def _marked_steps(root: str) -> list[int]:
    """Steps of the checkpoints under ``root`` whose marker exists, ascending."""
    fs, path = url_to_fs(root)
    if not fs.exists(path):
        return []
    return sorted(
        int(m.group(1))
        for e in fs.ls(path, detail=False)
        if (m := _STEP.search(e.rstrip("/"))) and fs.exists(f"{e.rstrip('/')}/{MARKER}")
    )


def read_marker(url: str) -> dict:
    with fsspec.open(f"{url.rstrip('/')}/{MARKER}", "r") as fh:
        return json.load(fh)


def damage(url: str) -> str | None:
    """Why the checkpoint at ``url`` cannot be trusted, or None if every listed file is there whole."""
    try:
        meta = read_marker(url)
    except (OSError, json.JSONDecodeError) as e:
        return f"unreadable {MARKER} marker ({e})"
    listed = meta.get("files")
    if not isinstance(listed, dict):
        return None  # a marker from before file listings: nothing to check against
    present = storage.list_files(url)
    for name, size in listed.items():
        if name not in present:
            return f"{name} is missing"
        if present[name]["size"] != size:
            return f"{name} has {present[name]['size']} bytes, {size} when saved"
    return None


def complete_steps(root: str) -> list[int]:
    """Steps of the intact checkpoints under ``root`` (marker present, files as listed), ascending."""
    return [s for s in _marked_steps(root) if damage(step_dir(root, s)) is None]


def latest_complete(root: str) -> tuple[int, str] | None:
    """(step, url) of the newest intact checkpoint, or None; damaged newer ones are reported."""
    for s in reversed(_marked_steps(root)):
        url = step_dir(root, s)
        why = damage(url)
        if why is None:
            return s, url
        print(f"checkpoint {url} is damaged ({why}); trying an older one", file=sys.stderr)
    return None


def mark_complete(url: str, meta: dict, files: dict[str, int] | None = None) -> None:
    """Write the marker - the last file of a checkpoint - listing ``files`` ({relative name: size}).

    Without ``files`` the listing is read back from storage, which only proves the files exist.
    """
    if files is None:
        files = {k: v["size"] for k, v in storage.list_files(url).items() if k != MARKER}
    with fsspec.open(f"{url.rstrip('/')}/{MARKER}", "w") as fh:
        json.dump({**meta, "files": files}, fh)


def prune(root: str, keep: int) -> list[int]:
    """Delete all but the newest ``keep`` complete checkpoints; returns the steps removed."""
    if keep <= 0:
        return []
    gone = _marked_steps(root)[:-keep]
    for s in gone:
        storage.remove(step_dir(root, s))
    return gone
