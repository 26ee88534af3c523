"""The output contract: one place that decides what a command may write, and where.

Every command and library function that writes an output folder or file goes through here:

1. **Never over an input.** An output that is, holds or lies inside an input (or the reverse) is
   refused (``guards.refuse_overwrite``).
2. **A fresh output is created; an existing one is taken only when it is empty, or it is an output of
   the same kind** (its marker ``.m3ad-output.json`` names the kind — a dataset, a model, an RCRL run …
   — or, for outputs written before markers existed, every entry is one that kind holds) **and the
   caller asked for it**: ``resume`` (continue a resumable run) or ``overwrite`` (replace it). Anything
   else — a folder holding a user's files, another kind of output — is refused, with or without
   ``--overwrite``.
3. **Nothing the command did not write is deleted.** A folder with entries its kind does not hold is
   refused; replacing removes only that kind's entries.
4. **Published only on success.** ``publish_dir`` stages the new output in a hidden sibling folder
   (``.<name>.partial-<token>``, same storage) and moves it into place when the block ends without an
   error; ``publish_file`` does the same for one file. An error or Ctrl-C leaves what was there before.
5. **Somewhere that lasts.** ``memory://`` outputs vanish when the process exits: refused for the CLI.

Resumable runs (training, evaluation, reproduce) write in place as they go: ``claim_dir`` applies
rules 1–3 up front and writes the marker, so a later fresh run into the same folder is refused.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import posixpath
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem

from m3ad_rl.core.errors import UsageError
from m3ad_rl.core.guards import Where, refuse_overwrite, require_output_file

MARKER = ".m3ad-output.json"
PARTIAL = ".partial-"


@dataclass(frozen=True)
class Kind:
    """A kind of output folder: its name (kept in the marker), the top-level names it holds (fnmatch
    patterns), and the names whose presence marks an unmarked folder as one (written before markers)."""

    name: str
    names: tuple[str, ...]
    required: tuple[str, ...] = ()
    last: tuple[str, ...] = ()  # published after the others (a dataset's manifest); required: any one of them

    def __contains__(self, entry: str) -> bool:
        return entry == MARKER or any(fnmatch.fnmatchcase(entry, p) for p in self.names)

    def looks_like(self, entries: list[str]) -> bool:
        """An unmarked folder is this kind's when every entry is one it writes and one of ``required`` is there."""
        return (
            bool(entries)
            and all(e in self for e in entries)
            and (not self.required or any(fnmatch.fnmatchcase(e, r) for e in entries for r in self.required))
        )


MODEL_FILES = ("config.json", "*.safetensors", "*.safetensors.index.json", "*.bin", "*.json", "*.jinja", "*.txt",
               "*.model", "m3ad_*.json")  # fmt: skip
DATASET = Kind("dataset", ("manifest.json", "part-[0-9][0-9][0-9][0-9][0-9].parquet", ".staging-*"),
               ("manifest.json",), last=("manifest.json",))  # fmt: skip
TINY_MODEL = Kind("tiny model", MODEL_FILES, ("m3ad_tiny.json",))
FT_SETS = Kind("FT sets", ("samples", "sft.parquet", "rl.parquet", "lengths.json"), ("samples",))
SPLIT_SETS = Kind("split", ("ft", "bench"), ("ft",))
LEARNING_CHECK = Kind("learning check", ("seed-*",))
SWEEP_MANIFESTS = Kind("sweep render", ("*.yaml",), ("00-configmap.yaml",))
REPRODUCE = Kind("reproduce run", ("data", "models", "perception", "eval", "seed-*", "stages", "report", "select",
                                   "reproduce.json"), ("stages",))  # fmt: skip
SFT_RUN = Kind("SFT run", ("ray_train", "model", "metrics.jsonl", "tensorboard", "config.json", "mlruns", "wandb",
                           ".m3ad-write-test-*"), ("ray_train", "metrics.jsonl"))  # fmt: skip
RCRL_RUN = Kind("RCRL run", ("checkpoints", "model", "metrics.jsonl", "tensorboard", "config.json", "mlruns",
                             "wandb", ".m3ad-write-test-*"),
                ("config.json", "checkpoints", "metrics.jsonl"))  # fmt: skip
EVAL_RUN = Kind("evaluation", ("predictions.jsonl", "run.json", "report.json", "report.md", "*.png", "gallery.html"),
                ("predictions.jsonl",))  # fmt: skip


def _fs(url: str):
    fs, path = fsspec.core.url_to_fs(str(url))
    return fs, path.rstrip("/") or "/"


def _entries(fs, path: str) -> list[str]:
    fs.invalidate_cache(path)
    return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False))


def read_marker(url: str) -> dict | None:
    fs, path = _fs(url)
    try:
        with fs.open(f"{path}/{MARKER}", "r") as fh:
            return json.load(fh)
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        return None


def require_lasting(url: Where, option: str = "--out") -> None:
    """``memory://`` lives only inside this process: as a CLI output it would vanish at exit."""
    if url is not None and os.fspath(url).startswith("memory://"):
        raise UsageError(f"{option} {os.fspath(url)}: memory:// exists only inside this process and would vanish "
                         "when the command exits", "give a local path or a storage URL (s3://…)")  # fmt: skip


def check_dir(
    out: str,
    kind: Kind,
    *,
    inputs: Iterable[Where] = (),
    resume: bool = False,
    overwrite: bool = False,
    resumable: bool = False,
) -> list[str]:
    """Rules 1–2 for an output folder; returns the entries a replacement removes (empty for a fresh output)."""
    refuse_overwrite(inputs, [out])
    fs, path = _fs(out)
    if fs.isfile(path):
        raise UsageError(f"the output {out} is a file, a folder was expected", "give a folder path")
    require_writable(out, "the output")
    if not fs.exists(path):
        return []
    entries = _entries(fs, path)
    if not entries:
        return []
    marker = read_marker(out)
    mine = marker.get("kind") == kind.name if marker is not None else kind.looks_like(entries)
    if not mine:
        what = (f"{_article(marker.get('kind', 'other'))} {marker.get('kind', 'other')} output" if marker
                else f"files m3ad-rl did not write there ({_few(entries)})")  # fmt: skip
        raise UsageError(f"the output {out} already holds {what}", "choose a new or empty folder")
    foreign = [e for e in entries if e not in kind]
    if foreign:
        raise UsageError(f"the output {out} holds files that are not part of {_article(kind.name)} {kind.name} "
                         f"({_few(foreign)})", "move them away or choose a new or empty folder")  # fmt: skip
    if resume and resumable:
        return []
    if not overwrite:
        again = "replace it with --overwrite"
        again = f"continue it with --resume or {again}" if resumable else again
        held = f"{_article(kind.name)} {kind.name}"
        raise UsageError(f"the output {out} already holds {held}", f"{again}, or choose another folder")
    return [e for e in entries if e != MARKER]


def _article(word: str) -> str:
    """ "a" or "an" as it is spoken: an evaluation, an SFT run, an RCRL run, a dataset."""
    acronym = len(word) > 1 and word[:2].isupper()
    return "an" if (word[:1] in "AEFHILMNORSX" if acronym else word[:1].lower() in "aeiou") else "a"


def _few(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def write_marker(out: str, kind: Kind, extra: dict | None = None) -> None:
    fs, path = _fs(out)
    fs.makedirs(path, exist_ok=True)
    tmp = f"{path}/.{MARKER}.{uuid.uuid4().hex[:8]}"
    with fs.open(tmp, "w") as fh:
        json.dump({"kind": kind.name, "time": time.time(), **(extra or {})}, fh, indent=1)
    move_path(fs, tmp, f"{path}/{MARKER}")


def claim_dir(
    out: str,
    kind: Kind,
    *,
    inputs: Iterable[Where] = (),
    resume: bool = False,
    overwrite: bool = False,
    checked: list[str] | None = None,
) -> None:
    """A resumable run's output folder: checked (rules 1–3, and 5: never ``memory://``), the previous run's
    entries removed when replacing it, and marked as this kind's. ``checked``: the result of an earlier
    ``check_dir(..., resumable=True)``, for commands that check first and claim once every check passed."""
    require_lasting(out, "out")
    old = checked if checked is not None else check_dir(out, kind, inputs=inputs, resume=resume, overwrite=overwrite,
                                                        resumable=True)  # fmt: skip
    fs, path = _fs(out)
    for name in old:
        remove_path(fs, f"{path}/{name}")
    write_marker(out, kind)


@contextlib.contextmanager
def publish_dir(
    out: str,
    kind: Kind,
    *,
    inputs: Iterable[Where] = (),
    overwrite: bool = False,
    checked: list[str] | None = None,
) -> Iterator[tuple[object, str]]:
    """``(fs, staging path)`` to write a new output into; on success it replaces ``out`` (rules 1–4).

    ``checked``: the result of an earlier ``check_dir`` (checks done before the work started)."""
    old = checked if checked is not None else check_dir(out, kind, inputs=inputs, overwrite=overwrite)
    fs, path = _fs(out)
    parent, name = posixpath.split(path)
    stage = f"{parent}/.{name}{PARTIAL}{uuid.uuid4().hex[:10]}"
    fs.makedirs(stage, exist_ok=True)
    try:
        yield fs, stage
        new = sorted((e for e in _entries(fs, stage) if e != MARKER), key=lambda e: e in kind.last)
        if isinstance(fs, LocalFileSystem) and not fs.exists(path):
            os.replace(stage, path)  # a fresh output appears in one step
        else:
            fs.makedirs(path, exist_ok=True)
            for e in old:  # the earlier output's own entries (none of anyone else's)
                remove_path(fs, f"{path}/{e}")
            for e in new:
                move_path(fs, f"{stage}/{e}", f"{path}/{e}")
        write_marker(out, kind, {"entries": new})
    finally:
        remove_path(fs, stage)


@contextlib.contextmanager
def publish_local_dir(out: str, kind: Kind, **kwargs) -> Iterator[Path]:
    """``publish_dir`` for writers that need a local folder (``save_pretrained``, matplotlib): a local
    folder whose files are published to ``out`` (any URL) on success."""
    import tempfile

    from m3ad_rl.core.storage import upload_dir

    with publish_dir(out, kind, **kwargs) as (fs, stage):
        if isinstance(fs, LocalFileSystem):
            yield Path(stage)
        else:
            with tempfile.TemporaryDirectory(prefix="m3ad-out-") as tmp:
                yield Path(tmp)
                upload_dir(tmp, fs.unstrip_protocol(stage))


def require_writable(out: Where, option: str = "--out") -> None:
    """A local output can be created: its nearest existing folder is writable (a read-only file system, a
    folder of another user). Checked with every other output before any is written."""
    if out is None:
        return
    fs, path = _fs(os.fspath(out))
    if not isinstance(fs, LocalFileSystem):
        return
    probe = path if os.path.isdir(path) else os.path.dirname(path) or "."
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    if not os.access(probe, os.W_OK):
        raise UsageError(f"{option} {os.fspath(out)}: {probe} is not writable (a read-only file system or "
                         "another user's folder)", "write the output somewhere writable")  # fmt: skip


def check_file(out: Where, *, inputs: Iterable[Where] = (), overwrite: bool = False, option: str = "--output") -> None:
    """An output file: not over an input, not a folder, not ``-``, and an existing file only with ``overwrite``."""
    if out is None:
        return
    text = os.fspath(out)
    if text == "-":
        raise UsageError(f"{option} -: writing to standard output is not supported", "give a file path")
    require_lasting(text, option)
    require_output_file(text, option)  # not a folder, and no file where a folder of its path must be
    refuse_overwrite(inputs, [text])
    require_writable(text, option)
    fs, path = _fs(text)
    if fs.exists(path) and not overwrite:
        raise UsageError(f"{option} {text} already exists", "add --overwrite to replace it, or choose another name")


@contextlib.contextmanager
def publish_file(out: Where) -> Iterator[Path]:
    """A local temporary path; on success its content becomes ``out`` (any URL) in one step."""
    import tempfile

    text = os.fspath(out)
    fs, path = _fs(text)
    if isinstance(fs, LocalFileSystem):
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp{target.suffix}"
        try:
            yield tmp
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return
    with tempfile.TemporaryDirectory(prefix="m3ad-out-") as d:
        tmp = Path(d) / Path(path).name
        yield tmp
        fs.put_file(str(tmp), path)


def move_path(fs, src: str, dst: str) -> None:
    """Move a file or folder on one filesystem: a rename locally (atomic), copy-then-delete elsewhere (fsspec's own
    mv and rm expand glob patterns, so a path with [ ] * ? would miss; these never glob)."""
    if isinstance(fs, LocalFileSystem):
        os.replace(src, dst)
    elif fs.isdir(src):
        for f in fs.find(src):
            fs.cp_file(f, dst + f[len(src):])  # fmt: skip
        remove_path(fs, src)
    else:
        fs.cp_file(src, dst)
        fs.rm_file(src)


def remove_path(fs, path: str) -> None:
    """Remove a file or a folder and everything in it; nothing if it is not there."""
    if isinstance(fs, LocalFileSystem):
        import shutil

        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        return
    if not fs.exists(path):
        return
    if fs.isdir(path):
        for f in fs.find(path):
            fs.rm_file(f)
        with contextlib.suppress(OSError, NotImplementedError):
            fs.rmdir(path)
    else:
        fs.rm_file(path)
